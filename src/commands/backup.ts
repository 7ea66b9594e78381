import path from 'node:path'
import type { Context } from '../context.js'
import {
  type BackupEntry,
  deleteBackup,
  fromSource,
  isPreMigration,
  listBackups,
  planPrune,
} from '../core/backup/catalog.js'
import { createBackup, type CreateResult } from '../core/backup/create.js'
import { AUDIT_KEY_SPEC } from '../core/audit/chain.js'
import { readManifest } from '../core/backup/manifest.js'
import { backupKeyFor } from '../core/backup/envelope.js'
import { warmTool } from '../core/backup/pgtools.js'
import type { Check } from '../core/backup/restore.js'
import {
  assertNotInUse,
  assertRestorable,
  createTargetDatabase,
  dropDatabase,
  inspectTarget,
  restoreBackup,
} from '../core/backup/target.js'
import { verifyBackup } from '../core/backup/verify.js'
import { tildify } from '../core/config/paths.js'
import { BACKUP_KEY_SPEC, type Keyring, loadKeyring } from '../core/config/secrets.js'
import { cacheUrl, type Settings, settingLabel } from '../core/config/settings.js'
import { databaseIdentity } from '../core/db/identity.js'
import { type Database, openServer } from '../core/db/pool.js'
import { EXIT, OperationError, SafetyError, UsageError } from '../core/errors.js'
import { schemaVersion } from '../core/migrations/current.js'
import type { SchemaName } from '../core/migrations/files.js'
import { byteRate } from '../ui/progress.js'
import { confirm } from '../ui/prompt.js'
import { renderTable } from '../ui/table.js'
import { runSteps } from '../ui/tasks.js'

export { BACKUP_KEY_SPEC }

function backupKeys(ctx: Context, settings: Settings): Keyring {
  const loaded = loadKeyring(settings.backupKey, BACKUP_KEY_SPEC)
  if (loaded.generatedAt)
    ctx.out.warn(
      `Generated a new backup key in ${loaded.generatedAt} (mode 0600): keep a copy away from the backups.`,
    )
  return loaded.keyring
}

function auditKeys(settings: Settings): Keyring | null {
  try {
    return loadKeyring(settings.auditHmacKey, AUDIT_KEY_SPEC).keyring
  } catch {
    return null
  }
}

/** Used by `backup create` and by migrate up's pre-migration hook. */
export async function backupDatabase(
  ctx: Context,
  settings: Settings,
  db: Database,
  schema: SchemaName,
  label: string | null,
  /** Inside another task list (demo): report there instead of drawing a list of our own. */
  report?: (text: string) => void,
): Promise<CreateResult> {
  const keys = backupKeys(ctx, settings)
  const run = async (show: (text: string) => void) => {
    const rate = byteRate(Date.now())
    return createBackup(db, schema, {
      dir: settings.backupDir.value,
      dirSetting: settingLabel(settings.backupDir.source, 'backup_dir'),
      label,
      keys,
      env: ctx.io.env,
      timeoutMs: settings.timeoutMs.value,
      onProgress: (bytes) => show(rate(bytes)),
      signal: ctx.signal,
    })
  }
  if (report) return run(report)
  return withTask(
    ctx,
    `Back up ${schema} (pg_dump, gzip, AES-256-GCM)`,
    run,
    (r) => `${mb(r.bytes)} in ${r.duration_ms} ms`,
  )
}

/** One listr2 task (or JSON progress lines) around a long operation. */
async function withTask<T>(
  ctx: Context,
  title: string,
  fn: (report: (text: string) => void) => Promise<T>,
  note: (r: T) => string,
): Promise<T> {
  let result: T | undefined
  await runSteps(ctx.out, null, [
    {
      title,
      run: async (_c, report) => {
        result = await fn(report)
        return note(result)
      },
    },
  ])
  return result as T
}

