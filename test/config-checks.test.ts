/**
 * Settings that are wrong are found before anything uses them:
 * - `shieldx locate` checks offline what the commands would check (database and Redis URLs,
 *   keys, key files), shows each problem in one sentence and exits 2, never printing a secret;
 * - a malformed Redis URL is exit 2 for the commands that use the cache, before they write, with
 *   no DEP0170 warning from url.parse (which printed the URL, password included); a Redis that is
 *   down stays one warning;
 * - REDIS_PASSWORD without REDIS_ADDR is exit 2 instead of being dropped without a word;
 * - relative and ~/ paths in a profile resolve against the profile file's directory and the user's
 *   home, not the current directory.
 *
 * Real files and processes throughout: the spawned runs are the built bin/shieldx.js.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { REDACTED } from '../src/core/config/redact.js'
import { cacheUrl, resolveSettings } from '../src/core/config/settings.js'
import { BIN, type CliResult, runCli, spawnCli } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { envFor, scratchHomes } from './helpers/homes.js'
import { redisUrl } from './helpers/env.js'

// --- helpers ---------------------------------------------------------------------------------------

const { tempDir, setup } = scratchHomes('shx-cfgfix')

function profileYaml(values: Record<string, string>): string {
  const lines = ['current_profile: prod', 'profiles:', '  prod:']
  for (const [k, v] of Object.entries(values)) lines.push(`    ${k}: ${JSON.stringify(v)}`)
  return lines.join('\n') + '\n'
}

const key32 = () => randomBytes(32).toString('base64')

interface Row {
  name: string
  value: string
  source: string
  problems?: string[]
}

/** `locate --json`: the rows by name, whatever the exit code. */
async function locateRows(env: NodeJS.ProcessEnv): Promise<{ r: CliResult; rows: Record<string, Row> }> {
  const r = await runCli(['locate', '--json'], { env })
  const doc = JSON.parse(r.stdout) as { settings: Row[] }
  return { r, rows: Object.fromEntries(doc.settings.map((s) => [s.name, s])) }
}

function expectNoSecrets(text: string, secrets: string[]) {
  for (const s of secrets) expect(text, `output contains '${s}'`).not.toContain(s)
}

/** The human and --json runs of locate both exit 2 and name `setting`'s problem. */
async function expectProblem(
  env: NodeJS.ProcessEnv,
  setting: string,
  mentions: string[],
  secrets: string[] = [],
): Promise<string> {
  const human = await runCli(['locate'], { env })
  expect(human.code, human.stderr).toBe(2)
  // The table is still printed, so the user sees what was resolved and from where.
  expect(human.stdout).toMatch(new RegExp(`^${setting} `, 'm'))
  const line = human.stderr.split('\n').find((l) => l.startsWith(`error: ${setting}: `))
  expect(line, human.stderr).toBeDefined()
  for (const m of mentions) expect(line).toContain(m)
  expect(human.stderr).not.toMatch(/^\s+at /m)

  const { r, rows } = await locateRows(env)
  expect(r.code).toBe(2)
  expect(rows[setting]!.problems).toHaveLength(1)
  expect(line).toBe(`error: ${setting}: ${rows[setting]!.problems![0]}`)
  // Only the settings with a problem carry the field.
  for (const row of Object.values(rows)) if (row.name !== setting) expect(row.problems).toBeUndefined()
  expectNoSecrets(human.stdout + human.stderr + r.stdout + r.stderr, secrets)
  return line!
}

// --- 1. locate checks what can be checked offline ------------------------------------------------------

