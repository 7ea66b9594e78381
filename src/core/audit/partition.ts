/**
 * Verifying one partition of the tenants, a range of tenant_id in the database's own order:
 * stream its audit rows in (tenant, seq) order, never the whole table in memory, and check each
 * tenant's chain. A worker thread runs one of these on its own connection; the caller opens a
 * repeatable-read transaction around it, so that every query below sees the same snapshot.
 *
 * The range is read in chunks of tenants: first the chunk's accounts (their chain heads, at most
 * CHUNK_ACCOUNTS of them, held in a map), then its audit rows with COPY ... TO STDOUT in binary,
 * an index range scan on (tenant_id, seq) that needs no sort and no join. Binary COPY hands over
 * each row as raw bytes (ints, the uuid, the hashes, created_at as microseconds): less to format
 * on the server, and nothing to parse into strings, Dates or Buffers here.
 */
import type pg from 'pg'
import type { Key } from '../config/secrets.js'
import { IntegrityError, OperationError } from '../errors.js'
import { bytesEqual, canonicalPrefix, ChainKeys, emptyWireRow, type WireRow } from './chain.js'
import { type Broken, type Head, TenantChecker } from './checker.js'
import { HmacLanes } from './hmac-lanes.js'

export interface PartitionSpec {
  /** Tenants after this one, exclusive; none: from the first. */
  after?: string
  /** Tenants up to this one, inclusive; none: to the last. */
  upTo?: string
  /** Only this tenant. */
  tenant?: string
}

export interface PartitionResult {
  tenants: number
  rows: number
  broken: Broken[]
  /** Every intact tenant's verified head: what a checkpoint records. */
  heads: Record<string, Head>
}

/** Accounts per chunk: their heads are held in memory while the chunk's rows stream past. */
const CHUNK_ACCOUNTS = 10_000
/** Audit rows per chunk (by the accounts' chain_seq), so one COPY stays well inside a statement timeout. */
const CHUNK_ROWS = 200_000
const PROGRESS_EVERY = 16_384

/** Cast to the types whose binary layout PartitionReader reads, whatever the table says. */
const AUDIT_COLUMNS =
  'tenant_id::text, seq::int8, transaction_id::uuid, action::text, amount::int8, balance_after::int8, ' +
  'reserved_after::int8, key_id::text, prev_hash::bytea, hash::bytea, created_at::timestamptz'
const AUDIT_FIELDS = 11
/** Where each field of the row being read starts in its buffer, and its length (-1: null). */
const FIELD_AT = new Int32Array(AUDIT_FIELDS)
const FIELD_LENGTH = new Int32Array(AUDIT_FIELDS)

interface Account {
  seq: number
  head: Buffer | null
}

export async function verifyPartition(
  client: pg.ClientBase,
  spec: PartitionSpec,
  keys: ReadonlyMap<string, Key>,
  checkpoint: Record<string, Head> | null,
  onProgress?: (rows: number) => void,
): Promise<PartitionResult> {
  // Within the caller's transaction: no JIT for one long scan, and the (tenant_id, seq) index in
  // order rather than a sequential scan and a sort of the range.
  await client.query('set local jit = off; set local enable_seqscan = off; set local enable_bitmapscan = off')
  const reader = new PartitionReader(keys, checkpoint, onProgress)
  let after = spec.tenant === undefined ? spec.after : undefined
  for (;;) {
    const chunk = await accountsChunk(client, spec, after)
    reader.accounts = chunk.accounts
    const where = rangeFilter(client, spec.tenant, after, chunk.upTo)
    await copyOut(
      client,
      `copy (select ${AUDIT_COLUMNS} from credits.audit_logs ${where} order by tenant_id, seq) to stdout (format binary)`,
      (data) => reader.data(data),
    )
    reader.endChunk()
    if (chunk.last) break
    after = chunk.upTo
  }
  reader.flushProgress()
  return reader.result
}

/**
 * The next accounts of the range after `after`, and where their chunk ends: at the last of them
 * (or where their chain_seq adds up to CHUNK_ROWS), or at the end of the range when they are the
 * last. Tenants with rows but no account fall in whichever chunk covers their id.
 */
