/**
 * backup create: pg_dump -Fc -Z0 (PGlite's own pg_dump for the embedded database) streamed
 * through compression and chunked AES-256-GCM into NAME.shxb.<pid>.partial, fsynced, renamed; then
 * the manifest beside it. A custom archive has its table data compressed inside it
 * (archive-compressor.ts), so that restore can hand pg_restore the archive as it is; a plain dump
 * is gzipped whole. The facts in the manifest are read in the snapshot pg_dump dumps
 * (pg_export_snapshot), so they describe exactly the data in the file.
 */
import { spawn } from 'node:child_process'
import { databaseIdentity } from '../db/identity.js'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import { Client } from '../db/driver.js'
import { PACKAGE_ROOT } from '../config/paths.js'
import type { Keyring } from '../config/secrets.js'
import { isAlive } from '../db/embedded.js'
import { makeDir } from '../fs/make-dir.js'
import type { Database } from '../db/pool.js'
import { isTimeout, toTimeoutError } from '../db/pg-errors.js'
import { InterruptedError, OperationError, TimeoutError } from '../errors.js'
import type { SchemaName } from '../migrations/files.js'
import { archiveCompressor } from './archive-compressor.js'
import { createEncryptStream } from './envelope.js'
import {
  BACKUP_EXT,
  type Facts,
  fsyncDir,
  type Manifest,
  MANIFEST_FORMAT,
  manifestPath,
  readFacts,
  writeManifest,
} from './manifest.js'
import { findTool, toolConnection } from './pgtools.js'

export interface CreateOptions {
  dir: string
  /** Where `dir` came from, to name in an error: '--dir', 'BACKUP_DIR' (default '--dir'). */
  dirSetting?: string
  label?: string | null
  keys: Keyring
  env: NodeJS.ProcessEnv
  /** Lock waits of pg_dump (its --lock-wait-timeout). */
  timeoutMs: number
  onProgress?: (fileBytes: number) => void
  signal?: AbortSignal
}

export interface CreateResult {
  file: string
  manifest: Manifest
  bytes: number
  duration_ms: number
}

const SHIELDX_VERSION = (
  JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }
).version

export async function createBackup(
  db: Database,
  schema: SchemaName,
  options: CreateOptions,
): Promise<CreateResult> {
  const started = Date.now()
  makeDir(options.dir, options.dirSetting ?? '--dir')
  removeAbandonedPartials(options.dir)
  const name = uniqueName(options.dir, schema, options.label ?? null)
  const file = path.join(options.dir, name + BACKUP_EXT)
  const partial = `${file}.${process.pid}.partial`

  const source =
    db.kind === 'embedded' ? await embeddedDump(db, schema) : await serverDump(db, schema, options)
  const sizes = { dump_bytes: 0, compressed_bytes: 0, file_bytes: 0 }
  const hash = createHash('sha256')
  const compressor = source.dump.format === 'custom' ? archiveCompressor() : null
  // Opened in the background: destroyed before that open completes (Ctrl-C a moment in), it still
  // creates the file, so the cleanup below waits for it to be closed before removing the file.
  const out = fs.createWriteStream(partial, { mode: 0o600 })
  try {
    const abort = options.signal ? { signal: options.signal } : {}
    await Promise.all([
      // A dump cut short means pg_dump stopped: its own message, once it has exited, says why.
      pipeline(
        source.stream,
        counter((n) => (sizes.dump_bytes += n)),
        // Level 6 as pg_dump -Fc uses; 1 MiB chunks (zlib's default is 16 KiB) cost less per byte.
        compressor?.stream ?? zlib.createGzip({ level: 6, chunkSize: 1 << 20 }),
        counter((n) => (sizes.compressed_bytes += n)),
        createEncryptStream(options.keys),
        counter((n) => {
          sizes.file_bytes += n
          options.onProgress?.(sizes.file_bytes)
        }, hash),
        out,
        abort,
      ).catch(async (err: unknown) => {
        if ((err as { code?: string }).code === 'PG_DUMP_CUT') await source.done
        throw err
      }),
      source.done,
    ])
    const fd = fs.openSync(partial, 'r+')
    try {
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
    fs.renameSync(partial, file)
    fsyncDir(options.dir)
    // Which database this is, for a rollback to tell its own backups from another's in one directory.
    const identity = await databaseIdentity(db.pool).catch(() => null)
    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      name: path.basename(file),
      created_at: new Date(started).toISOString(),
      label: options.label ?? null,
      database: schema,
      source: db.label,
      ...(identity ? { source_identity: identity } : {}),
      shieldx_version: SHIELDX_VERSION,
      dump: source.dump,
      ...source.facts,
      sizes,
      sha256: hash.digest('hex'),
      encryption: { algorithm: 'AES-256-GCM-chunked', key_id: options.keys.current.kid },
      compression: compressor?.mode() ?? 'gzip',
    }
    writeManifest(file, manifest)
    return { file, manifest, bytes: sizes.file_bytes, duration_ms: Date.now() - started }
  } catch (err) {
    await closed(out)
    fs.rmSync(partial, { force: true })
    // A data file whose manifest could not be written is not a backup: leave nothing that looks complete.
    if (fs.existsSync(file) && !fs.existsSync(manifestPath(file))) fs.rmSync(file, { force: true })
    throw describeWriteError(err, options)
  } finally {
    await source.close()
  }
}

