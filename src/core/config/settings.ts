/**
 * The locator: every setting shieldx uses, resolved flag > environment > profile > default,
 * with the source of each value kept so `shieldx locate` can say where it came from.
 * The environment names are the ones the production secrets already use (DESIGN.md).
 */
import path from 'node:path'
import { UsageError } from '../errors.js'
import { parseDuration } from './duration.js'
import { defaultHome, PACKAGE_ROOT, tildify } from './paths.js'
import { type LoadedProfile, loadProfile, type ProfileKey } from './profile.js'
import { REDACTED, redactUrl } from './redact.js'

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
  redis: Resolved<string | null>
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
  const loaded: LoadedProfile | null = loadProfile(home.value, requestedProfile)
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
): Resolved<string | null> {
  if (flag !== undefined) return { value: flag, source: 'flag --redis' }
  if (env.REDIS_URL) return { value: env.REDIS_URL, source: 'env REDIS_URL' }
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
        : redactUrl(settings.creditsDb.value),
    ],
    [
      'shadow_db',
      settings.shadowDb,
      settings.shadowDb.value === null ? 'same as credits_db' : redactUrl(settings.shadowDb.value),
    ],
    [
      'redis',
      settings.redis,
      settings.redis.value === null ? 'off (no balance cache)' : redactUrl(settings.redis.value),
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
