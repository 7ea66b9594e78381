/**
 * Checking the audit chains in the text of a COPY, as pg_dump writes a table's data: `restore`
 * verifies the rows of the backup while it restores them, instead of reading them back after the
 * commit (core/backup/chain-check.ts). It only ever vouches for intact chains. A break, a value
 * it does not read, a row too far out of order or too many tenants at once make it give up
 * (`intact: false`), and the caller then runs verify-chain on the restored database, which names
 * what is wrong.
 *
 * The rows of a table come in the order they lie on disk, which is seq order for each tenant
 * almost always but not always (concurrent writers fill different pages), so a row that comes
 * before its predecessor waits, copied, until the gap is filled.
 */
import type { Key } from '../config/secrets.js'
import { bytesEqual, type ChainKey, ChainKeys, canonicalPrefix, emptyWireRow, type WireRow } from './chain.js'
import { type Head, TenantChecker } from './checker.js'
import { HmacLanes } from './hmac-lanes.js'

export interface TextChainResult {
  intact: boolean
  /** Why it gave up, when it did (the tests read it; the fallback says what is wrong to the user). */
  why: string | null
  rows: number
  tenants: number
}

/** A result that vouches for nothing, and why. */
export function notIntact(why: string, counted?: Pick<TextChainResult, 'rows' | 'tenants'>): TextChainResult {
  return { intact: false, why, rows: counted?.rows ?? 0, tenants: counted?.tenants ?? 0 }
}

/** Rows held back until their predecessor comes, across all tenants, before giving up. */
const MAX_WAITING_ROWS = 100_000
/** Tenants whose chains are checked at once (a few hundred bytes each), before giving up. */
const MAX_TENANTS = 500_000

const TAB = 0x09
const NEWLINE = 0x0a
const BACKSLASH = 0x5c

/** The columns it reads, in the order of the role constants below. */
const ROLES = [
  'tenant_id',
  'seq',
  'transaction_id',
  'action',
  'amount',
  'balance_after',
  'reserved_after',
  'key_id',
  'prev_hash',
  'hash',
  'created_at',
] as const
const [TENANT, SEQ, TRANSACTION, ACTION, AMOUNT, BALANCE, RESERVED, KEY, PREV, HASH, CREATED] = ROLES.map(
  (_, i) => i,
)

/** Where the reader is in the line (pos) and in the row's decoded bytes (out). */
interface Cursor {
  pos: number
  out: number
}

interface TenantState {
  checker: TenantChecker
  prefix: Buffer
  /** The next seq its chain needs. */
  next: number
  /** Rows that came before their predecessor, by seq. */
  waiting: Map<number, WireRow> | null
}

/** Thrown inside the reader to give up; caught at the line it came from. */
class GiveUp extends Error {}

export class TextChainChecker {
  private readonly tenants = new Map<string, TenantState>()
  private readonly chainKeys: ChainKeys
  private state: 'before' | 'rows' | 'after' = 'before'
  /** What each of the COPY's columns is (an index into ROLES), -1 for the others. */
  private roleOf: number[] = []
  private columnCount = 0
  private readonly cursor: Cursor = { pos: 0, out: 0 }
  private carry: Buffer | null = null
  private why: string | null = null
  private rows = 0
  private waitingRows = 0
  /** The row's decoded bytes (tenant, uuid, action, key id, prev_hash, hash): WireRow.src. */
  private scratch = Buffer.alloc(4096)
  private last: TenantState | null = null
  private lastTenant = Buffer.alloc(0)
  /** Rows are hashed four at a time where WebAssembly can (null: one by one). */
  private readonly lanes = HmacLanes.create()

  /**
   * @param keys the audit keys
   * @param table the COPY to read, as pg_restore names it: `credits.audit_logs`
   * @param heads each tenant's (seq, head) as the backup's manifest has it: every chain must end there
   */
  constructor(
    keys: ReadonlyMap<string, Key>,
    private readonly table: string,
    private readonly heads: Record<string, Head>,
  ) {
    this.chainKeys = new ChainKeys(keys)
  }

  /** The COPY statement, then its rows, in chunks of any size. */
  write(chunk: Buffer): void {
    if (this.why !== null || this.state === 'after') return
    let start = 0
    if (this.carry) {
      // Only the line the last chunk left open is put together, not the whole chunk with it.
      const nl = chunk.indexOf(NEWLINE)
      if (nl === -1) {
        this.carry = Buffer.concat([this.carry, chunk])
        return
      }
      const line = Buffer.concat([this.carry, chunk.subarray(0, nl)])
      this.carry = null
      if (this.take(line, 0, line.length)) return
      start = nl + 1
    }
    for (;;) {
      const nl = chunk.indexOf(NEWLINE, start)
      if (nl === -1) break
      if (this.take(chunk, start, nl)) return
      start = nl + 1
    }
    if (start < chunk.length) this.carry = Buffer.from(chunk.subarray(start))
  }

