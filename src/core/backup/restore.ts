/**
 * Reading a backup back: the file decrypted (each chunk authenticated before its bytes go on) and
 * decompressed into pg_restore or psql; checks of a restored database against the manifest.
 * `backup verify`, `restore` and `rollback --migration` are built from these pieces.
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import { Transform, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import type pg from 'pg'
import type { TextChainResult } from '../audit/copy-text.js'
import { type VerifyOptions, verifyChain } from '../audit/verify.js'
import type { Keyring } from '../config/secrets.js'
import type { Database } from '../db/pool.js'
import { IntegrityError, OperationError } from '../errors.js'
import { createDecryptStream } from './envelope.js'
import { type Facts, type Manifest, readFacts } from './manifest.js'
import { archiveDecompressor } from './archive-compressor.js'
import { AUDIT_TABLE, startChainCheck } from './chain-check.js'
import { RowCounter } from './custom-format.js'
import { findTool, toolConnection } from './pgtools.js'

export interface Check {
  name: string
  ok: boolean
  detail: string
  /** Not run, and why is the detail: not a failure, and not a pass either. */
  skipped?: true
}

/**
 * The credits schema version from which the audit rows hold what this shieldx's chain check reads
 * (0002 put reserved_after into the signed row). A backup from before it, such as the one
 * `migrate up` takes before applying 0002, restores fine, but its chain is not checked here.
 */
export const CHAIN_SCHEMA_VERSION = 2

/** The verify_chain check of a credits backup too old for it, or null when it can be checked. */
export function chainNotCheckable(manifest: Manifest): Check | null {
  if (manifest.database !== 'credits' || manifest.schema_version >= CHAIN_SCHEMA_VERSION) return null
  return {
    name: 'verify_chain',
    ok: true,
    skipped: true,
    detail: `skipped: the backup is at credits schema version ${manifest.schema_version}, and the chain this shieldx checks starts at version ${CHAIN_SCHEMA_VERSION}; once the restored database is migrated up, run 'shieldx verify-chain'`,
  }
}

/**
 * Stream the backup's plaintext dump into `sink`. Rejects with an IntegrityError naming the chunk
 * on any authentication failure, and if the file's SHA-256 differs from the manifest's.
 * The sink sees no byte that was not authenticated.
 */
export async function streamDump(
  file: string,
  manifest: Manifest,
  keys: Keyring,
  sink: Writable,
  options: {
    onProgress?: (bytes: number) => void
    /** Each chunk of the dump, as it goes to the sink. */
    tap?: (chunk: Buffer) => void
    signal?: AbortSignal
  } = {},
): Promise<{ fileBytes: number; dumpBytes: number }> {
  const hash = createHash('sha256')
  let fileBytes = 0
  let dumpBytes = 0
  const tap = new Transform({
    transform(chunk: Buffer, _e, cb) {
      hash.update(chunk)
      fileBytes += chunk.length
      options.onProgress?.(fileBytes)
      cb(null, chunk)
    },
  })
  const count = new Transform({
    transform(chunk: Buffer, _e, cb) {
      dumpBytes += chunk.length
      options.tap?.(chunk)
      cb(null, chunk)
    },
    // Withhold the end of the dump until the whole file's checksum is known: a sink that
    // commits on end-of-input (pg_restore --single-transaction) must not commit a file that fails it.
    flush(cb) {
      const digest = hash.digest('hex')
      if (digest !== manifest.sha256) {
        cb(
          new IntegrityError(
            `${file} does not match its manifest (SHA-256 ${digest.slice(0, 12)}... is not ${manifest.sha256.slice(0, 12)}...).`,
            {
              code: 'BACKUP_CHECKSUM',
            },
          ),
        )
        return
      }
      cb()
    },
  })
  let readable: fs.ReadStream
  try {
    // 256 KiB reads instead of 64 KiB: a tenth less CPU in this process. 1 MiB saved a little
    // more but raised the restore's peak RSS from 102 to 135 MB.
    readable = fs.createReadStream(file, { highWaterMark: 1 << 18 })
    await new Promise<void>((resolve, reject) => {
      readable.once('open', () => resolve())
      readable.once('error', reject)
    })
  } catch (err) {
    throw new OperationError(
      `Cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}.`,
    )
  }
  try {
    await pipeline(
      readable,
      tap,
      createDecryptStream(keys),
      // Compressed inside the archive: pg_restore decompresses it, as it does its own files.
      // 1 MiB output chunks instead of zlib's 16 KiB: a quarter less CPU on the restore path.
      ...(manifest.compression === 'gzip' ? [zlib.createGunzip({ chunkSize: 1 << 20 })] : []),
      count,
      sink,
      ...(options.signal ? [{ signal: options.signal }] : []),
    )
  } catch (err) {
    // A zlib error after every chunk authenticated means the dump was written broken.
    if (/^Z_/.test(String((err as NodeJS.ErrnoException).code))) {
      throw new IntegrityError(
        `${file} decrypts, but its compressed dump is damaged (${(err as Error).message}).`,
        { code: 'BACKUP_CORRUPT', data: { part: 'table_data' } },
      )
    }
    throw err
  }
  return { fileBytes, dumpBytes }
}

