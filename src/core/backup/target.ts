/**
 * restore: a backup into a target database, guarded. The target must be empty (of the backup's
 * schema) and have no other live connections unless forced; after the restore it is compared
 * with the manifest and its audit chain verified, and any difference is an integrity failure.
 */
import type { TextChainResult } from '../audit/copy-text.js'
import { loadNewestCheckpoint } from '../audit/checkpoint.js'
import { recordRun } from '../audit/verify.js'
import type { Keyring } from '../config/secrets.js'
import { Pool } from '../db/driver.js'
import { type Database, openServer } from '../db/pool.js'
import type { PgErrorLike } from '../db/pg-errors.js'
import { OperationError, SafetyError } from '../errors.js'
import type { Manifest } from './manifest.js'
import {
  type Check,
  chainCheck,
  chainNotCheckable,
  compareWithManifest,
  restoreInto,
  withDatabase,
} from './restore.js'

export interface TargetState {
  database: string
  exists: boolean
  /** Tables in the backup's schema already there. */
  tables: number
  otherConnections: number
  serverMajor: number
}

function databaseOf(url: string): string {
  const at = url.lastIndexOf('@')
  const afterHost = url.slice(at === -1 ? url.indexOf('//') + 2 : at + 1)
  const slash = afterHost.indexOf('/')
  return slash === -1
    ? 'postgres'
    : decodeURIComponent(afterHost.slice(slash + 1).split('?')[0]!) || 'postgres'
}

export async function inspectTarget(url: string, schema: string, timeoutMs: number): Promise<TargetState> {
  const database = databaseOf(url)
  try {
    // Through openServer for its one-sentence connection errors, then closed again.
    const db = await openServer(url, '--target', { timeoutMs, env: {}, max: 1 })
    try {
      const { rows } = await db.pool.query<{ tables: string; others: string }>(
        `select (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where n.nspname = $1 and c.relkind in ('r', 'p')) as tables,
                (select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()) as others`,
        [schema],
      )
      return {
        database,
        exists: true,
        tables: Number(rows[0]!.tables),
        otherConnections: Number(rows[0]!.others),
        serverMajor: db.serverMajor,
      }
    } finally {
      await db.close()
    }
  } catch (err) {
    const cause = (err as { cause?: PgErrorLike }).cause
    if (cause?.code === '3D000')
      return { database, exists: false, tables: 0, otherConnections: 0, serverMajor: 0 }
    throw err
  }
}

export async function createTargetDatabase(url: string, timeoutMs: number): Promise<void> {
  const name = databaseOf(url)
  if (!/^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/.test(name)) {
    throw new OperationError(
      `Will not create a database named '${name}': use letters, digits and underscores.`,
    )
  }
  const admin = await openServer(withDatabase(url, 'postgres'), '--target', { timeoutMs, env: {}, max: 1 })
  try {
    await admin.pool.query(`create database "${name}"`)
  } finally {
    await admin.close()
  }
}

/**
 * Drops database `name` of the server `url` points at, on a connection of its own (with the
 * usual timeouts): the one `restore --create` made moments ago when the restore into it failed or
 * was interrupted (an empty database left behind would look like a restore that happened), or a
 * test restore's scratch database.
 */
export async function dropDatabase(url: string, name: string, timeoutMs: number): Promise<void> {
  const admin = await openServer(withDatabase(url, 'postgres'), '--target', { timeoutMs, env: {}, max: 1 })
  try {
    await admin.pool.query(`drop database if exists "${name.replace(/"/g, '""')}" with (force)`)
  } finally {
    await admin.close()
  }
}

/** The refusals, before anything is touched: exit 3 unless --force. */
export function assertRestorable(state: TargetState, manifest: Manifest, force: boolean): void {
  if (force) return
  if (state.tables > 0) {
    throw new SafetyError(
      `The target database '${state.database}' already holds the ${manifest.database} schema (${state.tables} tables); restoring would replace it.`,
      {
        code: 'TARGET_NOT_EMPTY',
        hint: 'Restore into an empty database, or pass --force to replace what is there.',
      },
    )
  }
  assertNotInUse(state)
}

/** Refuses a target something else is connected to: it would write into a database being replaced. */
export function assertNotInUse(state: TargetState): void {
  if (state.otherConnections > 0) {
    throw new SafetyError(
      `The target database '${state.database}' has ${state.otherConnections} other live connection(s); something is using it.`,
      { code: 'TARGET_IN_USE', hint: 'Stop what is connected, or pass --force.' },
    )
  }
}

export interface RestoreResult {
  ok: boolean
  target: string
  checks: Check[]
}