  /** One line; true when nothing more is to be read (the data ended, or it gave up). */
  private take(buf: Buffer, start: number, end: number): boolean {
    try {
      return this.line(buf, start, end)
    } catch (err) {
      if (!(err instanceof GiveUp)) throw err
      this.why = err.message
      return true
    }
  }

  /** True once it gave up: nothing it is given from then on changes the result. */
  get gaveUp(): boolean {
    return this.why !== null
  }

  end(): TextChainResult {
    const result = (why: string | null): TextChainResult => ({
      intact: why === null,
      why,
      rows: this.rows,
      tenants: this.tenants.size,
    })
    if (this.why !== null) return result(this.why)
    if (this.state !== 'after') return result(`no complete COPY of ${this.table} in the output`)
    for (const [tenant, s] of this.tenants) {
      if (s.waiting) return result(`${tenant}: rows after a gap at seq ${s.next}`)
      const head = Object.hasOwn(this.heads, tenant) ? this.heads[tenant] : undefined
      if (!head) return result(`${tenant}: rows, but no chain head in the manifest`)
      if (s.checker.finish({ seq: head.seq, head: Buffer.from(head.head, 'hex') }) !== null)
        return result(`${tenant}: the chain does not verify`)
    }
    for (const [tenant, head] of Object.entries(this.heads)) {
      if (head.seq > 0 && !this.tenants.has(tenant)) return result(`${tenant}: no rows for its chain`)
    }
    return result(null)
  }

  /** One line of the COPY; true at the end of the table's data. */
  private line(buf: Buffer, start: number, end: number): boolean {
    if (this.state === 'before') {
      const text = buf.toString('utf8', start, end)
      const prefix = `COPY ${this.table} (`
      if (!text.startsWith(prefix)) return false
      const names = text.slice(prefix.length, text.indexOf(')')).split(', ')
      this.columnCount = names.length
      this.roleOf = names.map((n) => ROLES.indexOf(n as (typeof ROLES)[number]))
      for (const [role, name] of ROLES.entries()) {
        if (!this.roleOf.includes(role)) throw new GiveUp(`no column ${name}`)
      }
      this.state = 'rows'
      return false
    }
    // The end of the data: `\.`
    if (end - start === 2 && buf[start] === BACKSLASH && buf[start + 1] === 0x2e) {
      this.state = 'after'
      return true
    }
    this.row(buf, start, end)
    return false
  }

  private row(buf: Buffer, start: number, end: number): void {
    // Room for every field's bytes, whatever they decode to.
    if (this.scratch.length < end - start) this.scratch = Buffer.alloc(2 * (end - start))
    const out = this.scratch
    const row = emptyWireRow(out)
    let tenant: TenantState | null = null
    // One pass over the line, field by field in the COPY's order, each decoded as it is read. A
    // tab inside a value is always escaped in COPY text, so a tab ends a field.
    const cursor = this.cursor
    cursor.pos = start
    cursor.out = 0
    for (let f = 0; f < this.columnCount; f++) {
      if (f > 0) {
        if (buf[cursor.pos] !== TAB) throw new GiveUp('a row with too few fields')
        cursor.pos++
      }
      const p = cursor.out
      switch (this.roleOf[f]) {
        case TENANT:
          copyText(buf, end, out, cursor)
          tenant = this.tenantFor(out, p, cursor.out - p)
          row.tenantPrefix = tenant.prefix
          break
        case SEQ:
          row.seq = readInt(buf, end, cursor)
          break
        case TRANSACTION:
          if (readUuid(buf, end, out, cursor)) row.transactionId = p
          break
        case ACTION:
          copyText(buf, end, out, cursor)
          row.actionOffset = p
          row.actionLength = cursor.out - p
          break
        case AMOUNT:
          row.amount = readInt(buf, end, cursor)
          break
        case BALANCE:
          row.balanceAfter = readInt(buf, end, cursor)
          break
        case RESERVED:
          row.reservedAfter = readInt(buf, end, cursor)
          break
        case KEY:
          copyText(buf, end, out, cursor)
          row.keyIdOffset = p
          row.keyIdLength = cursor.out - p
          break
        case PREV:
          readBytea(buf, end, out, cursor)
          row.prevHashOffset = p
          row.prevHashLength = cursor.out - p
          break
        case HASH:
          readBytea(buf, end, out, cursor)
          row.hashOffset = p
          row.hashLength = cursor.out - p
          break
        case CREATED:
          row.createdAtMs = readTimestamp(buf, end, cursor)
          break
        default:
          while (cursor.pos < end && buf[cursor.pos] !== TAB) cursor.pos++
      }
    }
    if (cursor.pos !== end) throw new GiveUp('a row with too many fields')
    this.rows++
    tenant = tenant!
    const key = this.chainKeys.for(out, row.keyIdOffset, row.keyIdLength)
    if (row.seq === tenant.next) {
      this.push(tenant, row, key)
      // Rows that were waiting for this one.
      while (tenant.waiting) {
        const next = tenant.waiting.get(tenant.next)
        if (!next) break
        tenant.waiting.delete(tenant.next)
        this.waitingRows--
        if (tenant.waiting.size === 0) tenant.waiting = null
        this.push(tenant, next, this.chainKeys.for(next.src, next.keyIdOffset, next.keyIdLength))
      }
    } else if (row.seq > tenant.next) {
      if (++this.waitingRows > MAX_WAITING_ROWS) throw new GiveUp('too many rows out of order')
      tenant.waiting ??= new Map()
      if (tenant.waiting.has(row.seq)) throw new GiveUp(`${tenant.checker.tenantId}: seq ${row.seq} twice`)
      tenant.waiting.set(row.seq, { ...row, src: Buffer.from(out.subarray(0, cursor.out)) })
    } else {
      throw new GiveUp(`${tenant.checker.tenantId}: seq ${row.seq} twice`)
    }
  }