/** A child process as a Writable sink whose failure (non-zero exit) fails the pipeline. */
export function toolSink(
  bin: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  what: string,
  options: { stdout?: Writable } = {},
): { stdin: Writable; done: Promise<string> } {
  const child = spawn(bin, args, { env, stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  // Into the next tool, never ending it: the caller decides when (and whether) its input is complete.
  if (options.stdout) child.stdout.pipe(options.stdout, { end: false })
  else {
    child.stdout.on('data', (d) => {
      if (stdout.length < 1_000_000) stdout += d
    })
  }
  child.stderr.on('data', (d) => {
    if (stderr.length < 8000) stderr += d
  })
  child.stdin.on('error', () => {}) // EPIPE when the tool exits early: its exit code tells why
  const done = new Promise<string>((resolve, reject) => {
    child.on('error', (err) => reject(new OperationError(`Cannot run ${bin}: ${err.message}.`)))
    child.on('close', (code, signal) => {
      if (code === 0) resolve(stdout)
      else {
        const line = stderr.split('\n').find((l) => /error/i.test(l)) ?? stderr.trim().split('\n')[0] ?? ''
        reject(
          new OperationError(
            `${what} failed (${signal ?? `exit ${code}`}): ${line.replace(/^\S+: (error: )?/, '').trim()}`,
            {
              code: 'RESTORE_FAILED',
            },
          ),
        )
      }
    })
  })
  done.catch(() => {})
  let exitCode: number | null = null
  child.on('close', (code) => (exitCode = code ?? -1))
  // Our own Writable in front of the tool's stdin: a tool that stops reading early with success
  // (pg_restore --list has what it needs) lets the rest of the file still be read and
  // authenticated; one that failed stops the stream; and if the stream fails, the tool is killed
  // before it can take the end of its input as a reason to commit what it has.
  const stdin = new Writable({
    write(chunk: Buffer, _e, cb) {
      if (exitCode !== null)
        return cb(exitCode === 0 ? undefined : new OperationError(`${what} stopped early.`))
      child.stdin.write(chunk, () => cb())
    },
    final(cb) {
      if (exitCode === null) child.stdin.end()
      cb()
    },
    destroy(err, cb) {
      if (err) child.kill('SIGKILL')
      cb(err)
    },
  })
  // Callers destroy it with an error they report themselves (or the tool's exit reports it), often
  // outside any pipeline: unheard, that error would crash the process as 'a bug in shieldx'.
  stdin.on('error', () => {})
  return { stdin, done }
}

/**
 * A Writable that passes what it is given on to `next` (a toolSink's stdin, which may be destroyed
 * with an error outside any pipeline) and, beside it, through archiveDecompressor into a
 * RowCounter; `rows()` once the stream has ended.
 */
function dataCheck(next: Writable) {
  const counter = new RowCounter()
  const plain = archiveDecompressor()
  const counted = pipeline(
    plain,
    new Writable({
      write(chunk: Buffer, _e, cb) {
        counter.write(chunk)
        cb()
      },
    }),
  )
  const stdin: Writable = new Writable({
    write(chunk: Buffer, _e, cb) {
      let waiting = 2
      let failed = false
      const done = (err?: Error | null) => {
        if (failed) return
        if (err) {
          failed = true
          return cb(err)
        }
        if (--waiting === 0) cb()
      }
      next.write(chunk, done)
      plain.write(chunk, done)
    },
    final(cb) {
      next.end()
      plain.end()
      counted.then(() => cb(), cb)
    },
    destroy(err, cb) {
      next.destroy(err ?? undefined)
      plain.destroy(err ?? undefined)
      cb(err)
    },
  })
  // A decompression failure fails the stream at once, not only at its end.
  counted.catch((err: Error) => stdin.destroy(err))
  return {
    stdin,
    rows: async () => {
      await counted
      return counter.rows()
    },
    whyNot: () => counter.whyNot(),
  }
}

/** Run a stream into a tool; when both fail, the tool's own message says more. */
async function both(stream: Promise<unknown>, done: Promise<string>): Promise<string> {
  const [s, d] = await Promise.allSettled([stream, done])
  if (s.status === 'rejected' && (s.reason as { code?: string })?.code?.startsWith('BACKUP_')) throw s.reason
  if (d.status === 'rejected') throw d.reason
  if (s.status === 'rejected') throw s.reason
  return d.value
}

/** What a whole stream of the backup proves: streamDump throws on either failing. */
function streamed(manifest: Manifest, dumpBytes: number): Check[] {
  const what = manifest.compression === 'gzip' ? 'dump' : 'archive'
  return [
    { name: 'checksum', ok: true, detail: 'SHA-256 matches the manifest' },
    { name: 'chunks', ok: true, detail: `every chunk authenticated (${dumpBytes} bytes of ${what})` },
  ]
}

/** The archive's table of contents, read back: proves the dump itself is usable. */
export async function checkArchive(
  file: string,
  manifest: Manifest,
  keys: Keyring,
  env: NodeJS.ProcessEnv,
): Promise<Check[]> {
  const checks: Check[] = []
  if (manifest.dump.format === 'custom') {
    const tool = await findTool('pg_restore', Number(manifest.dump.server_version.split('.')[0]), env)
    const sink = toolSink(tool.path, ['--list'], env, 'pg_restore --list')
    // Table data compressed inside the archive is decompressed here too, beside pg_restore --list
    // (which reads only the table of contents): a backup whose data does not decompress, or
    // holds other rows than its manifest says, fails verify without a test restore.
    const inside = manifest.compression === 'zlib-in-archive' ? dataCheck(sink.stdin) : null
    let dumpBytes = 0
    const toc = await both(
      streamDump(file, manifest, keys, inside?.stdin ?? sink.stdin).then((r) => (dumpBytes = r.dumpBytes)),
      sink.done,
    )
    checks.push(...streamed(manifest, dumpBytes))
    const missing = Object.keys(manifest.row_counts).filter((t) => {
      const [schema, table] = t.split('.')
      return !new RegExp(`TABLE DATA ${schema} ${table} `).test(toc)
    })
    checks.push({
      name: 'archive',
      ok: missing.length === 0,
      detail:
        missing.length === 0
          ? `table of contents lists all ${Object.keys(manifest.row_counts).length} tables`
          : `missing from the dump: ${missing.join(', ')}`,
    })
    if (inside) {
      const rows = await inside.rows()
      const wrong = Object.entries(manifest.row_counts).filter(
        ([t, n]) => rows?.[t] !== undefined && rows[t] !== n,
      )
      checks.push({
        name: 'table_data',
        ok: rows !== null && wrong.length === 0,
        detail:
          rows === null
            ? `the table data could not be counted (${inside.whyNot()})`
            : wrong.length === 0
              ? `every table's data decompresses; the rows match the manifest`
              : wrong.map(([t, n]) => `${t}: ${rows[t]} rows, manifest ${n}`).join('; '),
      })
    }
  } else {
    let tail = ''
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        tail = (tail + chunk.toString('utf8')).slice(-200)
        cb()
      },
    })
    const { dumpBytes } = await streamDump(file, manifest, keys, sink)
    checks.push(...streamed(manifest, dumpBytes))
    const complete = tail.includes('PostgreSQL database dump complete')
    checks.push({
      name: 'archive',
      ok: complete,
      detail: complete ? 'the SQL dump is complete' : 'the SQL dump ends early',
    })
  }
  return checks
}

