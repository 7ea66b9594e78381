/**
 * The locator: every setting shieldx uses, resolved flag > environment > profile > default,
 * with the source of each value kept so `shieldx locate` can say where it came from.
 * The environment names are the ones the production secrets already use (DESIGN.md).
 */
import path from 'node:path'
import { AUDIT_KEY_SPEC } from '../audit/chain.js'
import { UsageError } from '../errors.js'
import { parseDuration } from './duration.js'
import { defaultHome, PACKAGE_ROOT, tildify } from './paths.js'
import { type LoadedProfile, loadProfile, type ProfileKey } from './profile.js'
import { REDACTED, redactSetting, redactUrl, urlUserinfo } from './redact.js'
import { BACKUP_KEY_SPEC, checkKeyring, PAYMENT_KEY_SPEC } from './secrets.js'

export interface Resolved<T> {
  value: T
  /** "flag --credits-db", "env CREDITS_DATABASE_URL", "profile prod (~/.shieldx/config.yaml)", "default" */
  source: string
}

/** Where a key comes from. The key bytes are only read by secrets.ts, when a command needs them. */
export type SecretRef =
  | { kind: 'inline'; env: string; value: string }
  | { kind: 'file'; path: string }
  | { kind: 'generated'; path: string }
  | { kind: 'missing' }

export interface GlobalFlags {
  home?: string
  profile?: string
  creditsDb?: string
  shadowDb?: string
  redis?: string
  timeout?: string
}

/** Flags that only some commands have, but that the locator resolves like the rest. */
export interface CommandFlags {
  dir?: string
  retentionDays?: string
}

export interface Settings {
  home: Resolved<string>
  profile: Resolved<string | null>
  /** null: the embedded database under home/data. */
  creditsDb: Resolved<string | null>
  /** null: the same database as credits. */
  shadowDb: Resolved<string | null>
  /** null: no cache. */
  /** `lonePassword`: REDIS_PASSWORD is set without REDIS_ADDR, which alone takes it (cacheUrl refuses). */
  redis: Resolved<string | null> & { lonePassword?: true }
  auditHmacKey: Resolved<SecretRef>
  encryptKey: Resolved<SecretRef>
  backupKey: Resolved<SecretRef>
  backupDir: Resolved<string>
  backupRetentionDays: Resolved<number>
  timeoutMs: Resolved<number>
  migrationsDir: Resolved<string>
}

export interface SettingsInput {
  env: NodeJS.ProcessEnv
  flags?: GlobalFlags & CommandFlags
}

const DEFAULT_TIMEOUT = '30s'
const DEFAULT_RETENTION_DAYS = 30

export function isEmbedded(settings: Settings): boolean {
  return settings.creditsDb.value === null
}

export function embeddedDataDir(home: string): string {
  return path.join(home, 'data')
}

