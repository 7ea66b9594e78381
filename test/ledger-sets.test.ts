/**
 * The ledger's set engine from the outside: per-tenant group commit in applyOperation (many
 * callers on one tenant in one process), prepared statements a connection lost, and `credits
 * apply` chunks that hold reservations, repeated keys and expired keys. Each operation of a set
 * must come out as if applied alone and in order: exactly once, its own result or error, its own
 * chain row, and the chain must verify.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { verifyChain } from '../src/core/audit/verify.js'
import { parseKeyring } from '../src/core/config/secrets.js'
import { type Database, openServer } from '../src/core/db/pool.js'
import { KnownAccounts, knownAccounts } from '../src/core/ledger/known-accounts.js'
import { applyOperation, type LedgerResult } from '../src/core/ledger/operations.js'
import { migrateUp } from '../src/core/migrations/runner.js'
import { ROOT, runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

let db: TestDatabase
let ledger: Database
let home: string
const auditKey = `k1:${randomBytes(32).toString('base64')}`
const keys = {
  audit: parseKeyring(auditKey, { envName: 'AUDIT_HMAC_KEY', bytes: { min: 32 } }, 'test'),
}

const settle = <T>(p: Promise<T>) =>
  p.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error: error as Error & { code?: string } }),
  )

async function account(tenant: string) {
  const { rows } = await db.query<{ balance: string; reserved: string; chain_seq: string }>(
    'select balance, reserved, chain_seq from credits.credit_accounts where tenant_id = $1',
    [tenant],
  )
  const r = rows[0]
  return r ? { balance: Number(r.balance), reserved: Number(r.reserved), seq: Number(r.chain_seq) } : null
}

/** How many transactions wrote this tenant's rows: operations of one transaction share created_at. */
async function transactionsOf(tenant: string): Promise<number> {
  const { rows } = await db.query<{ n: string }>(
    'select count(distinct created_at) as n from credits.credit_transactions where tenant_id = $1',
    [tenant],
  )
  return Number(rows[0]!.n)
}

async function expectChainIntact(): Promise<void> {
  const v = await verifyChain(ledger, keys.audit, { workers: 1 })
  expect(v.broken).toEqual([])
  expect(v.ok).toBe(true)
}

const cli = (args: string[], input?: string) =>
  runCli(['--no-color', ...args], {
    env: cleanEnv({ CREDITS_DATABASE_URL: db.url, SHIELDX_HOME: home, AUDIT_HMAC_KEY: auditKey }),
    ...(input !== undefined ? { input } : {}),
  })

beforeAll(async () => {
  db = await createTestDatabase('ledger_sets')
  home = tempHome('ledger-sets')
  ledger = await openServer(db.url, 'test', { timeoutMs: 30_000, env: {}, max: 4 })
  await migrateUp([{ schema: 'credits', db: ledger }], {
    migrationsDir: path.join(ROOT, 'migrations'),
    timeoutMs: 30_000,
  })
})
afterAll(async () => {
  await ledger?.close()
  await db?.drop()
  fs.rmSync(home, { recursive: true, force: true })
})

