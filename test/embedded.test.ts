/**
 * The embedded default: PGlite under $SHIELDX_HOME/data, reached through pg over a private
 * socket, on a home that starts empty. Also `shieldx demo`, the README's first command.
 */
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { resolveSettings } from '../src/core/config/settings.js'
import { acquireDirLock, startEmbedded, takeOverStale } from '../src/core/db/embedded.js'
import { openDatabase } from '../src/core/db/pool.js'
import { discoverMigrations, fileLabel } from '../src/core/migrations/files.js'
import { ROOT, runCli, spawnCli, tempHome } from './helpers/cli.js'
import { createTestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

/** The shipped migrations, as the demo reports them: credits/0001_ledger, ... */
const shipped = (['credits', 'shadow'] as const).map((schema) =>
  discoverMigrations(path.join(ROOT, 'migrations'), schema),
)
const shippedLabels = shipped.flat().map((m) => fileLabel(m))
const shippedVersions = {
  credits: shipped[0]!.at(-1)?.version ?? 0,
  shadow: shipped[1]!.at(-1)?.version ?? 0,
}

let home: string
let demoHome: string
let first: { code: number; stdout: string; stderr: string }

beforeAll(async () => {
  home = tempHome('embedded')
  // A production URL in the environment must not be touched by the demo.
  first = await spawnCli(['demo'], {
    env: cleanEnv({ SHIELDX_HOME: home, CREDITS_DATABASE_URL: 'postgres://prod:secret@127.0.0.1:1/prod' }),
    timeoutMs: 120_000,
  })
  demoHome = path.join(home, 'demo')
}, 180_000)

afterAll(() => {
  fs.rmSync(home, { recursive: true, force: true })
})
afterEach(() => {
  vi.unstubAllEnvs()
})

describe('shieldx demo on an empty home', () => {
  it('creates the embedded database, migrates, and says what it did', async () => {
    expect(first.code, first.stderr).toBe(0)
    expect(first.stdout).toContain(`Embedded database: ${path.join(demoHome, 'data')}`)
    expect(first.stdout).toContain(`Migrations applied: ${shippedLabels.join(', ')}`)
    expect(first.stdout).toContain(
      `Schema versions: credits ${shippedVersions.credits}, shadow ${shippedVersions.shadow}`,
    )
    expect(first.stderr).toContain('your configured databases are not touched')
    expect(first.stderr).toContain('step.done') // JSON progress lines without a TTY
    expect(fs.existsSync(path.join(demoHome, 'data', 'PG_VERSION'))).toBe(true)
    expect(fs.existsSync(path.join(demoHome, 'data.lock'))).toBe(false) // lock released
    // The ledger steps: a retry replays instead of charging twice, an overdraft is refused.
    expect(first.stdout).toMatch(
      /Ledger: demo-\w+ topped up 1000, consumed 250 \(balance 750\); the retry replayed/,
    )
    expect(first.stdout).toContain('an overdraft of 5000 was refused')
    expect(first.stdout).toContain('Audit chain: intact, 2 row(s) across 1 tenant(s).')
    // The shadow steps: generated traffic, a candidate evaluated against a control, the verdict stored.
    expect(first.stdout).toMatch(
      /Shadow evaluation: edge-guard@1 vs status-errors@1 on 20,000 events: APPROVE_FULL_DEPLOYMENT/,
    )
    expect(fs.existsSync(path.join(demoHome, 'traffic.jsonl.gz'))).toBe(true)
    // What it says to run next sets the production URL aside, and works exactly as printed.
    const next = first.stdout.match(/(env -u CREDITS_DATABASE_URL shieldx --home \S+) evaluate show (\S+)/)
    expect(next, first.stdout).not.toBeNull()
    expect(next![1]).toBe(`env -u CREDITS_DATABASE_URL shieldx --home ${demoHome}`)
    const shown = await runCli(['--json', '--home', demoHome, 'evaluate', 'show', next![2]!], {
      env: cleanEnv({ SHIELDX_HOME: home }),
    })
    expect(shown.code, shown.stderr).toBe(0)
    expect(JSON.parse(shown.stdout).id).toBe(next![2])
    // Keys are generated once, mode 0600, and the CLI says so.
    expect(first.stderr).toContain('Generated a new audit HMAC key')
    expect(fs.statSync(path.join(demoHome, 'keys', 'audit_hmac.key')).mode & 0o777).toBe(0o600)
  })

  it('runs again on the same home, finding nothing to apply; --json is one document', async () => {
    const again = await spawnCli(['--json', 'demo'], { env: cleanEnv({ SHIELDX_HOME: home }) })
    expect(again.code, again.stderr).toBe(0)
    const doc = JSON.parse(again.stdout)
    expect(doc).toMatchObject({
      database: path.join(demoHome, 'data'),
      migrations_applied: [],
      schema_versions: shippedVersions,
      ledger: {
        topup: { amount: 1000, balance: 1000, replayed: false },
        consume: { amount: 250, balance: 750, replayed: false },
        replay: { amount: 250, balance: 750, replayed: true },
        overdraft_refused: true,
        // A second run: its own tenant, plus the first run's chain, both intact.
        chain: { ok: true, tenants_checked: 2, rows_checked: 4 },
        negative_balances: 0,
      },
      backup: { verified: true },
    })
    expect(doc.backup.checks).toEqual(
      expect.arrayContaining([
        'checksum',
        'chunks',
        'archive',
        'restore',
        'row_counts',
        'chain_heads',
        'verify_chain',
      ]),
    )
    expect(fs.existsSync(doc.backup.file)).toBe(true)
    expect(doc.ledger.replay.transaction_id).toBe(doc.ledger.consume.transaction_id)
    expect(again.stderr).not.toContain('Generated a new audit HMAC key') // the key is kept
  })

  it('runs with a broken config.yaml in the home: the demo does not read profiles', async () => {
    const config = path.join(home, 'config.yaml')
    fs.writeFileSync(config, 'profiles: [this is: not: valid\n')
    try {
      // The broken file does break commands that read it...
      const locate = await runCli(['locate'], { env: cleanEnv({ SHIELDX_HOME: home }) })
      expect(locate.code).toBe(2)
      // ...but not the demo.
      const r = await runCli(['--json', 'demo'], { env: cleanEnv({ SHIELDX_HOME: home }) })
      expect(r.code, r.stderr).toBe(0)
      expect(JSON.parse(r.stdout).database).toBe(path.join(demoHome, 'data'))
    } finally {
      fs.rmSync(config, { force: true })
    }
  })
})

describe('the embedded default', () => {
  it('is what commands use with no database URL anywhere, through the same migrations', async () => {
    const env = cleanEnv({ SHIELDX_HOME: demoHome })
    const locate = await runCli(['--json', 'locate'], { env })
    const creditsDb = JSON.parse(locate.stdout).settings.find(
      (s: { name: string }) => s.name === 'credits_db',
    )
    expect(creditsDb).toEqual({
      name: 'credits_db',
      value: `embedded PGlite (${path.join(demoHome, 'data')})`,
      source: 'default',
    })
    const status = await runCli(['--json', 'migrate', 'status'], { env })
    expect(status.code, status.stderr).toBe(0)
    const doc = JSON.parse(status.stdout)
    expect(doc.schemas.credits.current).toBe(shippedVersions.credits)
    expect(doc.schemas.shadow.current).toBe(shippedVersions.shadow)
    expect(doc.schemas.credits.database).toContain('embedded PGlite')
  })

  it('enforces the ledger constraints and the append-only trigger inside PGlite too', async () => {
    const settings = resolveSettings({ env: cleanEnv({ SHIELDX_HOME: demoHome }) })
    const db = await openDatabase(settings, 'credits', { timeoutMs: 5000, env: {} })
    try {
      expect(db.kind).toBe('embedded')
      await expect(
        db.pool.query(`insert into credits.credit_accounts (tenant_id, balance) values ('neg', -5)`),
      ).rejects.toThrow(/credit_accounts_balance_nonnegative/)
      await expect(db.pool.query('truncate credits.audit_logs')).rejects.toThrow(/append-only: TRUNCATE/)
      // The single connection is still usable after those errors.
      const { rows } = await db.pool.query<{ n: string }>(
        "select count(*) as n from credits.credit_accounts where tenant_id = 'neg'",
      )
      expect(rows[0]!.n).toBe('0')
    } finally {
      await db.close()
    }
  })

  it('ignores PG* variables meant for a real server (PGSSLMODE=require, PGUSER, PGDATABASE, ...)', async () => {
    // pg reads these from process.env, not from the io the command gets: set both.
    const pgEnv = {
      PGSSLMODE: 'require',
      PGUSER: 'nobody',
      PGDATABASE: 'nope',
      PGPASSWORD: 'wrong-password',
      PGHOST: '/nonexistent',
      PGPORT: '1',
      PGSSLNEGOTIATION: 'direct',
    }
    for (const [k, v] of Object.entries(pgEnv)) vi.stubEnv(k, v)
    const r = await runCli(['--json', 'migrate', 'status'], {
      env: cleanEnv({ SHIELDX_HOME: demoHome, ...pgEnv }),
    })
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).schemas.credits.current).toBe(shippedVersions.credits)
  })

  it("an embedded backup restores into a PostgreSQL server older than PGlite's (its pg_dump 17 header settings left out)", async () => {
    const env = cleanEnv({ SHIELDX_HOME: demoHome })
    const made = await runCli(['--json', 'backup', 'create'], { env })
    expect(made.code, made.stderr).toBe(0)
    const file = (JSON.parse(made.stdout) as { file: string }).file
    const target = await createTestDatabase('emb_restore')
    try {
      const r = await runCli(['--yes', '--json', 'restore', file, '--target', target.url], { env })
      expect(r.code, r.stderr).toBe(0)
      expect(JSON.parse(r.stdout)).toMatchObject({ ok: true })
      const { rows } = await target.query<{ n: string }>('select count(*) as n from credits.credit_accounts')
      expect(Number(rows[0]!.n)).toBeGreaterThan(0)
    } finally {
      await target.drop()
    }
  })

  it('migrates down and up inside PGlite', async () => {
    const env = cleanEnv({ SHIELDX_HOME: demoHome })
    // Shadow 0003 (the A/B assignment counts) goes down; below it, the demo stored an evaluation
    // of one rule against another, which shadow 0001 cannot hold: 0002's down refuses rather than
    // rewrite a permanent record.
    const shadowDown = await runCli(['migrate', 'down', '--schema', 'shadow', '--yes'], { env })
    expect(shadowDown.code, shadowDown.stderr).toBe(0)
    expect(shadowDown.stdout).toContain('0003')
    const refused = await runCli(['migrate', 'down', '--schema', 'shadow', '--yes'], { env })
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain('compare two different rules')
    const down = await runCli(['migrate', 'down', '--schema', 'credits', '--yes'], { env })
    expect(down.code, down.stderr).toBe(0)
    const up = await runCli(['migrate', 'up'], { env })
    expect(up.code, up.stderr).toBe(0)
    expect(up.stdout).toContain(fileLabel(shipped[0]!.at(-1)!))
    expect(up.stdout).toContain(fileLabel(shipped[1]!.at(-1)!))
    expect(up.stderr).not.toContain('pre-migration backup') // no backup hook for the embedded database
  })

  it('refuses a second process while one holds the data directory (exit 5), then works when it is free', async () => {
    const held = await startEmbedded(path.join(demoHome, 'data'), 5000)
    try {
      const r = await spawnCli(['--timeout', '1s', 'migrate', 'status'], {
        env: cleanEnv({ SHIELDX_HOME: demoHome }),
      })
      expect(r.code).toBe(5)
      expect(r.stderr).toContain(`is in use by another shieldx process (pid ${process.pid})`)
    } finally {
      await held.stop()
    }
    const r = await spawnCli(['migrate', 'status'], { env: cleanEnv({ SHIELDX_HOME: demoHome }) })
    expect(r.code, r.stderr).toBe(0)
  })

  it('takes over a lock left by a process that died', async () => {
    const lockDir = path.join(demoHome, 'data.lock')
    fs.mkdirSync(lockDir)
    fs.writeFileSync(path.join(lockDir, 'pid'), '999999') // no such process
    const r = await runCli(['migrate', 'status'], { env: cleanEnv({ SHIELDX_HOME: demoHome }) })
    expect(r.code, r.stderr).toBe(0)
    expect(fs.existsSync(lockDir)).toBe(false)
  })
})

