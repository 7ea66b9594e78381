/**
 * The configuration layer: the locator (flag > env > profile > default, with the source of each
 * value), profiles in $SHIELDX_HOME/config.yaml, redaction of secrets in every output, bad input
 * as exit 2 with one sentence, and durations. Checked both on resolveSettings() directly and
 * through `shieldx locate` run in-process, which is what users see.
 *
 * Every home is a fresh temp dir, and HOME itself points at another temp dir, so nothing here
 * can read or write the developer's ~/.shieldx.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseDuration } from '../src/core/config/duration.js'
import { loadProfile, PROFILE_KEYS } from '../src/core/config/profile.js'
import { REDACTED, redactUrl, secretValues } from '../src/core/config/redact.js'
import {
  cacheUrl,
  type CommandFlags,
  describeSettings,
  type GlobalFlags,
  isEmbedded,
  resolveSettings,
} from '../src/core/config/settings.js'
import { UsageError } from '../src/core/errors.js'
import { type CliResult, runCli } from './helpers/cli.js'
import { createTestDatabase } from './helpers/db.js'
import { envFor, scratchHomes } from './helpers/homes.js'
import { cleanEnv } from './helpers/env.js'

// --- helpers ---------------------------------------------------------------------------------------

const { tempDir, setup } = scratchHomes('shx-cfg')

/** A profile document in the shape users write. */
function profileYaml(profiles: Record<string, Record<string, string | number>>, current?: string): string {
  const lines: string[] = []
  if (current) lines.push(`current_profile: ${current}`)
  lines.push('profiles:')
  for (const [name, values] of Object.entries(profiles)) {
    lines.push(Object.keys(values).length === 0 ? `  ${name}: {}` : `  ${name}:`)
    for (const [k, v] of Object.entries(values)) lines.push(`    ${k}: ${JSON.stringify(v)}`)
  }
  return lines.join('\n') + '\n'
}

interface Row {
  value: string
  source: string
}

/** `shieldx [args] locate --json`, in-process; must succeed; returns the rows by name. */
async function locateJson(env: NodeJS.ProcessEnv, args: string[] = []): Promise<Record<string, Row>> {
  const r = await runCli([...args, 'locate', '--json'], { env })
  expect(r.stderr).toBe('')
  expect(r.code).toBe(0)
  const doc = JSON.parse(r.stdout) as { settings: Array<{ name: string; value: string; source: string }> }
  expect(Object.keys(doc)).toEqual(['settings'])
  const rows: Record<string, Row> = {}
  for (const s of doc.settings) {
    expect(Object.keys(s).sort()).toEqual(['name', 'source', 'value'])
    rows[s.name] = { value: s.value, source: s.source }
  }
  return rows
}

/** Both renderings of locate (human table and --json), concatenated, for "never appears" checks. */
async function locateBoth(env: NodeJS.ProcessEnv, args: string[] = []): Promise<CliResult[]> {
  const human = await runCli([...args, 'locate'], { env })
  const json = await runCli([...args, 'locate', '--json'], { env })
  return [human, json]
}

/** An exit-2 error: one "error:" sentence naming what to fix, no stack, nothing on stdout. */
function expectUsageError(r: CliResult, ...mentions: string[]): string {
  expect(r.code).toBe(2)
  expect(r.stdout).toBe('')
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '')
  expect(lines[0]).toMatch(/^error: /)
  expect(r.stderr).not.toMatch(/^\s+at /m)
  expect(r.stderr).not.toMatch(/this is a bug/i)
  for (const m of mentions) expect(lines[0]).toContain(m)
  return lines[0]!
}

// --- resolution order --------------------------------------------------------------------------------

/**
 * Every setting that can come from all layers. `flag` is the resolveSettings() flag, `cli` the
 * command-line flag (absent where no built command has it yet), `shown` what locate prints.
 */
interface Layered {
  name: string
  flagKey: keyof (GlobalFlags & CommandFlags)
  cli?: string
  sourceFlag: string
  envName: string
  profileKey: string
  values: { flag: string; env: string; profile: string }
  resolved: (s: ReturnType<typeof resolveSettings>) => { value: unknown; source: string }
  expected: (raw: string) => unknown
  shown: (raw: string) => string
  default: (home: string) => { value: unknown; shown: string }
}

const LAYERED: Layered[] = [
  {
    name: 'credits_db',
    flagKey: 'creditsDb',
    cli: '--credits-db',
    sourceFlag: 'flag --credits-db',
    envName: 'CREDITS_DATABASE_URL',
    profileKey: 'credits_db',
    values: {
      flag: 'postgres://app@flag-host:5432/credits',
      env: 'postgres://app@env-host:5432/credits',
      profile: 'postgres://app@profile-host:5432/credits',
    },
    resolved: (s) => s.creditsDb,
    expected: (raw) => raw,
    shown: (raw) => raw,
    default: (home) => ({ value: null, shown: `embedded PGlite (${path.join(home, 'data')})` }),
  },
  {
    name: 'shadow_db',
    flagKey: 'shadowDb',
    cli: '--shadow-db',
    sourceFlag: 'flag --shadow-db',
    envName: 'SHADOW_DATABASE_URL',
    profileKey: 'shadow_db',
    values: {
      flag: 'postgres://app@flag-host:5432/shadow',
      env: 'postgres://app@env-host:5432/shadow',
      profile: 'postgres://app@profile-host:5432/shadow',
    },
    resolved: (s) => s.shadowDb,
    expected: (raw) => raw,
    shown: (raw) => raw,
    default: () => ({ value: null, shown: 'same as credits_db' }),
  },
  {
    name: 'redis',
    flagKey: 'redis',
    cli: '--redis',
    sourceFlag: 'flag --redis',
    envName: 'REDIS_URL',
    profileKey: 'redis',
    values: {
      flag: 'redis://flag-host:6379',
      env: 'redis://env-host:6379',
      profile: 'redis://profile-host:6379',
    },
    resolved: (s) => s.redis,
    expected: (raw) => raw,
    shown: (raw) => raw,
    default: () => ({ value: null, shown: 'off (no balance cache)' }),
  },
  {
    name: 'timeout',
    flagKey: 'timeout',
    cli: '--timeout',
    sourceFlag: 'flag --timeout',
    envName: 'SHIELDX_TIMEOUT',
    profileKey: 'timeout',
    values: { flag: '5s', env: '2m', profile: '1500ms' },
    resolved: (s) => s.timeoutMs,
    expected: (raw) => (({ '5s': 5000, '2m': 120_000, '1500ms': 1500 }) as Record<string, number>)[raw],
    shown: (raw) => (({ '5s': '5s', '2m': '120s', '1500ms': '1.5s' }) as Record<string, string>)[raw]!,
    default: () => ({ value: 30_000, shown: '30s' }),
  },
  {
    name: 'backup_dir',
    flagKey: 'dir',
    sourceFlag: 'flag --dir',
    envName: 'BACKUP_DIR',
    profileKey: 'backup_dir',
    values: { flag: '/srv/flag-backups', env: '/srv/env-backups', profile: '/srv/profile-backups' },
    resolved: (s) => s.backupDir,
    expected: (raw) => raw,
    shown: (raw) => raw,
    default: (home) => ({ value: path.join(home, 'backups'), shown: path.join(home, 'backups') }),
  },
  {
    name: 'backup_retention_days',
    flagKey: 'retentionDays',
    sourceFlag: 'flag --retention-days',
    envName: 'BACKUP_RETENTION_DAYS',
    profileKey: 'backup_retention_days',
    values: { flag: '3', env: '14', profile: '90' },
    resolved: (s) => s.backupRetentionDays,
    expected: (raw) => Number(raw),
    shown: (raw) => raw,
    default: () => ({ value: 30, shown: '30' }),
  },
]