describe('group commit: many callers on one tenant in one process', () => {
  it('applies each exactly once, in order, never below zero, and shares transactions', async () => {
    const tenant = 'hot-1'
    await applyOperation(ledger.pool, { kind: 'topup', tenantId: tenant, amount: 25 }, 'hot-1-top', keys)
    const calls = Array.from({ length: 40 }, (_, i) =>
      settle(
        applyOperation(ledger.pool, { kind: 'consume', tenantId: tenant, amount: 1 }, `hot-1-c${i}`, keys),
      ),
    )
    const out = await Promise.all(calls)
    const ok = out.filter((o) => o.ok).map((o) => (o as { value: LedgerResult }).value)
    const refused = out.filter((o) => !o.ok).map((o) => (o as { error: { code?: string } }).error.code)
    expect(ok).toHaveLength(25)
    expect(refused).toEqual(Array(15).fill('INSUFFICIENT_CREDITS'))
    // Each result is its own: one balance each from 24 down to 0, one transaction id each.
    expect(ok.map((r) => r.balance).sort((a, b) => b - a)).toEqual(
      Array.from({ length: 25 }, (_, i) => 24 - i),
    )
    expect(new Set(ok.map((r) => r.transaction_id)).size).toBe(25)
    expect(ok.every((r) => r.replayed === false)).toBe(true)
    // Callers that asked first were served first: the refusals are the last ones asked.
    expect(out.slice(0, 25).every((o) => o.ok)).toBe(true)
    expect(await account(tenant)).toEqual({ balance: 0, reserved: 0, seq: 26 })
    // A replay answers with what the group answered (its stored response).
    const replayed = await applyOperation(
      ledger.pool,
      { kind: 'consume', tenantId: tenant, amount: 1 },
      'hot-1-c7',
      keys,
    )
    expect(replayed).toEqual({ ...(out[7] as { value: LedgerResult }).value, replayed: true })
    // The test proves what it claims: the 40 went in a few transactions, not 40.
    expect(await transactionsOf(tenant)).toBeLessThan(10)
    await expectChainIntact()
  })

  it('the same key twice in one group: applied once, the second replays; other parameters conflict', async () => {
    const tenant = 'hot-2'
    await applyOperation(ledger.pool, { kind: 'topup', tenantId: tenant, amount: 100 }, 'hot-2-top', keys)
    // Something in flight first, so that the rest queue into one group behind it.
    const first = applyOperation(
      ledger.pool,
      { kind: 'consume', tenantId: tenant, amount: 1 },
      'hot-2-a',
      keys,
    )
    const same = [
      settle(applyOperation(ledger.pool, { kind: 'consume', tenantId: tenant, amount: 5 }, 'hot-2-k', keys)),
      settle(applyOperation(ledger.pool, { kind: 'consume', tenantId: tenant, amount: 5 }, 'hot-2-k', keys)),
      settle(applyOperation(ledger.pool, { kind: 'consume', tenantId: tenant, amount: 6 }, 'hot-2-k', keys)),
    ]
    await first
    const [a, b, c] = await Promise.all(same)
    expect(a!.ok && b!.ok).toBe(true)
    const ra = (a as { value: LedgerResult }).value
    const rb = (b as { value: LedgerResult }).value
    expect(ra.replayed).toBe(false)
    expect(rb).toEqual({ ...ra, replayed: true })
    expect(c!.ok).toBe(false)
    expect((c as { error: { code?: string } }).error.code).toBe('IDEMPOTENCY_KEY_REUSED')
    expect(await account(tenant)).toEqual({ balance: 94, reserved: 0, seq: 3 })
    await expectChainIntact()
  })

  it('an operation the database refuses fails alone; the rest of its group is applied', async () => {
    const tenant = 'hot-3'
    await applyOperation(ledger.pool, { kind: 'topup', tenantId: tenant, amount: 100 }, 'hot-3-top', keys)
    const first = applyOperation(
      ledger.pool,
      { kind: 'consume', tenantId: tenant, amount: 1 },
      'hot-3-a',
      keys,
    )
    const rest = [
      settle(applyOperation(ledger.pool, { kind: 'consume', tenantId: tenant, amount: 2 }, 'hot-3-b', keys)),
      // Past the CHECK on description (the CLI refuses it before; the API does not).
      settle(
        applyOperation(
          ledger.pool,
          { kind: 'consume', tenantId: tenant, amount: 3, description: 'x'.repeat(1001) },
          'hot-3-c',
          keys,
        ),
      ),
      settle(applyOperation(ledger.pool, { kind: 'consume', tenantId: tenant, amount: 4 }, 'hot-3-d', keys)),
    ]
    await first
    const [b, c, d] = await Promise.all(rest)
    expect(b!.ok).toBe(true)
    expect(c!.ok).toBe(false)
    expect((c as { error: { code?: string } }).error.code).toBe('23514') // check_violation
    expect(d!.ok).toBe(true)
    expect(await account(tenant)).toEqual({ balance: 93, reserved: 0, seq: 4 })
    await expectChainIntact()
  })
})

describe('prepared statements', () => {
  it('a connection that lost them (DEALLOCATE ALL) prepares them again', async () => {
    const tenant = 'prep-1'
    await applyOperation(ledger.pool, { kind: 'topup', tenantId: tenant, amount: 10 }, 'prep-1-top', keys)
    const clients = await Promise.all(Array.from({ length: 4 }, () => ledger.pool.connect()))
    for (const c of clients) await c.query('deallocate all')
    for (const c of clients) c.release()
    const r = await applyOperation(
      ledger.pool,
      { kind: 'consume', tenantId: tenant, amount: 3 },
      'prep-1-c',
      keys,
    )
    expect(r.balance).toBe(7)
    const again = await applyOperation(
      ledger.pool,
      { kind: 'consume', tenantId: tenant, amount: 3 },
      'prep-1-c',
      keys,
    )
    expect(again).toEqual({ ...r, replayed: true })
  })
})