/** What restoreInto learned from the dump on its way in. */
export interface Restored {
  /** The audit chains, verified from the dump (null: not checked on the way in). */
  chains: TextChainResult | null
  /**
   * Each table's rows as pg_restore loaded them, counted in the stream (RowCounter); null when
   * they were not (a plain dump, a replaced schema, an archive it does not read).
   */
  rows: Record<string, number> | null
}

/** Restore the dump into a database (a scratch one for --restore-test, or the target). */
export async function restoreInto(
  file: string,
  manifest: Manifest,
  keys: Keyring,
  url: string,
  env: NodeJS.ProcessEnv,
  options: {
    serverMajor: number
    clean: boolean
    onProgress?: (bytes: number) => void
    signal?: AbortSignal
    /** Verify the audit chains from the backup beside the restore (a custom dump into an empty target). */
    chainCheck?: { keys: Keyring }
  },
): Promise<Restored> {
  const conn = toolConnection(url, env)
  const psqlArgs = [
    '--no-psqlrc',
    '--quiet',
    '--single-transaction',
    '-v',
    'ON_ERROR_STOP=1',
    '--no-password',
    `--dbname=${conn.dbname}`,
  ]
  if (manifest.dump.format === 'custom' && !options.clean) {
    const tool = await findTool('pg_restore', options.serverMajor, env)
    const args = ['--exit-on-error', '--single-transaction', '--no-owner', '--no-privileges', '--no-password']
    const sink = toolSink(tool.path, [...args, `--dbname=${conn.dbname}`], conn.env, 'pg_restore')
    const check = options.chainCheck ? startChainCheck(options.chainCheck.keys, manifest, env) : null
    const counter = new RowCounter()
    const tap = (chunk: Buffer) => {
      counter.write(chunk)
      check?.tap(chunk)
    }
    try {
      await both(streamDump(file, manifest, keys, sink.stdin, { ...options, tap }), sink.done)
    } catch (err) {
      await check?.stop()
      throw err
    }
    check?.finish()
    const chains = check ? await check.answer(options.signal) : null
    // A compressed archive's rows are not counted in the stream, but the audit table's were, by
    // its chain check: pg_restore loads a table's lines all or none, so they are its rows.
    const audit = chains?.intact ? { [`${AUDIT_TABLE.schema}.${AUDIT_TABLE.table}`]: chains.rows } : null
    return { chains, rows: counter.rows() ?? audit }
  }
  // Replacing a schema, or a plain dump: psql in one transaction that first drops the schema with
  // everything in it (pg_restore --clean drops only what the backup has, so a table added since,
  // e.g. by the migration being rolled back, would block it). A custom dump goes through
  // pg_restore --file=- to become that script.
  const psqlTool = await findTool('psql', options.serverMajor, env)
  const psql = toolSink(psqlTool.path, psqlArgs, conn.env, 'psql')
  if (options.clean) psql.stdin.write(`DROP SCHEMA IF EXISTS ${manifest.database} CASCADE;\n`)
  try {
    if (manifest.dump.format === 'custom') {
      const tool = await findTool('pg_restore', options.serverMajor, env)
      const convert = toolSink(
        tool.path,
        ['--file=-', '--no-owner', '--no-privileges', '--exit-on-error'],
        conn.env,
        'pg_restore',
        {
          stdout: psql.stdin,
        },
      )
      await both(streamDump(file, manifest, keys, convert.stdin, options), convert.done)
    } else {
      // A plain dump is the embedded database's: PostgreSQL 17's pg_dump, whose header sets
      // transaction_timeout, which an older server refuses (psql exit 3, nothing restored).
      const settings = options.serverMajor < 17 ? NEWER_SETTINGS : null
      await streamDump(file, manifest, keys, new EndlessWritable(psql.stdin, settings), options)
    }
  } catch (err) {
    // Kill psql before its input ends: at end of input it would commit what it had.
    psql.stdin.destroy(err as Error)
    await psql.done.catch(() => {})
    throw err
  }
  psql.stdin.end()
  await psql.done
  return { chains: null, rows: null }
}