type Layer = 'flag' | 'env' | 'profile'

/** The same setting given on the layers listed; everything else left alone. */
function layered(spec: Layered, layers: Layer[]) {
  const profile: Record<string, string> = {}
  if (layers.includes('profile')) profile[spec.profileKey] = spec.values.profile
  const { home, userHome, configFile } = setup(profileYaml({ prod: profile }, 'prod'))
  const env = envFor(home, userHome, layers.includes('env') ? { [spec.envName]: spec.values.env } : {})
  const flags: GlobalFlags & CommandFlags = layers.includes('flag')
    ? { [spec.flagKey]: spec.values.flag }
    : {}
  return { home, env, flags, configFile }
}

describe('resolution order: flag > env > profile > default', () => {
  describe.each(LAYERED)('$name', (spec) => {
    it('a flag wins over the environment and the profile', () => {
      const { env, flags } = layered(spec, ['flag', 'env', 'profile'])
      const r = spec.resolved(resolveSettings({ env, flags }))
      expect(r).toEqual({ value: spec.expected(spec.values.flag), source: spec.sourceFlag })
    })

    it('the environment wins over the profile', () => {
      const { env } = layered(spec, ['env', 'profile'])
      const r = spec.resolved(resolveSettings({ env }))
      expect(r).toEqual({ value: spec.expected(spec.values.env), source: `env ${spec.envName}` })
    })

    it('the profile applies when neither flag nor environment sets it', () => {
      const { env, configFile } = layered(spec, ['profile'])
      const r = spec.resolved(resolveSettings({ env }))
      expect(r).toEqual({
        value: spec.expected(spec.values.profile),
        source: `profile prod (${configFile})`,
      })
    })

    it('the default applies when nothing sets it', () => {
      const { env, home } = layered(spec, [])
      const r = spec.resolved(resolveSettings({ env }))
      expect(r).toEqual({ value: spec.default(home).value, source: 'default' })
    })

    it('an empty environment variable counts as unset', () => {
      const { home, userHome, configFile } = setup(
        profileYaml({ prod: { [spec.profileKey]: spec.values.profile } }, 'prod'),
      )
      const env = envFor(home, userHome, { [spec.envName]: '' })
      expect(spec.resolved(resolveSettings({ env })).source).toBe(`profile prod (${configFile})`)
    })

    it('locate --json shows the winning value and its source at every layer', async () => {
      const cases: Array<{ layers: Layer[]; raw: string | null; source: (f: string) => string }> = [
        { layers: ['env', 'profile'], raw: spec.values.env, source: () => `env ${spec.envName}` },
        { layers: ['profile'], raw: spec.values.profile, source: (f) => `profile prod (${f})` },
        { layers: [], raw: null, source: () => 'default' },
      ]
      if (spec.cli) {
        cases.unshift({
          layers: ['flag', 'env', 'profile'],
          raw: spec.values.flag,
          source: () => spec.sourceFlag,
        })
      }
      for (const c of cases) {
        const { env, home, configFile } = layered(spec, c.layers)
        const args = c.layers.includes('flag') && spec.cli ? [spec.cli, spec.values.flag] : []
        const rows = await locateJson(env, args)
        expect(rows[spec.name], `${spec.name} from ${c.layers.join('+') || 'nothing'}`).toEqual({
          value: c.raw === null ? spec.default(home).shown : spec.shown(c.raw),
          source: c.source(configFile),
        })
      }
    })
  })

  describe('home', () => {
    it('--home wins over SHIELDX_HOME, which wins over ~/.shieldx', async () => {
      const { home: envHome, userHome } = setup()
      const flagHome = tempDir('flaghome')
      const env = envFor(envHome, userHome)

      expect(resolveSettings({ env, flags: { home: flagHome } }).home).toEqual({
        value: flagHome,
        source: 'flag --home',
      })
      expect(resolveSettings({ env }).home).toEqual({ value: envHome, source: 'env SHIELDX_HOME' })
      expect(resolveSettings({ env: cleanEnv({ HOME: userHome }) }).home).toEqual({
        value: path.join(userHome, '.shieldx'),
        source: 'default',
      })

      expect((await locateJson(env, ['--home', flagHome])).home).toEqual({
        value: flagHome,
        source: 'flag --home',
      })
      expect((await locateJson(env)).home).toEqual({ value: envHome, source: 'env SHIELDX_HOME' })
      // Under the user's home directory it is shown as ~/...
      expect((await locateJson(cleanEnv({ HOME: userHome }))).home).toEqual({
        value: '~/.shieldx',
        source: 'default',
      })
    })

    it('a relative SHIELDX_HOME is made absolute', () => {
      const { userHome } = setup()
      const s = resolveSettings({ env: cleanEnv({ HOME: userHome, SHIELDX_HOME: 'relative/home' }) })
      expect(s.home.value).toBe(path.resolve('relative/home'))
      expect(path.isAbsolute(s.backupDir.value)).toBe(true)
    })

    it('the profile is read from the home that wins (--home), not from SHIELDX_HOME', () => {
      const { home: envHome, userHome } = setup(
        profileYaml({ prod: { credits_db: 'postgres://app@env-home/db' } }, 'prod'),
      )
      const flagHome = tempDir('flaghome')
      fs.writeFileSync(
        path.join(flagHome, 'config.yaml'),
        profileYaml({ prod: { credits_db: 'postgres://app@flag-home/db' } }, 'prod'),
      )
      const s = resolveSettings({ env: envFor(envHome, userHome), flags: { home: flagHome } })
      expect(s.creditsDb).toEqual({
        value: 'postgres://app@flag-home/db',
        source: `profile prod (${path.join(flagHome, 'config.yaml')})`,
      })
    })

    it('derived defaults (data, backups, generated keys) live under the resolved home', () => {
      const { home, userHome } = setup()
      const s = resolveSettings({ env: envFor(home, userHome) })
      expect(s.backupDir.value).toBe(path.join(home, 'backups'))
      expect(s.auditHmacKey.value).toEqual({
        kind: 'generated',
        path: path.join(home, 'keys', 'audit_hmac.key'),
      })
      expect(s.encryptKey.value).toEqual({ kind: 'generated', path: path.join(home, 'keys', 'encrypt.key') })
      expect(s.backupKey.value).toEqual({ kind: 'generated', path: path.join(home, 'keys', 'backup.key') })
    })
  })

  it('each setting is resolved on its own: mixed layers in one invocation', async () => {
    const { home, userHome, configFile } = setup(
      profileYaml(
        { prod: { redis: 'redis://profile-cache:6379', backup_retention_days: 9, timeout: '1m' } },
        'prod',
      ),
    )
    const env = envFor(home, userHome, { CREDITS_DATABASE_URL: 'postgres://app@env-db:5432/credits' })
    const rows = await locateJson(env, ['--timeout', '10s'])
    expect(rows.credits_db).toEqual({
      value: 'postgres://app@env-db:5432/credits',
      source: 'env CREDITS_DATABASE_URL',
    })
    expect(rows.shadow_db).toEqual({ value: 'same as credits_db', source: 'default' })
    expect(rows.redis).toEqual({
      value: 'redis://profile-cache:6379',
      source: `profile prod (${configFile})`,
    })
    expect(rows.backup_retention_days).toEqual({ value: '9', source: `profile prod (${configFile})` })
    expect(rows.timeout).toEqual({ value: '10s', source: 'flag --timeout' })
    expect(rows.profile).toEqual({ value: 'prod', source: `current_profile in ${configFile}` })
  })
})

