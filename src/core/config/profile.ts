import fs from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import type YAMLModule from 'yaml'
import { UsageError } from '../errors.js'

/** Keys a profile may set. Secrets themselves are never read from config.yaml: only key files. */
export const PROFILE_KEYS = [
  'credits_db',
  'shadow_db',
  'redis',
  'audit_hmac_key_file',
  'encrypt_key_file',
  'backup_key_file',
  'backup_dir',
  'backup_retention_days',
  'timeout',
] as const

export type ProfileKey = (typeof PROFILE_KEYS)[number]
export type Profile = Partial<Record<ProfileKey, string>>

/**
 * Keys that hold a path. In a profile a relative path is relative to the directory of the
 * profile file, and `~/` is the user's home directory: the file means the same wherever shieldx is
 * started from (a CronJob's working directory is not the one it was written in). Paths from flags
 * and the environment stay relative to the current directory, as a shell user expects.
 */
export const PROFILE_PATH_KEYS: readonly ProfileKey[] = [
  'audit_hmac_key_file',
  'encrypt_key_file',
  'backup_key_file',
  'backup_dir',
]

const INLINE_SECRETS: Record<string, string> = {
  audit_hmac_key: 'audit_hmac_key_file',
  encrypt_key: 'encrypt_key_file',
  backup_key: 'backup_key_file',
}

export interface LoadedProfile {
  name: string
  file: string
  values: Profile
}

/**
 * Read profile `name` (or the file's `current_profile`) from $SHIELDX_HOME/config.yaml.
 * Returns null when no profile applies. Every mistake in the file is a UsageError naming it.
 * Path settings come back absolute (PROFILE_PATH_KEYS); `env.HOME` is the user's home for `~/`.
 */
export function loadProfile(
  home: string,
  requested: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): LoadedProfile | null {
  const file = path.join(home, 'config.yaml')
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      if (requested) {
        throw new UsageError(`Profile '${requested}' was asked for, but ${file} does not exist.`, {
          hint: 'Create it with a "profiles:" map, or drop --profile.',
        })
      }
      return null
    }
    throw new UsageError(`Cannot read ${file}: ${(err as Error).message}.`)
  }

  // Loaded only when there is a file to read: yaml takes about 35 ms to load, which every
  // command without a config.yaml would pay.
  const YAML = createRequire(import.meta.url)('yaml') as typeof YAMLModule
  const doc = YAML.parseDocument(text)
  if (doc.errors.length > 0) {
    const first = doc.errors[0]!
    const line = first.linePos?.[0]?.line
    throw new UsageError(
      `${file}${line ? ` line ${line}` : ''} is not valid YAML: ${first.message.split('\n')[0]}`,
    )
  }
  const root = (doc.toJS() ?? {}) as Record<string, unknown>
  if (typeof root !== 'object' || Array.isArray(root)) {
    throw new UsageError(`${file} must be a mapping with a "profiles:" key.`)
  }
  const profiles = (root.profiles ?? {}) as Record<string, unknown>
  if (typeof profiles !== 'object' || Array.isArray(profiles)) {
    throw new UsageError(`${file}: "profiles" must be a mapping of profile names to settings.`)
  }

  const name = requested ?? (typeof root.current_profile === 'string' ? root.current_profile : undefined)
  if (!name) return null
  // `prod:` with nothing under it is an empty profile, not an error.
  const raw = profiles[name] === null ? {} : profiles[name]
  if (raw === undefined) {
    const known = Object.keys(profiles)
    throw new UsageError(
      `Profile '${name}' is not in ${file}${known.length ? ` (profiles: ${known.join(', ')})` : ''}.`,
    )
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new UsageError(`${file}: profile '${name}' must be a mapping of settings.`)
  }

  const values: Profile = {}
  for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
    if (key in INLINE_SECRETS) {
      throw new UsageError(
        `${file}: profile '${name}' sets '${key}', but keys are never read from config.yaml; use '${INLINE_SECRETS[key]}' or the environment.`,
      )
    }
    if (!(PROFILE_KEYS as readonly string[]).includes(key)) {
      throw new UsageError(
        `${file}: profile '${name}' has an unknown setting '${key}' (known: ${PROFILE_KEYS.join(', ')}).`,
      )
    }
    if (typeof value !== 'string' && typeof value !== 'number') {
      throw new UsageError(`${file}: profile '${name}' setting '${key}' must be a string or number.`)
    }
    values[key as ProfileKey] = PROFILE_PATH_KEYS.includes(key as ProfileKey)
      ? profilePath(String(value), file, env)
      : String(value)
  }
  return { name, file, values }
}

/** A path from profile `file`: `~` and `~/...` under the user's home, a relative one under the file's directory. */
function profilePath(value: string, file: string, env: NodeJS.ProcessEnv): string {
  if (value === '~' || value.startsWith('~/')) {
    return path.join(env.HOME || os.homedir(), value.slice(1))
  }
  return path.resolve(path.dirname(file), value)
}