/** Settings in a newer pg_dump's header that an older server does not know, one per line. */
const NEWER_SETTINGS = /^SET transaction_timeout = [^;\n]*;\n/gm
/** How far into a dump its header's settings can be: past this, bytes go through untouched. */
const HEADER_BYTES = 64 * 1024

/**
 * Forwards to a stream without ever ending it (the caller ends it once everything checked out),
 * leaving out of the dump's header the lines `drop` matches.
 */
class EndlessWritable extends Writable {
  /** header bytes held back until their line is whole; null once past the header */
  private held: Buffer | null
  /** bytes of the dump seen so far: the filter stops once past the header */
  private seen = 0
  constructor(
    private readonly target: Writable,
    private readonly drop: RegExp | null = null,
  ) {
    super()
    this.held = drop ? Buffer.alloc(0) : null
  }
  override _write(chunk: Buffer, _e: BufferEncoding, cb: (err?: Error | null) => void): void {
    let out = chunk
    if (this.held !== null) {
      this.seen += chunk.length
      const text = Buffer.concat([this.held, chunk])
      const end = text.lastIndexOf(0x0a) + 1
      const whole = text.subarray(0, end).toString('utf8').replace(this.drop!, '')
      const rest = text.subarray(end)
      const past = this.seen >= HEADER_BYTES
      out = Buffer.concat([Buffer.from(whole, 'utf8'), past ? rest : Buffer.alloc(0)])
      this.held = past ? null : Buffer.from(rest)
    }
    this.target.write(out, (err) => cb(err ?? null))
  }
  override _final(cb: (err?: Error | null) => void): void {
    // a header without a final newline: what is held goes as it is
    if (this.held && this.held.length > 0) this.target.write(this.held, (err) => cb(err ?? null))
    else cb()
  }
}