describe('locate: problems found offline are shown, one sentence each, and exit 2', () => {
  it('a database URL that does not parse (credits or shadow), the password never shown', async () => {
    const { home, userHome } = setup()
    const bad = 'postgres://app:BadPortPw91@db.internal:notaport/credits'
    await expectProblem(
      envFor(home, userHome, { CREDITS_DATABASE_URL: bad }),
      'credits_db',
      ['CREDITS_DATABASE_URL', 'db.internal'],
      ['BadPortPw91'],
    )
    await expectProblem(
      envFor(home, userHome, {
        CREDITS_DATABASE_URL: 'postgres://app@db.internal:5432/credits',
        SHADOW_DATABASE_URL: 'mysql://app:ShadowPw77@db.internal/shadow',
      }),
      'shadow_db',
      ['SHADOW_DATABASE_URL', 'postgres://'],
      ['ShadowPw77'],
    )
    // A keyword/value string is refused by every command that connects: locate says so too.
    await expectProblem(
      envFor(home, userHome, { CREDITS_DATABASE_URL: 'host=db user=app password=KeywordPw64 dbname=c' }),
      'credits_db',
      ['CREDITS_DATABASE_URL'],
      ['KeywordPw64'],
    )
  })

  it.each([
    ['AUDIT_HMAC_KEY', 'audit_hmac_key', randomBytes(16).toString('base64'), 'at least 32 bytes'],
    ['ENCRYPT_KEY', 'encrypt_key', randomBytes(31).toString('base64'), 'must be 32 bytes'],
    ['BACKUP_KEY', 'backup_key', `b1:${randomBytes(16).toString('base64')}`, 'must be 32 bytes'],
    ['BACKUP_KEY', 'backup_key', 'not base64 at all!', 'not base64'],
  ])(
    '%s that is wrong (%s: %s) is a problem naming the variable, never the key',
    async (env, setting, key, why) => {
      const { home, userHome } = setup()
      await expectProblem(envFor(home, userHome, { [env]: key }), setting, [env, why], [key, key.slice(3)])
    },
  )

  it('a key file that does not exist names the file, from the environment or a profile', async () => {
    const { home, userHome, configFile } = setup()
    const missing = path.join(home, 'no-such-audit.key')
    await expectProblem(envFor(home, userHome, { AUDIT_HMAC_KEY_FILE: missing }), 'audit_hmac_key', [
      'AUDIT_HMAC_KEY',
      missing,
    ])
    fs.writeFileSync(configFile, profileYaml({ backup_key_file: path.join(home, 'gone.key') }))
    await expectProblem(envFor(home, userHome), 'backup_key', [
      'BACKUP_KEY',
      path.join(home, 'gone.key'),
      // named by the profile, not by an environment variable the user never set
      `(from profile prod (`,
      'it does not exist',
    ])
  })

  it('a key file holding a bad key is a problem, and its contents are not shown', async () => {
    const { home, userHome } = setup()
    const file = path.join(home, 'enc.key')
    const short = randomBytes(20).toString('base64')
    fs.writeFileSync(file, `e1:${short}\n`)
    await expectProblem(
      envFor(home, userHome, { ENCRYPT_KEY_FILE: file }),
      'encrypt_key',
      ['ENCRYPT_KEY', file, 'must be 32 bytes'],
      [short],
    )
  })

  it('an embedded key already generated but damaged is a problem; one not yet generated is not', async () => {
    const { home, userHome } = setup()
    const ok = await locateRows(envFor(home, userHome))
    expect(ok.r.code).toBe(0)
    // locate never generates: still nothing under keys/.
    expect(fs.existsSync(path.join(home, 'keys'))).toBe(false)
    fs.mkdirSync(path.join(home, 'keys'))
    fs.writeFileSync(path.join(home, 'keys', 'audit_hmac.key'), 'k1:c2hvcnQ=\n')
    await expectProblem(envFor(home, userHome), 'audit_hmac_key', [path.join(home, 'keys', 'audit_hmac.key')])
  })

  it('a malformed Redis URL is a problem on redis, its password not shown', async () => {
    const { home, userHome } = setup()
    await expectProblem(
      envFor(home, userHome, { REDIS_URL: 'redis://:RedisPw55@cache:99999' }),
      'redis',
      ['REDIS_URL', 'port'],
      ['RedisPw55'],
    )
  })

  it('a Redis value that is not a URL at all (a password in the wrong place) is shown as ****', async () => {
    const { home, userHome } = setup()
    await expectProblem(
      envFor(home, userHome, { REDIS_URL: 'Secr3tPassword' }),
      'redis',
      ['REDIS_URL'],
      ['Secr3tPassword'],
    )
    const { rows } = await locateRows(envFor(home, userHome, { REDIS_URL: 'Secr3tPassword' }))
    expect(rows.redis!.value).toBe('**** (not a URL)')
  })

  it('a URL pasted with a leading space is still redacted', async () => {
    const { home, userHome } = setup()
    const env = envFor(home, userHome, {
      REDIS_URL: ' redis://:LeadRedisPw1@127.0.0.1:6379/0',
      CREDITS_DATABASE_URL: ' postgres://app:LeadDbPw2@db.internal:5432/credits',
    })
    const { r, rows } = await locateRows(env)
    expectNoSecrets(r.stdout + r.stderr, ['LeadRedisPw1', 'LeadDbPw2'])
    expect(rows.redis!.value).toContain('127.0.0.1:6379')
    expect(rows.credits_db!.value).toContain('db.internal:5432/credits')
  })

  it('several problems: each on its own line and its own row', async () => {
    const { home, userHome } = setup()
    const env = envFor(home, userHome, {
      CREDITS_DATABASE_URL: 'postgres://app@db:x/c',
      REDIS_URL: 'http://cache',
      AUDIT_HMAC_KEY: 'c2hvcnQ=',
    })
    const { r, rows } = await locateRows(env)
    expect(r.code).toBe(2)
    expect(
      Object.values(rows)
        .filter((row) => row.problems)
        .map((row) => row.name),
    ).toEqual(['credits_db', 'redis', 'audit_hmac_key'])
    expect(r.stderr.split('\n').filter((l) => l.startsWith('error: '))).toHaveLength(3)
  })

  it('everything valid: exit 0, no problems, nothing on stderr, and nothing is connected to', async () => {
    const { home, userHome } = setup()
    const file = path.join(home, 'backup.key')
    fs.writeFileSync(file, `b1:${key32()}\n`)
    const env = envFor(home, userHome, {
      // Nothing listens on port 1: a locate that connected would fail or hang.
      CREDITS_DATABASE_URL: 'postgres://app:GoodPw12@127.0.0.1:1/credits',
      REDIS_URL: 'redis://:GoodRedisPw@127.0.0.1:1/0',
      AUDIT_HMAC_KEY: `a1:${key32()},a0:${key32()}`,
      ENCRYPT_KEY: key32(),
      BACKUP_KEY_FILE: file,
    })
    const { r, rows } = await locateRows(env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    for (const row of Object.values(rows)) expect(row.problems, row.name).toBeUndefined()
    expect(rows.redis!.value).toBe(`redis://:${REDACTED}@127.0.0.1:1/0`)
  })

  it('as a real process: exit 2 and the problem on stderr', async () => {
    const { home, userHome } = setup()
    const r = await spawnCli(['locate'], {
      env: envFor(home, userHome, { AUDIT_HMAC_KEY_FILE: path.join(home, 'absent.key') }),
    })
    expect(r.code).toBe(2)
    expect(r.stderr).toContain(
      `error: audit_hmac_key: Cannot read the AUDIT_HMAC_KEY key file ${path.join(home, 'absent.key')} (from env AUDIT_HMAC_KEY_FILE): it does not exist (ENOENT).`,
    )
  })
})

// --- 2. a malformed Redis URL is bad input ---------------------------------------------------------------

describe('a malformed Redis URL: exit 2 before anything is written, no DEP0170', () => {
  let db: TestDatabase
  let home: string
  let userHome: string
  const auditKey = `k1:${key32()}`

  const env = (extra: Record<string, string | undefined> = {}) =>
    envFor(home, userHome, { CREDITS_DATABASE_URL: db.url, AUDIT_HMAC_KEY: auditKey, ...extra })

  async function transactions(): Promise<number> {
    const { rows } = await db.query<{ n: string }>('select count(*) as n from credits.credit_transactions')
    return Number(rows[0]!.n)
  }

  /** Exit 2, one "error:" sentence naming `mentions`, no deprecation warning, no secret. */
  function expectRedisUsageError(r: CliResult, mentions: string[], secrets: string[] = []) {
    expect(r.code, r.stderr).toBe(2)
    expect(r.stdout).toBe('')
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '')
    expect(lines[0]).toMatch(/^error: The Redis URL from /)
    for (const m of mentions) expect(lines[0]).toContain(m)
    expect(r.stderr).not.toMatch(/DEP0170|DeprecationWarning/)
    expect(r.stderr).not.toMatch(/^\s+at /m)
    expectNoSecrets(r.stdout + r.stderr, secrets)
  }

  beforeAll(async () => {
    db = await createTestDatabase('cfgfix')
    ;({ home, userHome } = setup())
    const m = await runCli(['migrate', 'up', '--no-backup'], { env: env() })
    expect(m.code, m.stderr).toBe(0)
  })

  afterAll(async () => {
    await db?.drop()
  })

  it.each([
    ['http://x', 'must start with redis://'],
    ['redis://host:99999', 'port'],
    ['garbage', 'is not a URL'],
    ['redis://:SecretPw41@cache:abc', 'port'],
    ['redis://:Secret%zzPw@cache:6379', "'%'"],
    ['redis://cache:6379/x', 'database'],
    ['redis://:SecretPw42@:6379', 'no host'],
  ])('REDIS_URL=%s: credits topup exits 2 (%s) and writes nothing', async (url, why) => {
    const before = await transactions()
    const r = await spawnCli(['credits', 'topup', 'acme', '5'], { env: env({ REDIS_URL: url }) })
    expectRedisUsageError(r, ['env REDIS_URL', why], ['SecretPw41', 'Secret%zzPw', 'SecretPw42'])
    expect(await transactions()).toBe(before)
  })

  it('names the flag, the profile file or REDIS_ADDR, whichever the URL came from', async () => {
    const flag = await spawnCli(['--redis', 'redis://cache:0', 'credits', 'balance', 'acme'], { env: env() })
    expectRedisUsageError(flag, ['flag --redis', 'port'])

    const profileHome = tempDir('redis-profile')
    fs.writeFileSync(path.join(profileHome, 'config.yaml'), profileYaml({ redis: 'redis://cache:65536' }))
    const fromProfile = await spawnCli(['credits', 'balance', 'acme'], {
      env: env({ SHIELDX_HOME: profileHome }),
    })
    expectRedisUsageError(fromProfile, ['profile prod', path.join(profileHome, 'config.yaml')])

    const addr = await spawnCli(['credits', 'consume', 'acme', '1'], {
      env: env({ REDIS_ADDR: 'cache:port', REDIS_PASSWORD: 'AddrPw7788' }),
    })
    expectRedisUsageError(addr, ['REDIS_ADDR'], ['AddrPw7788'])
  })

  it('a well-formed URL whose server is down stays one warning: exit 0, written, no DEP0170', async () => {
    const before = await transactions()
    const r = await spawnCli(['credits', 'topup', 'acme', '5'], {
      env: env({ REDIS_URL: 'redis://:DownPw3141@127.0.0.1:1' }),
    })
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr.match(/warning: Redis at .* is unavailable/g)).toHaveLength(1)
    expect(r.stderr).not.toMatch(/DEP0170|DeprecationWarning/)
    expect(r.stderr).not.toContain('DownPw3141')
    expect(await transactions()).toBe(before + 1)
  })

  // The suite's Redis has no password: it answers one with a warning, not a refusal.
  const redis = new URL(redisUrl())
  it.skipIf(redis.password !== '')(
    'a password with an unencoded / still reaches the right host',
    async () => {
      const r = await spawnCli(['--json', 'credits', 'balance', 'acme'], {
        env: env({ REDIS_URL: `redis://:pa/ss@${redis.host}/0` }),
      })
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).not.toMatch(/unavailable|DEP0170/)
    },
  )

  it('commands that do not use the cache are not stopped by it', async () => {
    const r = await runCli(['credits', 'history', 'acme'], { env: env({ REDIS_URL: 'http://x' }) })
    expect(r.code, r.stderr).toBe(0)
  })
})