/** A write's result fields in the order (what `--json` and `credits apply` print). */
const PRINTED_FIELDS = [
  'transaction_id',
  'tenant_id',
  'kind',
  'amount',
  'balance',
  'reserved',
  'available',
  'replayed',
  'idempotency_key',
]

describe('credits apply: sets with reservations and keys', () => {
  const run = async (lines: object[]) => {
    const file = path.join(os.tmpdir(), `shx-sets-${randomBytes(4).toString('hex')}.jsonl`)
    fs.writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n') + '\n')
    try {
      const r = await cli(['credits', 'apply', '--file', file])
      return {
        ...r,
        out: r.stdout
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l)),
      }
    } finally {
      fs.rmSync(file, { force: true })
    }
  }

  it('decides every line in order within one chunk, as if applied one by one', async () => {
    const t = 'sets-a'
    const first = await run([
      { op: 'topup', tenant: t, amount: 100, idempotency_key: 'a-top' },
      { op: 'reserve', tenant: t, amount: 30, idempotency_key: 'a-r1' },
      { op: 'consume', tenant: t, amount: 71 }, // 70 available
      { op: 'consume', tenant: t, amount: 70, idempotency_key: 'a-c1' },
      { op: 'consume', tenant: t, amount: 70, idempotency_key: 'a-c1' }, // replays the line above
      { op: 'consume', tenant: t, amount: 5, idempotency_key: 'a-c1' }, // same key, other amount
      { op: 'topup', tenant: t, amount: 5 },
    ])
    expect(first.out.map((o) => o.ok)).toEqual([true, true, false, true, true, false, true])
    expect(first.out[2].error.code).toBe('INSUFFICIENT_CREDITS')
    expect(first.out[4].result).toEqual({ ...first.out[3].result, replayed: true })
    expect(first.out[5].error.code).toBe('IDEMPOTENCY_KEY_REUSED')
    expect(first.out[6].result).toMatchObject({ balance: 35, reserved: 30, available: 5 })
    expect(await account(t)).toEqual({ balance: 35, reserved: 30, seq: 4 })
    const reservation = first.out[1].result.reservation_id as string
    // The fields in its order, then what a reservation adds.
    expect(Object.keys(first.out[1].result)).toEqual([...PRINTED_FIELDS, 'reservation_id', 'expires_at'])

    // Settle the reservation twice and spend in one file: the second settle finds it committed.
    const second = await run([
      { op: 'commit', reservation, amount: 10, idempotency_key: 'a-commit' },
      { op: 'cancel', reservation, idempotency_key: 'a-cancel' },
      { op: 'consume', tenant: t, amount: 25, idempotency_key: 'a-c2' }, // the 20 released count
      { op: 'topup', tenant: t, amount: 1, idempotency_key: 'a-top' }, // 'a-top' was 100
    ])
    expect(second.out.map((o) => o.ok)).toEqual([true, false, true, false])
    expect(second.out[0].result).toMatchObject({ kind: 'commit', amount: 10, balance: 25, reserved: 0 })
    expect(second.out[1].error.code).toBe('RESERVATION_NOT_HELD')
    expect(second.out[2].result).toMatchObject({ balance: 0, reserved: 0 })
    expect(second.out[3].error.code).toBe('IDEMPOTENCY_KEY_REUSED')
    expect(await account(t)).toEqual({ balance: 0, reserved: 0, seq: 6 })
    const { rows } = await db.query<{ status: string; committed_amount: string }>(
      'select status, committed_amount from credits.reservations where id = $1',
      [reservation],
    )
    expect(rows).toEqual([{ status: 'committed', committed_amount: '10' }])

    // The whole file again replays every line that was applied, and refuses the same ones.
    const again = await run([
      { op: 'commit', reservation, amount: 10, idempotency_key: 'a-commit' },
      { op: 'consume', tenant: t, amount: 25, idempotency_key: 'a-c2' },
    ])
    expect(again.out.map((o) => o.result?.replayed)).toEqual([true, true])
    // The stored responses (one sent, one built by the statement) are the results first printed.
    expect(again.out[0].result).toEqual({ ...second.out[0].result, replayed: true })
    expect(again.out[1].result).toEqual({ ...second.out[2].result, replayed: true })
    // ... printed in the same field order as the first answers, whatever order jsonb stored them in.
    expect(Object.keys(again.out[0].result)).toEqual(Object.keys(second.out[0].result))
    expect(Object.keys(again.out[1].result)).toEqual(PRINTED_FIELDS)
    expect(await account(t)).toEqual({ balance: 0, reserved: 0, seq: 6 })
    await expectChainIntact()
  })

  it('a key past its TTL is a new operation, in a set and on its own', async () => {
    const t = 'sets-b'
    expect((await run([{ op: 'topup', tenant: t, amount: 10, idempotency_key: 'b-k' }])).code).toBe(0)
    await db.query(
      `update credits.idempotency_keys set expires_at = now() - interval '1 second' where tenant_id = $1`,
      [t],
    )
    const set = await run([
      { op: 'topup', tenant: t, amount: 10, idempotency_key: 'b-k' },
      { op: 'topup', tenant: t, amount: 10, idempotency_key: 'b-k' },
      { op: 'topup', tenant: t, amount: 1, idempotency_key: 'b-other' },
    ])
    expect(set.out.map((o) => o.result.replayed)).toEqual([false, true, false])
    expect(await account(t)).toEqual({ balance: 21, reserved: 0, seq: 3 })
    await db.query(
      `update credits.idempotency_keys set expires_at = now() - interval '1 second' where tenant_id = $1`,
      [t],
    )
    const alone = await applyOperation(ledger.pool, { kind: 'topup', tenantId: t, amount: 10 }, 'b-k', keys)
    expect(alone.replayed).toBe(false)
    expect(await account(t)).toEqual({ balance: 31, reserved: 0, seq: 4 })
    await expectChainIntact()
  })
})