/**
 * Destroys the stream (a no-op once it is) and waits until its file is closed: opened, if the open
 * was under way, and closed again. Only then is removing the file final.
 */
async function closed(stream: fs.WriteStream): Promise<void> {
  if (stream.closed) return
  await new Promise<void>((resolve) => {
    stream.on('error', () => {}) // already reported through the pipeline
    stream.once('close', () => resolve())
    stream.destroy()
  })
}

interface DumpSource {
  stream: Readable
  /** Resolves when the dump tool exited cleanly; rejects with its error otherwise. */
  done: Promise<void>
  facts: Facts
  dump: Manifest['dump']
  close(): Promise<void>
}

async function serverDump(db: Database, schema: SchemaName, options: CreateOptions): Promise<DumpSource> {
  const url = db.connectionString!
  const tool = await findTool('pg_dump', db.serverMajor, options.env)
  // One read-only snapshot for pg_dump and for the facts in the manifest.
  const client = new Client({ connectionString: url, application_name: 'shieldx backup' })
  client.on('error', () => {})
  await client.connect()
  try {
    await client.query('begin isolation level repeatable read read only')
    // Waiting for a table's lock (a migration, a VACUUM FULL holding it) is bounded by --timeout,
    // as pg_dump's is below; counting a large table is not (no statement_timeout here).
    await client.query(`set local lock_timeout = ${Math.max(1, Math.round(options.timeoutMs))}`)
    const snapshot = (await client.query<{ s: string }>('select pg_export_snapshot() as s')).rows[0]!.s
    let facts: Facts
    try {
      facts = await readFacts(client, schema)
    } catch (err) {
      if (isTimeout(err))
        throw toTimeoutError(err, `Waiting for the locks on the ${schema} tables`, options.timeoutMs)
      throw err
    }
    const serverVersion = (await client.query<{ v: string }>("select current_setting('server_version') as v"))
      .rows[0]!.v
    const conn = toolConnection(url, options.env)
    const child = spawn(
      tool.path,
      [
        '--format=custom',
        '--compress=0',
        `--schema=${schema}`,
        `--snapshot=${snapshot}`,
        `--lock-wait-timeout=${options.timeoutMs}`,
        '--no-password',
        `--dbname=${conn.dbname}`,
      ],
      { env: conn.env, stdio: ['ignore', 'pipe', 'pipe'] },
    )
    let stderr = ''
    child.stderr.on('data', (d) => {
      if (stderr.length < 4000) stderr += d
    })
    const done = new Promise<void>((resolve, reject) => {
      child.on('error', (err) => reject(new OperationError(`Cannot run ${tool.path}: ${err.message}.`)))
      child.on('close', (code, signal) => {
        if (code === 0) resolve()
        else {
          const first = (stderr.trim().split('\n')[0] ?? '').replace(/^pg_dump: (error: )?/, '')
          // Without -j, pg_dump bounds its lock waits with a statement timeout: that is the message.
          if (/could not obtain lock|canceling statement due to (statement|lock) timeout/.test(stderr)) {
            return reject(
              new TimeoutError(
                `pg_dump waited longer than ${options.timeoutMs / 1000}s for a lock: ${first}`,
                {
                  hint: 'Something holds a table of the schema (a migration, VACUUM FULL); raise --timeout or try again.',
                },
              ),
            )
          }
          reject(
            new OperationError(`pg_dump failed (${signal ?? `exit ${code}`}): ${first}`, {
              code: 'PG_DUMP_FAILED',
            }),
          )
        }
      })
    })
    done.catch(() => {})
    return {
      stream: child.stdout,
      done,
      facts,
      dump: { format: 'custom', tool: `pg_dump ${tool.version}`, server_version: serverVersion },
      async close() {
        if (child.exitCode === null) child.kill('SIGTERM')
        await client.query('commit').catch(() => {})
        await client.end().catch(() => {})
      },
    }
  } catch (err) {
    await client.end().catch(() => {})
    throw err
  }
}