  private push(tenant: TenantState, row: WireRow, key: ChainKey | undefined): void {
    tenant.checker.push(row, key)
    tenant.next++
    if (!tenant.checker.wantsRows) throw new GiveUp(`${tenant.checker.tenantId}: the chain does not verify`)
  }

  private tenantFor(b: Buffer, offset: number, length: number): TenantState {
    if (this.last !== null && bytesEqual(b, offset, length, this.lastTenant)) return this.last
    const id = b.toString('utf8', offset, offset + length)
    let state = this.tenants.get(id)
    if (!state) {
      if (this.tenants.size >= MAX_TENANTS) throw new GiveUp('too many tenants')
      state = {
        checker: new TenantChecker(id, undefined, this.lanes),
        prefix: canonicalPrefix(id),
        next: 1,
        waiting: null,
      }
      this.tenants.set(id, state)
    }
    this.last = state
    this.lastTenant = Buffer.from(b.subarray(offset, offset + length))
    return state
  }
}

/** A text value up to the next tab, its COPY escapes undone, as UTF-8 bytes into out. */
function copyText(b: Buffer, end: number, out: Buffer, c: Cursor): void {
  let i = c.pos
  let p = c.out
  if (b[i] === BACKSLASH && b[i + 1] === 0x4e && (i + 2 === end || b[i + 2] === TAB))
    throw new GiveUp('a null where the ledger writes text')
  for (; i < end; i++) {
    const ch = b[i]!
    if (ch === TAB) break
    if (ch !== BACKSLASH) {
      out[p++] = ch
      continue
    }
    const n = b[++i]
    // pg_dump writes only these escapes; octal and hex forms are for input.
    if (n === 0x62)
      out[p++] = 0x08 // \b
    else if (n === 0x66)
      out[p++] = 0x0c // \f
    else if (n === 0x6e)
      out[p++] = 0x0a // \n
    else if (n === 0x72)
      out[p++] = 0x0d // \r
    else if (n === 0x74)
      out[p++] = 0x09 // \t
    else if (n === 0x76)
      out[p++] = 0x0b // \v
    else if (n === BACKSLASH) out[p++] = BACKSLASH
    else throw new GiveUp('an escape pg_dump does not write')
  }
  c.pos = i
  c.out = p
}

/** An int8 up to the next tab, as Number(its text) reads it. */
function readInt(b: Buffer, end: number, c: Cursor): number {
  const s = c.pos
  let i = s
  const negative = b[i] === 0x2d
  if (negative) i++
  let n = 0
  for (; i < end; i++) {
    const d = b[i]! - 0x30
    if (d < 0 || d > 9) break
    n = n * 10 + d
  }
  c.pos = i
  if (i === s + (negative ? 1 : 0) || (i < end && b[i] !== TAB)) throw new GiveUp('a number it does not read')
  // Past 15 digits the sum above may round differently from Number(text).
  if (i - s > 15) return Number(b.toString('latin1', s, i))
  return negative ? -n : n
}

