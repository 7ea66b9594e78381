/**
 * The manifest beside every backup: what it holds (schema version, row counts, every tenant's
 * chain head) read in the same snapshot pg_dump dumps, so a restore can be checked against it.
 */
import fs from 'node:fs'
import path from 'node:path'
import type pg from 'pg'
import { IntegrityError, UsageError } from '../errors.js'
import type { SchemaName } from '../migrations/files.js'

/**
 * v2: the compression may be 'zlib-in-archive'. A v1 manifest (always 'gzip') is still read; a
 * shieldx that knows only v1 refuses a v2 one in a sentence instead of misreading the file.
 */
export const MANIFEST_FORMAT = 'shieldx.backup.v2'
const READABLE_FORMATS = ['shieldx.backup.v1', MANIFEST_FORMAT]
export const BACKUP_EXT = '.shxb'
export const MANIFEST_EXT = '.manifest.json'

export interface Manifest {
  format: 'shieldx.backup.v1' | typeof MANIFEST_FORMAT
  name: string
  created_at: string
  label: string | null
  database: SchemaName
  /** the database it was taken from, its URL redacted */
  source: string
  /**
   * That database's identity (db/identity.ts: the cluster's system identifier and the database's
   * oid), which a rollback matches its target against; absent in backups taken before it was kept.
   */
  source_identity?: string
  shieldx_version: string
  dump: { format: 'custom' | 'plain'; tool: string; server_version: string }
  schema_version: number
  row_counts: Record<string, number>
  /** credits only: every tenant's chain head when the backup was taken */
  chains: Record<string, { seq: number; head: string }>
  sizes: { dump_bytes: number; compressed_bytes: number; file_bytes: number }
  sha256: string
  encryption: { algorithm: 'AES-256-GCM-chunked'; key_id: string }
  /**
   * 'gzip': the whole dump gzipped (a plain dump; every custom one before v2). 'zlib-in-archive': a
   * custom archive whose table data is zlib-compressed inside it, as pg_dump -Z6 writes it
   * (archive-compressor.ts): decrypted, it is an ordinary pg_dump archive.
   */
  compression: 'gzip' | 'zlib-in-archive'
  /** Set by `backup verify` when every check passed (and removed when one fails). */
  verified?: { at: string; restore_test: boolean }
  /** Set by `backup verify` when a check failed: when, and which. */
  verify_failed?: { at: string; checks: string[] }
}

export interface Facts {
  schema_version: number
  row_counts: Record<string, number>
  chains: Manifest['chains']
}

/**
 * Row counts, schema version and chain heads: in the caller's (snapshot) transaction on a client,
 * or on a pool (after a restore), where the counts run side by side on connections of their own.
 */
export async function readFacts(
  client: pg.ClientBase | pg.Pool,
  schema: SchemaName,
  {
    countRows = true,
    known = {},
  }: {
    countRows?: boolean
    /** Tables' rows already known (`schema.table`): taken as they are, not counted. */
    known?: Record<string, number>
  } = {},
): Promise<Facts> {
  const { rows: tables } = await client.query<{ name: string }>(
    `select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = $1 and c.relkind in ('r', 'p') order by c.relname`,
    [schema],
  )
  const row_counts: Record<string, number> = {}
  const count = async (name: string) => {
    const k = known[`${schema}.${name}`]
    if (k !== undefined) {
      row_counts[`${schema}.${name}`] = k
      return
    }
    const { rows } = await client.query<{ n: string }>(
      `select count(*) as n from ${schema}."${name.replace(/"/g, '""')}"`,
    )
    row_counts[`${schema}.${name}`] = Number(rows[0]!.n)
  }
  const hasMigrations = tables.some((t) => t.name === 'schema_migrations')
  let schema_version = 0
  const version = async () => {
    if (!hasMigrations) return
    const { rows } = await client.query<{ v: number | null }>(
      `select max(version) as v from ${schema}.schema_migrations`,
    )
    schema_version = Number(rows[0]!.v ?? 0)
  }
  const chains: Manifest['chains'] = {}
  const heads = async () => {
    if (schema !== 'credits' || !tables.some((t) => t.name === 'credit_accounts')) return
    const { rows } = await client.query<{ tenant_id: string; chain_seq: string; head: string | null }>(
      `select tenant_id, chain_seq, encode(chain_head, 'hex') as head from credits.credit_accounts where chain_seq > 0 order by tenant_id`,
    )
    for (const r of rows) chains[r.tenant_id] = { seq: Number(r.chain_seq), head: r.head ?? '' }
  }
  const queries = [...(countRows ? tables.map((t) => () => count(t.name)) : []), version, heads]
  // One query at a time on a client (pg deprecates queueing them); all at once on a pool.
  if ('totalCount' in client) await Promise.all(queries.map((q) => q()))
  else for (const q of queries) await q()
  return { schema_version, row_counts, chains }
}

