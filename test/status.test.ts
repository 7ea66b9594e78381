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