/** verify-chain on a restored database, as one check. */
export async function chainCheck(
  db: Database,
  auditKeys: Keyring,
  options: VerifyOptions = {},
): Promise<Check> {
  const chain = await verifyChain(db, auditKeys, options)
  return {
    name: 'verify_chain',
    ok: chain.ok,
    detail: chain.ok
      ? `${chain.rows_checked} rows across ${chain.tenants_checked} tenants intact`
      : `broken: ${chain.broken
          .map((b) => `${b.tenant_id}@${b.seq} ${b.reason}`)
          .slice(0, 5)
          .join(', ')}`,
  }
}

/** A database URL with another database name (for scratch and admin connections). */
export function withDatabase(url: string, name: string): string {
  const at = url.lastIndexOf('@')
  const slash = url.indexOf('/', at === -1 ? url.indexOf('//') + 2 : at)
  const query = url.indexOf('?', slash)
  return slash === -1
    ? `${url}/${name}`
    : url.slice(0, slash + 1) + name + (query === -1 ? '' : url.slice(query))
}

/** Compare a restored database with the manifest: schema version, row counts, chain heads. */
export async function compareWithManifest(
  client: pg.ClientBase | pg.Pool,
  manifest: Manifest,
  /**
   * Rows pg_restore loaded, counted on their way in (Restored.rows, or the audit table's from its
   * chain check), for some tables or all: those are not counted again in the database.
   */
  loaded: Record<string, number> | null = null,
): Promise<Check[]> {
  // A table the stream has no data of (a partitioned table's parent, counted with its
  // partitions in the manifest) is counted in the database, with all the others.
  const streamed = loaded ?? {}
  const inStream = Object.keys(manifest.row_counts).filter((t) => t in streamed)
  const all = inStream.length === Object.keys(manifest.row_counts).length
  const facts: Facts = await readFacts(client, manifest.database, { countRows: !all, known: streamed })
  if (all) facts.row_counts = streamed
  const checks: Check[] = []
  checks.push({
    name: 'schema_version',
    ok: facts.schema_version === manifest.schema_version,
    detail: `${manifest.database} at ${facts.schema_version} (manifest: ${manifest.schema_version})`,
  })
  const wrongCounts = Object.entries(manifest.row_counts).filter(([t, n]) => facts.row_counts[t] !== n)
  checks.push({
    name: 'row_counts',
    ok: wrongCounts.length === 0,
    detail:
      wrongCounts.length === 0
        ? `${Object.keys(manifest.row_counts).length} tables match${all ? ' (the rows pg_restore loaded, counted on the way in)' : inStream.length > 0 ? ` (${inStream.join(', ')} as counted on the way in)` : ''}`
        : wrongCounts
            .map(([t, n]) => `${t}: ${facts.row_counts[t] ?? 'missing'} rows, manifest ${n}`)
            .join('; '),
  })
  if (manifest.database === 'credits') {
    const wrong = Object.entries(manifest.chains).filter(
      ([t, h]) => facts.chains[t]?.seq !== h.seq || facts.chains[t]?.head !== h.head,
    )
    const extra = Object.keys(facts.chains).filter((t) => !(t in manifest.chains))
    checks.push({
      name: 'chain_heads',
      ok: wrong.length === 0 && extra.length === 0,
      detail:
        wrong.length + extra.length === 0
          ? `${Object.keys(manifest.chains).length} tenant chain heads match`
          : `differ for ${[...wrong.map(([t]) => t), ...extra].slice(0, 5).join(', ')}${wrong.length + extra.length > 5 ? ', ...' : ''}`,
    })
  }
  return checks
}
