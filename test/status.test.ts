/**
 * `status` against a database that is not (or not wholly) migrated: the usual table and --json
 * document, the figures it cannot have UNKNOWN with the cause, and the documented exit codes
 * (1 when a figure is unknown and none fails, 4 when one fails). It creates nothing.
 */
import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

let db: TestDatabase
let home: string
const auditKey = `k1:${randomBytes(32).toString('base64')}`

const env = () => cleanEnv({ CREDITS_DATABASE_URL: db.url, SHIELDX_HOME: home, AUDIT_HMAC_KEY: auditKey })
const cli = (args: string[]) => runCli(['--no-color', ...args], { env: env() })

interface CheckDoc {
  name: string
  value: number | null
  state: string
  note?: string
  ok: boolean
}

const NAMES = ['negative_balances', 'chain_errors', 'unguarded_deployments', 'overdue_reservations']
const NOT_MIGRATED = "not migrated: run 'shieldx migrate up'"

async function schemas(): Promise<string[]> {
  const { rows } = await db.query<{ nspname: string }>(
    `select nspname from pg_namespace where nspname in ('credits', 'shadow') order by 1`,
  )
  return rows.map((r) => r.nspname)
}

beforeAll(async () => {
  db = await createTestDatabase('abfix_status')
  home = tempHome('status')
})
afterAll(async () => {
  await db.drop()
})

describe('status on a database that is not migrated', () => {
  it('prints the usual table, every row UNKNOWN with the cause, and exits 1; creates nothing', async () => {
    const r = await cli(['status'])
    expect(r.code, r.stderr).toBe(1)
    const lines = r.stdout.split('\n')
    expect(lines[0]).toMatch(/^credits database: postgres:\/\/.*\/shx_abfix_status_/)
    expect(lines[1]).toMatch(/^INVARIANT\s+VALUE\s+STATE\s+NOTE$/)
    for (const name of ['negative_balances', 'chain_errors', 'overdue_reservations']) {
      expect(r.stdout).toMatch(new RegExp(`\\n${name}\\s+-\\s+UNKNOWN\\s+credits schema ${NOT_MIGRATED}\\n`))
    }
    expect(r.stdout).toMatch(
      new RegExp(`\\nunguarded_deployments\\s+-\\s+UNKNOWN\\s+shadow schema ${NOT_MIGRATED}\\n`),
    )
    expect(r.stderr).toBe('')
    expect(await schemas()).toEqual([])
  })

  it('--json: the same document as on a migrated database, the checks unknown', async () => {
    const r = await cli(['--json', 'status'])
    expect(r.code, r.stderr).toBe(1)
    const doc = JSON.parse(r.stdout) as { ok: boolean; database: string; checks: CheckDoc[] }
    expect(Object.keys(doc).sort()).toEqual(['checks', 'database', 'last_verification', 'ok'])
    expect(doc).toMatchObject({ ok: false, last_verification: null })
    expect(doc.checks.map((c) => c.name)).toEqual(NAMES)
    for (const c of doc.checks) {
      expect(c).toEqual({
        name: c.name,
        value: null,
        state: 'unknown',
        ok: false,
        note: `${c.name === 'unguarded_deployments' ? 'shadow' : 'credits'} schema ${NOT_MIGRATED}`,
      })
    }
  })

  it('credits migrated, shadow not: the credits figures count (exit 4 on a broken chain), shadow UNKNOWN', async () => {
    expect((await cli(['migrate', 'up', '--no-backup', '--schema', 'credits'])).code).toBe(0)
    expect((await cli(['credits', 'topup', 'acme', '10'])).code).toBe(0)
    expect((await cli(['verify-chain'])).code).toBe(0)
    const intact = await cli(['--json', 'status'])
    expect(intact.code, intact.stderr).toBe(1)
    const checks = (JSON.parse(intact.stdout) as { checks: CheckDoc[] }).checks
    expect(checks.map((c) => [c.name, c.state])).toEqual([
      ['negative_balances', 'ok'],
      ['chain_errors', 'ok'],
      ['unguarded_deployments', 'unknown'],
      ['overdue_reservations', 'ok'],
    ])
    expect(checks[2]!.note).toBe(`shadow schema ${NOT_MIGRATED}`)

    await db.query(
      `begin; set local session_replication_role = replica;
       update credits.audit_logs set amount = amount + 1 where tenant_id = 'acme'; commit`,
    )
    expect((await cli(['verify-chain'])).code).toBe(4)
    const broken = await cli(['status'])
    expect(broken.code, broken.stderr).toBe(4)
    expect(broken.stdout).toMatch(/\nchain_errors\s+1\s+FAIL/)
    expect(broken.stdout).toMatch(/\nunguarded_deployments\s+-\s+UNKNOWN\s+shadow schema not migrated/)
  })

  it('a shadow schema behind this shieldx: UNKNOWN, naming both versions', async () => {
    expect((await cli(['migrate', 'up', '--no-backup', '--schema', 'shadow'])).code).toBe(0)
    const { rows } = await db.query<{ v: number }>('select max(version) as v from shadow.schema_migrations')
    const newest = rows[0]!.v
    // as if the newest shadow migration had not been applied yet
    await db.query('delete from shadow.schema_migrations where version = $1', [newest])
    const r = await cli(['status'])
    expect(r.code).toBe(4) // the chain broken above still counts
    expect(r.stdout).toMatch(
      new RegExp(
        `\\nunguarded_deployments\\s+-\\s+UNKNOWN\\s+shadow schema at version ${newest - 1}, this shieldx needs ${newest}: run 'shieldx migrate up'\\n`,
      ),
    )
  })
})

