/**
 * The bank test: many workers hammer the ledger (topup, consume, reserve, commit whole and
 * partial, cancel) across a few tenants while a killer terminates their backends every 50-150 ms
 * and an observer watches for a negative balance. A worker whose operation fails with a lost
 * connection (or another "did it happen?" error) re-sends the same request with the same
 * idempotency key until it gets an answer. Afterwards, every acknowledged operation must have been
 * applied exactly once, the balances must be what the acknowledgements add up to, and every
 * tenant's audit chain must be complete and verify.
 *
 * Killing backends alone almost never loses the answer to a COMMIT that happened (the server
 * flushes it before it acts on the signal), so the workers connect through a small TCP proxy that
 * now and then drops the server's reply to a COMMIT and cuts the connection: the change is
 * committed, the client only sees a dead connection. That is the case idempotency keys exist for.
 *
 * The operation mix, amounts and killer timing come from a seeded PRNG: the seed is in the test
 * name, and BANK_SEED=<seed> replays the same choices (the interleaving is up to the scheduler).
 */
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import path from 'node:path'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { verifyChain } from '../src/core/audit/verify.js'
import { type Keyring, parseKeyring } from '../src/core/config/secrets.js'
import { isConnectionError, isSerializationError } from '../src/core/db/pg-errors.js'
import { type Database, openServer } from '../src/core/db/pool.js'
import { applyOperation, type LedgerRequest, type LedgerResult } from '../src/core/ledger/operations.js'
import { migrateUp } from '../src/core/migrations/runner.js'
import { ROOT } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'

const SEED = process.env.BANK_SEED ? Number(process.env.BANK_SEED) >>> 0 : randomBytes(4).readUInt32LE(0)
const WORKERS = 12
const OPS_PER_WORKER = 150
const TENANTS = Array.from({ length: 8 }, (_, i) => `bank-t${i}`)
const INITIAL_TOPUP = 300
/** Answers that are final: the ledger refused, nothing changed, re-sending is not expected. */
const REFUSALS = new Set(['INSUFFICIENT_CREDITS', 'RESERVATION_NOT_HELD', 'RESERVATION_EXPIRED'])
/** A worker gives up on one request after this many sends (it then fails the test). */
const MAX_SENDS = 40

/** mulberry32: a tiny seeded PRNG (a dependency for ten lines is not worth it). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
const between = (rng: () => number, lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1))
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const codeOf = (err: unknown) => (err as { code?: string } | null)?.code ?? ''

/** The outcome is unknown (or the attempt surely did nothing): re-send the same request and key. */
function isUncertain(err: unknown): boolean {
  const code = codeOf(err)
  return (
    isConnectionError(err) ||
    isSerializationError(err) ||
    code === 'COMMIT_OUTCOME_UNKNOWN' ||
    code === 'TIMEOUT' ||
    code === 'DB_UNREACHABLE'
  )
}

interface Ack {
  worker: number
  key: string
  req: LedgerRequest
  /** Connections checked out of the worker's pool for this request: > 1 means it was retried. */
  attempts: number
  /** Times the worker itself re-sent it after applyOperation gave up with an uncertain error. */
  resends: number
  result?: LedgerResult
  refusal?: string
}

interface HeldReservation {
  id: string
  tenant: string
  amount: number
}

/** The server's CommandComplete for COMMIT: 'C', int32 length 11, "COMMIT\0". */
const COMMIT_COMPLETE = Buffer.from('C\0\0\0\x0bCOMMIT\0', 'latin1')
/** A write in one round trip (a statement that is its own transaction): its reply holds no COMMIT. */
const ONE_ROUND_TRIP_WRITE = Buffer.from('execute shx_ledger_write1u_', 'latin1')

interface LossyProxy {
  url: string
  /** Replies to a COMMIT or to a one-round-trip write dropped, connections cut. */
  drops: number
  /** Of those, replies to a one-round-trip write. */
  oneRoundTripDrops: number
  close(): Promise<void>
}

/**
 * A TCP proxy in front of PostgreSQL that forwards everything, except that it drops a reply
 * holding a COMMIT's CommandComplete (with probability `rate`) and cuts both sides.
 */