// --- profiles ------------------------------------------------------------------------------------------

describe('profiles', () => {
  const doc = profileYaml(
    {
      prod: { credits_db: 'postgres://app@prod-db:5432/credits' },
      staging: { credits_db: 'postgres://app@staging-db:5432/credits' },
      dev: { credits_db: 'postgres://app@dev-db:5432/credits' },
    },
    'prod',
  )

  it('current_profile picks the profile when nothing else asks', () => {
    const { home, userHome, configFile } = setup(doc)
    const s = resolveSettings({ env: envFor(home, userHome) })
    expect(s.profile).toEqual({ value: 'prod', source: `current_profile in ${configFile}` })
    expect(s.creditsDb.value).toBe('postgres://app@prod-db:5432/credits')
  })

  it('SHIELDX_PROFILE overrides current_profile', () => {
    const { home, userHome, configFile } = setup(doc)
    const s = resolveSettings({ env: envFor(home, userHome, { SHIELDX_PROFILE: 'staging' }) })
    expect(s.profile).toEqual({ value: 'staging', source: 'env SHIELDX_PROFILE' })
    expect(s.creditsDb).toEqual({
      value: 'postgres://app@staging-db:5432/credits',
      source: `profile staging (${configFile})`,
    })
  })

  it('--profile overrides SHIELDX_PROFILE and current_profile', async () => {
    const { home, userHome, configFile } = setup(doc)
    const env = envFor(home, userHome, { SHIELDX_PROFILE: 'staging' })
    const s = resolveSettings({ env, flags: { profile: 'dev' } })
    expect(s.profile).toEqual({ value: 'dev', source: 'flag --profile' })
    expect(s.creditsDb.value).toBe('postgres://app@dev-db:5432/credits')

    const rows = await locateJson(env, ['--profile', 'dev'])
    expect(rows.profile).toEqual({ value: 'dev', source: 'flag --profile' })
    expect(rows.credits_db).toEqual({
      value: 'postgres://app@dev-db:5432/credits',
      source: `profile dev (${configFile})`,
    })
  })

  it('no profile applies when config.yaml has profiles but no current_profile and none is asked for', async () => {
    const { home, userHome } = setup(profileYaml({ prod: { credits_db: 'postgres://app@prod-db/credits' } }))
    const rows = await locateJson(envFor(home, userHome))
    expect(rows.profile).toEqual({ value: 'none', source: 'default' })
    expect(rows.credits_db!.source).toBe('default')
  })

  it('without config.yaml and without --profile everything is a default', async () => {
    const { home, userHome } = setup()
    const rows = await locateJson(envFor(home, userHome))
    expect(rows.profile).toEqual({ value: 'none', source: 'default' })
    for (const name of [
      'credits_db',
      'shadow_db',
      'redis',
      'backup_dir',
      'backup_retention_days',
      'timeout',
    ]) {
      expect(rows[name]!.source, name).toBe('default')
    }
  })

  it('the source names the file as ~/... when it is under the user home', async () => {
    const { userHome } = setup()
    const home = path.join(userHome, '.shieldx')
    fs.mkdirSync(home)
    fs.writeFileSync(path.join(home, 'config.yaml'), profileYaml({ prod: { timeout: '45s' } }, 'prod'))
    // No SHIELDX_HOME: the default home ~/.shieldx, i.e. the temp HOME's .shieldx.
    const rows = await locateJson(cleanEnv({ HOME: userHome }))
    expect(rows.timeout).toEqual({ value: '45s', source: 'profile prod (~/.shieldx/config.yaml)' })
    expect(rows.profile).toEqual({ value: 'prod', source: 'current_profile in ~/.shieldx/config.yaml' })
  })

  it('numbers in YAML are accepted for numeric settings', () => {
    const { home, userHome } = setup(profileYaml({ prod: { backup_retention_days: 7, timeout: 90 } }, 'prod'))
    const s = resolveSettings({ env: envFor(home, userHome) })
    expect(s.backupRetentionDays.value).toBe(7)
    expect(s.timeoutMs.value).toBe(90_000)
  })

  it('key files from a profile are key files: shown by path, source the profile', async () => {
    const { home, userHome, configFile } = setup()
    const keyFile = path.join(home, 'audit.key')
    // locate checks that the files hold keys: these do
    fs.writeFileSync(keyFile, `${randomBytes(32).toString('base64')}\n`)
    fs.writeFileSync(path.join(home, 'enc.key'), `${randomBytes(32).toString('base64')}\n`)
    fs.writeFileSync(
      configFile,
      profileYaml(
        { prod: { audit_hmac_key_file: keyFile, encrypt_key_file: path.join(home, 'enc.key') } },
        'prod',
      ),
    )
    const s = resolveSettings({ env: envFor(home, userHome) })
    expect(s.auditHmacKey).toEqual({
      value: { kind: 'file', path: keyFile },
      source: `profile prod (${configFile})`,
    })
    const rows = await locateJson(envFor(home, userHome))
    expect(rows.audit_hmac_key).toEqual({ value: `file ${keyFile}`, source: `profile prod (${configFile})` })
    expect(rows.encrypt_key!.value).toBe(`file ${path.join(home, 'enc.key')}`)
    // The environment still wins over the profile's key file.
    const envKey = path.join(home, 'env-audit.key')
    const s2 = resolveSettings({ env: envFor(home, userHome, { AUDIT_HMAC_KEY_FILE: envKey }) })
    expect(s2.auditHmacKey).toEqual({
      value: { kind: 'file', path: envKey },
      source: 'env AUDIT_HMAC_KEY_FILE',
    })
  })

  it('every documented profile key is accepted', () => {
    const values: Record<string, string> = {
      credits_db: 'postgres://a@h/db',
      shadow_db: 'postgres://a@h/shadow',
      redis: 'redis://h:6379',
      audit_hmac_key_file: '/k/audit',
      encrypt_key_file: '/k/enc',
      backup_key_file: '/k/backup',
      backup_dir: '/b',
      backup_retention_days: '5',
      timeout: '10s',
    }
    expect(Object.keys(values).sort()).toEqual([...PROFILE_KEYS].sort())
    const { home } = setup(profileYaml({ all: values }))
    expect(loadProfile(home, 'all')?.values).toEqual(values)
  })

  it('loadProfile returns null when there is no file and nothing is asked for', () => {
    const { home } = setup()
    expect(loadProfile(home, undefined)).toBeNull()
  })
})

