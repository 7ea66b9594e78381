/**
 * verify-chain against real tampering: each attack on its own tenant, done the way an attacker
 * with superuser rights would (triggers disabled), each detected with the right reason and exit 4.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { chainHash } from '../src/core/audit/chain.js'
import { runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { adminUrl, cleanEnv } from './helpers/env.js'

let db: TestDatabase
let home: string
const k1 = randomBytes(32)
const auditKey = `k1:${k1.toString('base64')}`

const env = (extra: Record<string, string | undefined> = {}) =>
  cleanEnv({ CREDITS_DATABASE_URL: db.url, SHIELDX_HOME: home, AUDIT_HMAC_KEY: auditKey, ...extra })
const cli = (args: string[], extra: Record<string, string | undefined> = {}) =>
  runCli(['--no-color', ...args], { env: env(extra) })

interface Verdict {
  ok: boolean
  tenants_checked: number
  rows_checked: number
  broken: Array<{ tenant_id: string; seq: number; reason: string }>
  checkpoint: unknown
}

async function verify(args: string[] = [], extra: Record<string, string | undefined> = {}) {
  const r = await cli(['--json', 'verify-chain', ...args], extra)
  return { code: r.code, stderr: r.stderr, doc: JSON.parse(r.stdout) as Verdict }
}

/** A tenant with n operations on its chain. */
async function tenantWithHistory(tenant: string, n = 5): Promise<void> {
  expect((await cli(['credits', 'topup', tenant, '1000'])).code).toBe(0)
  for (let i = 1; i < n; i++) expect((await cli(['credits', 'consume', tenant, String(i)])).code).toBe(0)
}

/** As a superuser who switched the append-only triggers off. */
async function tamper(sql: string, params: unknown[] = []): Promise<void> {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  try {
    await c.query('begin')
    await c.query(`set local session_replication_role = replica`)
    await c.query(sql, params)
    await c.query('commit')
  } finally {
    await c.end()
  }
}

function brokenFor(v: Verdict, tenant: string) {
  return v.broken.filter((b) => b.tenant_id === tenant)
}

beforeAll(async () => {
  db = await createTestDatabase('verify')
  home = tempHome('verify')
  expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
})
afterAll(async () => {
  await db.drop()
  fs.rmSync(home, { recursive: true, force: true })
})