describe('credits apply on a new database', () => {
  it('finds every key, account and reservation it writes by index from the first chunk on, never reading those tables whole', async () => {
    // The plans are made on the first chunk, while the tables are nearly empty, and kept: one that
    // reads a whole table per chunk makes a first big import quadratic until autovacuum runs.
    const fresh = await createTestDatabase('ledger_fresh')
    try {
      const env = cleanEnv({ CREDITS_DATABASE_URL: fresh.url, SHIELDX_HOME: home, AUDIT_HMAC_KEY: auditKey })
      expect((await runCli(['migrate', 'up', '--no-backup'], { env })).code).toBe(0)
      const apply = async (lines: object[]) => {
        const r = await runCli(['credits', 'apply', '--batch', randomUUID()], {
          env,
          input: lines.map((l) => JSON.stringify(l)).join('\n') + '\n',
        })
        expect(r.stderr).toContain(
          `${lines.length} operation(s): ${lines.length} applied, 0 replayed, 0 failed.`,
        )
        return r.stdout
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as { result: { reservation_id?: string } })
      }
      const tenants = 1000
      await apply(
        Array.from({ length: 3 * tenants }, (_, i) => ({
          op: 'topup',
          tenant: `fresh-${i % tenants}`,
          amount: 5,
        })),
      )
      const held = await apply(
        Array.from({ length: tenants }, (_, i) => ({ op: 'reserve', tenant: `fresh-${i}`, amount: 2 })),
      )
      await apply(held.map((h) => ({ op: 'commit', reservation: h.result.reservation_id })))

      // The CLI's sessions report their counts as they end; wait until the last one is in.
      const stats = async () =>
        (
          await fresh.query<{ relname: string; seq_tup_read: string; idx_scan: string; held_read: string }>(
            `select relname, seq_tup_read, coalesce(idx_scan, 0) as idx_scan,
                    (select idx_tup_read from pg_stat_user_indexes
                      where schemaname = 'credits' and indexrelname = 'reservations_held_expiry') as held_read
               from pg_stat_user_tables
              where schemaname = 'credits' and relname in ('idempotency_keys', 'credit_accounts', 'reservations')
              order by relname`,
          )
        ).rows
      let rows = await stats()
      for (
        let i = 0;
        i < 50 && Number(rows.find((r) => r.relname === 'reservations')!.idx_scan) < tenants;
        i++
      ) {
        await new Promise((resolve) => setTimeout(resolve, 100))
        rows = await stats()
      }
      // (Reservations may be read whole: the commit lines' tenants are looked up by a query planned
      // on every call, against the table as it is then.)
      expect(rows.map((r) => [r.relname, Number(r.seq_tup_read) > 0])).toEqual([
        ['credit_accounts', false],
        ['idempotency_keys', false],
        ['reservations', expect.any(Boolean)],
      ])
      expect(Number(rows.find((r) => r.relname === 'idempotency_keys')!.idx_scan)).toBeGreaterThanOrEqual(
        5 * tenants,
      )
      // The partial index of held reservations is for gc, not for settling one by its id.
      expect(Number(rows[0]!.held_read)).toBe(0)
    } finally {
      await fresh.drop()
    }
  })
})

