/**
 * verify-chain hashes rows four at a time in WebAssembly (hmac-lanes). A checker with lanes must
 * reach exactly the verdict of one without: the same first break, the same reason, the same head,
 * whatever mix of tenants, tampering and odd rows passes through the lanes together.
 */
import { createHmac, randomBytes } from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  type AuditRow,
  canonicalPrefix,
  ChainKey,
  chainHash,
  emptyWireRow,
  GENESIS,
  type WireRow,
} from '../src/core/audit/chain.js'
import { type Broken, type Head, TenantChecker } from '../src/core/audit/checker.js'
import { HmacLanes } from '../src/core/audit/hmac-lanes.js'
import type { Key } from '../src/core/config/secrets.js'

const KEY: Key = { kid: 'k1', bytes: randomBytes(32) }
/** A held key whose id is too long for a lane's message: its rows take the one-by-one path. */
const LONG_KEY: Key = { kid: `long-${'é'.repeat(200)}`, bytes: randomBytes(32) }
const HELD = new Map([KEY, LONG_KEY].map((k) => [k.kid, new ChainKey(k)]))

/** One stored audit row: its fields, prev_hash and hash, as a reader hands it to a checker. */
interface Stored {
  row: AuditRow
  prev: Buffer | null
  hash: Buffer | null
}

function chain(tenant: string, length: number, keyFor: (seq: number) => Key): Stored[] {
  const rows: Stored[] = []
  let prev: Buffer = GENESIS
  for (let seq = 1; seq <= length; seq++) {
    const key = keyFor(seq)
    const row: AuditRow = {
      tenant_id: tenant,
      seq,
      transaction_id: seq % 5 === 0 ? null : '01a20410-230d-7a33-88f9-17ceb74ff4f7',
      action: ['topup', 'consume', 'reserve', 'commit', 'cancel'][seq % 5]!,
      amount: seq * 37,
      // Balances of every width move the message across block boundaries.
      balance_after: 10 ** (seq % 15),
      reserved_after: seq % 3,
      key_id: key.kid,
      created_at: new Date(Date.UTC(2026, 10, 22, 16, 30, 0, seq)),
    }
    const hash = chainHash(key, row, prev)
    rows.push({ row, prev, hash })
    prev = hash
  }
  return rows
}

/** The WireRow a reader would build for the stored row (its bytes in a fresh buffer). */
function wire(s: Stored, prefix: Buffer): WireRow {
  const tx = s.row.transaction_id === null ? null : Buffer.from(s.row.transaction_id.replace(/-/g, ''), 'hex')
  const action = Buffer.from(s.row.action)
  const kid = Buffer.from(s.row.key_id ?? '')
  const parts = [tx ?? Buffer.alloc(0), action, kid, s.prev ?? Buffer.alloc(0), s.hash ?? Buffer.alloc(0)]
  const w = emptyWireRow(Buffer.concat(parts))
  let at = 0
  const next = (b: Buffer) => {
    const offset = at
    at += b.length
    return offset
  }
  w.tenantPrefix = prefix
  w.seq = s.row.seq
  w.transactionId = tx ? next(tx) : -1
  w.actionOffset = next(action)
  w.actionLength = action.length
  w.amount = s.row.amount
  w.balanceAfter = s.row.balance_after
  w.reservedAfter = s.row.reserved_after
  w.keyIdOffset = next(kid)
  w.keyIdLength = s.row.key_id === null ? -1 : kid.length
  w.prevHashOffset = next(s.prev ?? Buffer.alloc(0))
  w.prevHashLength = s.prev ? s.prev.length : -1
  w.hashOffset = next(s.hash ?? Buffer.alloc(0))
  w.hashLength = s.hash ? s.hash.length : -1
  w.createdAtMs = s.row.created_at.getTime()
  return w
}

type Tamper =
  | {
      kind: 'edit' | 'delete' | 'swap' | 'move' | 'forge' | 'unknown-key' | 'short-hash' | 'null-prev'
      at: number
    }
  | { kind: 'none' }