describe('an intact ledger', () => {
  it('verifies clean with exit 0, with every worker count, and has the documented shape', async () => {
    for (let i = 0; i < 6; i++) await tenantWithHistory(`clean-${i}`, 3)
    for (const workers of ['1', '2', '3']) {
      const v = await verify(['--workers', workers])
      expect(v.code, v.stderr).toBe(0)
      expect(v.doc).toMatchObject({ ok: true, tenants_checked: 6, rows_checked: 18, broken: [] })
      expect(Object.keys(v.doc).sort()).toEqual([
        'broken',
        'checkpoint',
        'ok',
        'rows_checked',
        'tenants_checked',
      ])
    }
  })

  it('a wrong AUDIT_HMAC_KEY (same key id, other bytes): exit 4, with a warning to check the key before crying tampering', async () => {
    const wrong = `k1:${randomBytes(32).toString('base64')}`
    const r = await cli(['--json', 'verify-chain'], { AUDIT_HMAC_KEY: wrong })
    expect(r.code).toBe(4)
    expect(JSON.parse(r.stdout).broken.every((b: { seq: number }) => b.seq === 1)).toBe(true)
    expect(r.stderr).toContain('every chain breaks at its first row: check that AUDIT_HMAC_KEY holds the key')
    // The right key: intact, and no such warning.
    const ok = await cli(['--json', 'verify-chain'])
    expect(ok.code).toBe(0)
    expect(ok.stderr).not.toContain('first row')
  })

  it('a --checkpoint-file that cannot be written: exit 2, and no checkpoint is recorded in the database either', async () => {
    const before = Number(
      (await db.query<{ n: string }>('select count(*) as n from credits.audit_checkpoints')).rows[0]!.n,
    )
    for (const file of ['/proc/shieldx-no-such-dir/ck.json', path.join(home, 'a-file', 'ck.json')]) {
      fs.writeFileSync(path.join(home, 'a-file'), 'x')
      const r = await cli(['--json', 'verify-chain', '--checkpoint', '--checkpoint-file', file])
      expect(r.code, file).toBe(2)
      expect(JSON.parse(r.stdout).error.message).toMatch(
        /^--checkpoint-file: cannot use .* as a directory \(/,
      )
    }
    const after = Number(
      (await db.query<{ n: string }>('select count(*) as n from credits.audit_checkpoints')).rows[0]!.n,
    )
    expect(after).toBe(before)
  })

  it('a --checkpoint-file in a directory that does not exist: exit 2 naming it, and nothing is made or recorded', async () => {
    const count = async () =>
      Number(
        (await db.query<{ n: string }>('select count(*) as n from credits.audit_checkpoints')).rows[0]!.n,
      )
    const before = await count()
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-fix2-cpdir-'))
    try {
      const missing = path.join(base, 'mistyped', 'dir')
      const r = await cli([
        '--json',
        'verify-chain',
        '--checkpoint',
        '--checkpoint-file',
        path.join(missing, 'cp.json'),
      ])
      expect(r.code, r.stderr).toBe(2)
      expect(JSON.parse(r.stdout).error.message).toBe(
        `--checkpoint-file: cannot use ${missing} as a directory (it does not exist).`,
      )
      expect(fs.readdirSync(base)).toEqual([])
      expect(await count()).toBe(before)
    } finally {
      fs.rmSync(base, { recursive: true, force: true })
    }
  })

  it('--workers outside 1-64 is exit 2 before anything runs', async () => {
    for (const n of ['0', '65', '100000']) {
      const r = await cli(['verify-chain', '--workers', n])
      expect(r.code, n).toBe(2)
      expect(r.stderr).toContain(`--workers must be from 1 to 64; got ${n}.`)
    }
  })

  it('--tenant naming no tenant at all is exit 1 saying so, not a clean check of 0 tenants', async () => {
    const r = await cli(['--json', 'verify-chain', '--tenant', 'no-such-tenant'])
    expect(r.code).toBe(1)
    expect(JSON.parse(r.stdout).error).toMatchObject({ code: 'ACCOUNT_NOT_FOUND' })
  })

  it('the append-only triggers refuse UPDATE, DELETE and TRUNCATE to a normal session', async () => {
    await expect(db.query(`update credits.audit_logs set amount = 1`)).rejects.toThrow(/append-only/)
    await expect(db.query(`delete from credits.audit_logs`)).rejects.toThrow(/append-only/)
    await expect(db.query(`truncate credits.audit_logs`)).rejects.toThrow(/append-only/)
  })
})

describe('tampering, each detected with the right reason (exit 4)', () => {
  beforeAll(async () => {
    // Tampering leaves the ledger broken for the rest of this file: start from a checkpoint of
    // the clean state, which the cut-off-tail case needs.
    const cp = await verify(['--checkpoint'])
    expect(cp.code, cp.stderr).toBe(0)
  })

  it('an edited amount: hash_mismatch at that row', async () => {
    await tenantWithHistory('t-edit')
    await tamper(
      `update credits.audit_logs set amount = amount + 1000 where tenant_id = 't-edit' and seq = 3`,
    )
    const v = await verify()
    expect(v.code).toBe(4)
    expect(brokenFor(v.doc, 't-edit')).toEqual([{ tenant_id: 't-edit', seq: 3, reason: 'hash_mismatch' }])
  })

  it('a balance or a reservation changed with an UPDATE of the account (the chain itself intact): balance_mismatch at the head', async () => {
    await tenantWithHistory('t-mint', 3)
    const head = Number(
      (
        await db.query<{ s: string }>(
          `select chain_seq as s from credits.credit_accounts where tenant_id = 't-mint'`,
        )
      ).rows[0]!.s,
    )
    // No trigger to switch off: one UPDATE mints credits, and every row of the chain still verifies.
    await db.query(`update credits.credit_accounts set balance = balance + 99000 where tenant_id = 't-mint'`)
    const v = await verify()
    expect(v.code).toBe(4)
    expect(brokenFor(v.doc, 't-mint')).toEqual([
      { tenant_id: 't-mint', seq: head, reason: 'balance_mismatch' },
    ])
    const one = await verify(['--tenant', 't-mint'])
    expect(one.code).toBe(4)
    expect(one.doc.broken).toEqual([{ tenant_id: 't-mint', seq: head, reason: 'balance_mismatch' }])
    await db.query(
      `update credits.credit_accounts set balance = balance - 99000, reserved = 7 where tenant_id = 't-mint'`,
    )
    expect(brokenFor((await verify()).doc, 't-mint')).toEqual([
      { tenant_id: 't-mint', seq: head, reason: 'balance_mismatch' },
    ])
    await db.query(`update credits.credit_accounts set reserved = 0 where tenant_id = 't-mint'`)
    expect(brokenFor((await verify()).doc, 't-mint')).toEqual([])
    // An account with no chain at all must hold nothing.
    await db.query(
      `insert into credits.credit_accounts (tenant_id, balance, version) values ('t-ghost', 500, 1)`,
    )
    expect(brokenFor((await verify()).doc, 't-ghost')).toEqual([
      { tenant_id: 't-ghost', seq: 1, reason: 'balance_mismatch' },
    ])
  })

  it('a deleted middle row: missing_row at its seq', async () => {
    await tenantWithHistory('t-gap')
    await tamper(`delete from credits.audit_logs where tenant_id = 't-gap' and seq = 2`)
    const v = await verify()
    expect(brokenFor(v.doc, 't-gap')).toEqual([{ tenant_id: 't-gap', seq: 2, reason: 'missing_row' }])
  })

  it('two swapped rows: reordered', async () => {
    await tenantWithHistory('t-swap')
    // (tenant, seq) is unique and checked row by row: swap through a spare number.
    await tamper(
      `update credits.audit_logs set seq = 1000 where tenant_id = 't-swap' and seq = 3;
       update credits.audit_logs set seq = 3 where tenant_id = 't-swap' and seq = 4;
       update credits.audit_logs set seq = 4 where tenant_id = 't-swap' and seq = 1000`,
    )
    const v = await verify()
    expect(brokenFor(v.doc, 't-swap')).toEqual([{ tenant_id: 't-swap', seq: 3, reason: 'reordered' }])
  })

  it('a forged row appended with the account head moved to match: hash_mismatch', async () => {
    await tenantWithHistory('t-forge', 3)
    const { rows } = await db.query<{ hash: Buffer; balance_after: string }>(
      `select hash, balance_after from credits.audit_logs where tenant_id = 't-forge' and seq = 3`,
    )
    const fake = randomBytes(32)
    await tamper(
      `insert into credits.audit_logs (tenant_id, seq, action, amount, balance_after, reserved_after, key_id, prev_hash, hash)
       values ('t-forge', 4, 'topup', 1000000, $1, 0, 'k1', $2, $3)`,
      [Number(rows[0]!.balance_after) + 1000000, rows[0]!.hash, fake],
    )
    await tamper(
      `update credits.credit_accounts set chain_seq = 4, chain_head = $1 where tenant_id = 't-forge'`,
      [fake],
    )
    const v = await verify()
    expect(brokenFor(v.doc, 't-forge')).toEqual([{ tenant_id: 't-forge', seq: 4, reason: 'hash_mismatch' }])
  })

  it('a row correctly signed, but with a key we do not hold: unknown_key', async () => {
    await tenantWithHistory('t-evil', 2)
    const { rows } = await db.query<{ hash: Buffer; balance_after: string }>(
      `select hash, balance_after from credits.audit_logs where tenant_id = 't-evil' and seq = 2`,
    )
    const evil = { kid: 'evil', bytes: randomBytes(32) }
    const row = {
      tenant_id: 't-evil',
      seq: 3,
      transaction_id: null,
      action: 'topup',
      amount: 5,
      balance_after: Number(rows[0]!.balance_after) + 5,
      reserved_after: 0,
      key_id: 'evil',
      created_at: new Date(Math.floor(Date.now() / 1000) * 1000),
    }
    const hash = chainHash(evil, row, rows[0]!.hash)
    await tamper(
      `insert into credits.audit_logs (tenant_id, seq, transaction_id, action, amount, balance_after, reserved_after, key_id, prev_hash, hash, created_at)
       values ($1, $2, null, $3, $4, $5, $6, $7, $8, $9, $10)`,
      [
        row.tenant_id,
        row.seq,
        row.action,
        row.amount,
        row.balance_after,
        0,
        'evil',
        rows[0]!.hash,
        hash,
        row.created_at,
      ],
    )
    await tamper(
      `update credits.credit_accounts set chain_seq = 3, chain_head = $1 where tenant_id = 't-evil'`,
      [hash],
    )
    const v = await verify()
    expect(brokenFor(v.doc, 't-evil')).toEqual([{ tenant_id: 't-evil', seq: 3, reason: 'unknown_key' }])
  })

  it('a deleted tail with the account head rewound too: truncated, against the checkpoint', async () => {
    // clean-0 was checkpointed at seq 3. Cut the last row and make the account agree.
    const { rows } = await db.query<{ hash: Buffer }>(
      `select hash from credits.audit_logs where tenant_id = 'clean-0' and seq = 2`,
    )
    await tamper(`delete from credits.audit_logs where tenant_id = 'clean-0' and seq = 3`)
    await tamper(
      `update credits.credit_accounts set chain_seq = 2, chain_head = $1 where tenant_id = 'clean-0'`,
      [rows[0]!.hash],
    )
    const v = await verify()
    expect(brokenFor(v.doc, 'clean-0')).toEqual([{ tenant_id: 'clean-0', seq: 3, reason: 'truncated' }])
  })

  it('a deleted tail without touching the account: truncated, from the account head alone', async () => {
    await tenantWithHistory('t-tail', 4)
    await tamper(`delete from credits.audit_logs where tenant_id = 't-tail' and seq >= 3`)
    const v = await verify()
    expect(brokenFor(v.doc, 't-tail')).toEqual([{ tenant_id: 't-tail', seq: 3, reason: 'truncated' }])
  })

  it('exit 4 in the human output too, naming tenant, seq and reason; no checkpoint over a broken chain', async () => {
    const r = await cli(['verify-chain', '--checkpoint'])
    expect(r.code).toBe(4)
    expect(r.stdout).toMatch(/t-edit\s+3\s+hash_mismatch/)
    expect(r.stderr).toContain('no checkpoint written')
  })

  it('--tenant checks one tenant', async () => {
    const v = await verify(['--tenant', 't-gap'])
    expect(v.code).toBe(4)
    expect(v.doc.tenants_checked).toBe(1)
    expect(v.doc.broken).toEqual([{ tenant_id: 't-gap', seq: 2, reason: 'missing_row' }])
    const ok = await verify(['--tenant', 'clean-1'])
    expect(ok.code).toBe(0)
  })
})

describe('a row outside every chain', () => {
  it('a row without a tenant_id (NOT NULL dropped by a superuser) is exit 4 with every worker count', async () => {
    const own = await createTestDatabase('verify-null')
    try {
      const at = (extra: Record<string, string | undefined> = {}) => ({
        CREDITS_DATABASE_URL: own.url,
        ...extra,
      })
      expect((await cli(['migrate', 'up', '--no-backup'], at())).code).toBe(0)
      for (const t of ['n-1', 'n-2', 'n-3'])
        expect((await cli(['credits', 'topup', t, '10'], at())).code).toBe(0)
      const c = new pg.Client({ connectionString: own.url })
      await c.connect()
      try {
        await c.query('alter table credits.audit_logs alter column tenant_id drop not null')
        await c.query(
          `insert into credits.audit_logs (tenant_id, seq, action, amount, balance_after, key_id, prev_hash, hash)
           values (null, 1, 'topup', 1, 1, 'k1', decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'))`,
        )
      } finally {
        await c.end()
      }
      for (const workers of ['1', '2', '3']) {
        const r = await cli(['verify-chain', '--workers', workers], at())
        expect(r.code, `--workers ${workers}: ${r.stderr}`).toBe(4)
        expect(r.stderr).toContain('credits.audit_logs holds a row without a tenant_id')
      }
    } finally {
      await own.drop()
    }
  })
})

describe('worker threads started before the database is opened', () => {
  it('a server that refuses connections is one sentence (exit 1), and the threads do not keep the process alive', async () => {
    const started = Date.now()
    const r = await cli(['verify-chain', '--workers', '4'], {
      CREDITS_DATABASE_URL: 'postgres://postgres@127.0.0.1:1/credits',
    })
    expect(r.code).toBe(1)
    expect(r.stderr.trim()).toBe('error: Cannot connect to PostgreSQL at 127.0.0.1:1: connection refused.')
    expect(Date.now() - started).toBeLessThan(15_000)
  })

  it('a database without the ledger schema is refused before any row is read, and the process exits', async () => {
    const empty = await createTestDatabase('verify-empty')
    try {
      const r = await cli(['verify-chain', '--workers', '3'], { CREDITS_DATABASE_URL: empty.url })
      expect(r.code).toBe(1)
      expect(r.stderr).toContain('The credits schema has not been created in this database yet.')
    } finally {
      await empty.drop()
    }
  })
})

describe('a database rolled back to an older copy', () => {
  it('is caught by a checkpoint file kept outside the database', async () => {
    const live = await createTestDatabase('verify_live')
    const file = path.join(os.tmpdir(), `shx-cp-${randomBytes(4).toString('hex')}.json`)
    let older: string | null = null
    const e = { CREDITS_DATABASE_URL: live.url }
    try {
      expect((await cli(['migrate', 'up', '--no-backup'], e)).code).toBe(0)
      for (const t of ['r-1', 'r-2']) await runCli(['credits', 'topup', t, '100'], { env: env(e) })
      // The older copy: a clone of the database as it is now.
      older = `${live.name}_old`
      const admin = new pg.Client({ connectionString: adminUrl() })
      await admin.connect()
      await admin.query(
        `select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()`,
        [live.name],
      )
      await admin.query(`create database ${older} template ${live.name}`)
      await admin.end()
      // Life goes on, and the hourly job checkpoints to a file outside the database.
      for (const t of ['r-1', 'r-2']) await runCli(['credits', 'consume', t, '10'], { env: env(e) })
      const cp = await cli(['verify-chain', '--checkpoint', '--checkpoint-file', file], e)
      expect(cp.code, cp.stderr).toBe(0)
      expect(JSON.parse(fs.readFileSync(file, 'utf8')).heads['r-1'].seq).toBe(2)
      // Someone restores the older copy. Its own checkpoint table is old too: only the file knows.
      const olderUrl = live.url.replace(`/${live.name}`, `/${older}`)
      const withoutFile = await verify([], { CREDITS_DATABASE_URL: olderUrl })
      expect(withoutFile.code).toBe(0)
      const withFile = await verify(['--checkpoint-file', file], { CREDITS_DATABASE_URL: olderUrl })
      expect(withFile.code).toBe(4)
      expect(withFile.doc.broken).toEqual([
        { tenant_id: 'r-1', seq: 2, reason: 'truncated' },
        { tenant_id: 'r-2', seq: 2, reason: 'truncated' },
      ])
    } finally {
      fs.rmSync(file, { force: true })
      await live.drop()
      if (older) {
        const admin = new pg.Client({ connectionString: adminUrl() })
        await admin.connect()
        await admin.query(`drop database if exists ${older} with (force)`)
        await admin.end()
      }
    }
  })

  it('a checkpoint file that was edited is refused (exit 4)', async () => {
    const live = await createTestDatabase('verify_cpfile')
    const file = path.join(os.tmpdir(), `shx-cp-${randomBytes(4).toString('hex')}.json`)
    const e = { CREDITS_DATABASE_URL: live.url }
    try {
      expect((await cli(['migrate', 'up', '--no-backup'], e)).code).toBe(0)
      await runCli(['credits', 'topup', 'f-1', '100'], { env: env(e) })
      expect((await cli(['verify-chain', '--checkpoint', '--checkpoint-file', file], e)).code).toBe(0)
      const doc = JSON.parse(fs.readFileSync(file, 'utf8'))
      doc.heads['f-1'].seq = 0
      fs.writeFileSync(file, JSON.stringify(doc))
      const r = await cli(['--json', 'verify-chain', '--checkpoint-file', file], e)
      expect(r.code).toBe(4)
      expect(JSON.parse(r.stdout).error.code).toBe('CHECKPOINT_FORGED')
    } finally {
      fs.rmSync(file, { force: true })
      await live.drop()
    }
  })
})

describe('key rotation', () => {
  it('new rows are signed with the first key, old rows verify with the others; a dropped key is unknown_key', async () => {
    const live = await createTestDatabase('verify_rotate')
    const k2 = `k2:${randomBytes(32).toString('base64')}`
    const e = { CREDITS_DATABASE_URL: live.url }
    try {
      expect((await cli(['migrate', 'up', '--no-backup'], e)).code).toBe(0)
      await runCli(['credits', 'topup', 'rot', '100'], { env: env(e) })
      const rotated = { ...e, AUDIT_HMAC_KEY: `${k2},${auditKey}` }
      await runCli(['credits', 'consume', 'rot', '1'], { env: env(rotated) })
      const { rows } = await live.query<{ key_id: string }>(
        `select key_id from credits.audit_logs order by seq`,
      )
      expect(rows.map((r) => r.key_id)).toEqual(['k1', 'k2'])
      expect((await verify([], rotated)).code).toBe(0)
      const dropped = await verify([], { ...e, AUDIT_HMAC_KEY: k2 })
      expect(dropped.code).toBe(4)
      expect(dropped.doc.broken).toEqual([{ tenant_id: 'rot', seq: 1, reason: 'unknown_key' }])
    } finally {
      await live.drop()
    }
  })
})