describe('profile errors: exit 2, one sentence naming the file and the key', () => {
  it('an unknown profile names it, the file and the profiles that exist', async () => {
    const { home, userHome, configFile } = setup(
      profileYaml({ prod: { timeout: '1m' }, staging: { timeout: '2m' } }, 'prod'),
    )
    const r = await runCli(['--profile', 'prdo', 'locate'], { env: envFor(home, userHome) })
    expectUsageError(r, "'prdo'", configFile, 'prod, staging')
  })

  it('a current_profile that does not exist is an error too', async () => {
    const { home, userHome, configFile } = setup(profileYaml({ prod: { timeout: '1m' } }, 'gone'))
    expectUsageError(await runCli(['locate'], { env: envFor(home, userHome) }), "'gone'", configFile)
  })

  it('SHIELDX_PROFILE naming an unknown profile is an error', async () => {
    const { home, userHome, configFile } = setup(profileYaml({ prod: { timeout: '1m' } }))
    const r = await runCli(['locate'], { env: envFor(home, userHome, { SHIELDX_PROFILE: 'qa' }) })
    expectUsageError(r, "'qa'", configFile)
  })

  it('an unknown key (a typo) names the key, the profile and the file', async () => {
    const { home, userHome, configFile } = setup(
      profileYaml({ prod: { credit_db: 'postgres://app@db/credits' } }, 'prod'),
    )
    const line = expectUsageError(
      await runCli(['locate'], { env: envFor(home, userHome) }),
      configFile,
      "'credit_db'",
    )
    expect(line).toContain("'prod'")
    expect(line).toContain('credits_db') // the list of known keys shows the right spelling
  })

  it.each(['audit_hmac_key', 'encrypt_key', 'backup_key'])(
    'an inline secret (%s) in a profile is refused, pointing at the _file key, without echoing it',
    async (key) => {
      const secret = 'InlineSecretInYaml0123456789abcdefABCDEF='
      const { home, userHome, configFile } = setup(profileYaml({ prod: { [key]: secret } }, 'prod'))
      for (const args of [['locate'], ['locate', '--json']]) {
        const r = await runCli(args, { env: envFor(home, userHome) })
        expect(r.code).toBe(2)
        expect(r.stderr).toContain(configFile)
        expect(r.stderr).toContain(`'${key}'`)
        expect(r.stderr).toContain(`'${key}_file'`)
        expect(r.stdout + r.stderr).not.toContain(secret)
      }
    },
  )

  it('invalid YAML names the file and the line', async () => {
    const { home, userHome, configFile } = setup(
      'current_profile: prod\nprofiles:\n  prod:\n    timeout: [1m\n',
    )
    const line = expectUsageError(await runCli(['locate'], { env: envFor(home, userHome) }), configFile)
    expect(line).toMatch(/not valid YAML/)
    expect(line).toMatch(/line \d+/)
  })

  it('invalid YAML is reported even when no profile is asked for', async () => {
    const { home, userHome, configFile } = setup('profiles: {prod: [\n')
    expectUsageError(await runCli(['locate'], { env: envFor(home, userHome) }), configFile, 'not valid YAML')
  })

  it('--profile without a config.yaml names the missing file', async () => {
    const { home, userHome, configFile } = setup()
    const r = await runCli(['--profile', 'prod', 'locate'], { env: envFor(home, userHome) })
    expectUsageError(r, "'prod'", configFile, 'does not exist')
  })

  it('SHIELDX_PROFILE without a config.yaml is the same error', async () => {
    const { home, userHome, configFile } = setup()
    const r = await runCli(['locate'], { env: envFor(home, userHome, { SHIELDX_PROFILE: 'prod' }) })
    expectUsageError(r, "'prod'", configFile)
  })

  it.each([
    ['a list at the top level', '- a\n- b\n'],
    ['profiles as a list', 'profiles:\n  - prod\n'],
    ['a profile that is not a mapping', 'current_profile: prod\nprofiles:\n  prod: just-a-string\n'],
    ['a setting that is a mapping', 'current_profile: prod\nprofiles:\n  prod:\n    timeout: {a: 1}\n'],
    ['a setting that is a boolean', 'current_profile: prod\nprofiles:\n  prod:\n    redis: true\n'],
  ])('%s is a usage error naming the file', async (_what, yaml) => {
    const { home, userHome, configFile } = setup(yaml)
    expectUsageError(await runCli(['locate'], { env: envFor(home, userHome) }), configFile)
  })

  it('under --json the error is one JSON document with code USAGE and exit_code 2', async () => {
    const { home, userHome, configFile } = setup(profileYaml({ prod: {} }))
    const r = await runCli(['--profile', 'nope', 'locate', '--json'], { env: envFor(home, userHome) })
    expect(r.code).toBe(2)
    const doc = JSON.parse(r.stdout) as {
      ok: boolean
      error: { code: string; message: string; exit_code: number }
    }
    expect(doc.ok).toBe(false)
    expect(doc.error.code).toBe('USAGE')
    expect(doc.error.exit_code).toBe(2)
    expect(doc.error.message).toContain(configFile)
  })

  it('resolveSettings throws a UsageError (exit 2), not a plain Error', () => {
    const { home, userHome } = setup(profileYaml({ prod: { nonsense: 'x' } }, 'prod'))
    try {
      resolveSettings({ env: envFor(home, userHome) })
      expect.unreachable('resolveSettings should have thrown')
    } catch (err) {
      expect(err).toBeInstanceOf(UsageError)
      expect((err as UsageError).exitCode).toBe(2)
    }
  })
})

