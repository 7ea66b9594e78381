/**
 * backup verify: the manifest, the checksum, every chunk authenticated, the dump's table of
 * contents read back; with a test restore, the dump restored into a scratch database, compared
 * with the manifest and its audit chain verified, then the scratch database dropped.
 */
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { Keyring } from '../config/secrets.js'
import { type Database, openScratchEmbedded, openServer } from '../db/pool.js'
import { IntegrityError, InterruptedError, isShieldxError, UsageError } from '../errors.js'
import { assertBackupFile, type Manifest, readManifest, writeManifest } from './manifest.js'
import { backupKeyFor } from './envelope.js'
import { dropDatabase } from './target.js'
import {
  type Check,
  chainCheck,
  chainNotCheckable,
  checkArchive,
  compareWithManifest,
  type Restored,
  restoreInto,
  streamDump,
  withDatabase,
} from './restore.js'

export interface VerifyBackupOptions {
  keys: Keyring
  env: NodeJS.ProcessEnv
  timeoutMs: number
  /** Restore into a scratch database: on this server (custom dumps), or in memory (embedded dumps). */
  restoreTest?: { server: Database | null; auditKeys: Keyring }
  onProgress?: (bytes: number) => void
  /** Ctrl-C: the test restore stops (and its scratch database is dropped). */
  signal?: AbortSignal
}

export interface VerifyBackupResult {
  ok: boolean
  file: string
  checks: Check[]
  /** Why the result could not be written into the manifest (read-only storage), if it could not. */
  unrecorded?: string
}

export async function verifyBackup(file: string, options: VerifyBackupOptions): Promise<VerifyBackupResult> {
  assertBackupFile(file)
  const checks: Check[] = []
  let manifest: Manifest
  try {
    manifest = readManifest(file)
    checks.push({
      name: 'manifest',
      ok: true,
      detail: `${manifest.database}, schema version ${manifest.schema_version}, ${manifest.created_at}`,
    })
  } catch (err) {
    if (!isShieldxError(err)) throw err
    checks.push({ name: 'manifest', ok: false, detail: err.message })
    return { ok: false, file, checks }
  }
  // A key BACKUP_KEY does not hold is this run's configuration, not the backup's fault: thrown
  // before any check, so a CronJob with a stale secret marks no good backup as failed.
  backupKeyFor(options.keys, manifest.encryption.key_id)
  const ok = await checkBackup(file, manifest, options, checks)
  // Interrupted, it has no verdict: the manifest stays as it was.
  if (options.signal?.aborted) throw new InterruptedError()
  // Recorded either way: a backup that once passed and now fails must not stay 'verified', or prune
  // would keep it as the newest verified backup and delete good ones around it. (Trouble that is
  // not the backup's, a server unreachable or a timeout, is thrown before this and recorded nowhere.)
  const { verified: _was, verify_failed: _failed, ...rest } = manifest
  const at = new Date().toISOString()
  try {
    writeManifest(
      file,
      ok
        ? { ...rest, verified: { at, restore_test: options.restoreTest !== undefined } }
        : { ...rest, verify_failed: { at, checks: checks.filter((c) => !c.ok).map((c) => c.name) } },
    )
  } catch (err) {
    return { ok, file, checks, unrecorded: (err as NodeJS.ErrnoException).code ?? (err as Error).message }
  }
  return { ok, file, checks }
}

/** Every check of the file itself and, if asked, of a test restore; into `checks`. */
async function checkBackup(
  file: string,
  manifest: Manifest,
  options: VerifyBackupOptions,
  checks: Check[],
): Promise<boolean> {
  const size = fs.statSync(file).size
  if (size !== manifest.sizes.file_bytes) {
    checks.push({
      name: 'size',
      ok: false,
      detail: `${size} bytes; the manifest says ${manifest.sizes.file_bytes}`,
    })
  }
  try {
    checks.push(...(await checkArchive(file, manifest, options.keys, options.env)))
  } catch (err) {
    if (!(err instanceof IntegrityError)) throw err
    checks.push({
      // Damage found by decompressing is the table data's; by authenticating, the chunks'.
      name:
        err.code === 'BACKUP_CHECKSUM'
          ? 'checksum'
          : err.data?.part === 'table_data'
            ? 'table_data'
            : 'chunks',
      ok: false,
      detail: err.message,
    })
    if (err.code !== 'BACKUP_CHECKSUM') {
      // The read stopped at the damage, before the whole file's checksum: it is taken now, as it
      // tells the causes apart. A file that changed after it was written fails it; one that is as
      // written, with a chunk that will not authenticate, points at the key.
      checks.push(await checksumCheck(file, manifest, err.data?.part === 'table_data', options.signal))
    }
    return false
  }
  if (options.restoreTest && checks.every((c) => c.ok)) {
    checks.push(...(await restoreTest(file, manifest, options)))
  }
  return checks.every((c) => c.ok)
}