export async function create(
  ctx: Context,
  opts: { db: 'credits' | 'shadow' | 'all'; dir?: string; label?: string },
) {
  if (opts.label !== undefined && !/^[A-Za-z0-9._-]{1,60}$/.test(opts.label)) {
    throw new UsageError(`--label must be 1-60 letters, digits, '.', '_' or '-'; got '${opts.label}'.`)
  }
  const settings = ctx.settings({ ...(opts.dir ? { dir: opts.dir } : {}) })
  // A server's dump needs pg_dump: asked for its version while the connection opens.
  if (settings.creditsDb.value !== null || settings.shadowDb.value !== null) warmTool('pg_dump', ctx.io.env)
  const dbs = await ctx.databases(settings)
  const schemas: SchemaName[] = opts.db === 'all' ? ['credits', 'shadow'] : [opts.db]
  const results: CreateResult[] = []
  for (const schema of schemas) {
    results.push(
      await backupDatabase(
        ctx,
        settings,
        schema === 'credits' ? dbs.credits : dbs.shadow,
        schema,
        opts.label ?? null,
      ),
    )
  }
  if (ctx.out.json) {
    const docs = results.map((r) => ({
      file: r.file,
      manifest: r.manifest,
      bytes: r.bytes,
      duration_ms: r.duration_ms,
    }))
    return ctx.out.document(docs.length === 1 ? docs[0] : { backups: docs })
  }
  for (const r of results) {
    ctx.out.result(`${tildify(r.file, ctx.io.env)}  ${mb(r.bytes)}  ${r.duration_ms} ms`)
    ctx.out.info(
      `  ${r.manifest.database} at schema version ${r.manifest.schema_version}, ${Object.values(r.manifest.row_counts).reduce((a, b) => a + b, 0)} rows, ${Object.keys(r.manifest.chains).length} tenant chains; encrypted with key ${r.manifest.encryption.key_id}`,
    )
  }
}

export async function list(ctx: Context, opts: { dir?: string }) {
  const settings = ctx.settings({ ...(opts.dir ? { dir: opts.dir } : {}) })
  const entries = listBackups(settings.backupDir.value)
  if (ctx.out.json) {
    return ctx.out.document({
      dir: settings.backupDir.value,
      backups: entries.map((e) => ({
        file: e.file,
        bytes: e.bytes,
        created_at: e.created_at,
        database: e.manifest?.database ?? null,
        source: e.manifest?.source ?? null,
        label: e.manifest?.label ?? null,
        schema_version: e.manifest?.schema_version ?? null,
        verified: e.manifest?.verified ?? null,
        verify_failed: e.manifest?.verify_failed ?? null,
        problem: e.problem,
      })),
    })
  }
  if (entries.length === 0)
    return ctx.out.result(`No backups in ${tildify(settings.backupDir.value, ctx.io.env)}.`)
  ctx.out.result(
    renderTable(
      ['created', 'database', 'label', 'schema', 'size', 'verified', 'file'],
      entries.map((e) => [
        e.created_at.replace('T', ' ').slice(0, 19),
        e.manifest?.database ?? ctx.out.style('red', 'NO MANIFEST'),
        e.manifest?.label ?? '',
        e.manifest ? String(e.manifest.schema_version) : '',
        mb(e.bytes),
        e.manifest?.verify_failed
          ? ctx.out.style('red', 'FAILED')
          : e.manifest?.verified
            ? e.manifest.verified.restore_test
              ? 'restore-tested'
              : 'checked'
            : '',
        e.name,
      ]),
    ),
  )
}

