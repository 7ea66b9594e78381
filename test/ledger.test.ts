/**
 * The credits ledger through the CLI, against a real PostgreSQL and Redis: balances, refusals,
 * idempotency, reservations, gc, the balance cache, payment data, apply, status.
 */
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execa } from 'execa'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseKeyring } from '../src/core/config/secrets.js'
import { decryptPaymentToken } from '../src/core/crypto/payment.js'
import { BIN, runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv, redisUrl } from './helpers/env.js'

let db: TestDatabase
let home: string
const auditKey = `k1:${randomBytes(32).toString('base64')}`
const encryptKey = `e1:${randomBytes(32).toString('base64')}`
// Tenants are unique per run: the Redis cache is shared by every test file.
const run = randomBytes(3).toString('hex')
const t = (name: string) => `${name}-${run}`

function env(extra: Record<string, string | undefined> = {}) {
  return cleanEnv({
    CREDITS_DATABASE_URL: db.url,
    SHIELDX_HOME: home,
    AUDIT_HMAC_KEY: auditKey,
    ENCRYPT_KEY: encryptKey,
    REDIS_URL: redisUrl(),
    ...extra,
  })
}

const cli = (args: string[], extra: Record<string, string | undefined> = {}, input?: string) =>
  runCli(['--no-color', ...args], { env: env(extra), ...(input !== undefined ? { input } : {}) })

async function json(args: string[], extra: Record<string, string | undefined> = {}) {
  const r = await cli(['--json', ...args], extra)
  return { ...r, doc: JSON.parse(r.stdout) }
}

async function count(sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await db.query<{ n: string }>(sql, params)
  return Number(rows[0]!.n)
}

/** `credits apply` as a child process of its own, to be signalled or fed while it runs. */
function applyChild(args: string[], timeout: number) {
  return execa(process.execPath, [BIN, 'credits', 'apply', ...args], {
    env: env(),
    extendEnv: false,
    reject: false,
    timeout,
  })
}

/** The Redis key the CLI caches `tenant`'s balance of database `of` under (ledger/cache.ts). */
async function cacheKey(of: TestDatabase, tenant: string): Promise<string> {
  const { rows } = await of.query<{ id: string }>(
    `select system_identifier || '.' || d.oid as id from pg_control_system(), pg_database d
      where d.datname = current_database()`,
  )
  return `shieldx:db:${rows[0]!.id}:balance:${tenant}`
}

async function account(tenant: string) {
  const { rows } = await db.query<{ balance: string; reserved: string }>(
    'select balance, reserved from credits.credit_accounts where tenant_id = $1',
    [tenant],
  )
  return rows[0] ? { balance: Number(rows[0].balance), reserved: Number(rows[0].reserved) } : null
}

beforeAll(async () => {
  db = await createTestDatabase('ledger')
  home = tempHome('ledger')
  const r = await cli(['migrate', 'up', '--no-backup'])
  expect(r.code, r.stderr).toBe(0)
})
afterAll(async () => {
  await db.drop()
  fs.rmSync(home, { recursive: true, force: true })
})