async function accountsChunk(
  client: pg.ClientBase,
  spec: PartitionSpec,
  after: string | undefined,
): Promise<{ accounts: Map<string, Account>; upTo: string | undefined; last: boolean }> {
  const params: unknown[] = []
  const where: string[] = []
  if (spec.tenant !== undefined) {
    params.push(spec.tenant)
    where.push(`tenant_id = $${params.length}`)
  } else {
    if (after !== undefined) {
      params.push(after)
      where.push(`tenant_id > $${params.length}`)
    }
    if (spec.upTo !== undefined) {
      params.push(spec.upTo)
      where.push(`tenant_id <= $${params.length}`)
    }
  }
  params.push(CHUNK_ACCOUNTS)
  const { rows } = await client.query<[string, string, Buffer | null]>({
    text: `select tenant_id, chain_seq, chain_head from credits.credit_accounts
            ${where.length ? `where ${where.join(' and ')}` : ''} order by tenant_id limit $${params.length}`,
    values: params,
    rowMode: 'array',
  })
  const accounts = new Map<string, Account>()
  let weight = 0
  for (const [tenant, seq, head] of rows) {
    accounts.set(tenant, { seq: Number(seq), head })
    weight += Math.max(Number(seq), 1)
    if (weight >= CHUNK_ROWS || accounts.size === CHUNK_ACCOUNTS) {
      // Cut here; the accounts after this one are read again by the next chunk.
      if (spec.tenant === undefined) return { accounts, upTo: tenant, last: false }
    }
  }
  return { accounts, upTo: spec.upTo, last: true }
}

/** A row no chain can hold: NOT NULL was dropped and a row written outside the ledger. */
export function rowWithoutTenant(): IntegrityError {
  return new IntegrityError(
    'credits.audit_logs holds a row without a tenant_id: it was altered outside the ledger.',
    { code: 'AUDIT_ROW_WITHOUT_TENANT' },
  )
}

/**
 * Ranges of tenant_id never match a null one (the unpartitioned read does): a partitioned run asks
 * for such rows on its own, an index lookup.
 */
export async function assertEveryRowHasTenant(client: pg.ClientBase | pg.Pool): Promise<void> {
  const { rows } = await client.query<{ found: boolean }>(
    'select exists (select 1 from credits.audit_logs where tenant_id is null) as found',
  )
  if (rows[0]!.found) throw rowWithoutTenant()
}

function rangeFilter(
  client: pg.ClientBase,
  tenant: string | undefined,
  after: string | undefined,
  upTo: string | undefined,
): string {
  // COPY takes no parameters: literals, quoted by pg.
  if (tenant !== undefined) return `where tenant_id = ${client.escapeLiteral(tenant)}`
  const where: string[] = []
  if (after !== undefined) where.push(`tenant_id > ${client.escapeLiteral(after)}`)
  if (upTo !== undefined) where.push(`tenant_id <= ${client.escapeLiteral(upTo)}`)
  return where.length ? `where ${where.join(' and ')}` : ''
}

/**
 * Checks the rows of one partition as binary COPY delivers them, tenant after tenant. Bytes are
 * only read where they lie: a tenant's id is decoded once, a key id when it changes.
 */
class PartitionReader {
  readonly result: PartitionResult = { tenants: 0, rows: 0, broken: [], heads: {} }
  accounts = new Map<string, Account>()

  private header = true
  /** The start of a row that the previous COPY message did not finish (copied). */
  private carry: Buffer | null = null
  private checker: TenantChecker | null = null
  private tenantBytes: Buffer = Buffer.alloc(0)
  private readonly chainKeys: ChainKeys
  private unreported = 0
  private readonly row: WireRow = emptyWireRow()
  /** Rows are hashed four at a time where WebAssembly can (null: one by one). */
  private readonly lanes = HmacLanes.create()

  constructor(
    keys: ReadonlyMap<string, Key>,
    private readonly checkpoint: Record<string, Head> | null,
    private readonly onProgress: ((rows: number) => void) | undefined,
  ) {
    this.chainKeys = new ChainKeys(keys)
  }

