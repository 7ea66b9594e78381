/**
 * Migration files on disk: migrations/<schema>/NNNN_name.up.sql and NNNN_name.down.sql.
 * The checksum is SHA-256 of the up file's bytes; a file changed after it was applied is drift.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { UsageError } from '../errors.js'

export const SCHEMAS = ['credits', 'shadow'] as const
export type SchemaName = (typeof SCHEMAS)[number]

export const NO_TRANSACTION_MARKER = '-- shieldx:no-transaction'

export interface MigrationFile {
  schema: SchemaName
  version: number
  name: string
  upPath: string
  downPath: string | null
  upSql: string
  downSql: string | null
  checksum: string
}

/** Longest NAME `migrate create` accepts: NNNN_ + name + .down.sql must fit a 255-byte file name. */
export const MAX_NAME_LENGTH = 100

const FILE = /^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$/

export function isSchemaName(s: string): s is SchemaName {
  return (SCHEMAS as readonly string[]).includes(s)
}

export function checksum(sql: string): string {
  return createHash('sha256').update(sql).digest('hex')
}

export function isTransactional(sql: string): boolean {
  const first = sql.split('\n', 1)[0]!.trim()
  return first !== NO_TRANSACTION_MARKER
}

/**
 * The migrations root must exist: a mistyped SHIELDX_MIGRATIONS_DIR would otherwise look like
 * "no migrations", and `migrate up` would report success. A schema folder missing inside an
 * existing root is fine: that schema has no migrations yet.
 */
function assertRoot(root: string): void {
  let stat: fs.Stats
  try {
    stat = fs.statSync(root)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    throw new UsageError(`The migrations directory ${root} does not exist.`, {
      code: 'MIGRATIONS_DIR_MISSING',
      hint: 'Point SHIELDX_MIGRATIONS_DIR at the folder holding credits/ and shadow/, or unset it.',
    })
  }
  if (!stat.isDirectory()) {
    throw new UsageError(`The migrations directory ${root} is not a directory.`, {
      code: 'MIGRATIONS_DIR_MISSING',
      hint: 'Point SHIELDX_MIGRATIONS_DIR at the folder holding credits/ and shadow/, or unset it.',
    })
  }
}

/**
 * Every migration of a schema, in version order. A missing root, malformed or duplicate files are
 * a UsageError.
 */
export function discoverMigrations(root: string, schema: SchemaName): MigrationFile[] {
  assertRoot(root)
  const dir = path.join(root, schema)
  let names: string[]
  try {
    names = fs.readdirSync(dir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const byVersion = new Map<number, { name: string; up?: string; down?: string }>()
  for (const file of names.sort()) {
    if (!file.endsWith('.sql')) continue
    const m = FILE.exec(file)
    if (!m) {
      throw new UsageError(
        `Migration file ${path.join(dir, file)} is misnamed; expected NNNN_name.up.sql or NNNN_name.down.sql (lowercase name).`,
      )
    }
    const version = Number(m[1])
    const entry = byVersion.get(version) ?? { name: m[2]! }
    if (entry.name !== m[2]) {
      throw new UsageError(`Migrations ${schema} ${m[1]} has two names: '${entry.name}' and '${m[2]}'.`)
    }
    entry[m[3] as 'up' | 'down'] = path.join(dir, file)
    byVersion.set(version, entry)
  }
  const out: MigrationFile[] = []
  for (const [version, entry] of [...byVersion].sort((a, b) => a[0] - b[0])) {
    if (!entry.up) {
      throw new UsageError(
        `Migration ${schema} ${pad(version)}_${entry.name} has a down file but no up file.`,
      )
    }
    if (version === 0) throw new UsageError(`Migration versions start at 0001; found 0000 in ${dir}.`)
    const upSql = fs.readFileSync(entry.up, 'utf8')
    const downSql = entry.down ? fs.readFileSync(entry.down, 'utf8') : null
    out.push({
      schema,
      version,
      name: entry.name,
      upPath: entry.up,
      downPath: entry.down ?? null,
      upSql,
      downSql,
      checksum: checksum(upSql),
    })
  }
  return out
}

export function pad(version: number): string {
  return String(version).padStart(4, '0')
}

export function fileLabel(m: { schema: string; version: number; name: string }): string {
  return `${m.schema}/${pad(m.version)}_${m.name}`
}

/** Write the next NNNN_name.up.sql / .down.sql pair. Returns both paths. */
export function createMigrationFiles(
  root: string,
  schema: SchemaName,
  name: string,
): { up: string; down: string } {
  if (!/^[a-z0-9_]+$/.test(name)) {
    throw new UsageError(
      `NAME must be lowercase letters, digits and underscores (e.g. add_invoice_index); got '${name}'.`,
    )
  }
  // File names are limited to 255 bytes; a name this long is a mistake anyway.
  if (name.length > MAX_NAME_LENGTH) {
    throw new UsageError(
      `NAME must be at most ${MAX_NAME_LENGTH} characters; got ${name.length} ('${name.slice(0, 20)}...').`,
    )
  }
  const existing = discoverMigrations(root, schema)
  const version = (existing.at(-1)?.version ?? 0) + 1
  if (version > 9999)
    throw new UsageError(`Schema ${schema} already has migration 9999; no numbers are left.`)
  const dir = path.join(root, schema)
  fs.mkdirSync(dir, { recursive: true })
  const base = path.join(dir, `${pad(version)}_${name}`)
  const up = `${base}.up.sql`
  const down = `${base}.down.sql`
  fs.writeFileSync(
    up,
    `-- ${schema} ${pad(version)} ${name}: write the change here. It runs in one transaction.\n` +
      `-- To run without a transaction (CREATE INDEX CONCURRENTLY), make the first line:\n` +
      `-- ${NO_TRANSACTION_MARKER}\n`,
    { flag: 'wx' },
  )
  fs.writeFileSync(down, `-- ${schema} ${pad(version)} ${name}: undo the up file exactly.\n`, { flag: 'wx' })
  return { up, down }
}