export function resolveSettings(input: SettingsInput): Settings {
  const env = input.env
  const flags = input.flags ?? {}
  const nonEmpty = (v: string | undefined) => (v === undefined || v.trim() === '' ? undefined : v)

  const home: Resolved<string> = flags.home
    ? { value: path.resolve(flags.home), source: 'flag --home' }
    : nonEmpty(env.SHIELDX_HOME)
      ? { value: path.resolve(env.SHIELDX_HOME!), source: 'env SHIELDX_HOME' }
      : { value: defaultHome(env), source: 'default' }

  const requestedProfile = flags.profile ?? nonEmpty(env.SHIELDX_PROFILE)
  const loaded: LoadedProfile | null = loadProfile(home.value, requestedProfile, env)
  const profileSource = (key: ProfileKey): Resolved<string> | undefined => {
    const value = loaded?.values[key]
    return value === undefined
      ? undefined
      : { value, source: `profile ${loaded!.name} (${tildify(loaded!.file, env)})` }
  }
  const profile: Resolved<string | null> = loaded
    ? {
        value: loaded.name,
        source: flags.profile
          ? 'flag --profile'
          : requestedProfile
            ? 'env SHIELDX_PROFILE'
            : `current_profile in ${tildify(loaded.file, env)}`,
      }
    : { value: null, source: 'default' }

  /** flag > env > profile > nothing */
  const pick = (
    flag: { value: string | undefined; name: string },
    envName: string | null,
    key: ProfileKey | null,
  ): Resolved<string> | undefined => {
    if (flag.value !== undefined) return { value: flag.value, source: `flag ${flag.name}` }
    if (envName && nonEmpty(env[envName])) return { value: env[envName]!, source: `env ${envName}` }
    return key ? profileSource(key) : undefined
  }

  const creditsDb = pick(
    { value: flags.creditsDb, name: '--credits-db' },
    'CREDITS_DATABASE_URL',
    'credits_db',
  )
  const shadowDb = pick({ value: flags.shadowDb, name: '--shadow-db' }, 'SHADOW_DATABASE_URL', 'shadow_db')
  const embedded = creditsDb === undefined

  const redis = resolveRedis(flags.redis, env, profileSource('redis'))

  const key = (envName: string, fileKey: ProfileKey, generatedName: string): Resolved<SecretRef> => {
    const inline = nonEmpty(env[envName])
    const file = nonEmpty(env[`${envName}_FILE`])
    if (inline && file) {
      throw new UsageError(`Set ${envName} or ${envName}_FILE, not both.`)
    }
    if (inline) return { value: { kind: 'inline', env: envName, value: inline }, source: `env ${envName}` }
    if (file) return { value: { kind: 'file', path: path.resolve(file) }, source: `env ${envName}_FILE` }
    const fromProfile = profileSource(fileKey)
    if (fromProfile)
      return { value: { kind: 'file', path: path.resolve(fromProfile.value) }, source: fromProfile.source }
    return embedded
      ? {
          value: { kind: 'generated', path: path.join(home.value, 'keys', generatedName) },
          source: 'default',
        }
      : { value: { kind: 'missing' }, source: 'default' }
  }

  const timeoutRaw = pick({ value: flags.timeout, name: '--timeout' }, 'SHIELDX_TIMEOUT', 'timeout') ?? {
    value: DEFAULT_TIMEOUT,
    source: 'default',
  }
  const backupDir = pick({ value: flags.dir, name: '--dir' }, 'BACKUP_DIR', 'backup_dir')
  const retentionRaw = pick(
    { value: flags.retentionDays, name: '--retention-days' },
    'BACKUP_RETENTION_DAYS',
    'backup_retention_days',
  )

  return {
    home,
    profile,
    creditsDb: creditsDb ?? { value: null, source: 'default' },
    shadowDb: shadowDb ?? { value: null, source: 'default' },
    redis,
    auditHmacKey: key('AUDIT_HMAC_KEY', 'audit_hmac_key_file', 'audit_hmac.key'),
    encryptKey: key('ENCRYPT_KEY', 'encrypt_key_file', 'encrypt.key'),
    backupKey: key('BACKUP_KEY', 'backup_key_file', 'backup.key'),
    backupDir: backupDir
      ? { value: path.resolve(backupDir.value), source: backupDir.source }
      : { value: path.join(home.value, 'backups'), source: 'default' },
    backupRetentionDays: retentionRaw
      ? { value: parseRetention(retentionRaw), source: retentionRaw.source }
      : { value: DEFAULT_RETENTION_DAYS, source: 'default' },
    timeoutMs: {
      value: parseDuration(timeoutRaw.value, settingLabel(timeoutRaw.source, 'timeout')),
      source: timeoutRaw.source,
    },
    migrationsDir: nonEmpty(env.SHIELDX_MIGRATIONS_DIR)
      ? { value: path.resolve(env.SHIELDX_MIGRATIONS_DIR!), source: 'env SHIELDX_MIGRATIONS_DIR' }
      : { value: path.join(PACKAGE_ROOT, 'migrations'), source: 'default' },
  }
}

function resolveRedis(
  flag: string | undefined,
  env: NodeJS.ProcessEnv,
  fromProfile: Resolved<string> | undefined,
): Settings['redis'] {
  if (flag !== undefined) return { value: flag, source: 'flag --redis' }
  if (env.REDIS_URL) return { value: env.REDIS_URL, source: 'env REDIS_URL' }
  // The password only ever goes with REDIS_ADDR (a profile's URL does not take it either): alone it
  // would be dropped without a word, and the cache would run without it while the user thinks it
  // has one. Marked here, refused by cacheUrl: only where the cache would be used (and by locate),
  // as a malformed URL is.
  if (env.REDIS_PASSWORD && !env.REDIS_ADDR)
    return { ...(fromProfile ?? { value: null, source: 'default' }), lonePassword: true }
  if (env.REDIS_ADDR) {
    // The production secrets carry host:port and the password separately.
    const auth = env.REDIS_PASSWORD ? `:${encodeURIComponent(env.REDIS_PASSWORD)}@` : ''
    return {
      value: `redis://${auth}${env.REDIS_ADDR}`,
      source: env.REDIS_PASSWORD ? 'env REDIS_ADDR + REDIS_PASSWORD' : 'env REDIS_ADDR',
    }
  }
  return fromProfile ?? { value: null, source: 'default' }
}