export async function verify(ctx: Context, file: string, opts: { restoreTest?: boolean }) {
  const settings = ctx.settings()
  const keys = backupKeys(ctx, settings)
  let server: Database | null = null
  let audit: Keyring | null = null
  if (opts.restoreTest) {
    audit = auditKeys(settings)
    if (!audit) throw new UsageError('A test restore verifies the audit chain: AUDIT_HMAC_KEY is needed.')
    const manifest = readManifest(file)
    if (manifest.dump.format === 'custom') {
      const dbs = await ctx.databases(settings)
      server = manifest.database === 'credits' ? dbs.credits : dbs.shadow
      if (server.kind !== 'server') server = null
    }
  }
  const result = await withTask(
    ctx,
    `Verify ${path.basename(file)}${opts.restoreTest ? ' with a test restore' : ''}`,
    (report) => {
      const rate = byteRate(Date.now())
      return verifyBackup(path.resolve(file), {
        keys,
        env: ctx.io.env,
        timeoutMs: settings.timeoutMs.value,
        ...(opts.restoreTest ? { restoreTest: { server, auditKeys: audit! } } : {}),
        onProgress: (bytes) => report(rate(bytes)),
        signal: ctx.signal,
      })
    },
    (r) => (r.ok ? 'ok' : 'FAILED'),
  )
  if (!result.ok) ctx.exitCode = EXIT.integrity
  if (result.unrecorded) {
    ctx.out.warn(
      `The result could not be written into the manifest (${result.unrecorded}): backup list and prune do not know of it.`,
    )
  }
  if (ctx.out.json) return ctx.out.document({ ok: result.ok, checks: result.checks })
  for (const c of result.checks) {
    ctx.out.result(`${mark(ctx, c)}  ${c.name.padEnd(14)} ${c.detail}`)
  }
  ctx.out.result(result.ok ? 'Backup verified.' : 'Backup FAILED verification: do not rely on it.')
}

export async function prune(
  ctx: Context,
  opts: { dir?: string; retentionDays?: string; keepLast: number; dryRun?: boolean },
) {
  const settings = ctx.settings({
    ...(opts.dir ? { dir: opts.dir } : {}),
    ...(opts.retentionDays ? { retentionDays: opts.retentionDays } : {}),
  })
  const plan = planPrune(listBackups(settings.backupDir.value), {
    retentionDays: settings.backupRetentionDays.value,
    keepLast: opts.keepLast,
  })
  const doc = (deleted: boolean) => ({
    dry_run: !deleted,
    retention_days: settings.backupRetentionDays.value,
    keep_last: opts.keepLast,
    deleted: deleted ? plan.delete.map((d) => ({ file: d.entry.file, reason: d.reason })) : [],
    would_delete: deleted ? [] : plan.delete.map((d) => ({ file: d.entry.file, reason: d.reason })),
    kept: plan.keep.map((k) => ({ file: k.entry.file, reason: k.reason })),
  })
  const describe = (e: BackupEntry, reason: string) => `  ${e.name}  (${reason})`
  if (plan.delete.length === 0 || opts.dryRun) {
    if (ctx.out.json) return ctx.out.document(doc(false))
    if (plan.delete.length === 0) ctx.out.result('Nothing to prune.')
    else {
      ctx.out.result(`Would delete ${plan.delete.length} backup(s):`)
      for (const d of plan.delete) ctx.out.result(describe(d.entry, d.reason))
    }
    return
  }
  ctx.out.info(
    `This will delete ${plan.delete.length} backup(s) from ${tildify(settings.backupDir.value, ctx.io.env)}:`,
  )
  for (const d of plan.delete) ctx.out.info(describe(d.entry, d.reason))
  await confirm(ctx.io, {
    yes: ctx.yes,
    noInput: ctx.noInput,
    action: 'prune backups',
    question: `Delete ${plan.delete.length} backup(s)?`,
  })
  for (const d of plan.delete) deleteBackup(d.entry)
  if (ctx.out.json) return ctx.out.document(doc(true))
  ctx.out.result(`Deleted ${plan.delete.length} backup(s); kept ${plan.keep.length}.`)
}