/**
 * PGlite's pg_dump (WASM) writes a plain SQL file into its own memory and hands it back whole:
 * the one place a dump is buffered, bounded by the size of an embedded database.
 */
async function embeddedDump(db: Database, schema: SchemaName): Promise<DumpSource> {
  const { pgDump } = await import('@electric-sql/pglite-tools/pg_dump')
  const client = await db.pool.connect()
  let facts: Facts
  try {
    facts = await readFacts(client, schema)
  } finally {
    client.release()
  }
  const serverVersion = (await db.pool.query<{ v: string }>("select current_setting('server_version') as v"))
    .rows[0]!.v
  let dump: File
  try {
    dump = await pgDump({ pg: db.pglite!, args: [`--schema=${schema}`] })
  } finally {
    // PGlite's pg_dump runs in our one session and leaves it inside its read-only transaction,
    // with its own settings (search_path ''): every later write would fail. Undo both.
    await db.pglite!.exec('rollback; reset all')
  }
  const bytes = Buffer.from(await dump.arrayBuffer())
  return {
    stream: Readable.from([bytes]),
    done: Promise.resolve(),
    facts,
    dump: { format: 'plain', tool: 'pglite pg_dump', server_version: serverVersion },
    close: async () => {},
  }
}

function counter(add: (n: number) => void, hash?: ReturnType<typeof createHash>): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      add(chunk.length)
      hash?.update(chunk)
      cb(null, chunk)
    },
  })
}

function uniqueName(dir: string, schema: SchemaName, label: string | null): string {
  const ts = new Date()
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z')
  const slug = label ? `-${label.replace(/[^A-Za-z0-9._-]+/g, '-').slice(0, 60)}` : ''
  let name = `shieldx-${schema}-${ts}${slug}`
  for (let i = 2; fs.existsSync(path.join(dir, name + BACKUP_EXT)); i++)
    name = `shieldx-${schema}-${ts}${slug}-${i}`
  return name
}

/** `.partial` files left by a backup that was killed: theirs is the pid in the name. */
export function removeAbandonedPartials(dir: string): string[] {
  const removed: string[] = []
  for (const f of fs.readdirSync(dir)) {
    const m = /\.(\d+)\.partial$/.exec(f)
    if (!m) continue
    if (Number(m[1]) !== process.pid && isAlive(Number(m[1]))) continue
    fs.rmSync(path.join(dir, f), { force: true })
    removed.push(f)
  }
  return removed
}

function describeWriteError(err: unknown, options: CreateOptions): unknown {
  const code = (err as NodeJS.ErrnoException).code
  if (options.signal?.aborted || code === 'ABORT_ERR')
    return new InterruptedError('Interrupted; the partial backup was removed.')
  if (code === 'ENOSPC') {
    return new OperationError(`The disk holding ${options.dir} is full; the partial backup was removed.`, {
      code: 'DISK_FULL',
    })
  }
  if (code === 'EACCES' || code === 'EROFS') {
    return new OperationError(
      `Cannot write to ${options.dir}: ${code === 'EROFS' ? 'read-only filesystem' : 'permission denied'}.`,
    )
  }
  return err
}