export function manifestPath(backupFile: string): string {
  return backupFile.endsWith(BACKUP_EXT)
    ? backupFile.slice(0, -BACKUP_EXT.length) + MANIFEST_EXT
    : backupFile + MANIFEST_EXT
}

/**
 * The backup file a user named is there and is a file: bad input otherwise (exit 2), before any
 * manifest is looked for beside it (whose absence is an integrity failure, exit 4).
 */
export function assertBackupFile(backupFile: string): void {
  let st: fs.Stats
  try {
    st = fs.statSync(backupFile)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new UsageError(
      code === 'ENOENT' ? `There is no backup file ${backupFile}.` : `Cannot read ${backupFile} (${code}).`,
      { code: 'BACKUP_NOT_FOUND' },
    )
  }
  if (!st.isFile()) {
    throw new UsageError(
      `${backupFile} is ${st.isDirectory() ? 'a directory' : 'not a regular file'}, not a backup file.`,
      {
        code: 'BACKUP_NOT_FOUND',
      },
    )
  }
}

export function readManifest(backupFile: string): Manifest {
  assertBackupFile(backupFile)
  const file = manifestPath(backupFile)
  let m: Manifest
  try {
    m = JSON.parse(fs.readFileSync(file, 'utf8')) as Manifest
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new IntegrityError(
        `The manifest ${file} is missing, so ${path.basename(backupFile)} cannot be trusted or restored safely.`,
        {
          code: 'BACKUP_NO_MANIFEST',
        },
      )
    }
    throw new IntegrityError(`The manifest ${file} is not valid JSON: ${(err as Error).message}.`, {
      code: 'BACKUP_BAD_MANIFEST',
    })
  }
  if (!READABLE_FORMATS.includes(m?.format)) {
    throw new IntegrityError(
      `${file} is not a ${READABLE_FORMATS.join(' or ')} manifest${typeof m?.format === 'string' ? ` (it says ${m.format.slice(0, 40)}: a newer shieldx wrote it?)` : ''}.`,
      { code: 'BACKUP_BAD_MANIFEST' },
    )
  }
  // Read before any byte is: a compression this does not know would be fed to the wrong reader.
  const compressions = m.format === MANIFEST_FORMAT ? ['gzip', 'zlib-in-archive'] : ['gzip']
  if (!compressions.includes(m.compression)) {
    throw new IntegrityError(
      `${file} names a compression this shieldx does not read (${String(m.compression).slice(0, 40)}).`,
      { code: 'BACKUP_BAD_MANIFEST' },
    )
  }
  return m
}

/** Written to .partial, fsynced, renamed: a manifest is whole or absent. */
export function writeManifest(backupFile: string, m: Manifest): void {
  writeFileAtomic(manifestPath(backupFile), JSON.stringify(m, null, 2) + '\n')
}

export function writeFileAtomic(file: string, text: string): void {
  const partial = `${file}.partial`
  const fd = fs.openSync(partial, 'w', 0o600)
  try {
    fs.writeSync(fd, text)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(partial, file)
  fsyncDir(path.dirname(file))
}

/** After a rename, the directory entry must reach the disk too. */
export function fsyncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r')
    try {
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the rename is still atomic.
  }
}