  /** One CopyData message: usually exactly one row (the first also carries the file header). */
  data(chunk: Buffer): void {
    let buf = chunk
    if (this.carry) {
      buf = Buffer.concat([this.carry, chunk])
      this.carry = null
    }
    const end = buf.length
    let pos = 0
    if (this.header) {
      // PGCOPY\n\377\r\n\0, flags (int32), header extension length (int32), extension.
      if (end < 19 || (end >= 19 && end < 19 + readInt32(buf, 15))) {
        this.carry = Buffer.from(buf)
        return
      }
      if (buf.toString('latin1', 0, 11) !== 'PGCOPY\n\xff\r\n\0') {
        throw new OperationError('The server sent COPY data that is not in the binary format.')
      }
      pos = 19 + readInt32(buf, 15)
      this.header = false
    }
    while (pos + 2 <= end) {
      const fields = (buf[pos]! << 8) | buf[pos + 1]!
      if (fields === 0xffff) {
        pos += 2 // the trailer
        continue
      }
      if (fields !== AUDIT_FIELDS) {
        throw new OperationError(`The server sent audit rows of ${fields} fields, not ${AUDIT_FIELDS}.`)
      }
      // Each field: an int32 length (-1: null) and that many bytes. A row split across messages
      // waits for the rest.
      let p = pos + 2
      let whole = true
      for (let i = 0; i < AUDIT_FIELDS; i++) {
        if (p + 4 > end) {
          whole = false
          break
        }
        const len = readInt32(buf, p)
        FIELD_AT[i] = p + 4
        FIELD_LENGTH[i] = len
        p += 4 + (len > 0 ? len : 0)
      }
      if (!whole || p > end) break
      this.readRow(buf)
      pos = p
    }
    // The parser may reuse the buffer behind `chunk`: keep a copy.
    if (pos < end) this.carry = Buffer.from(buf.subarray(pos, end))
  }

  /** After the chunk's rows: the last tenant, then the chunk's accounts that had no rows at all. */
  endChunk(): void {
    if (this.carry) throw new OperationError('The COPY of audit rows ended in the middle of a row.')
    this.header = true
    this.finishTenant()
    for (const [tenant, account] of this.accounts) {
      // Accounts whose chain has rows on record but none left in the table: cut off entirely.
      if (account.seq > 0) {
        this.result.tenants++
        this.result.broken.push({ tenant_id: tenant, seq: 1, reason: 'truncated' })
      }
    }
    this.accounts = new Map()
  }

  flushProgress(): void {
    if (this.unreported > 0) this.onProgress?.(this.unreported)
    this.unreported = 0
  }

  /** The row whose fields FIELD_AT / FIELD_LENGTH locate in buf. */
  private readRow(buf: Buffer): void {
    const at = FIELD_AT
    const length = FIELD_LENGTH
    const tenantAt = at[0]!
    const tenantLength = length[0]!
    if (tenantLength < 0) throw rowWithoutTenant()
    if (this.checker === null || !bytesEqual(buf, tenantAt, tenantLength, this.tenantBytes)) {
      this.startTenant(
        buf.toString('utf8', tenantAt, tenantAt + tenantLength),
        Buffer.from(buf.subarray(tenantAt, tenantAt + tenantLength)),
      )
    }
    this.result.rows++
    if (++this.unreported === PROGRESS_EVERY) this.flushProgress()
    const checker = this.checker!
    if (!checker.wantsRows) {
      checker.rows++
      return
    }

    // Nulls in the NOT NULL numbers read as 0, as Number(null) did before.
    const row = this.row
    row.src = buf
    row.seq = length[1]! < 0 ? 0 : readInt64(buf, at[1]!)
    row.transactionId = length[2]! < 0 ? -1 : at[2]!
    row.actionOffset = at[3]!
    row.actionLength = length[3]!
    row.amount = length[4]! < 0 ? 0 : readInt64(buf, at[4]!)
    row.balanceAfter = length[5]! < 0 ? 0 : readInt64(buf, at[5]!)
    row.reservedAfter = length[6]! < 0 ? 0 : readInt64(buf, at[6]!)
    row.keyIdOffset = at[7]!
    row.keyIdLength = length[7]!
    row.prevHashOffset = at[8]!
    row.prevHashLength = length[8]!
    row.hashOffset = at[9]!
    row.hashLength = length[9]!
    row.createdAtMs = length[10]! < 0 ? Number.NaN : epochMillis(buf, at[10]!)
    checker.push(row, this.chainKeys.for(buf, at[7]!, length[7]!))
  }