// --- redis -----------------------------------------------------------------------------------------------

describe('redis from REDIS_ADDR + REDIS_PASSWORD', () => {
  const password = 'r3d!s p@ss/w:rd%'

  it('combines into a URL that carries the password, source names both variables', () => {
    const { home, userHome } = setup()
    const s = resolveSettings({
      env: envFor(home, userHome, { REDIS_ADDR: 'cache.internal:6380', REDIS_PASSWORD: password }),
    })
    expect(s.redis.source).toBe('env REDIS_ADDR + REDIS_PASSWORD')
    const url = new URL(s.redis.value!)
    expect(url.protocol).toBe('redis:')
    expect(url.hostname).toBe('cache.internal')
    expect(url.port).toBe('6380')
    // What a client will use after decoding: exactly the secret's password.
    expect(decodeURIComponent(url.password)).toBe(password)
  })

  it('locate shows the combined URL with the password redacted, in both renderings', async () => {
    const { home, userHome } = setup()
    const env = envFor(home, userHome, { REDIS_ADDR: 'cache.internal:6380', REDIS_PASSWORD: password })
    const rows = await locateJson(env)
    expect(rows.redis).toEqual({
      value: `redis://:${REDACTED}@cache.internal:6380`,
      source: 'env REDIS_ADDR + REDIS_PASSWORD',
    })
    for (const r of await locateBoth(env)) {
      expect(r.code).toBe(0)
      expect(r.stdout).toContain('cache.internal:6380')
      expect(r.stdout).not.toContain(password)
      expect(r.stdout).not.toContain(encodeURIComponent(password))
      expect(r.stdout).not.toContain('r3d!s')
    }
  })

  it('REDIS_ADDR alone is a URL without credentials', () => {
    const { home, userHome } = setup()
    const s = resolveSettings({ env: envFor(home, userHome, { REDIS_ADDR: 'cache:6379' }) })
    expect(s.redis).toEqual({ value: 'redis://cache:6379', source: 'env REDIS_ADDR' })
  })

  it('REDIS_PASSWORD alone turns no cache on, and a command that would use the cache refuses it (exit 2)', () => {
    const { home, userHome } = setup()
    const s = resolveSettings({ env: envFor(home, userHome, { REDIS_PASSWORD: password }) })
    expect(s.redis.value).toBeNull()
    expect(() => cacheUrl(s)).toThrow(/^REDIS_PASSWORD is set without REDIS_ADDR, so it would be ignored\.$/)
  })

  it('REDIS_URL wins over REDIS_ADDR + REDIS_PASSWORD', async () => {
    const { home, userHome } = setup()
    const env = envFor(home, userHome, {
      REDIS_URL: 'redis://url-host:6379/2',
      REDIS_ADDR: 'addr-host:6379',
      REDIS_PASSWORD: password,
    })
    expect(resolveSettings({ env }).redis).toEqual({
      value: 'redis://url-host:6379/2',
      source: 'env REDIS_URL',
    })
    expect((await locateJson(env)).redis).toEqual({
      value: 'redis://url-host:6379/2',
      source: 'env REDIS_URL',
    })
  })

  it('--redis wins over REDIS_ADDR, and REDIS_ADDR wins over the profile', () => {
    const { home, userHome } = setup(profileYaml({ prod: { redis: 'redis://profile-host:6379' } }, 'prod'))
    const env = envFor(home, userHome, { REDIS_ADDR: 'addr-host:6379' })
    expect(resolveSettings({ env, flags: { redis: 'redis://flag-host:6379' } }).redis).toEqual({
      value: 'redis://flag-host:6379',
      source: 'flag --redis',
    })
    expect(resolveSettings({ env }).redis).toEqual({
      value: 'redis://addr-host:6379',
      source: 'env REDIS_ADDR',
    })
  })
})

// --- redaction ---------------------------------------------------------------------------------------------

/** A database URL with a password, and the password's forms that must never be printed. */
interface SecretUrl {
  what: string
  url: string
  secrets: string[]
  /** Something of the URL that is not secret and should still be shown. */
  visible: string
  /** every command refuses it (exit 2), so locate reports it as a problem */
  rejected?: true
}

const SECRET_URLS: SecretUrl[] = [
  {
    what: 'a plain password',
    url: 'postgres://app:Tr0ub4dorAndThree@db.internal:5432/credits',
    secrets: ['Tr0ub4dorAndThree'],
    visible: 'db.internal:5432/credits',
  },
  {
    what: 'a percent-encoded password with special characters',
    url: 'postgres://app:p%40ss%3Aw%2Frd%23%3F%25x9@db.internal:5432/credits',
    secrets: ['p%40ss%3Aw%2Frd%23%3F%25x9', 'p@ss:w/rd#?%x9', 'w%2Frd', 'w/rd#'],
    visible: 'db.internal:5432/credits',
  },
  {
    what: 'special characters left unencoded where the URL still parses',
    url: "postgres://app:Sp3c!al'(chars)*~$@db.internal:5432/credits",
    secrets: ["Sp3c!al'(chars)*~$", 'Sp3c!al', '(chars)'],
    visible: 'db.internal:5432/credits',
  },
  {
    what: 'an unencoded @ in the password',
    url: 'postgres://app:at@Sign9Pw@db.internal:5432/credits',
    secrets: ['at@Sign9Pw', 'Sign9Pw', 'at%40Sign9Pw'],
    visible: 'db.internal:5432/credits',
  },
  {
    what: 'a ?password= query parameter',
    url: 'postgres://app@db.internal:5432/credits?sslmode=require&password=QueryParamPw42',
    secrets: ['QueryParamPw42'],
    visible: 'sslmode=require',
  },
  {
    what: 'a percent-encoded ?password= query parameter',
    url: 'postgres://app@db.internal:5432/credits?password=Enc%26oded%3DPw77',
    secrets: ['Enc%26oded%3DPw77', 'Enc&oded=Pw77', 'Enc&oded'],
    visible: 'db.internal:5432/credits',
  },
  {
    what: 'an ?sslpassword= query parameter',
    url: 'postgres://app@db.internal:5432/credits?sslmode=verify-full&sslpassword=ClientKeyPw55',
    secrets: ['ClientKeyPw55'],
    visible: 'sslmode=verify-full',
  },
  {
    what: 'a multi-host URL (not parseable by URL, redacted by pattern)',
    url: 'postgresql://app:MultiHostPw31@db1:5432,db2:5433/credits',
    secrets: ['MultiHostPw31'],
    visible: 'db1:5432,db2:5433',
    rejected: true,
  },
  {
    what: 'a keyword/value connection string',
    url: 'host=db.internal user=app password=KeywordPw64 dbname=credits',
    secrets: ['KeywordPw64'],
    visible: 'host=db.internal',
    rejected: true,
  },
]