export async function restore(
  ctx: Context,
  file: string,
  opts: { target?: string; create?: boolean; force?: boolean },
) {
  if (!opts.target) throw new UsageError('--target URL is required: say which database to restore into.')
  warmTool('pg_restore', ctx.io.env)
  const settings = ctx.settings()
  const manifest = readManifest(file)
  // A credits restore drops the cached balances afterwards: a malformed Redis URL is exit 2 now.
  if (manifest.database === 'credits') cacheUrl(settings)
  const keys = backupKeys(ctx, settings)
  const timeoutMs = settings.timeoutMs.value
  let state = await inspectTarget(opts.target, manifest.database, timeoutMs)
  if (!state.exists && !opts.create) {
    throw new OperationError(`The target database '${state.database}' does not exist.`, {
      code: 'TARGET_MISSING',
      hint: 'Pass --create to create it.',
    })
  }
  assertRestorable(state, manifest, opts.force === true)
  // What can be known before anything is written, the database creation included (readManifest
  // has found the file).
  backupKeyFor(keys, manifest.encryption.key_id)
  ctx.out.info(
    `Restore ${path.basename(file)} (${manifest.database}, schema version ${manifest.schema_version}, taken ${manifest.created_at}) into database '${state.database}'` +
      (!state.exists
        ? ', which will be created.'
        : state.tables > 0
          ? `, REPLACING its ${manifest.database} schema (${state.tables} tables).`
          : '.'),
  )
  // Asked before anything is written, the database creation included.
  await confirm(ctx.io, {
    yes: ctx.yes,
    noInput: ctx.noInput,
    action: 'restore',
    question: 'This writes to the target database.',
    typeToConfirm: state.database,
  })
  const created = !state.exists
  let result: Awaited<ReturnType<typeof restoreBackup>>
  try {
    if (created) {
      await createTargetDatabase(opts.target, timeoutMs)
      // Asked again: a template with the schema in it would make the new database non-empty.
      state = await inspectTarget(opts.target, manifest.database, timeoutMs)
    }
    const target = state
    result = await withTask(
      ctx,
      `Restore ${path.basename(file)} into '${state.database}', then check it`,
      (report) => {
        const rate = byteRate(Date.now())
        return restoreBackup(path.resolve(file), manifest, opts.target!, target, {
          keys,
          auditKeys: auditKeys(settings),
          env: ctx.io.env,
          timeoutMs,
          onProgress: (bytes) => report(rate(bytes)),
          signal: ctx.signal,
        })
      },
      (r) => (r.ok ? 'restored and verified' : 'does NOT match its manifest'),
    )
  } catch (err) {
    if (created) {
      await dropDatabase(opts.target, state.database, timeoutMs).catch((dropErr: Error) =>
        ctx.out.warn(
          `The database '${state.database}' this restore created could not be dropped again (${dropErr.message}); drop it by hand.`,
        ),
      )
    }
    throw err
  }
  await dropCachedBalances(ctx, settings, manifest, opts.target)
  if (!result.ok) ctx.exitCode = EXIT.integrity
  if (ctx.out.json) return ctx.out.document(result)
  for (const c of result.checks) {
    ctx.out.result(`${mark(ctx, c)}  ${c.name.padEnd(14)} ${c.detail}`)
  }
  ctx.out.result(
    result.ok
      ? 'Restored and verified.'
      : 'Restored, but it does NOT match its manifest: investigate before using it.',
  )
}

/**
 * After a credits restore the account versions go backwards: no cached balance of the database
 * restored into (`url`) may survive it.
 */
async function dropCachedBalances(
  ctx: Context,
  settings: Settings,
  manifest: { database: string },
  url: string,
): Promise<void> {
  if (manifest.database !== 'credits') return
  const redis = cacheUrl(settings)
  if (redis === null) return
  let database: string
  try {
    const db = await openServer(url, '--target', { timeoutMs: settings.timeoutMs.value, env: {}, max: 1 })
    try {
      database = await databaseIdentity(db.pool)
    } finally {
      await db.close()
    }
  } catch (err) {
    ctx.out.warn(
      `Cannot tell which database was restored into (${(err as Error).message}), so its cached balances were not dropped: they expire within a minute.`,
    )
    return
  }
  // Imported here: the cache's circuit breaker (cockatiel) costs every restore 30 ms to load.
  const { createBalanceCache } = await import('../core/ledger/cache.js')
  const cache = createBalanceCache({
    url: redis,
    database,
    onWarning: (m) => ctx.out.warn(m),
  })
  try {
    await cache.invalidateAll()
  } finally {
    await cache.close()
  }
}