async function lossyProxy(target: string, rng: () => number, rate: number): Promise<LossyProxy> {
  const upstream = new URL(target)
  const sockets = new Set<net.Socket>()
  const track = (s: net.Socket) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => {})
  }
  const state = { drops: 0, oneRoundTripDrops: 0 }
  const server = net.createServer((client) => {
    track(client)
    const up = net.connect({ host: upstream.hostname, port: Number(upstream.port || 5432) })
    track(up)
    // The next reply answers a one-round-trip write: it commits with no COMMIT statement.
    let writeInFlight = false
    client.on('data', (chunk: Buffer) => {
      if (chunk.includes(ONE_ROUND_TRIP_WRITE)) writeInFlight = true
      up.write(chunk)
    })
    up.on('data', (chunk: Buffer) => {
      const oneRoundTrip = writeInFlight
      writeInFlight = false
      if ((oneRoundTrip || chunk.includes(COMMIT_COMPLETE)) && rng() < rate) {
        state.drops++
        if (oneRoundTrip) state.oneRoundTripDrops++
        up.destroy()
        client.destroy()
        return
      }
      client.write(chunk)
    })
    up.on('close', () => client.destroy())
    client.on('close', () => up.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = new URL(target)
  url.hostname = '127.0.0.1'
  url.port = String((server.address() as net.AddressInfo).port)
  return {
    url: url.toString(),
    get drops() {
      return state.drops
    },
    get oneRoundTripDrops() {
      return state.oneRoundTripDrops
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}

let db: TestDatabase
let proxy: LossyProxy | undefined
const opened: Database[] = []
const clients: pg.Client[] = []
let keyring: Keyring

async function open(max: number, url = db.url): Promise<Database> {
  const d = await openServer(url, 'bank test', { timeoutMs: 15_000, env: {}, max })
  opened.push(d)
  return d
}

/** A connection of the test's own, with an application_name the killer leaves alone. */
async function sideClient(name: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: db.url, application_name: name })
  c.on('error', () => {})
  clients.push(c)
  await c.connect()
  return c
}

beforeAll(async () => {
  db = await createTestDatabase('bank')
  const admin = await open(2)
  await migrateUp([{ schema: 'credits', db: admin }], {
    migrationsDir: path.join(ROOT, 'migrations'),
    timeoutMs: 30_000,
  })
  keyring = parseKeyring(
    'k1:' + randomBytes(32).toString('base64'),
    { envName: 'AUDIT_HMAC_KEY', bytes: { min: 32 } },
    'bank test',
  )
})

afterAll(async () => {
  await Promise.allSettled(opened.map((d) => d.close()))
  await Promise.allSettled(clients.map((c) => c.end()))
  await proxy?.close()
  await db?.drop()
})

describe('the bank test', () => {
  it(`keeps every acknowledged operation exactly once under killed connections (BANK_SEED=${SEED})`, async () => {
    const started = performance.now()
    const keys = { audit: keyring }
    const acks: Ack[] = []
    const unexpected: string[] = []
    const replayMismatches: string[] = []
    let deliberateReplays = 0
    /** Reservations acknowledged and not (yet known to be) settled: what commit/cancel pick from. */
    const unsettled: HeldReservation[] = []
    const reservations = new Map<string, HeldReservation & { settledBy?: string }>()

    proxy = await lossyProxy(db.url, mulberry32(SEED ^ 0x51ed270b), 0.03)
    const lossy = proxy.url
    const pools = await Promise.all(Array.from({ length: WORKERS }, (_, w) => open(1 + (w % 2), lossy)))

    /** Send one request until it has an answer: a result or a final refusal. */
    async function send(
      d: Database,
      acquired: { n: number },
      req: LedgerRequest,
      key: string,
    ): Promise<Omit<Ack, 'worker' | 'key' | 'req'>> {
      const before = acquired.n
      for (let sends = 1; ; sends++) {
        try {
          const result = await applyOperation(d.pool, req, key, keys, { timeoutMs: d.timeoutMs })
          return { result, attempts: acquired.n - before, resends: sends - 1 }
        } catch (err) {
          if (REFUSALS.has(codeOf(err))) {
            return { refusal: codeOf(err), attempts: acquired.n - before, resends: sends - 1 }
          }
          if (isUncertain(err) && sends < MAX_SENDS) {
            await sleep(5 + (sends % 4) * 5)
            continue
          }
          throw Object.assign(err as Error, { bankKey: key, bankSends: sends })
        }
      }
    }

    // Every tenant starts with credits, before the killer starts: acknowledged operations too.
    const setup = await open(1)
    const setupAcquired = { n: 0 }
    setup.pool.on('acquire', () => setupAcquired.n++)
    for (const t of TENANTS) {
      const req: LedgerRequest = { kind: 'topup', tenantId: t, amount: INITIAL_TOPUP }
      const key = `bank:${SEED}:init:${t}`
      acks.push({ worker: -1, key, req, ...(await send(setup, setupAcquired, req, key)) })
    }

    let stop = false
    let kills = 0
    let killRounds = 0
    const killer = (async () => {
      const rng = mulberry32(SEED ^ 0x9e3779b9)
      const c = await sideClient('bank-killer')
      while (!stop) {
        await sleep(between(rng, 50, 150))
        if (stop) break
        const { rows } = await c.query<{ n: string }>(
          `select count(*) filter (where pg_terminate_backend(pid)) as n from pg_stat_activity
            where datname = current_database() and application_name = 'shieldx' and pid <> pg_backend_pid()`,
        )
        kills += Number(rows[0]!.n)
        killRounds++
      }
    })()

    let minBalance = Infinity
    let minAvailable = Infinity
    let samples = 0
    const observer = (async () => {
      const c = await sideClient('bank-observer')
      while (!stop) {
        const { rows } = await c.query<{ b: string | null; a: string | null }>(
          'select min(balance) as b, min(balance - reserved) as a from credits.credit_accounts',
        )
        if (rows[0]!.b !== null) minBalance = Math.min(minBalance, Number(rows[0]!.b))
        if (rows[0]!.a !== null) minAvailable = Math.min(minAvailable, Number(rows[0]!.a))
        samples++
        await sleep(3)
      }
    })()

    async function worker(w: number): Promise<void> {
      const rng = mulberry32((SEED + Math.imul(w + 1, 0x85ebca6b)) >>> 0)
      const d = pools[w]!
      const acquired = { n: 0 }
      d.pool.on('acquire', () => acquired.n++)
      const mine: Ack[] = []
      for (let i = 0; i < OPS_PER_WORKER; i++) {
        // Now and then, re-send an operation this worker already has an answer for: it must replay.
        const done = mine.filter((a) => a.result)
        if (done.length > 0 && rng() < 0.05) {
          const prev = done[between(rng, 0, done.length - 1)]!
          deliberateReplays++
          let again: Omit<Ack, 'worker' | 'key' | 'req'>
          try {
            again = await send(d, acquired, prev.req, prev.key)
          } catch (err) {
            replayMismatches.push(`${prev.key}: re-sent, got ${codeOf(err)} ${(err as Error).message}`)
            continue
          }
          const p = prev.result!
          const r = again.result
          if (
            !r ||
            !r.replayed ||
            r.transaction_id !== p.transaction_id ||
            r.amount !== p.amount ||
            r.kind !== p.kind ||
            r.tenant_id !== p.tenant_id ||
            r.reservation_id !== p.reservation_id
          ) {
            replayMismatches.push(
              `${prev.key}: first ${JSON.stringify(p)}, again ${JSON.stringify(r ?? again.refusal)}`,
            )
          }
          continue
        }

        const key = `bank:${SEED}:w${w}:op${i}`
        const tenantId = TENANTS[between(rng, 0, TENANTS.length - 1)]!
        const roll = rng()
        let req: LedgerRequest
        let picked: HeldReservation | undefined
        if (roll >= 0.7 && unsettled.length > 0) {
          picked = unsettled[between(rng, 0, unsettled.length - 1)]!
          if (roll < 0.8) req = { kind: 'commit', reservationId: picked.id }
          else if (roll < 0.88)
            req = { kind: 'commit', reservationId: picked.id, amount: between(rng, 1, picked.amount) }
          else req = { kind: 'cancel', reservationId: picked.id }
        } else if (roll < 0.25) {
          req = { kind: 'topup', tenantId, amount: between(rng, 50, 300) }
        } else if (roll < 0.5) {
          req = { kind: 'consume', tenantId, amount: between(rng, 1, 300) }
        } else {
          // Mostly long-lived reservations; one in ten short enough to expire before its commit.
          const ttlMs = rng() < 0.1 ? between(rng, 1, 300) : 600_000
          req = { kind: 'reserve', tenantId, amount: between(rng, 1, 300), ttlMs }
        }

        let answer: Omit<Ack, 'worker' | 'key' | 'req'>
        try {
          answer = await send(d, acquired, req, key)
        } catch (err) {
          unexpected.push(
            `worker ${w} ${key} ${JSON.stringify(req)}: ${codeOf(err)} ${(err as Error).message}`,
          )
          continue
        }
        const ack: Ack = { worker: w, key, req, ...answer }
        acks.push(ack)
        mine.push(ack)

        const r = ack.result
        if (r && req.kind === 'reserve') {
          const held = { id: r.reservation_id!, tenant: r.tenant_id, amount: r.amount }
          reservations.set(held.id, held)
          unsettled.push(held)
        }
        if (
          picked &&
          (r || ack.refusal === 'RESERVATION_NOT_HELD' || ack.refusal === 'RESERVATION_EXPIRED')
        ) {
          const at = unsettled.indexOf(picked)
          if (at >= 0) unsettled.splice(at, 1)
        }
        if (r && (req.kind === 'commit' || req.kind === 'cancel')) {
          const res = reservations.get(req.reservationId)!
          if (res.settledBy)
            unexpected.push(`reservation ${res.id} settled twice: ${res.settledBy} and ${key}`)
          res.settledBy = key
        }
      }
    }

    const outcomes = await Promise.allSettled(Array.from({ length: WORKERS }, (_, w) => worker(w)))
    stop = true
    const side = await Promise.allSettled([killer, observer])
    const runMs = performance.now() - started
    for (const o of [...outcomes, ...side]) if (o.status === 'rejected') throw o.reason

    // ---- what the acknowledgements say --------------------------------------------------------
    const ok = acks.filter((a) => a.result)
    const refused = acks.filter((a) => a.refusal)
    const refusals: Record<string, number> = {}
    for (const a of refused) refusals[a.refusal!] = (refusals[a.refusal!] ?? 0) + 1
    const retried = acks.filter((a) => a.attempts > 1 || a.resends > 0)
    const lostAcks = ok.filter((a) => a.result!.replayed)
    const summary = {
      seed: SEED,
      run_ms: Math.round(runMs),
      acknowledged: acks.length,
      applied: ok.length,
      refused: refusals,
      retried_ops: retried.length,
      attempts: acks.reduce((n, a) => n + a.attempts, 0),
      worker_resends: acks.reduce((n, a) => n + a.resends, 0),
      replayed_first_answers: lostAcks.length,
      deliberate_replays: deliberateReplays,
      kills,
      commit_replies_dropped: proxy.drops,
      one_round_trip_replies_dropped: proxy.oneRoundTripDrops,
      kill_rounds: killRounds,
      observer_samples: samples,
      min_balance_seen: minBalance,
      min_available_seen: minAvailable,
    }
    console.log(`bank test: ${JSON.stringify(summary)}`)

    expect(unexpected, `seed ${SEED}`).toEqual([])
    expect(replayMismatches, `seed ${SEED}`).toEqual([])
    expect(acks.length).toBe(TENANTS.length + WORKERS * OPS_PER_WORKER - deliberateReplays)

    // ---- the test proves what it claims -------------------------------------------------------
    expect(kills, 'the killer terminated no backend').toBeGreaterThan(0)
    expect(retried.length, 'no operation was retried').toBeGreaterThan(0)
    expect(proxy.drops, 'the proxy dropped no COMMIT reply').toBeGreaterThan(0)
    expect(proxy.oneRoundTripDrops, 'the proxy dropped no reply to a one-round-trip write').toBeGreaterThan(0)
    expect(lostAcks.length, 'no lost COMMIT reply was answered by a replay').toBeGreaterThan(0)
    expect(samples).toBeGreaterThan(0)
    expect(ok.length).toBeGreaterThan(acks.length / 3)

    // ---- never negative -----------------------------------------------------------------------
    expect(minBalance, `seed ${SEED}: observed a negative balance`).toBeGreaterThanOrEqual(0)
    expect(minAvailable, `seed ${SEED}: observed a negative available`).toBeGreaterThanOrEqual(0)
    const accounts = (
      await db.query<{ tenant_id: string; balance: string; reserved: string; chain_seq: string }>(
        'select tenant_id, balance, reserved, chain_seq from credits.credit_accounts order by tenant_id',
      )
    ).rows
    expect(accounts.map((a) => a.tenant_id)).toEqual([...TENANTS].sort())
    for (const a of accounts) {
      expect(Number(a.balance), a.tenant_id).toBeGreaterThanOrEqual(0)
      expect(Number(a.balance) - Number(a.reserved), a.tenant_id).toBeGreaterThanOrEqual(0)
    }

    // ---- balances and reservations are what the acknowledgements add up to ------------------------
    const expected = new Map(TENANTS.map((t) => [t, { balance: 0, reserved: 0 }]))
    for (const a of ok) {
      const r = a.result!
      const e = expected.get(r.tenant_id)!
      if (r.kind === 'topup') e.balance += r.amount
      else if (r.kind === 'consume' || r.kind === 'commit') e.balance -= r.amount
    }
    const expectedHeld = [...reservations.values()].filter((r) => !r.settledBy)
    for (const r of expectedHeld) expected.get(r.tenant)!.reserved += r.amount
    const dbHeld = (
      await db.query<{ id: string; tenant_id: string; amount: string }>(
        `select id, tenant_id, amount from credits.reservations where status = 'held'`,
      )
    ).rows
    expect(dbHeld.map((r) => r.id).sort(), 'held reservations').toEqual(expectedHeld.map((r) => r.id).sort())
    const heldByTenant = new Map<string, number>()
    for (const r of dbHeld)
      heldByTenant.set(r.tenant_id, (heldByTenant.get(r.tenant_id) ?? 0) + Number(r.amount))
    for (const a of accounts) {
      const e = expected.get(a.tenant_id)!
      expect(
        { tenant: a.tenant_id, balance: Number(a.balance), reserved: Number(a.reserved) },
        `seed ${SEED}`,
      ).toEqual({ tenant: a.tenant_id, balance: e.balance, reserved: e.reserved })
      expect(Number(a.reserved), a.tenant_id).toBe(heldByTenant.get(a.tenant_id) ?? 0)
    }

    // ---- every acknowledged operation applied exactly once --------------------------------------
    const txRows = (
      await db.query<{
        id: string
        tenant_id: string
        kind: string
        amount: string
        reservation_id: string | null
      }>('select id, tenant_id, kind, amount, reservation_id from credits.credit_transactions')
    ).rows
    const txById = new Map(txRows.map((t) => [t.id, t]))
    const ackTxIds = ok.map((a) => a.result!.transaction_id)
    expect(new Set(ackTxIds).size, 'two acknowledged operations share a transaction id').toBe(ackTxIds.length)
    // An answer with replayed=true on the first acknowledgement means an earlier attempt committed
    // but its answer was lost: it still counts once. Applied = fresh answers + those.
    expect(ok.filter((a) => !a.result!.replayed).length + lostAcks.length).toBe(txRows.length)
    expect(txRows.length, `seed ${SEED}: transactions rows vs acknowledged operations`).toBe(ok.length)
    const missing: string[] = []
    for (const a of ok) {
      const r = a.result!
      const t = txById.get(r.transaction_id)
      if (!t) missing.push(`${a.key} -> ${r.transaction_id}`)
      else {
        expect(
          { tenant: t.tenant_id, kind: t.kind, amount: Number(t.amount), reservation: t.reservation_id },
          a.key,
        ).toEqual({
          tenant: r.tenant_id,
          kind: r.kind,
          amount: r.amount,
          reservation: r.reservation_id ?? null,
        })
      }
    }
    expect(missing, 'acknowledged transactions missing from credit_transactions').toEqual([])

    // ---- the audit chain: one row per transaction, seq 1..n per tenant, and it verifies ------------
    const audit = (
      await db.query<{ tx: string; n: string }>(
        `select t.id as tx, count(l.id) as n from credits.credit_transactions t
           left join credits.audit_logs l on l.transaction_id = t.id group by t.id having count(l.id) <> 1`,
      )
    ).rows
    expect(audit, 'transactions without exactly one audit row').toEqual([])
    const auditTotal = (await db.query<{ n: string }>('select count(*) as n from credits.audit_logs'))
      .rows[0]!
    expect(Number(auditTotal.n)).toBe(txRows.length)
    const seqs = (
      await db.query<{ tenant_id: string; n: string; lo: string; hi: string; distinct_seq: string }>(
        `select tenant_id, count(*) as n, min(seq) as lo, max(seq) as hi, count(distinct seq) as distinct_seq
           from credits.audit_logs group by tenant_id order by tenant_id`,
      )
    ).rows
    expect(seqs.map((s) => s.tenant_id)).toEqual([...TENANTS].sort())
    for (const s of seqs) {
      const head = accounts.find((a) => a.tenant_id === s.tenant_id)!
      expect(
        {
          lo: Number(s.lo),
          hi: Number(s.hi),
          distinct: Number(s.distinct_seq),
          head: Number(head.chain_seq),
        },
        s.tenant_id,
      ).toEqual({ lo: 1, hi: Number(s.n), distinct: Number(s.n), head: Number(s.n) })
    }
    const verifyDb = await open(2)
    const verified = await verifyChain(verifyDb, keyring, { workers: 2 })
    expect(verified.broken).toEqual([])
    expect(verified.ok).toBe(true)
    expect(verified.rows_checked).toBe(txRows.length)
    expect(verified.tenants_checked).toBe(TENANTS.length)
    console.log(`bank test: done in ${Math.round(performance.now() - started)} ms (seed ${SEED})`)
  }, 90_000)
})