function expectNoSecrets(text: string, secrets: string[]) {
  for (const s of secrets) expect(text, `output contains '${s}'`).not.toContain(s)
}

describe('redaction: database passwords never appear', () => {
  describe.each(SECRET_URLS)('$what', ({ url, secrets, visible, rejected }) => {
    it('redactUrl replaces the password and keeps the rest', () => {
      const out = redactUrl(url)
      expectNoSecrets(out, secrets)
      expect(out).toContain(REDACTED)
      expect(out).toContain(visible)
    })

    it('locate (human and --json) never shows it, whether it came from a flag, the env or a profile', async () => {
      const { home, userHome } = setup(profileYaml({ prod: { credits_db: url, shadow_db: url } }, 'prod'))
      const fromProfile = envFor(home, userHome)
      const fromEnv = envFor(home, userHome, { CREDITS_DATABASE_URL: url, SHADOW_DATABASE_URL: url })
      const invocations: Array<[NodeJS.ProcessEnv, string[]]> = [
        [fromProfile, []],
        [fromEnv, []],
        [fromProfile, ['--credits-db', url, '--shadow-db', url]],
        [fromProfile, [`--credits-db=${url}`]],
      ]
      for (const [env, args] of invocations) {
        for (const r of await locateBoth(env, args)) {
          // A URL every command refuses is a problem locate reports too (exit 2), still redacted.
          expect(r.code).toBe(rejected ? 2 : 0)
          expectNoSecrets(r.stdout + r.stderr, secrets)
          expect(r.stdout).toContain(visible)
        }
      }
    })
  })

  it('REDIS_URL with a password is redacted in locate', async () => {
    const { home, userHome } = setup()
    const env = envFor(home, userHome, { REDIS_URL: 'redis://default:RedisUrlPw88@cache:6379/0' })
    for (const r of await locateBoth(env)) {
      expect(r.code).toBe(0)
      expect(r.stdout).toContain('cache:6379')
      expect(r.stdout).not.toContain('RedisUrlPw88')
    }
  })
})

describe('redaction: inline keys never appear, key files are shown by path', () => {
  // Real-looking keys: a 32-byte key in base64, and a ring with two kids.
  const auditKey =
    'kA1:QXVkaXRIbWFjS2V5MzJieXRlc0xvbmdFbm91Z2ghISE=,kA0:T2xkQXVkaXRLZXlTdGlsbFZlcmlmaWVzT2xkUm93cyE='
  const encryptKey = 'RW5jcnlwdEtleUV4YWN0bHkzMkJ5dGVzTG9uZyEhISE='
  const backupKey = 'QmFja3VwS2V5SXNOb3RUaGVQYXltZW50S2V5ISEhISE='
  const keyParts = [
    auditKey,
    'QXVkaXRIbWFjS2V5MzJieXRlc0xvbmdFbm91Z2ghISE=',
    'T2xkQXVkaXRLZXlTdGlsbFZlcmlmaWVzT2xkUm93cyE=',
    encryptKey,
    backupKey,
  ]

  it('locate shows **** and the variable name for each inline key', async () => {
    const { home, userHome } = setup()
    const env = envFor(home, userHome, {
      AUDIT_HMAC_KEY: auditKey,
      ENCRYPT_KEY: encryptKey,
      BACKUP_KEY: backupKey,
    })
    const rows = await locateJson(env)
    expect(rows.audit_hmac_key).toEqual({
      value: `${REDACTED} (from AUDIT_HMAC_KEY)`,
      source: 'env AUDIT_HMAC_KEY',
    })
    expect(rows.encrypt_key).toEqual({ value: `${REDACTED} (from ENCRYPT_KEY)`, source: 'env ENCRYPT_KEY' })
    expect(rows.backup_key).toEqual({ value: `${REDACTED} (from BACKUP_KEY)`, source: 'env BACKUP_KEY' })
    for (const r of await locateBoth(env)) expectNoSecrets(r.stdout + r.stderr, keyParts)
  })

  it('key files are shown by path, and their contents are not read into the output', async () => {
    const { home, userHome } = setup()
    const files = {
      AUDIT_HMAC_KEY_FILE: path.join(home, 'audit.key'),
      ENCRYPT_KEY_FILE: path.join(home, 'encrypt.key'),
      BACKUP_KEY_FILE: path.join(home, 'backup.key'),
    }
    fs.writeFileSync(files.AUDIT_HMAC_KEY_FILE, `${auditKey}\n`)
    fs.writeFileSync(files.ENCRYPT_KEY_FILE, `${encryptKey}\n`)
    fs.writeFileSync(files.BACKUP_KEY_FILE, `${backupKey}\n`)
    const env = envFor(home, userHome, files)
    const rows = await locateJson(env)
    expect(rows.audit_hmac_key).toEqual({
      value: `file ${files.AUDIT_HMAC_KEY_FILE}`,
      source: 'env AUDIT_HMAC_KEY_FILE',
    })
    expect(rows.encrypt_key).toEqual({
      value: `file ${files.ENCRYPT_KEY_FILE}`,
      source: 'env ENCRYPT_KEY_FILE',
    })
    expect(rows.backup_key).toEqual({ value: `file ${files.BACKUP_KEY_FILE}`, source: 'env BACKUP_KEY_FILE' })
    for (const r of await locateBoth(env)) expectNoSecrets(r.stdout + r.stderr, keyParts)
  })

  it('embedded mode shows where a missing key will be generated; a server without keys shows "not set"', async () => {
    const { home, userHome } = setup()
    const embedded = await locateJson(envFor(home, userHome))
    expect(embedded.audit_hmac_key).toEqual({
      value: `embedded key ${path.join(home, 'keys', 'audit_hmac.key')} (generated on first use)`,
      source: 'default',
    })
    // locate only describes: it must not generate anything.
    expect(fs.existsSync(path.join(home, 'keys'))).toBe(false)

    const server = await locateJson(
      envFor(home, userHome, { CREDITS_DATABASE_URL: 'postgres://app@db.internal:5432/credits' }),
    )
    for (const name of ['audit_hmac_key', 'encrypt_key', 'backup_key']) {
      expect(server[name], name).toEqual({ value: 'not set', source: 'default' })
    }
  })

  it.each(['AUDIT_HMAC_KEY', 'ENCRYPT_KEY', 'BACKUP_KEY'])(
    '%s together with its _FILE variant is exit 2, naming both, without printing the key',
    async (name) => {
      const { home, userHome } = setup()
      const keyFile = path.join(home, 'k')
      const env = envFor(home, userHome, { [name]: encryptKey, [`${name}_FILE`]: keyFile })
      expect(() => resolveSettings({ env })).toThrow(UsageError)
      for (const args of [['locate'], ['locate', '--json']]) {
        const r = await runCli(args, { env })
        expect(r.code).toBe(2)
        expect(r.stderr).toContain(name)
        expect(r.stderr).toContain(`${name}_FILE`)
        expectNoSecrets(r.stdout + r.stderr, [encryptKey])
      }
    },
  )
})