/**
 * The balance cache's Redis URL, checked: null when the cache is off. A malformed URL is bad input
 * (exit 2) for every command that would use the cache, found before it writes anything.
 */
export function cacheUrl(settings: Pick<Settings, 'redis'>): string | null {
  const { value, source } = settings.redis
  if (settings.redis.lonePassword) {
    throw new UsageError('REDIS_PASSWORD is set without REDIS_ADDR, so it would be ignored.', {
      hint: 'Set REDIS_ADDR=host:port with it, put the password in REDIS_URL (redis://:PASSWORD@host:6379), or unset REDIS_PASSWORD.',
    })
  }
  return value === null ? null : checkRedisUrl(value, source)
}

const REDIS_URL_SHAPE = 'Expected redis://[:password@]host[:port][/db], or rediss:// for TLS.'

/**
 * A Redis URL as the cache needs it, checked with the WHATWG URL parser before ioredis sees it:
 * ioredis reads URLs with Node's url.parse(), which takes a bad port or a stray scheme without
 * complaint (and prints a DEP0170 warning holding the whole URL, password included). Every
 * message names `source`, never the password. Returns the URL with its user and password
 * percent-encoded, so that a '/', '@' or ':' in the password cannot move the host.
 */
export function checkRedisUrl(raw: string, source: string): string {
  // Surrounding whitespace (a secret file's newline) is dropped, as the URL parser would.
  const url = raw.trim()
  const what = `The Redis URL from ${source}`
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(url)
  // Not even URL-shaped: it is not echoed, in case it is a password put in the wrong place.
  if (!scheme) throw new UsageError(`${what} is not a URL.`, { hint: REDIS_URL_SHAPE })
  if (!/^rediss?$/i.test(scheme[1]!)) {
    throw new UsageError(`${what} must start with redis:// or rediss://; got ${scheme[1]}://.`, {
      hint: REDIS_URL_SHAPE,
    })
  }
  // Without the userinfo: neither the URL parser nor a message ever sees the password.
  const info = urlUserinfo(url)
  const bare = info ? `${info.prefix}${info.rest.slice(1)}` : url
  const authority = bare.slice(scheme[0].length).split(/[/?#]/)[0]!
  if (authority === '' || authority.startsWith(':')) {
    throw new UsageError(`${what} names no host: ${redactUrl(url)}.`, { hint: REDIS_URL_SHAPE })
  }
  const port = /^(?:\[[^\]]*\]|[^:]*):(.*)$/.exec(authority)?.[1]
  if (port !== undefined && port !== '' && !(/^\d{1,5}$/.test(port) && +port >= 1 && +port <= 65535)) {
    throw new UsageError(`${what} has the port '${port}'; a port is a number from 1 to 65535.`)
  }
  let parsed: URL
  try {
    parsed = new URL(bare)
  } catch {
    throw new UsageError(`${what} is not a valid URL: ${redactUrl(url)}.`, { hint: REDIS_URL_SHAPE })
  }
  if (!/^\/?(\d+)?$/.test(parsed.pathname)) {
    throw new UsageError(
      `${what} names the database '${parsed.pathname.slice(1)}'; a Redis database is a number, as in redis://host:6379/0.`,
    )
  }
  if (!info) return url
  const decode = (text: string, part: string): string => {
    try {
      return decodeURIComponent(text)
    } catch {
      throw new UsageError(`${what} has a '%' in its ${part} that is not a valid %XX escape.`, {
        hint: "Percent-encode special characters in it; a literal '%' is %25.",
      })
    }
  }
  const user = encodeURIComponent(decode(info.user, 'user name'))
  const password = info.password === null ? '' : `:${encodeURIComponent(decode(info.password, 'password'))}`
  return `${info.prefix}${user}${password}${info.rest}`
}

function parseRetention(raw: Resolved<string>): number {
  const n = /^\d+$/.test(raw.value.trim()) ? Number(raw.value) : Number.NaN
  if (!Number.isInteger(n) || n < 1) {
    throw new UsageError(
      `${settingLabel(raw.source, 'backup_retention_days')} must be a whole number of days (1 or more); got '${raw.value}'.`,
    )
  }
  return n
}

/**
 * How an error names a setting: "--timeout" for a flag, "SHIELDX_TIMEOUT" for env, "timeout in
 * profile x (file)" otherwise.
 */
export function settingLabel(source: string, key: string): string {
  if (source.startsWith('flag ')) return source.slice(5)
  if (source.startsWith('env ')) return source.slice(4)
  return `${key} in ${source}`
}

export interface SettingView {
  name: string
  value: string
  source: string
  /** What is wrong with the value, one sentence each; left out when nothing is (`shieldx locate`). */
  problems?: string[]
}

export interface SettingProblem {
  /** The setting's name as describeSettings() shows it. */
  setting: string
  message: string
  hint?: string
}

/**
 * What can be known to be wrong with the settings without connecting to anything: the checks
 * the commands that use each setting make before they do (database and Redis URLs, keys and key
 * files), run here all at once, and nothing is written (a key the embedded mode would generate is
 * not generated). A key that is not set is not a problem here: only the commands that need it say so.
 */
export async function checkSettings(settings: Settings): Promise<SettingProblem[]> {
  const problems: SettingProblem[] = []
  const check = (setting: string, fn: () => unknown): void => {
    try {
      fn()
    } catch (err) {
      if (!(err instanceof UsageError)) throw err
      problems.push({ setting, message: err.message, ...(err.hint ? { hint: err.hint } : {}) })
    }
  }
  if (settings.creditsDb.value !== null || settings.shadowDb.value !== null) {
    // Loaded only when there is a URL to check: the module brings the pg driver.
    const { serverUrl } = await import('../db/pool.js')
    if (settings.creditsDb.value !== null) check('credits_db', () => serverUrl(settings, 'credits'))
    if (settings.shadowDb.value !== null) check('shadow_db', () => serverUrl(settings, 'shadow'))
  }
  check('redis', () => cacheUrl(settings))
  check('audit_hmac_key', () => checkKeyring(settings.auditHmacKey, AUDIT_KEY_SPEC))
  check('encrypt_key', () => checkKeyring(settings.encryptKey, PAYMENT_KEY_SPEC))
  check('backup_key', () => checkKeyring(settings.backupKey, BACKUP_KEY_SPEC))
  return problems
}

/** Every setting as text, secrets redacted: what `shieldx locate` prints. */
export function describeSettings(settings: Settings, env: NodeJS.ProcessEnv): SettingView[] {
  const home = settings.home.value
  const secret = (ref: SecretRef): string => {
    switch (ref.kind) {
      case 'inline':
        return `${REDACTED} (from ${ref.env})`
      case 'file':
        return `file ${tildify(ref.path, env)}`
      case 'generated':
        return `embedded key ${tildify(ref.path, env)} (generated on first use)`
      case 'missing':
        return 'not set'
    }
  }
  const rows: Array<[string, Resolved<unknown>, string]> = [
    ['home', settings.home, tildify(home, env)],
    ['profile', settings.profile, settings.profile.value ?? 'none'],
    [
      'credits_db',
      settings.creditsDb,
      settings.creditsDb.value === null
        ? `embedded PGlite (${tildify(embeddedDataDir(home), env)})`
        : redactSetting(settings.creditsDb.value),
    ],
    [
      'shadow_db',
      settings.shadowDb,
      settings.shadowDb.value === null ? 'same as credits_db' : redactSetting(settings.shadowDb.value),
    ],
    [
      'redis',
      settings.redis,
      settings.redis.value === null ? 'off (no balance cache)' : redactSetting(settings.redis.value),
    ],
    ['audit_hmac_key', settings.auditHmacKey, secret(settings.auditHmacKey.value)],
    ['encrypt_key', settings.encryptKey, secret(settings.encryptKey.value)],
    ['backup_key', settings.backupKey, secret(settings.backupKey.value)],
    ['backup_dir', settings.backupDir, tildify(settings.backupDir.value, env)],
    ['backup_retention_days', settings.backupRetentionDays, String(settings.backupRetentionDays.value)],
    ['timeout', settings.timeoutMs, `${settings.timeoutMs.value / 1000}s`],
    ['migrations_dir', settings.migrationsDir, tildify(settings.migrationsDir.value, env)],
  ]
  return rows.map(([name, resolved, value]) => ({ name, value, source: resolved.source }))
}
