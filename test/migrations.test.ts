/**
 * Migrations against a real PostgreSQL: apply, re-run, dry-run, drift, a failure in the middle
 * of a file, migrations without a transaction, concurrent runners, down, status.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execa } from 'execa'
import pg from 'pg'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { resolveSettings } from '../src/core/config/settings.js'
import { LOCK_CLASS, LOCKS } from '../src/core/db/lock.js'
import { openDatabases } from '../src/core/db/pool.js'
import { ConflictError } from '../src/core/errors.js'
import { migrateDown } from '../src/core/migrations/runner.js'
import { BIN, ROOT, runCli, spawnCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

let db: TestDatabase
let dir: string
const madeDirs: string[] = []

/**
 * The first real migration of each schema: the baseline these tests build on. Later real
 * migrations are left out, so that a new one landing does not renumber every test here; the
 * shipped set as a whole is tested by 'the shipped migrations' below.
 */
const BASELINE = ['credits/0001_ledger', 'shadow/0001_rules']

/** A migrations directory for one test: the baseline, plus whatever the test writes. */
function freshMigrationsDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-migrations-'))
  madeDirs.push(d)
  for (const base of BASELINE) {
    fs.mkdirSync(path.join(d, path.dirname(base)), { recursive: true })
    for (const direction of ['up', 'down']) {
      fs.copyFileSync(
        path.join(ROOT, 'migrations', `${base}.${direction}.sql`),
        path.join(d, `${base}.${direction}.sql`),
      )
    }
  }
  return d
}

function write(schema: string, file: string, sql: string): string {
  const p = path.join(dir, schema, file)
  fs.writeFileSync(p, sql)
  return p
}

function env(extra: Record<string, string> = {}) {
  return cleanEnv({
    CREDITS_DATABASE_URL: db.url,
    SHIELDX_MIGRATIONS_DIR: dir,
    SHIELDX_HOME: tempHome(),
    ...extra,
  })
}

const cli = (args: string[], extra: Record<string, string> = {}) =>
  runCli(['--no-color', ...args], { env: env(extra) })

async function applied(schema: string): Promise<number[]> {
  const { rows } = await db.query<{ version: number }>(
    `select version from ${schema}.schema_migrations order by version`,
  )
  return rows.map((r) => r.version)
}

async function tableExists(name: string): Promise<boolean> {
  const { rows } = await db.query<{ t: string | null }>('select to_regclass($1) as t', [name])
  return rows[0]!.t !== null
}

async function resetDatabase(): Promise<void> {
  await db.query('drop schema if exists credits cascade; drop schema if exists shadow cascade')
}