describe('redaction: errors from an unreachable database', () => {
  const password = 'Unre@chable:Pw/42'
  const encoded = encodeURIComponent(password)
  const secrets = [password, encoded, 'Unre@chable', 'Pw/42']

  const urls: Array<[string, string]> = [
    ['in the userinfo', `postgres://app:${encoded}@127.0.0.1:1/credits`],
    ['as ?password=', `postgres://app@127.0.0.1:1/credits?password=${encoded}`],
  ]

  describe.each(urls)('password %s', (_where, url) => {
    it('migrate status: exit 1, names host and port, never the password (env, flag, --json, --verbose)', async () => {
      const { home, userHome } = setup()
      const base = envFor(home, userHome)
      const runs: Array<[string[], NodeJS.ProcessEnv]> = [
        [['migrate', 'status'], { ...base, CREDITS_DATABASE_URL: url }],
        [['--credits-db', url, 'migrate', 'status'], base],
        [['--json', '--credits-db', url, 'migrate', 'status'], base],
        [['--verbose', 'migrate', 'status'], { ...base, CREDITS_DATABASE_URL: url }],
      ]
      for (const [args, env] of runs) {
        const r = await runCli(args, { env })
        expect(r.code, args.join(' ')).toBe(1)
        expect(r.stderr).toContain('127.0.0.1:1')
        expectNoSecrets(r.stdout + r.stderr, secrets)
      }
    })
  })

  it('a database URL that does not parse is exit 2, shown redacted', async () => {
    const { home, userHome } = setup()
    const r = await runCli(['migrate', 'status'], {
      env: envFor(home, userHome, {
        CREDITS_DATABASE_URL: 'postgres://app:BadPortPw91@db.internal:notaport/credits',
      }),
    })
    expectUsageError(r, 'CREDITS_DATABASE_URL')
    expect(r.stderr).toContain('db.internal')
    expect(r.stderr).not.toContain('BadPortPw91')
  })

  it('inline keys in the environment never reach the error output', async () => {
    const { home, userHome } = setup()
    const key = 'SGVyZUlzQW5IbWFjS2V5VGhhdE11c3ROb3RMZWFrISE='
    const r = await runCli(['--verbose', 'migrate', 'status'], {
      env: envFor(home, userHome, {
        CREDITS_DATABASE_URL: 'postgres://app@127.0.0.1:1/credits',
        AUDIT_HMAC_KEY: key,
        ENCRYPT_KEY: key,
        BACKUP_KEY: key,
      }),
    })
    expect(r.code).toBe(1)
    expect(r.stdout + r.stderr).not.toContain(key)
  })

  it('secretValues collects URL passwords (raw and decoded) and keys for the error boundary', () => {
    const values = secretValues(
      { CREDITS_DATABASE_URL: `postgres://app:${encoded}@h/db`, AUDIT_HMAC_KEY: 'kid1:QUJDREVGR0g=' },
      ['--shadow-db=postgres://app:FlagPassw0rd@h/db'],
    )
    expect(values).toEqual(expect.arrayContaining([encoded, password, 'FlagPassw0rd', 'QUJDREVGR0g=']))
  })
})

// --- bad values ---------------------------------------------------------------------------------------------

describe('bad values: exit 2 naming the setting', () => {
  it.each(['abc', '0', '0s', '-5s', '10 minutes', '5x', ''])('--timeout %j', async (value) => {
    const { home, userHome } = setup()
    const line = expectUsageError(
      await runCli(['--timeout', value, 'locate'], { env: envFor(home, userHome) }),
      '--timeout',
    )
    if (value !== '') expect(line).toContain(`'${value}'`)
  })

  it('SHIELDX_TIMEOUT names the variable', async () => {
    const { home, userHome } = setup()
    const r = await runCli(['locate'], { env: envFor(home, userHome, { SHIELDX_TIMEOUT: 'soon' }) })
    expectUsageError(r, 'SHIELDX_TIMEOUT', "'soon'")
  })

  it('a bad timeout in a profile names the key and the profile file', async () => {
    const { home, userHome, configFile } = setup(profileYaml({ prod: { timeout: 'forever' } }, 'prod'))
    const r = await runCli(['locate'], { env: envFor(home, userHome) })
    expectUsageError(r, 'timeout', configFile, "'forever'")
  })

  it('a valid flag hides a bad value in a lower layer', async () => {
    const { home, userHome } = setup()
    const rows = await locateJson(envFor(home, userHome, { SHIELDX_TIMEOUT: 'soon' }), ['--timeout', '2s'])
    expect(rows.timeout).toEqual({ value: '2s', source: 'flag --timeout' })
  })

  it.each(['abc', '0', '-3', '1.5', 'thirty'])('BACKUP_RETENTION_DAYS=%j', async (value) => {
    const { home, userHome } = setup()
    const r = await runCli(['locate'], { env: envFor(home, userHome, { BACKUP_RETENTION_DAYS: value }) })
    expectUsageError(r, 'BACKUP_RETENTION_DAYS', `'${value}'`)
  })

  it('a bad backup_retention_days in a profile names the key and the file', async () => {
    const { home, userHome, configFile } = setup(
      profileYaml({ prod: { backup_retention_days: 'a month' } }, 'prod'),
    )
    expectUsageError(
      await runCli(['locate'], { env: envFor(home, userHome) }),
      'backup_retention_days',
      configFile,
    )
  })

  it('--retention-days (a command flag) is named when it is bad', () => {
    const { home, userHome } = setup()
    expect(() => resolveSettings({ env: envFor(home, userHome), flags: { retentionDays: 'x' } })).toThrow(
      /--retention-days must be a whole number/,
    )
  })

  it('a failed resolution writes nothing into the home', async () => {
    const { home, userHome } = setup()
    await runCli(['--timeout', 'abc', 'locate'], { env: envFor(home, userHome) })
    await runCli(['migrate', 'status'], { env: envFor(home, userHome, { BACKUP_RETENTION_DAYS: '0' }) })
    expect(fs.readdirSync(home)).toEqual([])
    expect(fs.readdirSync(userHome)).toEqual([])
  })
})