describe('the lock on the embedded data directory', () => {
  const lockDir = () => path.join(tempHome('lock'), 'data.lock')
  const pidOf = (dir: string) => fs.readFileSync(path.join(dir, 'pid'), 'utf8').split('\n')[0]

  it('a takeover that finds a fresh lock in place of the stale one it judged leaves it alone', async () => {
    // B saw a dead holder (999999); before B acts, A took the stale lock over and made its own.
    const dir = lockDir()
    const releaseA = await acquireDirLock(dir, 1000, 'test')
    takeOverStale(dir, '999999\n') // B, acting on what it saw
    expect(fs.existsSync(dir)).toBe(true)
    expect(pidOf(dir)).toBe(String(process.pid))
    const err = await acquireDirLock(dir, 300, 'test').catch((e) => e)
    expect(err.code).toBe('EMBEDDED_LOCKED') // A still holds it
    releaseA()
    expect(fs.existsSync(dir)).toBe(false)
    expect(fs.readdirSync(path.dirname(dir))).toEqual([]) // no litter
  })

  it('takes over a lock without a pid only once it is old, not while its maker is writing it', async () => {
    const dir = lockDir()
    fs.mkdirSync(dir)
    const err = await acquireDirLock(dir, 300, 'test').catch((e) => e)
    expect(err.code).toBe('EMBEDDED_LOCKED')
    const old = new Date(Date.now() - 60_000)
    fs.utimesSync(dir, old, old)
    const release = await acquireDirLock(dir, 1000, 'test')
    expect(pidOf(dir)).toBe(String(process.pid))
    release()
    expect(fs.existsSync(dir)).toBe(false)
  })

  it('processes racing for a stale lock hold it one at a time', async () => {
    const dir = lockDir()
    fs.mkdirSync(dir)
    fs.writeFileSync(path.join(dir, 'pid'), '999999\n') // died
    const marker = path.join(path.dirname(dir), 'holder')
    const script = `
      import fs from 'node:fs'
      const { acquireDirLock } = await import(${JSON.stringify(path.join(ROOT, 'dist/core/db/embedded.js'))})
      const [dir, marker, start] = process.argv.slice(1)
      while (Date.now() < Number(start)) {}
      for (let i = 0; i < 5; i++) {
        const release = await acquireDirLock(dir, 20000, 'test')
        try { fs.writeFileSync(marker, String(process.pid), { flag: 'wx' }) } catch { console.log('overlap'); process.exit(1) }
        await new Promise((r) => setTimeout(r, 20))
        fs.rmSync(marker)
        release()
      }
      console.log('ok')
    `
    const start = String(Date.now() + 1500)
    const runs = await Promise.all(
      Array.from({ length: 4 }, () =>
        execa(process.execPath, ['--input-type=module', '-e', script, dir, marker, start], { reject: false }),
      ),
    )
    for (const r of runs) expect(r.stdout.trim(), r.stderr).toBe('ok')
    expect(fs.existsSync(dir)).toBe(false)
  })
})