describe('topup and consume', () => {
  it('topup creates the account; consume spends; --json has the documented fields', async () => {
    const tenant = t('acme')
    const top = await json(['credits', 'topup', tenant, '100', '--idempotency-key', 'top-1'])
    expect(top.code, top.stderr).toBe(0)
    expect(top.doc).toMatchObject({
      tenant_id: tenant,
      kind: 'topup',
      amount: 100,
      balance: 100,
      reserved: 0,
      available: 100,
      replayed: false,
      idempotency_key: 'top-1',
    })
    expect(Object.keys(top.doc).sort()).toEqual(
      [
        'amount',
        'available',
        'balance',
        'idempotency_key',
        'kind',
        'replayed',
        'reserved',
        'tenant_id',
        'transaction_id',
      ].sort(),
    )
    const spend = await json(['credits', 'consume', tenant, '30'])
    expect(spend.doc).toMatchObject({ kind: 'consume', amount: 30, balance: 70, available: 70 })
    expect(spend.doc.idempotency_key).toMatch(/^[0-9a-f-]{36}$/) // generated
    expect(await account(tenant)).toEqual({ balance: 70, reserved: 0 })
  })

  it('prints a generated idempotency key so the user can retry safely', async () => {
    const r = await cli(['credits', 'topup', t('printed'), '5'])
    expect(r.code).toBe(0)
    expect(r.stderr).toMatch(/idempotency key: [0-9a-f-]{36}/)
    expect(r.stdout).toContain('balance 5, reserved 0, available 5')
  })

  it('refuses to consume more than available: exit 1, INSUFFICIENT_CREDITS with the figures, nothing changes', async () => {
    const tenant = t('poor')
    await cli(['credits', 'topup', tenant, '50'])
    const txBefore = await count(
      'select count(*) as n from credits.credit_transactions where tenant_id = $1',
      [tenant],
    )
    const r = await json(['credits', 'consume', tenant, '51'])
    expect(r.code).toBe(1)
    expect(r.doc.error).toMatchObject({
      code: 'INSUFFICIENT_CREDITS',
      available: 50,
      balance: 50,
      reserved: 0,
      requested: 51,
    })
    expect(r.stderr).toContain(
      "tenant '" + tenant + "' has 50 available (balance 50, reserved 0); cannot consume 51",
    )
    expect(await account(tenant)).toEqual({ balance: 50, reserved: 0 })
    expect(
      await count('select count(*) as n from credits.credit_transactions where tenant_id = $1', [tenant]),
    ).toBe(txBefore)
    expect(await count('select count(*) as n from credits.audit_logs where tenant_id = $1', [tenant])).toBe(
      txBefore,
    )
  })

  it('consuming from a tenant without an account is exit 1, and creates nothing', async () => {
    const r = await json(['credits', 'consume', t('ghost'), '1'])
    expect(r.code).toBe(1)
    expect(r.doc.error.code).toBe('ACCOUNT_NOT_FOUND')
    expect(await account(t('ghost'))).toBeNull()
  })

  it.each([
    ['0', 'AMOUNT'],
    ['-5', 'AMOUNT'],
    ['1.5', 'AMOUNT'],
    ['ten', 'AMOUNT'],
    ['99999999999999999999', 'AMOUNT'],
  ])('rejects amount %s with exit 2 naming the field, writing nothing', async (amount, field) => {
    const tenant = t('strict')
    const r = await cli(['credits', 'topup', tenant, amount])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain(`${field} must be a positive whole number`)
    expect(r.stderr).not.toMatch(/\n\s+at /)
    expect(await account(tenant)).toBeNull()
  })

  it('refuses a topup past the largest exact balance (2^53 - 1): exit 1 BALANCE_LIMIT, alone or in credits apply, nothing written', async () => {
    const tenant = t('huge')
    expect((await cli(['credits', 'topup', tenant, String(Number.MAX_SAFE_INTEGER)])).code).toBe(0)
    const one = await json(['credits', 'topup', tenant, '1'])
    expect(one.code).toBe(1)
    expect(one.doc.error).toMatchObject({ code: 'BALANCE_LIMIT' })
    const applied = await cli(
      ['credits', 'apply', '--batch', `huge-${run}`],
      {},
      `${JSON.stringify({ op: 'topup', tenant, amount: 2 })}\n`,
    )
    expect(applied.code).toBe(1)
    expect(JSON.parse(applied.stdout.trim()).error.code).toBe('BALANCE_LIMIT')
    expect(await account(tenant)).toEqual({ balance: Number.MAX_SAFE_INTEGER, reserved: 0 })
  })

  it('rejects a malformed tenant with exit 2', async () => {
    const r = await cli(['credits', 'topup', "acme'; drop table x; --", '5'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('TENANT must be')
    // A huge one is quoted cut short, with its length: one line, not 100 KB of it.
    const long = await cli(['credits', 'topup', 'x'.repeat(100_000), '5'])
    expect(long.code).toBe(2)
    expect(long.stderr).toContain(`got "${'x'.repeat(59)}... (100002 characters).`)
    expect(long.stderr.length).toBeLessThan(500)
  })

  it('never lets concurrent consumers take a balance below zero', async () => {
    const tenant = t('race')
    await cli(['credits', 'topup', tenant, '100'])
    const results = await Promise.all(
      Array.from({ length: 20 }, () => cli(['credits', 'consume', tenant, '10'])),
    )
    expect(results.filter((r) => r.code === 0)).toHaveLength(10)
    expect(results.filter((r) => r.code === 1 && r.stderr.includes('Insufficient credits'))).toHaveLength(10)
    expect(await account(tenant)).toEqual({ balance: 0, reserved: 0 })
  })
})

describe('idempotency', () => {
  it('a replay returns the original result with replayed: true and changes nothing', async () => {
    const tenant = t('idem')
    const first = await json(['credits', 'topup', tenant, '40', '--idempotency-key', 'pay-1'])
    const again = await json(['credits', 'topup', tenant, '40', '--idempotency-key', 'pay-1'])
    expect(again.code).toBe(0)
    expect(again.doc).toEqual({ ...first.doc, replayed: true })
    expect(await account(tenant)).toEqual({ balance: 40, reserved: 0 })
    expect(
      await count('select count(*) as n from credits.credit_transactions where tenant_id = $1', [tenant]),
    ).toBe(1)
  })

  it('the same key with different parameters is exit 5 and changes nothing', async () => {
    const tenant = t('idem2')
    await cli(['credits', 'topup', tenant, '40', '--idempotency-key', 'pay-2'])
    const r = await json(['credits', 'topup', tenant, '41', '--idempotency-key', 'pay-2'])
    expect(r.code).toBe(5)
    expect(r.doc.error.code).toBe('IDEMPOTENCY_KEY_REUSED')
    expect(await account(tenant)).toEqual({ balance: 40, reserved: 0 })
  })

  it('the same new key sent by 10 clients at once is applied exactly once', async () => {
    const tenant = t('idem3')
    await cli(['credits', 'topup', tenant, '100'])
    const results = await Promise.all(
      Array.from({ length: 10 }, () =>
        json(['credits', 'consume', tenant, '7', '--idempotency-key', 'burst-1']),
      ),
    )
    expect(results.every((r) => r.code === 0)).toBe(true)
    expect(new Set(results.map((r) => r.doc.transaction_id)).size).toBe(1)
    expect(results.filter((r) => r.doc.replayed === false)).toHaveLength(1)
    expect(await account(tenant)).toEqual({ balance: 93, reserved: 0 })
  })

  it('keys are stored hashed, and expire: after the TTL the same key is a new operation', async () => {
    const tenant = t('idem4')
    await cli(['credits', 'topup', tenant, '10', '--idempotency-key', 'plain-text-key-123'])
    expect(
      await count(
        `select count(*) as n from credits.idempotency_keys where key_hash::text like '%plain-text%' or response::text like '%plain-text-key-123%'`,
      ),
    ).toBe(0)
    await db.query(
      `update credits.idempotency_keys set expires_at = now() - interval '1 second' where tenant_id = $1`,
      [tenant],
    )
    const r = await json(['credits', 'topup', tenant, '10', '--idempotency-key', 'plain-text-key-123'])
    expect(r.doc.replayed).toBe(false)
    expect(await account(tenant)).toEqual({ balance: 20, reserved: 0 })
  })
})

describe('reservations', () => {
  it('reserve holds credits; a partial commit spends part and releases the rest', async () => {
    const tenant = t('res')
    await cli(['credits', 'topup', tenant, '100'])
    const res = await json(['credits', 'reserve', tenant, '60', '--ttl', '10m'])
    expect(res.doc).toMatchObject({ kind: 'reserve', amount: 60, balance: 100, reserved: 60, available: 40 })
    expect(res.doc.reservation_id).toMatch(/^[0-9a-f-]{36}$/)
    const over = await json(['credits', 'consume', tenant, '41'])
    expect(over.doc.error.code).toBe('INSUFFICIENT_CREDITS')
    const commit = await json(['credits', 'commit', res.doc.reservation_id, '--amount', '25'])
    expect(commit.doc).toMatchObject({
      kind: 'commit',
      amount: 25,
      balance: 75,
      reserved: 0,
      available: 75,
      reservation_id: res.doc.reservation_id,
    })
    const twice = await json(['credits', 'commit', res.doc.reservation_id])
    expect(twice.code).toBe(1)
    expect(twice.doc.error.code).toBe('RESERVATION_NOT_HELD')
    expect(await account(tenant)).toEqual({ balance: 75, reserved: 0 })
  })

  it('cancel releases everything; committing more than reserved is refused', async () => {
    const tenant = t('res2')
    await cli(['credits', 'topup', tenant, '100'])
    const res = await json(['credits', 'reserve', tenant, '30'])
    const tooMuch = await json(['credits', 'commit', res.doc.reservation_id, '--amount', '31'])
    expect(tooMuch.code).toBe(1)
    expect(tooMuch.doc.error.code).toBe('COMMIT_EXCEEDS_RESERVATION')
    const cancel = await json(['credits', 'cancel', res.doc.reservation_id])
    expect(cancel.doc).toMatchObject({ kind: 'cancel', amount: 30, balance: 100, reserved: 0 })
    expect(await account(tenant)).toEqual({ balance: 100, reserved: 0 })
  })

  it('a concurrent commit and cancel of one reservation settle it once', async () => {
    const tenant = t('res3')
    await cli(['credits', 'topup', tenant, '100'])
    const res = await json(['credits', 'reserve', tenant, '40'])
    const [a, b] = await Promise.all([
      json(['credits', 'commit', res.doc.reservation_id]),
      json(['credits', 'cancel', res.doc.reservation_id]),
    ])
    expect([a.code, b.code].sort()).toEqual([0, 1])
    const acct = await account(tenant)
    expect(acct!.reserved).toBe(0)
    expect([60, 100]).toContain(acct!.balance)
  })

  it('an expired reservation cannot be committed; gc releases it on database time, once', async () => {
    const tenant = t('res4')
    await cli(['credits', 'topup', tenant, '100'])
    const res = await json(['credits', 'reserve', tenant, '45'])
    await db.query(`update credits.reservations set expires_at = now() - interval '1 minute' where id = $1`, [
      res.doc.reservation_id,
    ])
    const late = await json(['credits', 'commit', res.doc.reservation_id])
    expect(late.doc.error.code).toBe('RESERVATION_EXPIRED')
    const health = await json(['status'])
    expect(
      health.doc.checks.find((c: { name: string }) => c.name === 'overdue_reservations').value,
    ).toBeGreaterThanOrEqual(1)
    const gc = await json(['credits', 'gc'])
    expect(gc.code, gc.stderr).toBe(0)
    expect(gc.doc.reservations_expired).toBeGreaterThanOrEqual(1)
    expect(await account(tenant)).toEqual({ balance: 100, reserved: 0 })
    const again = await json(['credits', 'gc'])
    expect(again.doc.reservations_expired).toBe(0)
    const { rows } = await db.query(`select status from credits.reservations where id = $1`, [
      res.doc.reservation_id,
    ])
    expect(rows[0]!.status).toBe('expired')
    expect(
      await count(`select count(*) as n from credits.audit_logs where tenant_id = $1 and action = 'expire'`, [
        tenant,
      ]),
    ).toBe(1)
  })

  it('gc purges expired idempotency keys', async () => {
    await cli(['credits', 'topup', t('gc'), '1', '--idempotency-key', 'old'])
    await db.query(
      `update credits.idempotency_keys set expires_at = now() - interval '1 day' where tenant_id = $1`,
      [t('gc')],
    )
    const gc = await json(['credits', 'gc'])
    expect(gc.doc.idempotency_keys_purged).toBeGreaterThanOrEqual(1)
    expect(
      await count('select count(*) as n from credits.idempotency_keys where tenant_id = $1', [t('gc')]),
    ).toBe(0)
  })

  it('rejects a reservation id that is not a uuid with exit 2', async () => {
    const r = await cli(['credits', 'commit', 'not-a-uuid'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('RESERVATION must be a reservation id')
  })
})

describe('balance and the Redis cache', () => {
  it('balance reads the cache after a write, --fresh reads the database', async () => {
    const tenant = t('cached')
    await cli(['credits', 'topup', tenant, '12'])
    const cached = await json(['credits', 'balance', tenant])
    expect(cached.doc).toEqual({
      tenant_id: tenant,
      balance: 12,
      reserved: 0,
      available: 12,
      source: 'cache',
    })
    const fresh = await json(['credits', 'balance', tenant, '--fresh'])
    expect(fresh.doc.source).toBe('db')
    // A write updates the cache: the next cached read is the new figure, not the old one.
    await cli(['credits', 'consume', tenant, '2'])
    expect((await json(['credits', 'balance', tenant])).doc).toMatchObject({ balance: 10, source: 'cache' })
  })

  it('consume never trusts the cache: a stale cached balance cannot allow an overdraft', async () => {
    const tenant = t('stale')
    await cli(['credits', 'topup', tenant, '10'])
    // Poison the cache with a newer-looking, larger balance.
    const redis = new Redis(redisUrl())
    const key = await cacheKey(db, tenant)
    try {
      await redis.hset(key, { version: '999', balance: '1000', reserved: '0' })
      // the poisoned entry is the one balance reads
      expect((await json(['credits', 'balance', tenant])).doc).toMatchObject({
        balance: 1000,
        source: 'cache',
      })
      const r = await json(['credits', 'consume', tenant, '500'])
      expect(r.code).toBe(1)
      expect(r.doc.error.code).toBe('INSUFFICIENT_CREDITS')
      expect(await account(tenant)).toEqual({ balance: 10, reserved: 0 })
    } finally {
      await redis.del(key)
      redis.disconnect()
    }
  })

  it('two databases sharing one Redis each show their own balance of a tenant of the same name', async () => {
    const other = await createTestDatabase('ledger_other')
    const tenant = t('shared-name')
    const there = { CREDITS_DATABASE_URL: other.url }
    try {
      expect((await cli(['migrate', 'up', '--no-backup'], there)).code).toBe(0)
      // Both accounts reach version 1: with one key per tenant, the second write was refused as
      // no newer, and the second database showed the first one's balance.
      expect((await cli(['credits', 'topup', tenant, '10'])).code).toBe(0)
      expect((await cli(['credits', 'topup', tenant, '20'], there)).code).toBe(0)
      expect((await json(['credits', 'balance', tenant])).doc).toMatchObject({ balance: 10, source: 'cache' })
      expect((await json(['credits', 'balance', tenant], there)).doc).toMatchObject({
        balance: 20,
        source: 'cache',
      })
      // A write to one drops its own entry only.
      expect((await cli(['credits', 'consume', tenant, '15'], there)).code).toBe(0)
      expect((await json(['credits', 'balance', tenant], there)).doc).toMatchObject({ balance: 5 })
      expect((await json(['credits', 'balance', tenant])).doc).toMatchObject({ balance: 10, source: 'cache' })
    } finally {
      await other.drop()
    }
  })

  it("a restore drops the cached balances of the database restored into, and no other database's", async () => {
    const target = await createTestDatabase('ledger_restore')
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-ledger-restore-'))
    const backupKey = { BACKUP_KEY: `b1:${randomBytes(32).toString('base64')}` }
    const there = { CREDITS_DATABASE_URL: target.url, ...backupKey }
    const tenant = t('restored')
    const redis = new Redis(redisUrl())
    try {
      expect((await cli(['migrate', 'up', '--no-backup'], there)).code).toBe(0)
      expect((await cli(['credits', 'topup', tenant, '7'], there)).code).toBe(0)
      const made = await json(['backup', 'create', '--dir', dir], there)
      expect(made.code, made.stderr).toBe(0)
      // Spent after the backup: the restore takes the account back to version 1 and balance 7.
      expect((await cli(['credits', 'consume', tenant, '3'], there)).code).toBe(0)
      expect((await cli(['credits', 'topup', tenant, '30'])).code).toBe(0)
      const targetKey = await cacheKey(target, tenant)
      const otherKey = await cacheKey(db, tenant)
      expect((await json(['credits', 'balance', tenant], there)).doc).toMatchObject({
        balance: 4,
        source: 'cache',
      })
      expect(await redis.hget(otherKey, 'balance')).toBe('30')

      const restored = await cli(
        ['restore', made.doc.file, '--target', target.url, '--force', '--yes'],
        there,
      )
      expect(restored.code, restored.stderr).toBe(0)
      expect(await redis.exists(targetKey)).toBe(0)
      expect(await redis.hget(otherKey, 'balance')).toBe('30')
      expect((await json(['credits', 'balance', tenant], there)).doc).toMatchObject({
        balance: 7,
        source: 'db',
      })
    } finally {
      redis.disconnect()
      await target.drop()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it('keeps working without Redis, with one warning that does not show the password', async () => {
    const tenant = t('noredis')
    const extra = { REDIS_URL: 'redis://:r3dis-pw@127.0.0.1:1' }
    const top = await cli(['credits', 'topup', tenant, '9'], extra)
    expect(top.code, top.stderr).toBe(0)
    expect(top.stderr.match(/unavailable/g)).toHaveLength(1)
    expect(top.stderr).not.toContain('r3dis-pw')
    const bal = await json(['credits', 'balance', tenant], extra)
    expect(bal.doc).toMatchObject({ balance: 9, source: 'db' })
  })
})

describe('payment data', () => {
  it('the token is stored encrypted and masked, and appears nowhere else', async () => {
    const tenant = t('card')
    const token = 'tok_live_4000056655665556'
    const file = path.join(os.tmpdir(), `shx-token-${run}`)
    fs.writeFileSync(file, token + '\n')
    try {
      const viaFile = await cli([
        '--verbose',
        'credits',
        'topup',
        tenant,
        '50',
        '--payment-method',
        'card',
        '--payment-token-file',
        file,
      ])
      const viaStdin = await cli(
        ['--json', 'credits', 'topup', tenant, '5', '--payment-token-stdin'],
        {},
        token,
      )
      const history = await cli(['credits', 'history', tenant])
      const historyJson = await cli(['--json', 'credits', 'history', tenant])
      for (const r of [viaFile, viaStdin, history, historyJson]) {
        expect(r.code, r.stderr).toBe(0)
        expect(r.stdout + r.stderr).not.toContain(token)
        expect(r.stdout + r.stderr).not.toContain('4000056655665556')
      }
      expect(history.stdout).toContain('**** 5556')
      for (const table of [
        'credit_transactions',
        'audit_logs',
        'idempotency_keys',
        'credit_accounts',
        'reservations',
      ]) {
        const n = await count(`select count(*) as n from credits.${table} x where x::text like $1`, [
          `%${token.slice(-12)}%`,
        ])
        expect(n, table).toBe(0)
      }
      const { rows } = await db.query<{ payment_encrypted: Buffer; payment_masked: string }>(
        `select payment_encrypted, payment_masked from credits.credit_transactions where tenant_id = $1 and payment_encrypted is not null`,
        [tenant],
      )
      expect(rows).toHaveLength(2)
      const ring = parseKeyring(encryptKey, { envName: 'ENCRYPT_KEY', bytes: { exact: 32 } }, 'test')
      for (const row of rows) {
        expect(row.payment_masked).toBe('**** 5556')
        expect(decryptPaymentToken(row.payment_encrypted, ring, { tenantId: tenant })).toBe(token)
      }
    } finally {
      fs.rmSync(file, { force: true })
    }
  })

  it('a token needs ENCRYPT_KEY against a server: exit 2, nothing written', async () => {
    const tenant = t('nokey')
    const r = await cli(
      ['credits', 'topup', tenant, '5', '--payment-token-stdin'],
      { ENCRYPT_KEY: undefined },
      'tok_123456789',
    )
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('ENCRYPT_KEY is not set')
    expect(await account(tenant)).toBeNull()
  })
})

/** 20,000 topups of 1 over 100 new tenants, in a file: a run long enough to stop half-way. */
function topupsFile(label: string) {
  const tenants = Array.from({ length: 100 }, (_, i) => t(`${label}-${i}`))
  const file = path.join(os.tmpdir(), `shx-${label}-${run}.jsonl`)
  const lines = Array.from({ length: 20_000 }, (_, i) =>
    JSON.stringify({ op: 'topup', tenant: tenants[i % 100], amount: 1 }),
  )
  fs.writeFileSync(file, lines.join('\n') + '\n')
  return { tenants, file }
}

/** The credits the tenants hold in all. */
const heldBy = (tenants: string[]) =>
  count('select coalesce(sum(balance), 0) as n from credits.credit_accounts where tenant_id = any($1)', [
    tenants,
  ])

describe('credits apply', () => {
  it('applies many operations, one result line each in order; bad lines fail alone; a re-run replays', async () => {
    const a = t('bulk-a')
    const b = t('bulk-b')
    const lines = [
      JSON.stringify({ op: 'topup', tenant: a, amount: 100 }),
      JSON.stringify({ op: 'topup', tenant: b, amount: 10 }),
      JSON.stringify({ op: 'consume', tenant: a, amount: 30 }),
      '{not json',
      JSON.stringify({ op: 'consume', tenant: b, amount: 11 }),
      JSON.stringify({ op: 'consume', tenant: a, amount: 30, idempotency_key: 'bulk-k1' }),
      JSON.stringify({ op: 'explode', tenant: a, amount: 1 }),
      JSON.stringify({ op: 'consume', tenant: a, amount: 30 }),
    ]
    const file = path.join(os.tmpdir(), `shx-ops-${run}.jsonl`)
    fs.writeFileSync(file, lines.join('\n') + '\n')
    try {
      const first = await cli(['credits', 'apply', '--file', file, '--chunk-size', '3'])
      expect(first.code).toBe(1) // some lines failed
      const out = first.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
      expect(out.map((o) => o.line)).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
      expect(out.map((o) => o.ok)).toEqual([true, true, true, false, false, true, false, true])
      expect(out[3].error.code).toBe('USAGE')
      expect(out[4].error.code).toBe('INSUFFICIENT_CREDITS')
      expect(out[6].error.message).toContain('op must be one of')
      expect(first.stderr).toContain('8 operation(s): 5 applied, 0 replayed, 3 failed')
      expect(await account(a)).toEqual({ balance: 10, reserved: 0 })
      expect(await account(b)).toEqual({ balance: 10, reserved: 0 })

      const again = await cli(['credits', 'apply', '--file', file])
      expect(again.stderr).toContain('8 operation(s): 0 applied, 5 replayed, 3 failed')
      expect(await account(a)).toEqual({ balance: 10, reserved: 0 })
    } finally {
      fs.rmSync(file, { force: true })
    }
  })

  it('keeps each tenant in file order across parallel lanes, and results in input order', async () => {
    const tenants = Array.from({ length: 20 }, (_, i) => t(`lane-${i}`))
    const lines: string[] = []
    for (const step of [
      { op: 'topup', amount: 5 },
      { op: 'consume', amount: 5 },
      { op: 'consume', amount: 1 },
    ]) {
      for (const tenant of tenants) lines.push(JSON.stringify({ ...step, tenant }))
    }
    const r = await cli(
      ['credits', 'apply', '--chunk-size', '7', '--batch', `lanes-${run}`],
      {},
      lines.join('\n') + '\n',
    )
    const out = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    expect(out.map((o) => o.line)).toEqual(lines.map((_, i) => i + 1))
    // topups and the first consumes succeed; each tenant's second consume finds nothing left
    expect(out.filter((o) => o.ok)).toHaveLength(40)
    expect(out.slice(40).every((o) => o.error?.code === 'INSUFFICIENT_CREDITS')).toBe(true)
    for (const tenant of tenants) expect(await account(tenant)).toEqual({ balance: 0, reserved: 0 })
  })

  it('fails a line with a field its op does not take, a field given twice, or an amount given as a string, and applies the rest', async () => {
    const tenant = t('strict')
    const lines = [
      { op: 'topup', tenant, amount: 50 },
      // a misspelt key would otherwise be dropped and the line charged under a derived one
      { op: 'consume', tenant, amount: 5, idempotency_kye: 'strict-k1' },
      { op: 'consume', tenant, amount: '7' },
      // exponent notation, as JSON allows: 10
      '1e1',
      { op: 'reserve', tenant, amount: 5, descripton: 'typo' },
      { op: 'cancel', reservation: '5d0c2f9e-1b7a-4f7e-9d7a-2b1c3d4e5f60', amount: 3 },
      { tenant, amount: 1 },
      { op: 'reserve', tenant, amount: 1, ttl: 'soon' },
      // JSON.parse would keep the last: 500 charged of a line that also says 5
      'twice',
    ].map((l) =>
      l === '1e1'
        ? `{"op":"consume","tenant":${JSON.stringify(tenant)},"amount":1e1}`
        : l === 'twice'
          ? `{"op":"consume","tenant":${JSON.stringify(tenant)},"amount":5,"description":"x","amount":500}`
          : JSON.stringify(l),
    )
    // a byte-order mark before the first line, as editors on Windows write it
    const r = await cli(
      ['credits', 'apply', '--batch', `strict-${run}`],
      {},
      '\ufeff' + lines.join('\n') + '\n',
    )
    expect(r.code).toBe(1)
    const out = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    expect(out.map((o) => o.ok)).toEqual([true, false, false, true, false, false, false, false, false])
    expect(out[1].error).toEqual({
      code: 'USAGE',
      message:
        'line 2: "idempotency_kye" is not a field of a consume line; it takes op, tenant, amount, description, idempotency_key.',
    })
    expect(out[2].error.message).toBe('line 3: amount must be a JSON number, not a string; got "7".')
    expect(out[4].error.message).toMatch(
      /^line 5: "descripton" is not a field of a reserve line; it takes .*ttl/,
    )
    expect(out[5].error.message).toMatch(/^line 6: "amount" is not a field of a cancel line/)
    expect(out[6].error.message).toBe(
      'line 7 has no op; it must be one of topup, consume, reserve, commit, cancel.',
    )
    expect(out[7].error.message).toMatch(/^line 8: ttl must be a duration like 30s/)
    expect(out[8].error.message).toBe('line 9: "amount" is given twice; give each field once.')
    // only the topup and the consume of 1e1 (JSON's 10) were applied
    expect(await account(tenant)).toEqual({ balance: 40, reserved: 0 })
  })

  it("reads a named pipe (--file FIFO) to its writer's end", async () => {
    const tenant = t('fifo')
    const fifo = path.join(os.tmpdir(), `shx-ops-${run}.fifo`)
    execFileSync('mkfifo', [fifo])
    try {
      const ops = [
        { op: 'topup', tenant, amount: 5 },
        { op: 'consume', tenant, amount: 2 },
      ]
      // One writer, in two goes with a pause: the reader must not take the pause for the end.
      const writer = execa('sh', [
        '-c',
        'exec 3>"$0"; printf "%s\\n" "$1" >&3; sleep 0.3; printf "%s\\n" "$2" >&3',
        fifo,
        JSON.stringify(ops[0]),
        JSON.stringify(ops[1]),
      ])
      const [r] = await Promise.all([
        cli(['credits', 'apply', '--file', fifo, '--batch', `fifo-${run}`]),
        writer,
      ])
      expect(r.code, r.stderr).toBe(0)
      expect(
        r.stdout
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l).result.balance),
      ).toEqual([5, 3])
    } finally {
      fs.rmSync(fifo, { force: true })
    }
  })

  it('a --file that is missing or a directory is exit 2 in one sentence, not a crash', async () => {
    const missing = await cli(['credits', 'apply', '--file', path.join(os.tmpdir(), `shx-none-${run}.jsonl`)])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toMatch(/does not exist\./)
    const dir = await cli(['credits', 'apply', '--file', os.tmpdir()])
    expect(dir.code).toBe(2)
    expect(dir.stderr).toMatch(/is a directory, not a file\./)
    expect(dir.stderr).not.toMatch(/bug/)
  })

  it('reads standard input: a line without a key needs --batch; the same batch replays, another applies anew', async () => {
    const tenant = t('stdin')
    const line = `${JSON.stringify({ op: 'topup', tenant, amount: 3 })}\n`
    const nameless = await cli(['credits', 'apply'], {}, line)
    expect(nameless.code).toBe(1)
    expect(JSON.parse(nameless.stdout.trim()).error.message).toMatch(
      /^line 1 has no idempotency_key, and standard input has no name to derive one from: pass --batch ID/,
    )
    expect(await account(tenant)).toBeNull()
    const r = await cli(['credits', 'apply', '--batch', `hour-1-${run}`], {}, line)
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout.trim()).result).toMatchObject({ balance: 3 })
    const retry = await cli(['credits', 'apply', '--batch', `hour-1-${run}`], {}, line)
    expect(JSON.parse(retry.stdout.trim()).result).toMatchObject({ balance: 3, replayed: true })
    const next = await cli(['credits', 'apply', '--batch', `hour-2-${run}`], {}, line)
    expect(JSON.parse(next.stdout.trim()).result).toMatchObject({ balance: 6 })
    expect((await cli(['credits', 'apply', '--batch', 'has space'], {}, line)).code).toBe(2)
  })

  it('a pipe that sends a few lines and waits has them applied and answered while it waits; Ctrl-C then is exit 130 at once', async () => {
    const tenant = t('stream')
    const child = applyChild(['--batch', `stream-${run}`], 30_000)
    let out = ''
    child.stdout!.on('data', (d) => (out += d))
    const results = async (n: number) => {
      const until = Date.now() + 10_000
      while (out.split('\n').filter(Boolean).length < n && Date.now() < until)
        await new Promise((r) => setTimeout(r, 20))
      return out
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l))
    }
    // Two lines, then nothing: not 2,000 lines nor the end of the pipe, yet both are applied.
    child.stdin!.write(
      `${JSON.stringify({ op: 'topup', tenant, amount: 10 })}\n${JSON.stringify({ op: 'consume', tenant, amount: 4 })}\n`,
    )
    expect((await results(2)).map((r) => r.result?.balance)).toEqual([10, 6])
    expect(await account(tenant)).toEqual({ balance: 6, reserved: 0 })
    // a balance read fills the cache; the stream's next write must not leave it stale until the end
    expect((await json(['credits', 'balance', tenant])).doc).toMatchObject({ balance: 6 })
    child.stdin!.write(`${JSON.stringify({ op: 'consume', tenant, amount: 1 })}\n`)
    expect((await results(3)).map((r) => r.result?.balance)).toEqual([10, 6, 5])
    await new Promise((r) => setTimeout(r, 1500))
    expect((await json(['credits', 'balance', tenant])).doc).toMatchObject({ balance: 5 })
    const started = Date.now()
    child.kill('SIGINT')
    const r = await child
    expect(r.exitCode).toBe(130)
    expect(Date.now() - started).toBeLessThan(5000)
    expect(await account(tenant)).toEqual({ balance: 5, reserved: 0 })
  })

  it('Ctrl-C mid-file: every operation that committed has its result line, and the summary says the run was interrupted', async () => {
    const { tenants, file } = topupsFile('ctrlc')
    try {
      const child = applyChild(['--file', file], 60_000)
      let out = ''
      child.stdout!.on('data', (d) => (out += d))
      const until = Date.now() + 20_000
      while (!out.includes('\n') && Date.now() < until) await new Promise((r) => setTimeout(r, 10))
      child.kill('SIGINT')
      const r = await child
      expect(r.exitCode).toBe(130)
      const results = String(r.stdout)
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
      expect(results.length).toBeLessThan(20_000)
      expect(results.every((x) => x.ok)).toBe(true)
      // lanes run side by side: the lines printed may have gaps, but none is printed twice
      expect(new Set(results.map((x) => x.line)).size).toBe(results.length)
      // what the database holds is exactly what was reported
      const held = await heldBy(tenants)
      expect(held).toBe(results.length)
      expect(String(r.stderr)).toContain(
        `${results.length} operation(s): ${results.length} applied, 0 replayed, 0 failed, then interrupted; a line without a result line was not applied.`,
      )
    } finally {
      fs.rmSync(file, { force: true })
    }
  })

  it('the reader of its output goes away (| head -1): applying stops, exit 1, and the rest is not applied', async () => {
    const { tenants, file } = topupsFile('headed')
    try {
      const r = await execa(
        'bash',
        [
          '-c',
          '"$0" "$1" credits apply --file "$2" | head -1 >/dev/null; echo "exit=${PIPESTATUS[0]}" >&2',
          process.execPath,
          BIN,
          file,
        ],
        { env: env(), extendEnv: false, reject: false, timeout: 60_000 },
      )
      expect(String(r.stderr)).toContain('exit=1')
      expect(String(r.stderr)).toContain(
        'Standard output was closed, so applying stopped: the results of further lines could not be delivered.',
      )
      const held = await heldBy(tenants)
      expect(held).toBeGreaterThan(0)
      expect(held).toBeLessThan(20_000)
      expect(String(r.stderr)).toContain(`${held} operation(s): ${held} applied`)
    } finally {
      fs.rmSync(file, { force: true })
    }
  })

  it('two files with the same line at the same place are two batches: both applied, each replayed on its own', async () => {
    const tenant = t('hourly')
    const text = `${JSON.stringify({ op: 'topup', tenant, amount: 100 })}\n${JSON.stringify({ op: 'consume', tenant, amount: 5 })}\n`
    const first = path.join(os.tmpdir(), `shx-hour1-${run}.jsonl`)
    const second = path.join(os.tmpdir(), `shx-hour2-${run}.jsonl`)
    fs.writeFileSync(first, text)
    // The next hour: the same consume on line 2, and a line more.
    fs.writeFileSync(second, text + `${JSON.stringify({ op: 'consume', tenant, amount: 1 })}\n`)
    try {
      expect((await cli(['credits', 'apply', '--file', first])).code).toBe(0)
      expect(await account(tenant)).toEqual({ balance: 95, reserved: 0 })
      const again = await cli(['credits', 'apply', '--file', first])
      expect(again.stderr).toContain('2 operation(s): 0 applied, 2 replayed, 0 failed')
      const other = await cli(['credits', 'apply', '--file', second])
      expect(other.stderr).toContain('3 operation(s): 3 applied, 0 replayed, 0 failed')
      expect(await account(tenant)).toEqual({ balance: 189, reserved: 0 })
    } finally {
      fs.rmSync(first, { force: true })
      fs.rmSync(second, { force: true })
    }
  })
})

describe('history and status', () => {
  it('history lists the transactions newest first, with --limit and --since', async () => {
    const tenant = t('hist')
    await cli(['credits', 'topup', tenant, '10'])
    await cli(['credits', 'consume', tenant, '1', '--description', 'scan 1'])
    await cli(['credits', 'consume', tenant, '2', '--description', 'scan 2'])
    const all = await json(['credits', 'history', tenant])
    expect(
      all.doc.transactions.map((e: { kind: string; amount: number }) => `${e.kind}:${e.amount}`),
    ).toEqual(['consume:2', 'consume:1', 'topup:10'])
    expect((await json(['credits', 'history', tenant, '--limit', '1'])).doc.transactions).toHaveLength(1)
    expect(
      (await json(['credits', 'history', tenant, '--since', '2999-01-01'])).doc.transactions,
    ).toHaveLength(0)
    expect((await cli(['credits', 'history', tenant, '--since', 'yesterday-ish'])).code).toBe(2)
  })

  it('status on a chain never verified: UNKNOWN and exit 1, not an integrity failure (exit 4)', async () => {
    const fresh = await createTestDatabase('ledger_unverified')
    try {
      const env = { CREDITS_DATABASE_URL: fresh.url }
      expect((await cli(['migrate', 'up', '--no-backup'], env)).code).toBe(0)
      const r = await cli(['--json', 'status'], env)
      expect(r.code, r.stderr).toBe(1)
      const doc = JSON.parse(r.stdout)
      expect(doc.ok).toBe(false)
      const chain = doc.checks.find((c: { name: string }) => c.name === 'chain_errors')
      expect(chain).toMatchObject({ value: null, state: 'unknown', ok: false })
      expect(chain.note).toContain('never verified')
      const text = await cli(['status'], env)
      expect(text.code).toBe(1)
      expect(text.stdout).toMatch(/chain_errors\s+-\s+UNKNOWN\s+never verified/)
      // Verified and intact: every check is known and zero.
      expect((await cli(['verify-chain'], env)).code).toBe(0)
      expect((await cli(['status'], env)).code).toBe(0)
    } finally {
      await fresh.drop()
    }
  })

  it('status with a shadow database it cannot reach: the credits figures still count (exit 4 on a broken chain)', async () => {
    const fresh = await createTestDatabase('ledger_noshadow')
    const tenant = t('noshadow')
    try {
      const env = { CREDITS_DATABASE_URL: fresh.url }
      const gone = { ...env, SHADOW_DATABASE_URL: 'postgres://postgres@127.0.0.1:1/shadow' }
      expect((await cli(['migrate', 'up', '--no-backup'], env)).code).toBe(0)
      expect((await cli(['credits', 'topup', tenant, '10'], env)).code).toBe(0)
      expect((await cli(['verify-chain'], env)).code).toBe(0)
      // Intact: the unreachable shadow database's figure is unknown, so exit 1, with the cause.
      const unknown = await cli(['--json', 'status'], gone)
      expect(unknown.code, unknown.stderr).toBe(1)
      const check = JSON.parse(unknown.stdout).checks.find(
        (c: { name: string }) => c.name === 'unguarded_deployments',
      )
      expect(check).toMatchObject({ value: null, state: 'unknown' })
      expect(check.note).toMatch(/^Cannot connect to .*127\.0\.0\.1:1.*connection refused/)
      // An amount edited behind the chain's back: verify-chain records it, and status says so.
      await fresh.query(
        `begin; set local session_replication_role = replica;
         update credits.audit_logs set amount = amount + 1 where tenant_id = '${tenant}'; commit`,
      )
      expect((await cli(['verify-chain'], env)).code).toBe(4)
      const broken = await cli(['status'], gone)
      expect(broken.code, broken.stderr).toBe(4)
      expect(broken.stdout).toMatch(/chain_errors\s+1\s+FAIL/)
      expect(broken.stdout).toMatch(/unguarded_deployments\s+-\s+UNKNOWN\s+Cannot connect/)
    } finally {
      await fresh.drop()
    }
  })

  it('status reports the P0 figures and exits 0 when they are all zero', async () => {
    const v = await cli(['verify-chain'])
    expect(v.code, v.stdout + v.stderr).toBe(0)
    const r = await json(['status'])
    expect(r.code, r.stderr).toBe(0)
    const byName = Object.fromEntries(
      r.doc.checks.map((c: { name: string; value: number }) => [c.name, c.value]),
    )
    expect(byName.negative_balances).toBe(0)
    expect(byName.chain_errors).toBe(0)
    expect(r.doc.ok).toBe(true)
  })

  it('a ledger command against an unmigrated database says to run migrate up', async () => {
    const empty = await createTestDatabase('ledger_empty')
    try {
      const r = await cli(['credits', 'balance', 'x'], { CREDITS_DATABASE_URL: empty.url })
      expect(r.code).toBe(1)
      expect(r.stderr).toContain("Run 'shieldx migrate up' first")
    } finally {
      await empty.drop()
    }
  })
})
