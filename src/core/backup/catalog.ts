/**
 * The backups in a directory, and the retention policy that prunes them.
 */
import fs from 'node:fs'
import path from 'node:path'
import { UsageError } from '../errors.js'
import { BACKUP_EXT, type Manifest, manifestPath, readManifest } from './manifest.js'

export interface BackupEntry {
  file: string
  name: string
  /** null when the manifest is missing or unreadable: not a usable backup. */
  manifest: Manifest | null
  problem: string | null
  bytes: number
  created_at: string
}

export function listBackups(dir: string): BackupEntry[] {
  let names: string[]
  try {
    names = fs.readdirSync(dir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw new UsageError(`Cannot read the backup directory ${dir}: ${(err as NodeJS.ErrnoException).code}.`)
  }
  const out: BackupEntry[] = []
  for (const name of names) {
    if (!name.endsWith(BACKUP_EXT)) continue
    const file = path.join(dir, name)
    const stat = fs.statSync(file)
    let manifest: Manifest | null = null
    let problem: string | null = null
    try {
      manifest = readManifest(file)
    } catch (err) {
      problem = (err as Error).message
    }
    out.push({
      file,
      name,
      manifest,
      problem,
      bytes: stat.size,
      created_at: manifest?.created_at ?? stat.mtime.toISOString(),
    })
  }
  return out.sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0))
}

/**
 * Whether a backup was taken from the database `target` is: by identity when both are known, else
 * by the redacted URL. Backups of several databases can share one directory (the default one
 * does), and a rollback must never restore another database's.
 */
export function fromSource(m: Manifest, target: { identity: string | null; label: string }): boolean {
  if (m.source_identity && target.identity) return m.source_identity === target.identity
  return m.source === target.label
}

/** Which database a backup belongs to, for grouping: its schema and its source. */
function sourceKey(m: Manifest): string {
  return `${m.database} ${m.source_identity ?? m.source}`
}

export function isPreMigration(e: BackupEntry): boolean {
  return e.manifest?.label?.startsWith('pre-migrate-') === true
}

export interface PrunePlan {
  delete: Array<{ entry: BackupEntry; reason: string }>
  keep: Array<{ entry: BackupEntry; reason: string }>
}

/**
 * Per database (schema and source): keep the newest `keepLast`, anything younger than `retentionDays`, the newest
 * pre-migration backup and the newest verified one (the ones a rollback or a restore would
 * reach for); delete the rest. Files without a manifest are deleted only past retention.
 */
export function planPrune(
  entries: BackupEntry[],
  options: { retentionDays: number; keepLast: number; now?: Date },
): PrunePlan {
  if (!Number.isInteger(options.keepLast) || options.keepLast < 0) {
    throw new UsageError(`--keep-last must be a whole number, 0 or more; got '${options.keepLast}'.`)
  }
  const cutoff = (options.now ?? new Date()).getTime() - options.retentionDays * 86_400_000
  const plan: PrunePlan = { delete: [], keep: [] }
  // Per schema and source database: each database's newest pre-migration backup is its own.
  const byDb = new Map<string, BackupEntry[]>()
  for (const e of entries) {
    const key = e.manifest ? sourceKey(e.manifest) : '(no manifest)'
    byDb.set(key, [...(byDb.get(key) ?? []), e])
  }
  for (const list of byDb.values()) {
    // entries are newest first
    const newestPre = list.find(isPreMigration)
    const newestVerified = list.find((e) => e.manifest?.verified)
    list.forEach((e, i) => {
      const young = new Date(e.created_at).getTime() >= cutoff
      const reason =
        e === newestPre
          ? 'newest pre-migration backup'
          : e === newestVerified
            ? 'newest verified backup'
            : e.manifest && i < options.keepLast
              ? `one of the newest ${options.keepLast}`
              : young
                ? `younger than ${options.retentionDays} days`
                : null
      if (reason) plan.keep.push({ entry: e, reason })
      else
        plan.delete.push({
          entry: e,
          reason: e.manifest ? `older than ${options.retentionDays} days` : 'no manifest, past retention',
        })
    })
  }
  return plan
}

export function deleteBackup(e: BackupEntry): void {
  fs.rmSync(e.file, { force: true })
  fs.rmSync(manifestPath(e.file), { force: true })
}