  private startTenant(tenantId: string, bytes: Buffer): void {
    this.finishTenant()
    this.tenantBytes = bytes
    const promised =
      this.checkpoint && Object.hasOwn(this.checkpoint, tenantId) ? this.checkpoint[tenantId] : undefined
    this.checker = new TenantChecker(tenantId, promised, this.lanes)
    this.row.tenantPrefix = canonicalPrefix(tenantId)
  }

  private finishTenant(): void {
    const checker = this.checker
    if (!checker) return
    this.checker = null
    const account = this.accounts.get(checker.tenantId) ?? null
    this.accounts.delete(checker.tenantId)
    const broken = checker.finish(account)
    this.result.tenants++
    if (broken) this.result.broken.push(broken)
    else this.result.heads[checker.tenantId] = checker.head
  }
}

function readInt32(b: Buffer, o: number): number {
  return (b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!
}

/** An int8 as Number(its text) would read it: the nearest double. */
function readInt64(b: Buffer, o: number): number {
  return readInt32(b, o) * 4294967296 + (readInt32(b, o + 4) >>> 0)
}

const EPOCH_2000_MS = 946684800000

/**
 * A timestamptz (microseconds since 2000-01-01 UTC) as the epoch milliseconds of the Date pg would
 * have made of it: the microseconds truncated (pg's parser drops digits past the third).
 */
function epochMillis(b: Buffer, o: number): number {
  const hi = readInt32(b, o)
  if (hi > -0x200000 && hi < 0x200000) {
    // |µs| < 2^53: exact in a double.
    const us = hi * 4294967296 + (readInt32(b, o + 4) >>> 0)
    const r = us % 1000
    return (us - r) / 1000 - (r < 0 ? 1 : 0) + EPOCH_2000_MS
  }
  // Beyond about 1715 and 2285: far outside what the ledger writes, exact anyway.
  const us = b.readBigInt64BE(o)
  const ms = us / 1000n - (us % 1000n < 0n ? 1n : 0n)
  return Number(ms) + EPOCH_2000_MS
}

/**
 * COPY ... TO STDOUT on a pg client, each CopyData message handed to `onData` as it arrives (the
 * socket is the back-pressure: nothing piles up). pg has no COPY support of its own; this is the
 * Submittable interface pg-copy-streams also builds on, reduced to what a read needs.
 */
function copyOut(client: pg.ClientBase, text: string, onData: (chunk: Buffer) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let failure: Error | null = null
    let settled = false
    const settle = (err: Error | null) => {
      if (settled) return
      settled = true
      // pg's own timer (query_timeout) waits for this, as for any query.
      submittable.callback?.(err)
      if (err) reject(err)
      else resolve()
    }
    const submittable = {
      callback: undefined as ((err: Error | null) => void) | undefined,
      submit(connection: pg.Connection) {
        connection.query(text)
      },
      handleCopyData(msg: { chunk: Buffer }) {
        if (failure) return
        try {
          onData(msg.chunk)
        } catch (err) {
          // Not thrown into pg's socket handler: the rest of the COPY is read and dropped.
          failure = err as Error
        }
      },
      handleError(err: Error) {
        // The server's error: pg has already let go of this query.
        settle(err)
      },
      handleReadyForQuery() {
        settle(failure)
      },
      handleCopyInResponse(connection: pg.Connection & { sendCopyFail(msg: string): void }) {
        connection.sendCopyFail('verify-chain reads, it does not write')
      },
      handleRowDescription() {},
      handleDataRow() {},
      handleCommandComplete() {},
      handleEmptyQuery() {},
      handlePortalSuspended() {},
    }
    client.query(submittable)
  })
}