// --- 3. REDIS_PASSWORD alone ----------------------------------------------------------------------------

describe('REDIS_PASSWORD without REDIS_ADDR', () => {
  const password = 'LonePassw0rd!'

  it('is exit 2 naming both variables and the fix, without the password (locate and a command)', async () => {
    const { home, userHome } = setup()
    const env = envFor(home, userHome, { REDIS_PASSWORD: password })
    for (const args of [['locate'], ['locate', '--json'], ['credits', 'balance', 'acme']]) {
      const r = await runCli(args, { env })
      expect(r.code, args.join(' ')).toBe(2)
      const first = r.stderr.split('\n')[0]!
      // locate names the setting the problem is in (after its table); the command refuses at once
      expect(first).toMatch(
        args[0] === 'locate'
          ? /^error: redis: REDIS_PASSWORD is set without REDIS_ADDR/
          : /^error: REDIS_PASSWORD is set without REDIS_ADDR/,
      )
      expect(r.stderr).toContain('REDIS_URL')
      expect(r.stdout + r.stderr).not.toContain(password)
    }
    // Nothing was started or written on the way.
    expect(fs.readdirSync(home)).toEqual([])
  })

  it('also when a profile names a Redis URL the password cannot join', () => {
    const { home, userHome } = setup(profileYaml({ redis: 'redis://cache:6379' }))
    const settings = resolveSettings({ env: envFor(home, userHome, { REDIS_PASSWORD: password }) })
    expect(() => cacheUrl(settings)).toThrow(/REDIS_PASSWORD is set without REDIS_ADDR/)
    // locate still shows the profile's URL, the problem beside it
    expect(settings.redis).toMatchObject({ value: 'redis://cache:6379', lonePassword: true })
  })

  it('with REDIS_ADDR, or with REDIS_URL or --redis taking precedence, it is fine', () => {
    const { home, userHome } = setup()
    const withAddr = resolveSettings({
      env: envFor(home, userHome, { REDIS_ADDR: 'cache:6379', REDIS_PASSWORD: password }),
    })
    expect(withAddr.redis.source).toBe('env REDIS_ADDR + REDIS_PASSWORD')
    const withUrl = resolveSettings({
      env: envFor(home, userHome, { REDIS_URL: 'redis://cache:6379', REDIS_PASSWORD: password }),
    })
    expect(withUrl.redis).toEqual({ value: 'redis://cache:6379', source: 'env REDIS_URL' })
    const withFlag = resolveSettings({
      env: envFor(home, userHome, { REDIS_PASSWORD: password }),
      flags: { redis: 'redis://flag:6379' },
    })
    expect(withFlag.redis.source).toBe('flag --redis')
  })
})