export async function restoreBackup(
  file: string,
  manifest: Manifest,
  url: string,
  state: TargetState,
  options: {
    keys: Keyring
    auditKeys: Keyring | null
    env: NodeJS.ProcessEnv
    timeoutMs: number
    onProgress?: (bytes: number) => void
    signal?: AbortSignal
  },
): Promise<RestoreResult> {
  const restored = await restoreInto(file, manifest, options.keys, url, options.env, {
    serverMajor: state.serverMajor,
    clean: state.tables > 0,
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(manifest.database === 'credits' && options.auditKeys && !chainNotCheckable(manifest)
      ? { chainCheck: { keys: options.auditKeys } }
      : {}),
  })
  const checks: Check[] = [
    { name: 'restore', ok: true, detail: `${manifest.name} restored into '${state.database}'` },
  ]
  const startedAt = new Date()
  // The connection for the chains' part, opened while the rows are counted.
  const opening =
    manifest.database === 'credits' && options.auditKeys
      ? openServer(url, '--target', { timeoutMs: options.timeoutMs, env: {} })
      : null
  opening?.catch(() => {}) // awaited below, or closed if the counts fail
  // The counts on connections without a statement timeout (a large table may take a while), side by side.
  const counts = new Pool({ connectionString: url, max: 4, application_name: 'shieldx restore' })
  counts.on('error', () => {})
  try {
    checks.push(...(await compareWithManifest(counts, manifest, restored.rows)))
  } catch (err) {
    await opening?.then((db) => db.close()).catch(() => {})
    throw err
  } finally {
    await counts.end().catch(() => {})
  }
  const tooOld = chainNotCheckable(manifest)
  if (tooOld) checks.push(tooOld)
  else if (manifest.database === 'credits') {
    if (!options.auditKeys) {
      checks.push({
        name: 'verify_chain',
        ok: false,
        detail: 'AUDIT_HMAC_KEY is needed to verify the restored chain',
      })
    } else {
      const db = await opening!
      try {
        // Verified on the way in against the manifest's heads; if the restored database holds
        // exactly what the manifest says (its row counts, its accounts' heads), it holds the rows
        // that were checked, and what is left is the checkpoint. Otherwise, the full check.
        const matches = checks.every((c) => c.ok)
        const streamed = restored.chains
        const early =
          streamed?.intact && matches && streamed.rows === manifest.row_counts['credits.audit_logs']
            ? await streamedChainCheck(db, options.auditKeys, streamed, startedAt)
            : null
        checks.push(early ?? (await chainCheck(db, options.auditKeys)))
      } finally {
        await db.close()
      }
    }
  }
  return { ok: checks.every((c) => c.ok), target: state.database, checks }
}

/**
 * verify-chain's verdict for chains verified from the dump as it was restored: the rows were
 * checked against the manifest's heads; here the restored newest checkpoint is checked against
 * those rows, and the run recorded as verify-chain records its own. Null when anything does not
 * hold: the caller then runs the full verify-chain, which says what is wrong.
 */
async function streamedChainCheck(
  db: Database,
  keys: Keyring,
  streamed: TextChainResult,
  startedAt: Date,
): Promise<Check | null> {
  let stored: Awaited<ReturnType<typeof loadNewestCheckpoint>>
  try {
    stored = await loadNewestCheckpoint(db.pool, keys)
    if (stored) {
      // The row at each head the checkpoint signed must be there, with that hash.
      const heads = Object.entries(stored.checkpoint.heads)
      const { rows } = await db.pool.query<{ tenant_id: string; hash: string }>(
        `select a.tenant_id, encode(a.hash, 'hex') as hash
           from unnest($1::text[], $2::bigint[]) as c(tenant_id, seq)
           join credits.audit_logs a on a.tenant_id = c.tenant_id and a.seq = c.seq`,
        [heads.map(([t]) => t), heads.map(([, h]) => h.seq)],
      )
      const found = new Map(rows.map((r) => [r.tenant_id, r.hash]))
      if (heads.some(([t, h]) => found.get(t) !== h.head)) return null
    }
  } catch {
    return null
  }
  const result = {
    ok: true,
    tenants_checked: streamed.tenants,
    rows_checked: streamed.rows,
    broken: [],
    checkpoint: null,
  }
  await recordRun(db.pool, startedAt, result, null)
  return {
    name: 'verify_chain',
    ok: true,
    detail: `${streamed.rows} rows across ${streamed.tenants} tenants intact (verified as they were restored${stored ? `, and against checkpoint #${stored.id}` : ''})`,
  }
}