beforeAll(async () => {
  db = await createTestDatabase('migrations')
})
afterAll(async () => {
  await db.drop()
})
beforeEach(async () => {
  await resetDatabase()
  dir = freshMigrationsDir()
})
afterEach(() => {
  for (const d of madeDirs.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

describe('migrate up', () => {
  it('creates the full credits and shadow schemas and records each version with its checksum', async () => {
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain('Applied 2 migration(s)')
    expect(await applied('credits')).toEqual([1])
    expect(await applied('shadow')).toEqual([1])
    for (const table of [
      'credits.credit_accounts',
      'credits.credit_transactions',
      'credits.reservations',
      'credits.idempotency_keys',
      'credits.audit_logs',
      'credits.audit_checkpoints',
      'shadow.rules',
      'shadow.rule_deployments',
      'shadow.evaluations',
      'shadow.ab_tests',
      'shadow.ab_observations',
      'shadow.canary_runs',
      'shadow.canary_events',
    ]) {
      expect(await tableExists(table), table).toBe(true)
    }
    const { rows } = await db.query<{ checksum: string; execution_ms: number }>(
      'select checksum, execution_ms from credits.schema_migrations',
    )
    expect(rows[0]!.checksum).toMatch(/^[0-9a-f]{64}$/)
    expect(rows[0]!.execution_ms).toBeGreaterThanOrEqual(0)
  })

  it('enforces the ledger invariants in the schema: no negative balance, append-only audit log', async () => {
    await cli(['migrate', 'up', '--no-backup'])
    await expect(
      db.query(`insert into credits.credit_accounts (tenant_id, balance) values ('t1', -1)`),
    ).rejects.toThrow(/credit_accounts_balance_nonnegative/)
    await expect(
      db.query(`insert into credits.credit_accounts (tenant_id, balance, reserved) values ('t1', 5, 6)`),
    ).rejects.toThrow(/credit_accounts_reserved_within_balance/)
    const h = Buffer.alloc(32)
    await db.query(
      `insert into credits.audit_logs (tenant_id, seq, action, amount, balance_after, key_id, prev_hash, hash)
       values ('t1', 1, 'topup', 5, 5, 'k1', $1, $1)`,
      [h],
    )
    await expect(db.query(`update credits.audit_logs set amount = 6`)).rejects.toThrow(/append-only: UPDATE/)
    await expect(db.query(`delete from credits.audit_logs`)).rejects.toThrow(/append-only: DELETE/)
    await expect(db.query(`truncate credits.audit_logs`)).rejects.toThrow(/append-only: TRUNCATE/)
    const { rows } = await db.query<{ n: string }>('select count(*) as n from credits.audit_logs')
    expect(rows[0]!.n).toBe('1')
  })

  it('is a no-op the second time', async () => {
    expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
    const again = await cli(['migrate', 'up', '--no-backup'])
    expect(again.code).toBe(0)
    expect(again.stdout).toContain('Nothing to apply')
    expect(await applied('credits')).toEqual([1])
  })

  it('--dry-run prints versions and SQL and changes nothing', async () => {
    const r = await cli(['migrate', 'up', '--dry-run'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain('credits/0001_ledger up')
    expect(r.stdout).toContain('create table credits.credit_accounts')
    expect(r.stderr).toContain('nothing was changed')
    expect(await tableExists('credits.schema_migrations')).toBe(false)
    expect(await tableExists('credits.credit_accounts')).toBe(false)

    const json = await cli(['migrate', 'up', '--dry-run', '--json'])
    const doc = JSON.parse(json.stdout)
    expect(doc.dry_run).toBe(true)
    expect(doc.steps.map((s: { schema: string; version: number }) => `${s.schema}:${s.version}`)).toEqual([
      'credits:1',
      'shadow:1',
    ])
    expect(doc.steps[0].sql).toContain('create table credits.credit_accounts')
  })

  it('--to and --schema limit what is applied; a --to no migration has is exit 2', async () => {
    write('credits', '0002_add_note.up.sql', 'alter table credits.credit_accounts add column note text;\n')
    write('credits', '0002_add_note.down.sql', 'alter table credits.credit_accounts drop column note;\n')
    // A version that is not there (a typo for 1 or 2) applies nothing: exit 2.
    const typo = await cli(['migrate', 'up', '--schema', 'credits', '--to', '12', '--no-backup'])
    expect(typo.code).toBe(2)
    expect(typo.stderr).toContain('--to 12: there is no such migration (credits has 1-2)')
    expect(await tableExists('credits.schema_migrations')).toBe(false)
    const r = await cli(['migrate', 'up', '--schema', 'credits', '--to', '1', '--no-backup'])
    expect(r.code, r.stderr).toBe(0)
    expect(await applied('credits')).toEqual([1])
    expect(await tableExists('shadow.schema_migrations')).toBe(false)
    expect((await cli(['migrate', 'up', '--schema', 'credits', '--no-backup'])).code).toBe(0)
    expect(await applied('credits')).toEqual([1, 2])
  })

  it('a failing migration names the file and the SQL error and leaves the database as it was before it', async () => {
    expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
    const file = write(
      'credits',
      '0002_broken.up.sql',
      'create table credits.half_done (id int);\ninsert into credits.half_done values (1);\nselect * from credits.no_such_table;\n',
    )
    write('credits', '0002_broken.down.sql', 'drop table credits.half_done;\n')
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(file)
    expect(r.stderr).toContain('relation "credits.no_such_table" does not exist')
    expect(r.stderr).toContain('(line 3)')
    expect(r.stderr).toContain('Nothing from this migration was applied')
    expect(r.stderr).not.toMatch(/\n\s+at /) // no stack trace without --verbose
    expect(await tableExists('credits.half_done')).toBe(false)
    expect(await applied('credits')).toEqual([1])
  })

  it('refuses with exit 4 when an applied file was changed, naming it', async () => {
    expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
    const file = path.join(dir, 'credits', '0001_ledger.up.sql')
    fs.appendFileSync(file, '\n-- an innocent-looking edit\n')
    write('credits', '0002_next.up.sql', 'create table credits.next_thing (id int);\n')
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code).toBe(4)
    expect(r.stderr).toContain(file)
    expect(r.stderr).toContain('changed after it was applied')
    expect(await tableExists('credits.next_thing')).toBe(false)

    const status = await cli(['migrate', 'status', '--json'])
    expect(status.code).toBe(4)
    const doc = JSON.parse(status.stdout)
    expect(doc.schemas.credits.applied[0].state).toBe('drift')
    expect(doc.schemas.credits.pending).toEqual([{ version: 2, name: 'next' }])
  })

  it('refuses with exit 3 a database that has a migration this shieldx does not know', async () => {
    write('credits', '0002_future.up.sql', 'select 1;\n')
    expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
    fs.rmSync(path.join(dir, 'credits', '0002_future.up.sql'))
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('0002_future')
    expect(r.stderr).toContain('does not have')
  })

  it('refuses a pending migration numbered below the applied version', async () => {
    write('credits', '0003_late.up.sql', 'select 1;\n')
    expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
    write('credits', '0002_merged_late.up.sql', 'create table credits.merged_late (id int);\n')
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('0002_merged_late')
    expect(await tableExists('credits.merged_late')).toBe(false)
  })

  it('runs a -- shieldx:no-transaction migration statement by statement (CREATE INDEX CONCURRENTLY)', async () => {
    write(
      'credits',
      '0002_concurrent_index.up.sql',
      '-- shieldx:no-transaction\n' +
        'create index concurrently if not exists credit_accounts_updated on credits.credit_accounts (updated_at);\n' +
        "comment on index credits.credit_accounts_updated is 'made; concurrently';\n",
    )
    write(
      'credits',
      '0002_concurrent_index.down.sql',
      '-- shieldx:no-transaction\ndrop index concurrently credits.credit_accounts_updated;\n',
    )
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code, r.stderr).toBe(0)
    expect(await tableExists('credits.credit_accounts_updated')).toBe(true)
    expect(await applied('credits')).toEqual([1, 2])
    const down = await cli(['migrate', 'down', '--schema', 'credits', '--yes'])
    expect(down.code, down.stderr).toBe(0)
    expect(await tableExists('credits.credit_accounts_updated')).toBe(false)
  })

  it('a failing no-transaction migration says which statement failed and is not recorded', async () => {
    write(
      'credits',
      '0002_nt.up.sql',
      '-- shieldx:no-transaction\ncreate table if not exists credits.nt_one (id int);\ncreate table credits.nt_one (id int);\n',
    )
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('statement 2 of 2 failed')
    expect(r.stderr).toContain('statements 1-1 stay applied')
    expect(await applied('credits')).toEqual([1])
  })

  it('times out a slow migration with exit 124', async () => {
    write('credits', '0002_slow.up.sql', 'select pg_sleep(5);\n')
    const r = await cli(['--timeout', '1s', 'migrate', 'up', '--no-backup'])
    expect(r.code).toBe(124)
    expect(r.stderr).toContain('0002_slow.up.sql')
    expect(r.stderr).toContain('did not finish within 1s')
    expect(await applied('credits')).toEqual([1])
  })

  it('a migrations directory that does not exist is exit 2, naming it, and creates nothing', async () => {
    const missing = path.join(dir, 'no-such-dir')
    for (const args of [
      ['migrate', 'up', '--no-backup'],
      ['migrate', 'status'],
      ['migrate', 'down', '--yes'],
    ]) {
      const r = await cli(args, { SHIELDX_MIGRATIONS_DIR: missing })
      expect(r.code, args.join(' ')).toBe(2)
      expect(r.stderr).toContain(`The migrations directory ${missing} does not exist.`)
      expect(r.stdout).not.toContain('Nothing to apply')
    }
    const create = await cli(['migrate', 'create', 'x', '--schema', 'credits'], {
      SHIELDX_MIGRATIONS_DIR: missing,
    })
    expect(create.code).toBe(2)
    expect(fs.existsSync(missing)).toBe(false)
    expect(await tableExists('credits.schema_migrations')).toBe(false)
    const { rows } = await db.query(`select 1 from pg_namespace where nspname in ('credits', 'shadow')`)
    expect(rows).toHaveLength(0)
  })

  it('a schema folder missing inside the migrations directory just means no migrations there', async () => {
    fs.rmSync(path.join(dir, 'shadow'), { recursive: true })
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code, r.stderr).toBe(0)
    expect(await applied('credits')).toEqual([1])
    expect(await applied('shadow')).toEqual([])
  })

  it('names a misnamed migration file with exit 2 before touching the database', async () => {
    write('credits', '2_Bad-Name.up.sql', 'select 1;\n')
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('2_Bad-Name.up.sql')
    expect(await tableExists('credits.schema_migrations')).toBe(false)
  })
})

describe('the migration lock', () => {
  it('gives up with exit 5 and a clear sentence while another runner holds the lock', async () => {
    const holder = new pg.Client({ connectionString: db.url })
    await holder.connect()
    try {
      await holder.query('select pg_advisory_lock($1, $2)', [LOCK_CLASS, LOCKS.migrations])
      const started = Date.now()
      const r = await cli(['--timeout', '1s', 'migrate', 'up', '--no-backup'])
      expect(r.code).toBe(5)
      expect(r.stderr).toMatch(/holding the migrations lock \(pid \d+ on the server\); gave up after 1s/)
      expect(Date.now() - started).toBeLessThan(10_000)
      expect(await tableExists('credits.credit_accounts')).toBe(false)
    } finally {
      await holder.end()
    }
  })

  it('waits for the lock and then applies once it is released', async () => {
    const holder = new pg.Client({ connectionString: db.url })
    await holder.connect()
    await holder.query('select pg_advisory_lock($1, $2)', [LOCK_CLASS, LOCKS.migrations])
    const pending = cli(['--timeout', '20s', 'migrate', 'up', '--no-backup'])
    await new Promise((r) => setTimeout(r, 700))
    await holder.end() // releases the lock
    const r = await pending
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toContain('migration.lock_wait')
    expect(await applied('credits')).toEqual([1])
  })

  it('two runners started together: both succeed, every version is applied exactly once', async () => {
    // A slow migration makes the two overlap: the loser must find the lock held and wait.
    write('credits', '0002_slow.up.sql', 'select pg_sleep(2);\ncreate table credits.slow_done (id int);\n')
    const e = env()
    const runs = [
      spawnCli(['migrate', 'up', '--no-backup'], { env: e }),
      spawnCli(['migrate', 'up', '--no-backup'], { env: e }),
    ]
    const [a, b] = await Promise.all(runs)
    expect(a!.code, a!.stderr).toBe(0)
    expect(b!.code, b!.stderr).toBe(0)
    const winner = [a!, b!].filter((r) => r.stdout.includes('Applied 3 migration(s)'))
    const loser = [a!, b!].filter((r) => r.stdout.includes('Nothing to apply'))
    expect(winner).toHaveLength(1)
    expect(loser).toHaveLength(1)
    expect(loser[0]!.stderr).toContain('"event":"migration.lock_wait"')
    expect(await applied('credits')).toEqual([1, 2])
    const { rows } = await db.query<{ n: string }>('select count(*) as n from credits.schema_migrations')
    expect(rows[0]!.n).toBe('2')
  })
})

describe('interruption', () => {
  /** The built CLI, started and watched until `marker` shows on its stderr (or 20 s pass). */
  async function spawnUntil(args: string[], marker: string) {
    const child = execa(process.execPath, [BIN, ...args], { env: env(), extendEnv: false, reject: false })
    let stderr = ''
    child.stderr!.on('data', (d) => {
      stderr += d
    })
    const deadline = Date.now() + 20_000
    while (!stderr.includes(marker) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    // Wrapped: the subprocess is a promise, and returning it from here would await its exit.
    return { child, stderr: () => stderr }
  }

  it('Ctrl-C while waiting for the lock stops the run: nothing is applied later, exit 130, one JSON document', async () => {
    const holder = new pg.Client({ connectionString: db.url })
    await holder.connect()
    await holder.query('select pg_advisory_lock($1, $2)', [LOCK_CLASS, LOCKS.migrations])
    try {
      const { child } = await spawnUntil(
        ['--json', '--timeout', '20s', 'migrate', 'up', '--no-backup'],
        'migration.lock_wait',
      )
      const sent = Date.now()
      child.kill('SIGINT')
      const r = await child
      expect(r.exitCode).toBe(130)
      expect(Date.now() - sent).toBeLessThan(5000) // it stopped waiting; it did not sit out the 20s
      const docs = String(r.stdout)
        .trim()
        .split(/\n(?=\{)/)
      expect(docs).toHaveLength(1)
      expect(JSON.parse(docs[0]!)).toMatchObject({
        ok: false,
        error: { code: 'INTERRUPTED', exit_code: 130 },
      })
    } finally {
      await holder.end()
    }
    await new Promise((r) => setTimeout(r, 300))
    expect(await tableExists('credits.schema_migrations')).toBe(false)
  })

  it('Ctrl-C during a migration exits 130, rolls it back and releases the lock', async () => {
    write(
      'credits',
      '0002_slow.up.sql',
      'create table credits.never_finished (id int);\nselect pg_sleep(30);\n',
    )
    // Wait until the slow migration is running, then interrupt.
    const { child, stderr } = await spawnUntil(
      ['migrate', 'up', '--no-backup'],
      '"event":"migration.start","schema":"credits","version":2',
    )
    const sent = Date.now()
    child.kill('SIGINT')
    const r = await child
    expect(r.exitCode).toBe(130)
    expect(Date.now() - sent).toBeLessThan(10_000)
    expect(stderr()).toContain('Interrupted')
    expect(await applied('credits')).toEqual([1])
    expect(await tableExists('credits.never_finished')).toBe(false)
    const { rows } = await db.query(
      `select 1 from pg_locks where locktype = $1 and classid = $2::int::oid
         and database = (select oid from pg_database where datname = current_database())`,
      ['advisory', LOCK_CLASS],
    )
    expect(rows).toHaveLength(0)
  })
})

describe('migrate down', () => {
  beforeEach(async () => {
    write('credits', '0002_add_note.up.sql', 'alter table credits.credit_accounts add column note text;\n')
    write('credits', '0002_add_note.down.sql', 'alter table credits.credit_accounts drop column note;\n')
    const r = await cli(['migrate', 'up', '--no-backup'])
    expect(r.code, r.stderr).toBe(0)
  })

  async function hasNote(): Promise<boolean> {
    const { rows } = await db.query(
      `select 1 from information_schema.columns where table_schema = 'credits' and table_name = 'credit_accounts' and column_name = 'note'`,
    )
    return rows.length === 1
  }

  it('refuses without a terminal unless --yes (exit 3), and changes nothing', async () => {
    const r = await cli(['migrate', 'down', '--schema', 'credits'])
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('pass --yes')
    expect(r.stderr).toContain('credits/0002_add_note')
    expect(await applied('credits')).toEqual([1, 2])
  })

  it('asks on a terminal; "n" cancels with exit 3, "y" reverts', async () => {
    const no = await runCli(['migrate', 'down', '--schema', 'credits'], {
      env: env(),
      tty: true,
      input: 'n\n',
    })
    expect(no.code).toBe(3)
    expect(no.stderr).toContain('Revert 1 migration(s)')
    expect(await applied('credits')).toEqual([1, 2])
    const yes = await runCli(['migrate', 'down', '--schema', 'credits'], {
      env: env(),
      tty: true,
      input: 'y\n',
    })
    expect(yes.code, yes.stderr).toBe(0)
    expect(await applied('credits')).toEqual([1])
    expect(await hasNote()).toBe(false)
  })

  it('--no-input on a terminal still refuses without --yes', async () => {
    const r = await runCli(['--no-input', 'migrate', 'down', '--schema', 'credits'], {
      env: env(),
      tty: true,
    })
    expect(r.code).toBe(3)
    expect(await applied('credits')).toEqual([1, 2])
  })

  it('--steps reverts that many, newest first; --to reverts everything above a version', async () => {
    const one = await cli(['migrate', 'down', '--schema', 'credits', '--steps', '1', '--yes'])
    expect(one.code, one.stderr).toBe(0)
    expect(await applied('credits')).toEqual([1])
    expect(await hasNote()).toBe(false)
    expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
    const to = await cli(['migrate', 'down', '--schema', 'credits', '--to', '0', '--yes'])
    expect(to.code, to.stderr).toBe(0)
    expect(await applied('credits')).toEqual([])
    expect(await tableExists('credits.credit_accounts')).toBe(false)
    expect(await applied('shadow')).toEqual([1])
  })

  it('--dry-run shows the down SQL and changes nothing', async () => {
    const r = await cli(['migrate', 'down', '--schema', 'credits', '--dry-run'])
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('drop column note')
    expect(await applied('credits')).toEqual([1, 2])
  })

  it('refuses to revert a migration without a down file (exit 3)', async () => {
    write('credits', '0003_no_down.up.sql', 'select 1;\n')
    expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
    const r = await cli(['migrate', 'down', '--schema', 'credits', '--yes'])
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('0003_no_down has no down file')
    expect(await applied('credits')).toEqual([1, 2, 3])
  })

  it('reverts nothing (exit 5) when the applied migrations changed after the plan was confirmed', async () => {
    const settings = resolveSettings({ env: env() })
    const dbs = await openDatabases(settings, { timeoutMs: 5000, env: {} })
    try {
      const targets = [{ schema: 'credits' as const, db: dbs.credits }]
      const options = { migrationsDir: dir, timeoutMs: 5000 }
      // What the user is shown and confirms: revert credits 0002.
      const plan = await migrateDown(targets, { ...options, dryRun: true })
      expect(plan.steps.map((st) => st.version)).toEqual([2])
      // Meanwhile another runner applies 0003.
      write('credits', '0003_meanwhile.up.sql', 'create table credits.meanwhile (id int);\n')
      write('credits', '0003_meanwhile.down.sql', 'drop table credits.meanwhile;\n')
      expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
      const expected = plan.steps.map((st) => ({ schema: st.schema, version: st.version }))
      const err = await migrateDown(targets, { ...options, expect: expected }).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(ConflictError)
      expect((err as ConflictError).exitCode).toBe(5)
      expect((err as Error).message).toContain('The applied migrations changed since you confirmed')
      expect(await applied('credits')).toEqual([1, 2, 3])
      expect(await tableExists('credits.meanwhile')).toBe(true)
      // The plan as it stands now goes through.
      const again = await migrateDown(targets, { ...options, expect: [{ schema: 'credits', version: 3 }] })
      expect(again.steps.map((st) => st.version)).toEqual([3])
      expect(await applied('credits')).toEqual([1, 2])
      // A schema whose part of the plan was reverted meanwhile counts too.
      const both = [
        { schema: 'shadow' as const, db: dbs.shadow },
        { schema: 'credits' as const, db: dbs.credits },
      ]
      const plan2 = await migrateDown(both, { ...options, dryRun: true })
      expect(plan2.steps.map((st) => `${st.schema}:${st.version}`)).toEqual(['shadow:1', 'credits:2'])
      expect((await cli(['migrate', 'down', '--schema', 'shadow', '--yes'])).code).toBe(0)
      const expected2 = plan2.steps.map((st) => ({ schema: st.schema, version: st.version }))
      const err2 = await migrateDown(both, { ...options, expect: expected2 }).catch((e: unknown) => e)
      expect(err2).toBeInstanceOf(ConflictError)
      expect(await applied('credits')).toEqual([1, 2])
    } finally {
      await dbs.close()
    }
  })

  it('rejects --steps together with --to, a non-number and 0, with exit 2', async () => {
    expect((await cli(['migrate', 'down', '--steps', '1', '--to', '0', '--yes'])).code).toBe(2)
    const bad = await cli(['migrate', 'down', '--steps', 'two', '--yes'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('--steps must be a whole number')
    const zero = await cli(['migrate', 'down', '--steps', '0', '--yes'])
    expect(zero.code).toBe(2)
    expect(zero.stderr).toContain('--steps must be a whole number of 1 or more')
    expect(await applied('credits')).toEqual([1, 2])
  })
})

describe('migrate status and create', () => {
  it('status --json has the documented shape', async () => {
    write('shadow', '0002_more.up.sql', 'select 1;\n')
    expect((await cli(['migrate', 'up', '--to', '1', '--no-backup'])).code).toBe(0)
    const r = await cli(['migrate', 'status', '--json'])
    expect(r.code, r.stderr).toBe(0)
    const doc = JSON.parse(r.stdout) as {
      schemas: Record<
        string,
        { current: number; applied: Array<Record<string, unknown>>; pending: unknown[] }
      >
    }
    expect(Object.keys(doc.schemas)).toEqual(['credits', 'shadow'])
    expect(doc.schemas.credits!.current).toBe(1)
    expect(doc.schemas.shadow!.pending).toEqual([{ version: 2, name: 'more' }])
    expect(Object.keys(doc.schemas.credits!.applied[0]!).sort()).toEqual(
      ['applied_at', 'checksum', 'execution_ms', 'name', 'state', 'version'].sort(),
    )
  })

  it('status on an empty database shows everything pending and creates nothing', async () => {
    const r = await cli(['migrate', 'status'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain('pending')
    expect(await tableExists('credits.schema_migrations')).toBe(false)
  })

  it('create writes the next numbered pair; a bad name is exit 2', async () => {
    const r = await cli(['migrate', 'create', 'add_invoice_index', '--schema', 'credits'])
    expect(r.code, r.stderr).toBe(0)
    expect(fs.existsSync(path.join(dir, 'credits', '0002_add_invoice_index.up.sql'))).toBe(true)
    expect(fs.existsSync(path.join(dir, 'credits', '0002_add_invoice_index.down.sql'))).toBe(true)
    const bad = await cli(['migrate', 'create', 'Add-Index', '--schema', 'credits'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('lowercase letters')
    const noSchema = await cli(['migrate', 'create', 'x'])
    expect(noSchema.code).toBe(2)
  })

  it('create refuses a NAME longer than 100 characters with exit 2, writing nothing', async () => {
    const before = fs.readdirSync(path.join(dir, 'credits')).sort()
    const r = await cli(['migrate', 'create', 'a'.repeat(300), '--schema', 'credits'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('NAME must be at most 100 characters; got 300')
    expect(r.stderr).not.toContain('bug')
    expect(fs.readdirSync(path.join(dir, 'credits')).sort()).toEqual(before)
    const ok = await cli(['migrate', 'create', 'a'.repeat(100), '--schema', 'credits'])
    expect(ok.code, ok.stderr).toBe(0)
  })
})

describe('the shipped migrations', () => {
  it('all apply, then all revert, then apply again', async () => {
    const shipped = cleanEnv({ CREDITS_DATABASE_URL: db.url, SHIELDX_HOME: tempHome() })
    const count = ['credits', 'shadow']
      .map((schema) =>
        fs.readdirSync(path.join(ROOT, 'migrations', schema)).filter((f) => f.endsWith('.up.sql')),
      )
      .flat().length
    const up = await runCli(['migrate', 'up', '--no-backup'], { env: shipped })
    expect(up.code, up.stderr).toBe(0)
    expect(up.stdout).toContain(`Applied ${count} migration(s)`)
    const status = await runCli(['--json', 'migrate', 'status'], { env: shipped })
    const doc = JSON.parse(status.stdout)
    expect(doc.schemas.credits.pending).toEqual([])
    expect(doc.schemas.shadow.pending).toEqual([])
    const down = await runCli(['migrate', 'down', '--to', '0', '--yes'], { env: shipped })
    expect(down.code, down.stderr).toBe(0)
    expect(await applied('credits')).toEqual([])
    expect(await applied('shadow')).toEqual([])
    expect(await tableExists('credits.credit_accounts')).toBe(false)
    const again = await runCli(['migrate', 'up', '--no-backup'], { env: shipped })
    expect(again.code, again.stderr).toBe(0)
    expect(again.stdout).toContain(`Applied ${count} migration(s)`)
  })

  it('shadow 0003 will not go down while A/B tests have units counted by ab assign, and goes once they have none', async () => {
    const shipped = cleanEnv({ CREDITS_DATABASE_URL: db.url, SHIELDX_HOME: tempHome() })
    const up = await runCli(['migrate', 'up', '--no-backup'], { env: shipped })
    expect(up.code, up.stderr).toBe(0)
    const before = await applied('shadow')
    expect(before.at(-1)).toBe(3)
    await db.query(
      `insert into shadow.ab_tests (id, name, variants, min_sample_size, confidence_level, control_label, test_label, assigned_test)
       values (gen_random_uuid(), 'counted', '{control,test}', 100, 0.95, 'a@1', 'a@2', 7)`,
    )
    const refused = await runCli(['migrate', 'down', '--schema', 'shadow', '--yes'], { env: shipped })
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain('some A/B tests have units counted by ab assign')
    expect(await applied('shadow')).toEqual(before)
    await db.query(`update shadow.ab_tests set assigned_test = 0`)
    const down = await runCli(['migrate', 'down', '--schema', 'shadow', '--yes'], { env: shipped })
    expect(down.code, down.stderr).toBe(0)
    expect(await applied('shadow')).toEqual(before.slice(0, -1))
  })
})