/** Hex digit values, -1 for anything else. */
const HEX_VALUE = new Int8Array(256).fill(-1)
for (let i = 0; i < 10; i++) HEX_VALUE[0x30 + i] = i
for (let i = 0; i < 6; i++) HEX_VALUE[0x61 + i] = HEX_VALUE[0x41 + i] = 10 + i

/** A uuid's 16 bytes from its 36 characters; false for \N (null). */
function readUuid(b: Buffer, end: number, out: Buffer, c: Cursor): boolean {
  const s = c.pos
  if (b[s] === BACKSLASH && b[s + 1] === 0x4e) {
    c.pos = s + 2
    return false
  }
  if (s + 36 > end || b[s + 8] !== 0x2d || b[s + 13] !== 0x2d || b[s + 18] !== 0x2d || b[s + 23] !== 0x2d)
    throw new GiveUp('a uuid it does not read')
  let p = c.out
  let bad = 0
  for (let i = s; i < s + 36; i += 2) {
    if (i === s + 8 || i === s + 13 || i === s + 18 || i === s + 23) i++
    const hi = HEX_VALUE[b[i]!]!
    const lo = HEX_VALUE[b[i + 1]!]!
    bad |= hi | lo
    out[p++] = (hi << 4) | lo
  }
  if (bad < 0) throw new GiveUp('a uuid it does not read')
  c.pos = s + 36
  c.out = p
  return true
}

/** A bytea in hex output (`\x...`, its backslash doubled by COPY), up to the next tab. */
function readBytea(b: Buffer, end: number, out: Buffer, c: Cursor): void {
  const s = c.pos
  if (b[s] !== BACKSLASH || b[s + 1] !== BACKSLASH || b[s + 2] !== 0x78)
    throw new GiveUp('a bytea not in hex')
  let p = c.out
  let i = s + 3
  let bad = 0
  for (; i + 1 < end; i += 2) {
    const hi = HEX_VALUE[b[i]!]!
    if (hi < 0) break
    const lo = HEX_VALUE[b[i + 1]!]!
    bad |= lo
    out[p++] = (hi << 4) | lo
  }
  if (bad < 0 || (i < end && b[i] !== TAB)) throw new GiveUp('a bytea it does not read')
  c.pos = i
  c.out = p
}

function digits(b: Buffer, s: number, n: number): number {
  let v = 0
  for (let i = s; i < s + n; i++) {
    const d = b[i]! - 0x30
    if (d < 0 || d > 9) throw new GiveUp('a timestamp it does not read')
    v = v * 10 + d
  }
  return v
}

/**
 * A timestamptz in ISO style (`2026-01-01 00:00:01.123456+00`, `+05:30`, `-03:30:15`) as the epoch
 * milliseconds of the Date pg would make of it: the microseconds truncated. Years outside
 * 1000-9999, BC and infinity are left to verify-chain.
 */
function readTimestamp(b: Buffer, end: number, c: Cursor): number {
  const s = c.pos
  let e = s
  while (e < end && b[e] !== TAB) e++
  c.pos = e
  if (
    e - s < 22 ||
    b[s + 4] !== 0x2d ||
    b[s + 7] !== 0x2d ||
    b[s + 10] !== 0x20 ||
    b[s + 13] !== 0x3a ||
    b[s + 16] !== 0x3a
  )
    throw new GiveUp('a timestamp it does not read')
  const year = digits(b, s, 4)
  if (year < 1000) throw new GiveUp('a timestamp it does not read')
  let i = s + 19
  let ms = 0
  if (b[i] === 0x2e) {
    // Up to six digits of fraction: the first three are the milliseconds.
    let n = 0
    i++
    while (i < e && b[i]! >= 0x30 && b[i]! <= 0x39) {
      if (n < 3) ms = ms * 10 + (b[i]! - 0x30)
      n++
      i++
    }
    for (; n < 3; n++) ms *= 10
  }
  const sign = b[i] === 0x2b ? 1 : b[i] === 0x2d ? -1 : 0
  if (sign === 0) throw new GiveUp('a timestamp it does not read')
  i++
  let offset = digits(b, i, 2) * 3600
  i += 2
  if (i < e && b[i] === 0x3a) {
    offset += digits(b, i + 1, 2) * 60
    i += 3
  }
  if (i < e && b[i] === 0x3a) {
    offset += digits(b, i + 1, 2)
    i += 3
  }
  if (i !== e) throw new GiveUp('a timestamp it does not read')
  const utc = Date.UTC(
    year,
    digits(b, s + 5, 2) - 1,
    digits(b, s + 8, 2),
    digits(b, s + 11, 2),
    digits(b, s + 14, 2),
    digits(b, s + 17, 2),
  )
  return utc - sign * offset * 1000 + ms
}