describe('one round trip from the account this pool last wrote', () => {
  /** Pools of each test's own (each knows only what it wrote), closed after the test. */
  const opened: Database[] = []
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((p) => p.close()))
  })
  async function ownPool(max: number) {
    const own = await openServer(db.url, 'test', { timeoutMs: 30_000, env: {}, max })
    opened.push(own)
    return own
  }
  /** A pool of its own, counting the messages (round trips) its connections send. */
  async function countingPool() {
    const own = await ownPool(2)
    const sent: string[] = []
    const counted = new WeakSet<object>()
    // 'acquire': openServer's first connection was made before this listener.
    own.pool.on('acquire', (client) => {
      if (counted.has(client)) return
      counted.add(client)
      const query = client.query.bind(client) as (...args: unknown[]) => unknown
      ;(client as unknown as { query: unknown }).query = (...args: unknown[]) => {
        if (typeof args[0] === 'string') sent.push(args[0])
        return query(...args)
      }
    })
    return { db: own, sent }
  }
  /** How far a chain row's time is from the database's now(), in ms. */
  async function stampSkewMs(tenant: string, seq: number): Promise<number> {
    const { rows } = await db.query<{ skew_ms: number }>(
      `select abs(extract(epoch from (created_at - now())) * 1000)::float8 as skew_ms
         from credits.audit_logs where tenant_id = $1 and seq = $2`,
      [tenant, seq],
    )
    return rows[0]!.skew_ms
  }
  const consume = (pool: Database, tenant: string, amount: number, key: string) =>
    applyOperation(pool.pool, { kind: 'consume', tenantId: tenant, amount }, key, keys)

  it('a second operation on an account goes in one message; the result and the chain are as with two', async () => {
    const a = await countingPool()
    await applyOperation(a.db.pool, { kind: 'topup', tenantId: 'rt-1', amount: 100 }, 'rt-1-top', keys)
    a.sent.length = 0
    const r = await consume(a.db, 'rt-1', 30, 'rt-1-c1')
    // One message: the write alone, no BEGIN, no lock read (the test proves what it claims).
    expect(a.sent).toHaveLength(1)
    expect(a.sent[0]).toMatch(/^(prepare [^\n]*;\n)*execute shx_ledger_write1u_/)
    expect(r).toMatchObject({ balance: 70, available: 70, replayed: false })
    expect(await account('rt-1')).toEqual({ balance: 70, reserved: 0, seq: 2 })
    // The replay of that key is the stored answer, and the same key for another amount conflicts.
    expect(await consume(a.db, 'rt-1', 30, 'rt-1-c1')).toEqual({ ...r, replayed: true })
    const conflict = await settle(consume(a.db, 'rt-1', 31, 'rt-1-c1'))
    expect(conflict.ok).toBe(false)
    expect((conflict as { error: { code?: string } }).error.code).toBe('IDEMPOTENCY_KEY_REUSED')
    expect(await account('rt-1')).toEqual({ balance: 70, reserved: 0, seq: 2 })
    // The row is stamped with database time, like the rows written under a lock.
    expect(await stampSkewMs('rt-1', 2)).toBeLessThan(5_000)
    await expectChainIntact()
  })

  it('an account another process changed since: the write finds the chain moved, writes nothing, and the operation goes under the lock', async () => {
    const a = await countingPool()
    const b = await ownPool(1)
    await applyOperation(a.db.pool, { kind: 'topup', tenantId: 'rt-2', amount: 100 }, 'rt-2-top', keys)
    // Another process takes everything: this pool still believes 100 are available.
    await consume(b, 'rt-2', 100, 'rt-2-b1')
    const refused = await settle(consume(a.db, 'rt-2', 60, 'rt-2-a1'))
    expect(refused.ok).toBe(false)
    expect((refused as { error: { code?: string } }).error.code).toBe('INSUFFICIENT_CREDITS')
    expect(await account('rt-2')).toEqual({ balance: 0, reserved: 0, seq: 2 })
    // It refused what it believed: now another process tops up 70, and this pool believes 0.
    await applyOperation(b.pool, { kind: 'topup', tenantId: 'rt-2', amount: 70 }, 'rt-2-b2', keys)
    const r = await consume(a.db, 'rt-2', 50, 'rt-2-a2')
    expect(r).toMatchObject({ balance: 20, replayed: false })
    // Once more from this pool, which now knows the account: one message again.
    a.sent.length = 0
    expect(await consume(a.db, 'rt-2', 20, 'rt-2-a3')).toMatchObject({ balance: 0 })
    expect(a.sent).toHaveLength(1)
    expect(await account('rt-2')).toEqual({ balance: 0, reserved: 0, seq: 5 })
    await expectChainIntact()
  })

  it('an error of our own between the round trips leaves no transaction open for the next caller', async () => {
    const one = await ownPool(1)
    await applyOperation(one.pool, { kind: 'topup', tenantId: 'rt-6y', amount: 99 }, 'rt-6y-top', keys)
    const max = Number.MAX_SAFE_INTEGER
    // (Another pool: this one must not know the account, so that it takes BEGIN and the lock.)
    await applyOperation(ledger.pool, { kind: 'topup', tenantId: 'rt-6x', amount: max }, 'rt-6x-top', keys)
    // The balance after this one is past 2^53: refused by our own code after BEGIN and the lock.
    const big = await settle(
      applyOperation(one.pool, { kind: 'topup', tenantId: 'rt-6x', amount: 1 }, 'rt-6x-top2', keys),
    )
    expect(big.ok).toBe(false)
    // The same (only) connection, known account: one message, which must commit on its own.
    const r = await consume(one, 'rt-6y', 10, 'rt-6y-c1')
    expect(r.balance).toBe(89)
    expect(await account('rt-6y')).toEqual({ balance: 89, reserved: 0, seq: 2 })
    const { rows } = await db.query<{ n: string }>(
      `select count(*) as n from pg_stat_activity where datname = current_database() and state like 'idle in transaction%'`,
    )
    expect(Number(rows[0]!.n)).toBe(0)
  })

  it('separate transactions on one account never share a time, one message or two', async () => {
    const a = await countingPool()
    await applyOperation(a.db.pool, { kind: 'topup', tenantId: 'rt-7', amount: 100 }, 'rt-7-top', keys)
    for (let i = 0; i < 8; i++) await consume(a.db, 'rt-7', 1, `rt-7-c${i}`)
    const { rows } = await db.query<{ n: string; times: string; ordered: boolean }>(
      `select count(*) as n, count(distinct created_at) as times,
              bool_and(created_at > prev) filter (where prev is not null) as ordered
         from (select created_at, lag(created_at) over (order by seq) as prev
                 from credits.audit_logs where tenant_id = 'rt-7') x`,
    )
    expect(rows[0]).toEqual({ n: '9', times: '9', ordered: true })
  })

  it('a balance changed by hand outside the ledger is not overwritten: the write finds it and goes under the lock', async () => {
    const a = await countingPool()
    await applyOperation(a.db.pool, { kind: 'topup', tenantId: 'rt-5', amount: 10 }, 'rt-5-top', keys)
    // A fix made by hand: no chain row, no version.
    await db.query(`update credits.credit_accounts set balance = balance + 5 where tenant_id = 'rt-5'`)
    a.sent.length = 0
    expect(await consume(a.db, 'rt-5', 4, 'rt-5-c1')).toMatchObject({ balance: 11 })
    expect(a.sent).toHaveLength(3)
    expect(await account('rt-5')).toEqual({ balance: 11, reserved: 0, seq: 2 })
  })

  it('a clock an hour off: the database refuses the time, the operation goes under the lock, stamped with database time', async () => {
    const a = await countingPool()
    await applyOperation(a.db.pool, { kind: 'topup', tenantId: 'rt-3', amount: 10 }, 'rt-3-top', keys)
    // As if the database's clock had been read an hour ahead of ours.
    knownAccounts(a.db.pool).sawDatabaseTime(Date.now() + 3_600_000, Date.now())
    a.sent.length = 0
    await consume(a.db, 'rt-3', 1, 'rt-3-c1')
    // The one-message write, refused, then BEGIN + lock and the write with COMMIT.
    expect(a.sent).toHaveLength(3)
    expect(await stampSkewMs('rt-3', 2)).toBeLessThan(5_000)
    // That read set the clock right: the next one is one message again.
    a.sent.length = 0
    await consume(a.db, 'rt-3', 1, 'rt-3-c2')
    expect(a.sent).toHaveLength(1)
    expect(await account('rt-3')).toEqual({ balance: 8, reserved: 0, seq: 3 })
    await expectChainIntact()
  })

  it('two processes on the same tenants at once: every acknowledged operation once, never below zero, the chain intact', async () => {
    const counting = await countingPool()
    const pools = [counting.db, ledger]
    const tenants = ['rt-4a', 'rt-4b', 'rt-4c']
    for (const t of tenants)
      await applyOperation(ledger.pool, { kind: 'topup', tenantId: t, amount: 500 }, `${t}-top`, keys)
    let n = 0
    const acknowledged = new Map<string, number>(tenants.map((t) => [t, 0]))
    const refused: string[] = []
    await Promise.all(
      Array.from({ length: 8 }, async (_, w) => {
        for (let i = 0; i < 40; i++) {
          const t = tenants[(w + i) % tenants.length]!
          const amount = 1 + ((w * 7 + i * 3) % 9)
          const out = await settle(consume(pools[w % 2]!, t, amount, `rt-4-${w}-${i}-${n++}`))
          if (out.ok) {
            expect(out.value.balance).toBeGreaterThanOrEqual(0)
            acknowledged.set(t, acknowledged.get(t)! + amount)
          } else refused.push(out.error.code ?? out.error.message)
        }
      }),
    )
    expect(new Set(refused)).toEqual(refused.length ? new Set(['INSUFFICIENT_CREDITS']) : new Set())
    // The test proves what it claims: both ways were taken.
    expect(counting.sent.some((t) => /^(prepare [^\n]*;\n)*execute shx_ledger_write1u_/.test(t))).toBe(true)
    expect(counting.sent.some((t) => t.startsWith('begin'))).toBe(true)
    for (const t of tenants) {
      const acct = (await account(t))!
      expect(acct.balance).toBe(500 - acknowledged.get(t)!)
      const { rows } = await db.query<{ n: string }>(
        `select count(*) as n from credits.credit_transactions where tenant_id = $1 and kind = 'consume'`,
        [t],
      )
      expect(acct.seq).toBe(1 + Number(rows[0]!.n))
    }
    await expectChainIntact()
  })
})