function tamper(rows: Stored[], t: Tamper): Stored[] {
  if (t.kind === 'none' || rows.length === 0) return rows
  const out = rows.map((r) => ({ ...r, row: { ...r.row } }))
  const i = t.at % out.length
  const r = out[i]!
  switch (t.kind) {
    case 'edit':
      r.row.amount += 1
      break
    case 'delete':
      out.splice(i, 1)
      break
    case 'swap':
      // Two neighbours exchange everything but their seq, as an UPDATE of the table would.
      if (i + 1 < out.length) {
        const a = out[i]!
        const b = out[i + 1]!
        out[i] = { ...b, row: { ...b.row, seq: a.row.seq } }
        out[i + 1] = { ...a, row: { ...a.row, seq: b.row.seq } }
      }
      break
    case 'move':
      // Out of seq order, as a reader never delivers them but a checker must still judge.
      if (i + 1 < out.length) [out[i], out[i + 1]] = [out[i + 1]!, out[i]!]
      break
    case 'forge':
      r.hash = randomBytes(32)
      break
    case 'unknown-key':
      r.row.key_id = 'nobody'
      break
    case 'short-hash':
      r.hash = r.hash!.subarray(0, 31)
      break
    case 'null-prev':
      r.prev = null
      break
  }
  return out
}

interface Verdict {
  broken: Broken | null
  head: Head
  rows: number
}

/**
 * Every tenant's rows through checkers sharing one set of lanes (or none), interleaved in the
 * given order as a COPY of the whole table would deliver them, then finished against the heads.
 */
function verdicts(
  tenants: Array<{ id: string; rows: Stored[]; head: { seq: number; head: Buffer } }>,
  order: number[],
  lanes: HmacLanes | null,
): Verdict[] {
  const checkers = tenants.map((t) => new TenantChecker(t.id, undefined, lanes))
  const prefixes = tenants.map((t) => canonicalPrefix(t.id))
  const next = tenants.map(() => 0)
  for (const t of order) {
    const rows = tenants[t]!.rows
    if (next[t]! >= rows.length) continue
    const s = rows[next[t]!++]!
    const checker = checkers[t]!
    if (!checker.wantsRows) checker.rows++
    else checker.push(wire(s, prefixes[t]!), HELD.get(s.row.key_id ?? ''))
  }
  // Rows the order did not reach, in turn.
  tenants.forEach((t, i) => {
    for (; next[i]! < t.rows.length; next[i]!++) {
      const s = t.rows[next[i]!]!
      checkers[i]!.push(wire(s, prefixes[i]!), HELD.get(s.row.key_id ?? ''))
    }
  })
  return checkers.map((c, i) => {
    const broken = c.finish(tenants[i]!.head)
    return { broken, head: c.head, rows: c.rows }
  })
}

const lanes = HmacLanes.create()

describe('HMAC lanes', () => {
  it('load from the build and pass their self-test (otherwise verify-chain silently runs a third as fast)', () => {
    expect(lanes).not.toBeNull()
  })

  it('an intact chain of three interleaved tenants verifies, with the same heads as without lanes', () => {
    const tenants = ['a', 'tenant-with-a-much-longer-name-'.repeat(3), 'c'].map((id, i) => {
      const rows = chain(id, 50 + i * 7, (seq) => (seq % 11 === 0 ? LONG_KEY : KEY))
      return { id, rows, head: { seq: rows.length, head: rows.at(-1)!.hash! } }
    })
    const order = Array.from({ length: 400 }, (_, i) => (i * 7) % 3)
    const withLanes = verdicts(tenants, order, lanes)
    expect(withLanes.map((v) => v.broken)).toEqual([null, null, null])
    expect(withLanes.map((v) => v.head)).toEqual(
      tenants.map((t) => ({ seq: t.rows.length, head: t.head.head.toString('hex') })),
    )
    expect(withLanes).toEqual(verdicts(tenants, order, null))
  })

  it('every kind of tampering gives the same first break and reason with lanes as without', () => {
    const tamperArb: fc.Arbitrary<Tamper> = fc.oneof(
      fc.constant({ kind: 'none' as const }),
      fc.record({
        kind: fc.constantFrom(
          'edit' as const,
          'delete' as const,
          'swap' as const,
          'move' as const,
          'forge' as const,
          'unknown-key' as const,
          'short-hash' as const,
          'null-prev' as const,
        ),
        at: fc.nat(40),
      }),
    )
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            length: fc.integer({ min: 0, max: 14 }),
            tampers: fc.array(tamperArb, { maxLength: 2 }),
          }),
          { minLength: 1, maxLength: 4 },
        ),
        fc.array(fc.nat(3), { maxLength: 60 }),
        fc.boolean(),
        (specs, order, longKeys) => {
          const tenants = specs.map((spec, i) => {
            const id = `t${i}${'x'.repeat(i * 9)}`
            const intact = chain(id, spec.length, (seq) => (longKeys && seq % 4 === 2 ? LONG_KEY : KEY))
            const rows = spec.tampers.reduce(tamper, intact)
            const last = intact.at(-1)
            return { id, rows, head: { seq: intact.length, head: last ? last.hash! : GENESIS } }
          })
          const picks = order.map((o) => o % tenants.length)
          expect(verdicts(tenants, picks, lanes)).toEqual(verdicts(tenants, picks, null))
        },
      ),
      { numRuns: 300 },
    )
  })

  it('name the tampered row as the one-by-one checker does', () => {
    const rows = chain('acme', 9, () => KEY)
    const head = { seq: 9, head: rows[8]!.hash! }
    const cases: Array<[Tamper, Broken]> = [
      [
        { kind: 'edit', at: 4 },
        { tenant_id: 'acme', seq: 5, reason: 'hash_mismatch' },
      ],
      [
        { kind: 'delete', at: 4 },
        { tenant_id: 'acme', seq: 5, reason: 'missing_row' },
      ],
      [
        { kind: 'swap', at: 4 },
        { tenant_id: 'acme', seq: 5, reason: 'reordered' },
      ],
      [
        { kind: 'forge', at: 6 },
        { tenant_id: 'acme', seq: 7, reason: 'hash_mismatch' },
      ],
      [
        { kind: 'unknown-key', at: 2 },
        { tenant_id: 'acme', seq: 3, reason: 'unknown_key' },
      ],
    ]
    for (const [t, expected] of cases) {
      const [v] = verdicts([{ id: 'acme', rows: tamper(rows, t), head }], [], lanes)
      expect(v!.broken).toEqual(expected)
    }
  })
})

