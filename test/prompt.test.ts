/**
 * Confirmation prompts (src/ui/prompt.ts): one Ctrl-C at the question ends the run at once with
 * exit 130 and nothing changed, in-process (the run's abort signal, as bin/ sets it on SIGINT)
 * and on a real terminal (a pty from script(1), ^C typed); and the --no-input refusal says why.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { run } from '../src/cli.js'
import { BIN, capturedStreams, runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { adminUrl, cleanEnv } from './helpers/env.js'

let db: TestDatabase
let home: string
const auditKey = `a1:${randomBytes(32).toString('base64')}`
const backupKey = `bk1:${randomBytes(32).toString('base64')}`
const dirs: string[] = []

const env = () =>
  cleanEnv({
    CREDITS_DATABASE_URL: db.url,
    SHIELDX_HOME: home,
    AUDIT_HMAC_KEY: auditKey,
    BACKUP_KEY: backupKey,
  })

async function applied(): Promise<number[]> {
  const { rows } = await db.query<{ version: number }>(
    'select version from credits.schema_migrations order by 1',
  )
  return rows.map((r) => r.version)
}

async function until(what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/**
 * The command in-process on a pretend terminal whose user types nothing: once the question is
 * on stderr, the run's signal is aborted (what bin/ does on the first SIGINT).
 */
async function interruptAtPrompt(argv: string[], question: RegExp) {
  const streams = capturedStreams(true)
  const ac = new AbortController()
  const running = run(argv, { ...streams, env: env() }, { signal: ac.signal })
  await until('the question', () => question.test(streams.err))
  const sent = Date.now()
  ac.abort()
  const code = await Promise.race([
    running,
    new Promise<string>((resolve) => setTimeout(() => resolve('still waiting at the prompt'), 5000)),
  ])
  return { code, ms: Date.now() - sent, stderr: streams.err }
}

beforeAll(async () => {
  db = await createTestDatabase('fix2_prompt')
  home = tempHome('prompt')
  const r = await runCli(['migrate', 'up', '--no-backup'], { env: env() })
  expect(r.code, r.stderr).toBe(0)
})
afterAll(async () => {
  await db?.drop()
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
})

describe('Ctrl-C at a confirmation', () => {
  it('migrate down [y/N]: exit 130 at once, nothing reverted', async () => {
    const before = await applied()
    expect(before.length).toBeGreaterThan(0)
    const r = await interruptAtPrompt(['migrate', 'down', '--schema', 'credits'], /\[y\/N\] $/)
    expect(r.code, r.stderr).toBe(130)
    expect(r.ms).toBeLessThan(3000)
    expect(r.stderr).toContain('Interrupted')
    expect(await applied()).toEqual(before)
  })

  it("restore's type-the-name question: exit 130 at once, the target database is not created", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-fix2-prompt-'))
    dirs.push(dir)
    const b = await runCli(['--json', 'backup', 'create', '--dir', dir], { env: env() })
    expect(b.code, b.stderr).toBe(0)
    const file = fs.readdirSync(dir).find((f) => f.endsWith('.shxb'))!
    const target = `shx_fix2_prompt_target_${randomBytes(4).toString('hex')}`
    const targetUrl = db.url.replace(`/${db.name}`, `/${target}`)
    const r = await interruptAtPrompt(
      ['restore', path.join(dir, file), '--target', targetUrl, '--create'],
      /Type '.*' to confirm: $/,
    )
    expect(r.code, r.stderr).toBe(130)
    expect(r.ms).toBeLessThan(3000)
    const admin = new pg.Client({ connectionString: adminUrl() })
    await admin.connect()
    try {
      const { rows } = await admin.query('select 1 from pg_database where datname = $1', [target])
      expect(rows).toEqual([])
    } finally {
      await admin.query(`drop database if exists ${target}`)
      await admin.end()
    }
  })

  it('on a real terminal: one ^C at [y/N] ends the process with 130, nothing reverted', async () => {
    const before = await applied()
    const cmd = `exec ${process.execPath} ${BIN} migrate down --schema credits`
    // script(1) runs the command on a pty: ^C typed there is SIGINT from the terminal.
    const child = spawn('script', ['-qefc', cmd, '/dev/null'], {
      env: { ...env(), TERM: 'dumb' },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
    try {
      await until('the question', () => /\[y\/N\] /.test(out))
      child.stdin.write('\x03')
      const code = await Promise.race([
        exited,
        new Promise<string>((resolve) => setTimeout(() => resolve('still running after one ^C'), 5000)),
      ])
      expect(code, out).toBe(130)
      expect(out).toContain('Interrupted')
      expect(await applied()).toEqual(before)
    } finally {
      child.kill('SIGKILL')
    }
  })
})

describe('--no-input on a terminal', () => {
  it('refuses without --yes, saying --no-input was given (not that there is no terminal)', async () => {
    const before = await applied()
    const r = await runCli(['--no-input', 'migrate', 'down', '--schema', 'credits'], {
      env: env(),
      tty: true,
    })
    expect(r.code).toBe(3)
    expect(r.stderr).toContain(
      'Refusing to migrate down without confirmation: pass --yes (--no-input was given',
    )
    expect(r.stderr).not.toContain('no terminal')
    expect(await applied()).toEqual(before)
  })

  it('without a terminal the refusal still says there is no terminal to ask', async () => {
    const r = await runCli(['migrate', 'down', '--schema', 'credits'], { env: env() })
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('pass --yes (there is no terminal to ask)')
  })
})