// --- 4. paths in a profile ----------------------------------------------------------------------------

describe("paths in a profile resolve against the profile file's directory, ~/ against HOME", () => {
  const profile = {
    audit_hmac_key_file: 'keys/audit.key',
    encrypt_key_file: '~/secrets/enc.key',
    backup_key_file: '../shared/backup.key',
    backup_dir: 'backups-here',
  }

  it('resolveSettings gives absolute paths under the home and the user home, whatever the cwd', () => {
    const { home, userHome, configFile } = setup(profileYaml(profile))
    const s = resolveSettings({ env: envFor(home, userHome) })
    const source = `profile prod (${configFile})`
    expect(s.auditHmacKey).toEqual({
      value: { kind: 'file', path: path.join(home, 'keys/audit.key') },
      source,
    })
    expect(s.encryptKey).toEqual({
      value: { kind: 'file', path: path.join(userHome, 'secrets/enc.key') },
      source,
    })
    expect(s.backupKey.value).toEqual({
      kind: 'file',
      path: path.join(path.dirname(home), 'shared/backup.key'),
    })
    expect(s.backupDir).toEqual({ value: path.join(home, 'backups-here'), source })
    // Absolute paths are left as they are.
    const abs = setup(profileYaml({ backup_dir: '/srv/backups' }))
    expect(resolveSettings({ env: envFor(abs.home, abs.userHome) }).backupDir.value).toBe('/srv/backups')
  })

  it('flags and environment variables keep resolving against the current directory', () => {
    const { home, userHome } = setup(profileYaml(profile))
    const s = resolveSettings({
      env: envFor(home, userHome, { AUDIT_HMAC_KEY_FILE: 'rel/audit.key', BACKUP_DIR: 'rel-backups' }),
      flags: {},
    })
    expect(s.auditHmacKey.value).toEqual({ kind: 'file', path: path.resolve('rel/audit.key') })
    expect(s.backupDir.value).toBe(path.resolve('rel-backups'))
    const f = resolveSettings({ env: envFor(home, userHome), flags: { dir: 'flag-backups' } })
    expect(f.backupDir.value).toBe(path.resolve('flag-backups'))
  })

  it('a real process started elsewhere finds the key files the profile names relatively', async () => {
    const { home, userHome } = setup(
      profileYaml({ audit_hmac_key_file: 'keys/audit.key', backup_dir: 'backups-here' }),
    )
    fs.mkdirSync(path.join(home, 'keys'))
    fs.writeFileSync(path.join(home, 'keys', 'audit.key'), `a1:${key32()}\n`)
    const cwd = tempDir('cwd')
    const r = await execa(process.execPath, [BIN, 'locate', '--json'], {
      cwd,
      env: envFor(home, userHome),
      extendEnv: false,
      reject: false,
    })
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(0)
    const rows = Object.fromEntries(
      (JSON.parse(r.stdout) as { settings: Row[] }).settings.map((s) => [s.name, s.value]),
    )
    expect(rows.audit_hmac_key).toBe(`file ${path.join(home, 'keys', 'audit.key')}`)
    expect(rows.backup_dir).toBe(path.join(home, 'backups-here'))
  })
})