describe('KnownAccounts', () => {
  const acct = (tenant: string, seq: number, tsMs: number) => ({
    tenant,
    balance: 10,
    reserved: 0,
    version: seq,
    seq,
    head: Buffer.alloc(32, seq),
    ts: new Date(tsMs),
    written: true,
  })

  it('knows nothing before it has read the database clock, and forgets the least recently used past its bound', () => {
    const k = new KnownAccounts(2)
    k.committed([acct('a', 1, 0)])
    expect(k.get('a')).toBeUndefined()
    k.sawDatabaseTime(Date.now(), Date.now())
    k.committed([acct('b', 1, 0), acct('a', 2, 0), acct('c', 1, 0)])
    expect(k.size).toBe(2)
    expect(k.get('b')).toBeUndefined()
    expect(k.get('a')?.seq).toBe(2)
    k.committed([{ ...acct('d', 1, 0), written: false }])
    expect(k.get('d')).toBeUndefined()
    k.delete('a')
    expect(k.get('a')).toBeUndefined()
  })

  it("stamps the database's time now, always after the account's newest row", () => {
    const k = new KnownAccounts()
    const sent = Date.now()
    k.sawDatabaseTime(sent - 60_000, sent)
    const future = Date.now() + 1_000
    k.committed([acct('a', 1, future), acct('b', 1, 0)])
    expect(k.get('a')!.ts.getTime()).toBe(future + 1)
    const b = k.get('b')!.ts.getTime()
    expect(Math.abs(b - (Date.now() - 60_000))).toBeLessThan(1_000)
  })
})