// --- embedded vs server ----------------------------------------------------------------------------------------

describe('embedded vs server', () => {
  it('no database URL anywhere means the embedded database under home/data', async () => {
    const { home, userHome } = setup()
    const s = resolveSettings({ env: envFor(home, userHome) })
    expect(isEmbedded(s)).toBe(true)
    const rows = describeSettings(s, envFor(home, userHome))
    expect(rows.find((r) => r.name === 'credits_db')).toEqual({
      name: 'credits_db',
      value: `embedded PGlite (${path.join(home, 'data')})`,
      source: 'default',
    })
  })

  it('a credits URL from any layer means a server, and keys are then required', () => {
    const { home, userHome } = setup(
      profileYaml({ prod: { credits_db: 'postgres://app@db/credits' } }, 'prod'),
    )
    const s = resolveSettings({ env: envFor(home, userHome) })
    expect(isEmbedded(s)).toBe(false)
    expect(s.auditHmacKey.value).toEqual({ kind: 'missing' })
  })

  it('SHADOW_DATABASE_URL alone does not leave embedded mode for credits', () => {
    const { home, userHome } = setup()
    const s = resolveSettings({
      env: envFor(home, userHome, { SHADOW_DATABASE_URL: 'postgres://app@db/shadow' }),
    })
    expect(isEmbedded(s)).toBe(true)
    expect(s.shadowDb.value).toBe('postgres://app@db/shadow')
  })
})

// --- durations ---------------------------------------------------------------------------------------------------

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['30s', 30_000],
    ['15m', 900_000],
    ['2h', 7_200_000],
    ['1d', 86_400_000],
    ['45', 45_000],
    ['1.5s', 1500],
    [' 10s ', 10_000],
  ])('%j is %i ms', (input, ms) => {
    expect(parseDuration(input, '--timeout')).toBe(ms)
  })

  it.each(['abc', '', '  ', '30 s', '5x', '-1s', '1e3', 's', '30sec', '1h30m', '.5s'])(
    'rejects %j with a UsageError naming the field',
    (input) => {
      expect(() => parseDuration(input, '--lease')).toThrow(UsageError)
      expect(() => parseDuration(input, '--lease')).toThrow(/^--lease must be a duration like 30s/)
    },
  )

  it.each(['0', '0s', '0ms', '0.0h'])('rejects zero (%j) naming the field', (input) => {
    expect(() => parseDuration(input, 'SHIELDX_TIMEOUT')).toThrow(/^SHIELDX_TIMEOUT must be at least 1ms/)
  })

  // Was a bug (src/core/config/duration.ts), now fixed: the "> 0" check runs before Math.round, so a positive
  // duration under half a millisecond passes the check and comes back as 0. A timeout of 0 means
  // "no timeout" to PostgreSQL (statement_timeout) and to pg (connectionTimeoutMillis), so
  // `--timeout 0.4ms` silently disables every timeout instead of being rejected with exit 2.
  it('never returns 0 for input it accepts (0.4ms is rejected or rounds up)', () => {
    let ms: number | undefined
    try {
      ms = parseDuration('0.4ms', '--timeout')
    } catch (err) {
      expect(err).toBeInstanceOf(UsageError)
      return
    }
    expect(ms).toBeGreaterThan(0)
  })
})

describe('timeouts the database layer can use', () => {
  // Was a bug: a --timeout above ~12.4 days was accepted, then PostgreSQL refused the doubled
  // idle_in_transaction_session_timeout and the user was told the server gave "no answer".
  // Timeouts are now capped at 24h, so this is bad input (exit 2) naming --timeout.
  it('a long --timeout (13d) either works or is refused as bad input; it is never "no answer"', async () => {
    const db = await createTestDatabase('cfg_timeout')
    try {
      const { home, userHome } = setup()
      const r = await runCli(
        ['--credits-db', db.url, '--timeout', '13d', 'migrate', 'status', '--schema', 'credits'],
        {
          env: envFor(home, userHome),
        },
      )
      expect(r.stderr).not.toMatch(/Cannot connect/)
      if (r.code !== 0) {
        expect(r.code).toBe(2)
        expect(r.stderr).toContain('--timeout')
      }
    } finally {
      await db.drop()
    }
  })

  it('the longest --timeout (24h) still reaches the server', async () => {
    const db = await createTestDatabase('cfg_timeout_ok')
    try {
      const { home, userHome } = setup()
      const r = await runCli(
        ['--credits-db', db.url, '--timeout', '24h', 'migrate', 'status', '--schema', 'credits'],
        {
          env: envFor(home, userHome),
        },
      )
      expect(r.stderr).toBe('')
      expect(r.code).toBe(0)
    } finally {
      await db.drop()
    }
  })
})

describe('redaction of malformed URLs (passwords with unencoded /, @ or :)', () => {
  it.each([
    ['postgres://app:12/cd@db:5432/c', '12/cd'],
    ['postgres://app:p@ss@db:bad/c', 'p@ss'],
    ['postgres://app:a:b:c@db/c', 'a:b:c'],
    ['host=db user=app password=hunter2x dbname=c', 'hunter2x'],
    ["host=db password='with space' dbname=c", 'with space'],
  ])('%s never shows its password', (url, password) => {
    const out = redactUrl(url)
    expect(out).not.toContain(password)
    expect(out).toContain('****')
  })

  it('keeps the user, host and database visible', () => {
    expect(redactUrl('postgres://app:12/cd@db:5432/credits')).toBe('postgres://app:****@db:5432/credits')
    expect(redactUrl('postgres://app@db/credits')).toBe('postgres://app@db/credits')
  })
})