describe('HMAC lanes with several keys', () => {
  const keys: Key[] = [32, 48, 100].map((n, i) => ({ kid: `k${i}`, bytes: randomBytes(n) }))
  const held = new Map(keys.map((k) => [k.kid, new ChainKey(k)]))
  /** Three tenants whose rows rotate through three keys, pushed in turn through one set of lanes. */
  function verifyMixed(l: HmacLanes | null): Array<Broken | null> {
    const tenants = ['a', 'b', 'c'].map((id, i) => ({
      id,
      rows: chain(id, 40, (seq) => keys[(seq + i) % 3]!),
    }))
    const checkers = tenants.map((t) => new TenantChecker(t.id, undefined, l))
    for (let seq = 0; seq < 40; seq++) {
      tenants.forEach((t, i) => {
        const s = t.rows[seq]!
        checkers[i]!.push(wire(s, canonicalPrefix(t.id)), held.get(s.row.key_id!))
      })
    }
    return checkers.map((c, i) => c.finish({ seq: 40, head: tenants[i]!.rows[39]!.hash! }))
  }

  it('hash each lane with its own key: rows of three keys side by side all verify', () => {
    expect(verifyMixed(HmacLanes.create())).toEqual([null, null, null])
  })

  it("report a break only on createHmac's word: lanes that claim every row is wrong change nothing", () => {
    const l = HmacLanes.create()!
    // As if the WebAssembly hashed wrongly: every lane a mismatch.
    ;(l as unknown as { hmac: () => number }).hmac = () => 0
    expect(verifyMixed(l)).toEqual([null, null, null])
  })
})

describe('HMAC lanes, driven directly', () => {
  it('hash four messages of uneven lengths and tell each right hash from a wrong one', () => {
    const key = new ChainKey(KEY)
    const settled: Array<[number, boolean]> = []
    const owner = { settle: (row: WireRow, signed: boolean) => settled.push([row.seq, signed]) }
    const stored = chain('lane-test', 7, () => KEY)
    stored[3]!.hash = createHmac('sha256', randomBytes(32)).update('other').digest()
    const prefix = canonicalPrefix('lane-test')
    for (const s of stored) expect(lanes!.add(owner, wire(s, prefix), key)).toBe(true)
    // Four went at the fourth row; three wait for a flush.
    expect(settled).toHaveLength(4)
    lanes!.flush()
    expect(settled).toEqual([
      [1, true],
      [2, true],
      [3, true],
      [4, false],
      [5, true],
      [6, true],
      [7, true],
    ])
  })

  it('refuse what they cannot hash, and the caller checks it itself', () => {
    const key = new ChainKey(KEY)
    const owner = { settle: () => expect.unreachable('nothing was taken') }
    const [s] = chain('acme', 1, () => KEY)
    const prefix = canonicalPrefix('acme')
    expect(lanes!.add(owner, wire({ ...s!, hash: s!.hash!.subarray(0, 31) }, prefix), key)).toBe(false)
    expect(lanes!.add(owner, wire({ ...s!, prev: null }, prefix), key)).toBe(false)
    expect(lanes!.add(owner, wire({ ...s!, row: { ...s!.row, key_id: LONG_KEY.kid } }, prefix), key)).toBe(
      false,
    )
    lanes!.flush()
  })
})