/**
 * The whole file's SHA-256 against the manifest's, read on its own. `authenticated`: every chunk
 * passed, and the damage was found in the data inside them.
 */
async function checksumCheck(
  file: string,
  manifest: Manifest,
  authenticated: boolean,
  signal: AbortSignal | undefined,
): Promise<Check> {
  const hash = createHash('sha256')
  try {
    await pipeline(
      fs.createReadStream(file, { highWaterMark: 1 << 18 }),
      hash,
      ...(signal ? [{ signal }] : []),
    )
  } catch (err) {
    // A file gone or unreadable now is still a failed verify (exit 4), not a crash.
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message
    return { name: 'checksum', ok: false, detail: `the file could not be read again to check it (${code})` }
  }
  const digest = hash.digest('hex')
  if (digest !== manifest.sha256) {
    return {
      name: 'checksum',
      ok: false,
      detail: `SHA-256 ${digest.slice(0, 12)}... is not the manifest's ${manifest.sha256.slice(0, 12)}...: the file changed after it was written`,
    }
  }
  return {
    name: 'checksum',
    ok: true,
    detail: authenticated
      ? 'SHA-256 matches the manifest: the file is as it was written, so the dump was damaged before it was encrypted'
      : 'SHA-256 matches the manifest: the file is as it was written (if a chunk fails, check BACKUP_KEY: its id matches, its bytes may not)',
  }
}

async function restoreTest(file: string, manifest: Manifest, options: VerifyBackupOptions): Promise<Check[]> {
  const test = options.restoreTest!
  const open = { timeoutMs: options.timeoutMs, env: options.env }
  let scratch: Database
  let drop: () => Promise<void>
  let restored: Restored | null = null
  if (manifest.dump.format === 'plain') {
    // An embedded backup: restore it into PGlite in memory, the engine that wrote it.
    scratch = await openScratchEmbedded(open)
    drop = () => scratch.close()
    let sql = ''
    await streamDump(
      file,
      manifest,
      options.keys,
      new Writable({ write: (c: Buffer, _e, cb) => ((sql += c.toString('utf8')), cb()) }),
    )
    try {
      await scratch.pglite!.exec(sql)
    } catch (err) {
      await drop()
      return [{ name: 'restore', ok: false, detail: `the dump does not restore: ${(err as Error).message}` }]
    }
  } else {
    if (!test.server) {
      throw new UsageError(
        'A test restore of a server backup needs a PostgreSQL server to restore into: set CREDITS_DATABASE_URL (or --credits-db).',
      )
    }
    const admin = test.server
    const name = `shieldx_verify_${randomBytes(6).toString('hex')}`
    await admin.pool.query(`create database ${name}`)
    const url = withDatabase(admin.connectionString!, name)
    drop = async () => {
      await scratch?.close().catch(() => {})
      // On a connection of its own: Ctrl-C cancels what the command's pools are running, and a
      // drop cancelled that way left the scratch database behind (seen once in ~20 interrupts).
      await dropDatabase(admin.connectionString!, name, options.timeoutMs)
    }
    try {
      scratch = await openServer(url, 'scratch database', open)
      restored = await restoreInto(file, manifest, options.keys, url, options.env, {
        serverMajor: admin.serverMajor,
        clean: false,
        ...(options.signal ? { signal: options.signal } : {}),
      })
    } catch (err) {
      await drop()
      if (options.signal?.aborted) throw new InterruptedError()
      // The backup's own failure is a verdict on it; anything else (the server, a timeout) is not.
      if (!(err instanceof IntegrityError) && (err as { code?: string }).code !== 'RESTORE_FAILED') throw err
      return [{ name: 'restore', ok: false, detail: (err as Error).message }]
    }
  }
  try {
    const checks: Check[] = [
      { name: 'restore', ok: true, detail: `restored into a scratch database (${scratch.label})` },
    ]
    const client = await scratch.pool.connect()
    try {
      checks.push(...(await compareWithManifest(client, manifest, restored?.rows ?? null)))
    } finally {
      client.release()
    }
    if (manifest.database === 'credits') {
      checks.push(
        chainNotCheckable(manifest) ??
          (await chainCheck(scratch, test.auditKeys, { workers: 1, record: false })),
      )
    }
    return checks
  } finally {
    await drop()
  }
}