function mb(bytes: number): string {
  return `${(bytes / 1_048_576).toFixed(2)} MB`
}

/**
 * `rollback --migration`: put a database back as it was before the last migration, from the
 * newest pre-migration backup (or the one given). The old runbook's "restore the last known good
 * backup", with the checks a restore makes.
 */
export async function rollbackMigration(
  ctx: Context,
  opts: {
    migration?: boolean
    backup?: string
    schema: 'credits' | 'shadow' | 'all'
    force?: boolean
    dryRun?: boolean
  },
) {
  if (!opts.migration) {
    throw new UsageError(
      "Say what to roll back: 'rollback --migration' (rolling back a rule arrives with deploy-canary).",
    )
  }
  const settings = ctx.settings()
  const dbs = await ctx.databases(settings)
  const keys = backupKeys(ctx, settings)
  const entries = listBackups(settings.backupDir.value)
  const chosen: Array<{ file: string; manifest: ReturnType<typeof readManifest> }> = []
  /** Schemas whose newest pre-migration backup is of the version they are at: nothing to undo. */
  const current: string[] = []
  /** The database a schema's rollback restores into, as a backup's manifest names its source. */
  const targetOf = async (schema: SchemaName) => {
    const db = schema === 'credits' ? dbs.credits : dbs.shadow
    const identity = await databaseIdentity(db.pool).catch(() => null)
    return { identity, label: db.label }
  }
  /** Pre-migration backups in the directory taken from other databases: never chosen. */
  let others = 0
  if (opts.backup) {
    const manifest = readManifest(opts.backup)
    const target = await targetOf(manifest.database)
    if (!fromSource(manifest, target) && !opts.force) {
      await dbs.close()
      throw new SafetyError(
        `${path.basename(opts.backup)} was taken from ${manifest.source}, not from ${target.label}: rolling another database's backup over this one would replace its data with theirs.`,
        {
          code: 'BACKUP_OF_ANOTHER_DATABASE',
          hint: "To copy that database's data here, use 'shieldx restore'; or pass --force if this is the same database under another name.",
        },
      )
    }
    chosen.push({ file: path.resolve(opts.backup), manifest })
  } else {
    const schemas: SchemaName[] = opts.schema === 'all' ? ['credits', 'shadow'] : [opts.schema]
    for (const schema of schemas) {
      const target = await targetOf(schema)
      const candidates = entries.filter((e) => e.manifest?.database === schema && isPreMigration(e))
      const newest = candidates.find((e) => fromSource(e.manifest!, target))
      others += candidates.filter((e) => !fromSource(e.manifest!, target)).length
      if (!newest) continue
      // Run twice (a retried Job, a second try at 3 a.m.), the rollback must not restore the same
      // backup again over what was written since the first.
      const now = await schemaVersion((schema === 'credits' ? dbs.credits : dbs.shadow).pool, schema)
      if (now <= newest.manifest!.schema_version) {
        const v = newest.manifest!.schema_version
        current.push(
          now === v
            ? `${schema} is at schema version ${now}, the version of its newest pre-migration backup (${newest.manifest!.name})`
            : `${schema} is at schema version ${now}, below its newest pre-migration backup (${newest.manifest!.name}, version ${v})`,
        )
        continue
      }
      chosen.push({ file: newest.file, manifest: newest.manifest! })
    }
    if (chosen.length === 0 && current.length > 0) {
      await dbs.close()
      const message = `Nothing to roll back: ${current.join('; ')}. No migration has been applied since it was taken.`
      if (ctx.out.json) return ctx.out.document({ ok: true, rollbacks: [], nothing_to_roll_back: current })
      ctx.out.result(message)
      return
    }
    for (const c of current) ctx.out.info(`Not rolled back: ${c}.`)
    if (chosen.length === 0) {
      const elsewhere = others > 0 ? ` (${others} of other databases were not considered)` : ''
      throw new OperationError(
        `No pre-migration backup of this database in ${tildify(settings.backupDir.value, ctx.io.env)}${elsewhere}.`,
        {
          code: 'NO_PRE_MIGRATION_BACKUP',
          hint: 'migrate up takes one before it applies anything against a server; or name a backup with --backup FILE.',
        },
      )
    }
  }
  // Our own pool would count as "another connection" to the database we are about to replace.
  const targets = new Map(
    chosen.map((c) => [c, c.manifest.database === 'credits' ? dbs.credits : dbs.shadow]),
  )
  await dbs.close()
  const plans = []
  for (const c of chosen) {
    const db = targets.get(c)!
    if (db.kind !== 'server')
      throw new UsageError(
        'rollback --migration restores into a database server; the embedded database has no pre-migration backups.',
      )
    warmTool('pg_restore', ctx.io.env)
    const state = await inspectTarget(db.connectionString!, c.manifest.database, settings.timeoutMs.value)
    plans.push({ ...c, db, state })
  }
  // A credits rollback drops the cached balances afterwards: a malformed Redis URL is exit 2 now.
  if (plans.some((p) => p.manifest.database === 'credits')) cacheUrl(settings)
  for (const p of plans) {
    ctx.out.info(
      `Roll ${p.manifest.database} in '${p.state.database}' back to schema version ${p.manifest.schema_version} from ${path.basename(p.file)} (taken ${p.manifest.created_at})` +
        (p.state.otherConnections > 0 ? `; ${p.state.otherConnections} other connection(s) are open` : '') +
        '. Everything written since is lost.',
    )
  }
  if (opts.dryRun) {
    const plan = plans.map((p) => ({
      file: p.file,
      database: p.state.database,
      schema: p.manifest.database,
      to_schema_version: p.manifest.schema_version,
      other_connections: p.state.otherConnections,
    }))
    if (ctx.out.json) return ctx.out.document({ ok: true, dry_run: true, plan })
    ctx.out.result('Dry run: nothing was changed.')
    return
  }
  // As restore: something still connected would write into a database being replaced under it.
  if (!opts.force) for (const p of plans) assertNotInUse(p.state)
  await confirm(ctx.io, {
    yes: ctx.yes,
    noInput: ctx.noInput,
    action: 'roll back',
    question: 'This replaces the schema with the backup.',
    typeToConfirm: plans[0]!.state.database,
  })
  const results = []
  for (const p of plans) {
    const r = await withTask(
      ctx,
      `Restore ${p.manifest.database} from ${p.manifest.name}`,
      (report) => {
        const rate = byteRate(Date.now())
        return restoreBackup(p.file, p.manifest, p.db.connectionString!, p.state, {
          keys,
          auditKeys: auditKeys(settings),
          env: ctx.io.env,
          timeoutMs: settings.timeoutMs.value,
          onProgress: (bytes) => report(rate(bytes)),
          signal: ctx.signal,
        })
      },
      (x) => (x.ok ? 'restored and verified' : 'does NOT match the backup'),
    )
    await dropCachedBalances(ctx, settings, p.manifest, p.db.connectionString!)
    results.push({ file: p.file, ...r })
  }
  const ok = results.every((r) => r.ok)
  if (!ok) ctx.exitCode = EXIT.integrity
  if (ctx.out.json) return ctx.out.document({ ok, rollbacks: results })
  for (const r of results) {
    for (const c of r.checks) ctx.out.result(`${mark(ctx, c)}  ${c.name.padEnd(14)} ${c.detail}`)
  }
  ctx.out.result(
    ok ? 'Rolled back and verified.' : 'Rolled back, but the result does NOT match the backup: investigate.',
  )
}

/** A check's mark in a report: ok, FAIL, or skip (not run: its detail says why). */
function mark(ctx: Context, c: Check): string {
  return c.skipped
    ? ctx.out.style('yellow', 'skip')
    : c.ok
      ? ctx.out.style('green', 'ok  ')
      : ctx.out.style('red', 'FAIL')
}
