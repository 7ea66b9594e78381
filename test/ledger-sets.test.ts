/**
 * The ledger's set engine from the outside: per-tenant group commit in applyOperation (many
 * callers on one tenant in one process), prepared statements a connection lost, and `credits
 * apply` chunks that hold reservations, repeated keys and expired keys. Each operation of a set
 * must come out as if applied alone and in order: exactly once, its own result or error, its own
 * chain row, and the chain must verify.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { verifyChain } from '../src/core/audit/verify.js'
import { parseKeyring } from '../src/core/config/secrets.js'
import { type Database, openServer } from '../src/core/db/pool.js'
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
