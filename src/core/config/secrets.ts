/**
 * Loading keys. A key setting holds one key or a ring of them, written `kid:base64[,kid:base64...]`
 * (a bare base64 key gets a kid derived from its fingerprint). The first key signs or encrypts;
 * every key verifies or decrypts, so keys rotate without breaking old data.
 *
 * Embedded mode generates a missing key once, mode 0600, and says so; against a server a missing
 * key is an error. Key bytes never leave this module in messages.
 */
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { OperationError, UsageError } from '../errors.js'
import type { Resolved, SecretRef } from './settings.js'

export interface Key {
  kid: string
  bytes: Buffer
}

export interface Keyring {
  /** The key that signs / encrypts new data. */
  current: Key
  /** Every key by kid, including current: what verifies / decrypts. */
  byId: ReadonlyMap<string, Key>
}

export interface KeySpec {
  /** The environment name, used in every message: AUDIT_HMAC_KEY, ENCRYPT_KEY, BACKUP_KEY. */
  envName: string
  /** Exact length in bytes (AES-256: 32), or a minimum for HMAC keys. */
  bytes: { exact: number } | { min: number }
}

export interface LoadedKeyring {
  keyring: Keyring
  /** Set when this call generated the key file; the CLI tells the user. */
  generatedAt?: string
}

/** Keys as a worker thread receives them (workerData and messages carry no Buffers of ours). */
export type WireKeys = Array<{ kid: string; key: string }>

export function keysToWire(keys: Keyring): WireKeys {
  return [...keys.byId.values()].map((k) => ({ kid: k.kid, key: k.bytes.toString('base64') }))
}

export function keysFromWire(keys: WireKeys): Map<string, Key> {
  return new Map(keys.map((k) => [k.kid, { kid: k.kid, bytes: Buffer.from(k.key, 'base64') }]))
}

/**
 * The payment-data key (AES-256) and the backup key (AES-256, separate from it). Here, beside the
 * code that reads keys, so that checking a key (`shieldx locate`) loads neither the ledger nor the
 * backup code. The audit key's spec is in audit/chain.ts, which is as light.
 */
export const PAYMENT_KEY_SPEC = { envName: 'ENCRYPT_KEY', bytes: { exact: 32 } } as const
export const BACKUP_KEY_SPEC = { envName: 'BACKUP_KEY', bytes: { exact: 32 } } as const

const KID = /^[A-Za-z0-9._-]{1,64}$/

export function fingerprintKid(bytes: Buffer): string {
  return 'k' + createHash('sha256').update(bytes).digest('hex').slice(0, 8)
}

export function parseKeyring(text: string, spec: KeySpec, origin: string): Keyring {
  const entries = text
    .split(/[,\n]/)
    .map((s) => s.trim())
    .filter((s) => s !== '' && !s.startsWith('#'))
  if (entries.length === 0) throw new UsageError(`${spec.envName} (${origin}) is empty.`)
  const keys: Key[] = []
  for (const [i, entry] of entries.entries()) {
    const colon = entry.indexOf(':')
    const kid = colon === -1 ? undefined : entry.slice(0, colon)
    const b64 = colon === -1 ? entry : entry.slice(colon + 1)
    if (kid !== undefined && !KID.test(kid)) {
      throw new UsageError(
        `${spec.envName} (${origin}) key ${i + 1} has an invalid key id; use letters, digits, '.', '_' or '-'.`,
      )
    }
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) {
      throw new UsageError(`${spec.envName} (${origin}) key ${i + 1} is not base64.`)
    }
    const bytes = Buffer.from(b64, 'base64')
    if ('exact' in spec.bytes && bytes.length !== spec.bytes.exact) {
      throw new UsageError(
        `${spec.envName} (${origin}) key ${i + 1} must be ${spec.bytes.exact} bytes (base64 of ${spec.bytes.exact} random bytes); it is ${bytes.length}.`,
      )
    }
    if ('min' in spec.bytes && bytes.length < spec.bytes.min) {
      throw new UsageError(
        `${spec.envName} (${origin}) key ${i + 1} must be at least ${spec.bytes.min} bytes; it is ${bytes.length}.`,
      )
    }
    keys.push({ kid: kid ?? fingerprintKid(bytes), bytes })
  }
  const byId = new Map<string, Key>()
  for (const key of keys) {
    if (byId.has(key.kid))
      throw new UsageError(`${spec.envName} (${origin}) lists key id '${key.kid}' twice.`)
    byId.set(key.kid, key)
  }
  return { current: keys[0]!, byId }
}

export function loadKeyring(ref: Resolved<SecretRef>, spec: KeySpec): LoadedKeyring {
  const secret = ref.value
  switch (secret.kind) {
    case 'inline':
      return { keyring: parseKeyring(secret.value, spec, ref.source) }
    case 'file':
      return { keyring: parseKeyring(readKeyFile(secret.path, spec, ref.source), spec, secret.path) }
    case 'generated': {
      const generatedAt = ensureGeneratedKey(secret.path, spec)
      const keyring = parseKeyring(readKeyFile(secret.path, spec, ref.source), spec, secret.path)
      return generatedAt ? { keyring, generatedAt } : { keyring }
    }
    case 'missing':
      throw new UsageError(`${spec.envName} is not set.`, {
        hint: `Against a database server shieldx never invents keys: set ${spec.envName} or ${spec.envName}_FILE.`,
      })
  }
}

/**
 * The checks loadKeyring makes, without writing anything (`shieldx locate`): an embedded key that
 * does not exist yet is fine (it is generated on first use), and so is a key that is not set (the
 * commands that need it say so). Throws the UsageError loadKeyring would.
 */
export function checkKeyring(ref: Resolved<SecretRef>, spec: KeySpec): void {
  const secret = ref.value
  if (secret.kind === 'missing') return
  if (secret.kind === 'generated') {
    if (!fs.existsSync(secret.path)) return
    loadKeyring({ value: { kind: 'file', path: secret.path }, source: ref.source }, spec)
    return
  }
  loadKeyring(ref, spec)
}

/** `source`: where the file was named ("env BACKUP_KEY_FILE", "profile prod (...)"), for the message. */
function readKeyFile(file: string, spec: KeySpec, source: string): string {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error'
    const why = READ_ERRORS[code] ?? code
    throw new UsageError(`Cannot read the ${spec.envName} key file ${file} (from ${source}): ${why}.`)
  }
}

const READ_ERRORS: Record<string, string> = {
  ENOENT: 'it does not exist (ENOENT)',
  EACCES: 'permission denied (EACCES)',
  EISDIR: 'it is a directory (EISDIR)',
}

/** Create the key file if it does not exist. Returns its path when this call created it. */
function ensureGeneratedKey(file: string, spec: KeySpec): string | undefined {
  const length = 'exact' in spec.bytes ? spec.bytes.exact : Math.max(32, spec.bytes.min)
  const bytes = randomBytes(length)
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
  // Written whole to a private temp file, then linked into place: link() fails if the name exists,
  // so a concurrent first start never sees a half-written key, and the first writer's key wins.
  const temp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
  try {
    fs.writeFileSync(temp, `${fingerprintKid(bytes)}:${bytes.toString('base64')}\n`, {
      mode: 0o600,
      flag: 'wx',
    })
    fs.linkSync(temp, file)
    return file
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return undefined
    throw new OperationError(
      `Cannot write the generated ${spec.envName} to ${file}: ${(err as Error).message}.`,
    )
  } finally {
    fs.rmSync(temp, { force: true })
  }
}
