/**
 * The embedded default: PGlite under $SHIELDX_HOME/data, reached through pg over a private
 * socket, on a home that starts empty. Also `shieldx demo`, the README's first command.
 */
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { resolveSettings } from '../src/core/config/settings.js'
import { startEmbedded } from '../src/core/db/embedded.js'
import { openDatabase } from '../src/core/db/pool.js'
import { runCli, spawnCli, tempHome } from './helpers/cli.js'
import { cleanEnv } from './helpers/env.js'

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

describe('shieldx demo on an empty home', () => {
  it('creates the embedded database, migrates, and says what it did', () => {
    expect(first.code, first.stderr).toBe(0)
    expect(first.stdout).toContain(`Embedded database: ${path.join(demoHome, 'data')}`)
    expect(first.stdout).toContain('Migrations applied: credits/0001_ledger, shadow/0001_rules')
    expect(first.stdout).toContain('Schema versions: credits 1, shadow 1')
    expect(first.stderr).toContain('your configured databases are not touched')
    expect(first.stderr).toContain('step.done') // JSON progress lines without a TTY
    expect(fs.existsSync(path.join(demoHome, 'data', 'PG_VERSION'))).toBe(true)
    expect(fs.existsSync(path.join(demoHome, 'data.lock'))).toBe(false) // lock released
  })

  it('runs again on the same home, finding nothing to apply; --json is one document', async () => {
    const again = await spawnCli(['--json', 'demo'], { env: cleanEnv({ SHIELDX_HOME: home }) })
    expect(again.code, again.stderr).toBe(0)
    const doc = JSON.parse(again.stdout)
    expect(doc).toEqual({
      database: path.join(demoHome, 'data'),
      migrations_applied: [],
      schema_versions: { credits: 1, shadow: 1 },
    })
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
    expect(doc.schemas.credits.current).toBe(1)
    expect(doc.schemas.shadow.current).toBe(1)
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
      const { rows } = await db.pool.query<{ n: string }>('select count(*) as n from credits.credit_accounts')
      expect(rows[0]!.n).toBe('0')
    } finally {
      await db.close()
    }
  })

  it('migrates down and up inside PGlite', async () => {
    const env = cleanEnv({ SHIELDX_HOME: demoHome })
    const down = await runCli(['migrate', 'down', '--schema', 'shadow', '--yes'], { env })
    expect(down.code, down.stderr).toBe(0)
    const up = await runCli(['migrate', 'up'], { env })
    expect(up.code, up.stderr).toBe(0)
    expect(up.stdout).toContain('shadow/0001_rules')
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