describe('status on a half-broken schema (a table dropped by hand)', () => {
  let broken: TestDatabase
  const brokenEnv = () =>
    cleanEnv({ CREDITS_DATABASE_URL: broken.url, SHIELDX_HOME: home, AUDIT_HMAC_KEY: auditKey })
  const run = (args: string[]) => runCli(['--no-color', ...args], { env: brokenEnv() })

  beforeAll(async () => {
    broken = await createTestDatabase('fix2_status')
    expect((await run(['migrate', 'up', '--no-backup'])).code).toBe(0)
    expect((await run(['credits', 'topup', 'acme', '10'])).code).toBe(0)
    expect((await run(['verify-chain'])).code).toBe(0)
  })
  afterAll(async () => {
    await broken?.drop()
  })

  it('credits.reservations gone: that figure UNKNOWN with the SQL error, the others shown, exit 1', async () => {
    await broken.query('drop table credits.reservations')
    const r = await run(['status'])
    expect(r.code, r.stderr).toBe(1)
    expect(r.stderr).not.toMatch(/Unexpected error|bug/)
    expect(r.stdout).toMatch(
      /\noverdue_reservations\s+-\s+UNKNOWN\s+relation "credits\.reservations" does not exist\n/,
    )
    expect(r.stdout).toMatch(/\nnegative_balances\s+0\s+ok/)
    expect(r.stdout).toMatch(/\nchain_errors\s+0\s+ok/)
    expect(r.stdout).toMatch(/\nunguarded_deployments\s+0\s+ok/)

    const j = await run(['--json', 'status'])
    expect(j.code).toBe(1)
    const doc = JSON.parse(j.stdout) as { ok: boolean; checks: CheckDoc[] }
    expect(doc.ok).toBe(false)
    expect(doc.checks.map((c) => [c.name, c.state])).toEqual([
      ['negative_balances', 'ok'],
      ['chain_errors', 'ok'],
      ['unguarded_deployments', 'ok'],
      ['overdue_reservations', 'unknown'],
    ])
    expect(doc.checks[3]).toMatchObject({
      value: null,
      note: 'relation "credits.reservations" does not exist',
    })
  })

  it('a missing column and a missing table at once: each UNKNOWN with its cause; a failing figure still exit 4', async () => {
    await broken.query('alter table credits.chain_verifications drop column broken_count')
    let r = await run(['--json', 'status'])
    expect(r.code, r.stderr).toBe(1)
    let checks = (JSON.parse(r.stdout) as { checks: CheckDoc[] }).checks
    expect(checks.find((c) => c.name === 'chain_errors')).toMatchObject({
      state: 'unknown',
      value: null,
      note: 'column "broken_count" does not exist',
    })
    expect(checks.find((c) => c.name === 'negative_balances')).toMatchObject({ state: 'ok', value: 0 })

    // A negative balance (the CHECKs off, as a superuser could) still fails the run: exit 4.
    await broken.query(
      `do $$ declare c text; begin
         for c in select conname from pg_constraint where conrelid = 'credits.credit_accounts'::regclass and contype = 'c'
         loop execute format('alter table credits.credit_accounts drop constraint %I', c); end loop;
       end $$`,
    )
    await broken.query(
      `begin; set local session_replication_role = replica;
       update credits.credit_accounts set balance = -1, reserved = 0 where tenant_id = 'acme'; commit`,
    )
    r = await run(['--json', 'status'])
    checks = (JSON.parse(r.stdout) as { checks: CheckDoc[] }).checks
    expect(r.code, r.stderr).toBe(4)
    expect(checks.find((c) => c.name === 'negative_balances')).toMatchObject({ state: 'fail', value: 1 })
    expect(checks.find((c) => c.name === 'chain_errors')!.state).toBe('unknown')
  })
})
