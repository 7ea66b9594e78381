/**
 * Applying and reverting migrations. One client per database does everything: it holds the
 * advisory lock (so two runners never apply the same version) and runs the SQL (so the embedded
 * database's single connection is enough). Each migration runs in its own transaction unless its
 * first line says `-- shieldx:no-transaction`.
 */
import type pg from 'pg'
import { LOCKS, withAdvisoryLock } from '../db/lock.js'
import { describeSqlError, isConnectionError, isTimeout, toTimeoutError } from '../db/pg-errors.js'
import type { Database } from '../db/pool.js'
import {
  ConflictError,
  IntegrityError,
  OperationError,
  SafetyError,
  TimeoutError,
  UsageError,
  InterruptedError,
} from '../errors.js'
import {
  checksum,
  discoverMigrations,
  fileLabel,
  isTransactional,
  type MigrationFile,
  pad,
  type SchemaName,
} from './files.js'
import { splitStatements } from './split.js'

export interface SchemaTarget {
  schema: SchemaName
  db: Database
}

export interface AppliedRow {
  version: number
  name: string
  checksum: string
  applied_at: string
  execution_ms: number
}

export interface AppliedStatus extends AppliedRow {
  /** ok; drift: the file changed after it was applied; missing_file: this shieldx has no such file. */
  state: 'ok' | 'drift' | 'missing_file'
}

export interface SchemaStatus {
  schema: SchemaName
  database: string
  current: number
  applied: AppliedStatus[]
  pending: Array<{ version: number; name: string }>
}

export interface PlannedStep {
  schema: SchemaName
  version: number
  name: string
  direction: 'up' | 'down'
  transactional: boolean
  file: string
  sql: string
}

export type MigrationEvent =
  | { type: 'lock-wait'; database: string }
  | { type: 'start'; step: PlannedStep }
  | { type: 'done'; step: PlannedStep; ms: number }
  | { type: 'nothing'; schema: SchemaName; current: number }

export interface RunOptions {
  migrationsDir: string
  timeoutMs: number
  dryRun?: boolean
  onEvent?: (e: MigrationEvent) => void
  /**
   * Runs once per schema that has pending migrations, inside the lock, before the first one is
   * applied. The backup issue fills this in for servers (pre-migration backup).
   */
  beforeApply?: (target: SchemaTarget, steps: PlannedStep[]) => Promise<void>
  /** Ctrl-C: stop waiting for the lock, and stop between migrations (never inside one). */
  signal?: AbortSignal
}

export interface UpOptions extends RunOptions {
  to?: number
}

export interface DownOptions extends RunOptions {
  steps?: number
  to?: number
  /**
   * The steps the user confirmed (from a dry run). Under the lock, if what would be reverted now
   * differs (another runner applied or reverted something in between), nothing is reverted and a
   * ConflictError is thrown.
   */
  expect?: Array<{ schema: SchemaName; version: number }>
}

export interface RunResult {
  steps: Array<PlannedStep & { ms: number | null }>
  dryRun: boolean
}

const TABLE = 'schema_migrations'

// ---------------------------------------------------------------------------------------------
// status

export async function migrationStatus(
  targets: SchemaTarget[],
  migrationsDir: string,
): Promise<SchemaStatus[]> {
  const out: SchemaStatus[] = []
  for (const target of targets) {
    const files = discoverMigrations(migrationsDir, target.schema)
    const applied = await readApplied(target.db.pool, target.schema)
    out.push(buildStatus(target, files, applied))
  }
  return out
}

function buildStatus(target: SchemaTarget, files: MigrationFile[], applied: AppliedRow[]): SchemaStatus {
  const byVersion = new Map(files.map((f) => [f.version, f]))
  const appliedSet = new Set(applied.map((a) => a.version))
  return {
    schema: target.schema,
    database: target.db.label,
    current: applied.at(-1)?.version ?? 0,
    applied: applied.map((a) => {
      const file = byVersion.get(a.version)
      const state = !file ? 'missing_file' : file.checksum !== a.checksum ? 'drift' : 'ok'
      return { ...a, state }
    }),
    pending: files
      .filter((f) => !appliedSet.has(f.version))
      .map((f) => ({ version: f.version, name: f.name })),
  }
}

async function readApplied(client: pg.Pool | pg.ClientBase, schema: SchemaName): Promise<AppliedRow[]> {
  const { rows: exists } = await client.query<{ t: string | null }>('select to_regclass($1) as t', [
    `${schema}.${TABLE}`,
  ])
  if (!exists[0]?.t) return []
  const { rows } = await client.query<AppliedRow & { applied_at: Date }>(
    `select version, name, checksum, applied_at, execution_ms from ${schema}.${TABLE} order by version`,
  )
  return rows.map((r) => ({
    ...r,
    version: Number(r.version),
    applied_at: new Date(r.applied_at).toISOString(),
  }))
}

/** Refuse to touch a schema whose applied files changed, or that is newer than this shieldx. */
function assertConsistent(status: SchemaStatus, files: MigrationFile[]): void {
  const drift = status.applied.find((a) => a.state === 'drift')
  if (drift) {
    const file = files.find((f) => f.version === drift.version)!
    throw new IntegrityError(
      `Migration ${file.upPath} was changed after it was applied to ${status.schema} (checksum differs).`,
      {
        code: 'MIGRATION_DRIFT',
        hint: 'Restore the file as it was applied, and put the new change in a new migration.',
        data: { schema: status.schema, version: drift.version, file: file.upPath },
      },
    )
  }
  const missing = status.applied.find((a) => a.state === 'missing_file')
  if (missing) {
    throw new SafetyError(
      `The ${status.schema} schema has migration ${pad(missing.version)}_${missing.name} applied, which this shieldx does not have.`,
      { code: 'SCHEMA_NEWER', hint: 'Use the shieldx version that applied it (or newer).' },
    )
  }
}

// ---------------------------------------------------------------------------------------------
// up

export async function migrateUp(targets: SchemaTarget[], options: UpOptions): Promise<RunResult> {
  if (options.to !== undefined && (!Number.isInteger(options.to) || options.to < 0)) {
    throw new UsageError(`--to must be a migration version (a whole number, 0 or more); got '${options.to}'.`)
  }
  if (options.to !== undefined && options.to > 0) {
    // A typo (--to 33 for --to 3) must not quietly apply everything up to the newest.
    const known = targets.map((t) => ({
      schema: t.schema,
      files: discoverMigrations(options.migrationsDir, t.schema),
    }))
    if (!known.some((k) => k.files.some((f) => f.version === options.to))) {
      throw new UsageError(
        `--to ${options.to}: there is no such migration (${known.map((k) => `${k.schema} has ${k.files.length ? `${k.files[0]!.version}-${k.files.at(-1)!.version}` : 'none'}`).join(', ')}).`,
      )
    }
  }
  return runLocked(targets, options, {
    plan: (target, files, status) => {
      const pending = files.filter(
        (f) =>
          status.pending.some((p) => p.version === f.version) &&
          (options.to === undefined || f.version <= options.to),
      )
      // A pending version below the current one means migrations were merged out of order.
      const behind = pending.find((f) => f.version < status.current)
      if (behind) {
        throw new SafetyError(
          `Migration ${fileLabel(behind)} is older than the applied ${target.schema} version ${pad(status.current)} but was never applied.`,
          { code: 'OUT_OF_ORDER', hint: 'Renumber it after the newest applied migration.' },
        )
      }
      return pending.map((f) => step(f, 'up'))
    },
    apply: async (client, target, steps) => {
      await options.beforeApply?.(target, steps)
      const done: Array<PlannedStep & { ms: number }> = []
      for (const s of steps) done.push({ ...s, ms: await applyStep(client, s, options) })
      return done
    },
  })
}

// ---------------------------------------------------------------------------------------------
// down

export async function migrateDown(targets: SchemaTarget[], options: DownOptions): Promise<RunResult> {
  if (options.steps !== undefined && options.to !== undefined) {
    throw new UsageError('Give --steps or --to, not both.')
  }
  if (options.steps !== undefined && (!Number.isInteger(options.steps) || options.steps < 1)) {
    throw new UsageError(`--steps must be a whole number, 1 or more; got '${options.steps}'.`)
  }
  if (options.to !== undefined && (!Number.isInteger(options.to) || options.to < 0)) {
    throw new UsageError(`--to must be a migration version (a whole number, 0 or more); got '${options.to}'.`)
  }
  return runLocked(targets, options, {
    plan: (_target, files, status) => {
      const applied = [...status.applied].reverse()
      const chosen =
        options.to !== undefined
          ? applied.filter((a) => a.version > options.to!)
          : applied.slice(0, options.steps ?? 1)
      return chosen.map((a) => {
        const file = files.find((f) => f.version === a.version)!
        if (file.downSql === null) {
          throw new SafetyError(`Migration ${fileLabel(file)} has no down file, so it cannot be reverted.`, {
            code: 'NO_DOWN_FILE',
          })
        }
        return step(file, 'down')
      })
    },
    check: options.expect && ((planned) => assertAsConfirmed(planned, options.expect!)),
    apply: async (client, _target, steps) => {
      const done: Array<PlannedStep & { ms: number }> = []
      for (const s of steps) done.push({ ...s, ms: await applyStep(client, s, options) })
      return done
    },
  })
}

/**
 * The plan the user confirmed must still be the plan under the lock: otherwise another runner
 * changed the applied migrations in between, and we would revert something nobody was shown.
 */
function assertAsConfirmed(
  planned: PlannedStep[],
  expected: ReadonlyArray<{ schema: SchemaName; version: number }>,
): void {
  const key = (s: { schema: string; version: number }) => `${s.schema}/${pad(s.version)}`
  const now = planned.map(key)
  const then = expected.map(key)
  if (now.length !== then.length || now.some((k, i) => k !== then[i])) {
    throw new ConflictError(
      'The applied migrations changed since you confirmed; nothing was reverted. Run again to see the new plan.',
      {
        code: 'PLAN_CHANGED',
        data: { confirmed: then, now },
      },
    )
  }
}

// ---------------------------------------------------------------------------------------------
// shared

function step(f: MigrationFile, direction: 'up' | 'down'): PlannedStep {
  const sql = direction === 'up' ? f.upSql : f.downSql!
  return {
    schema: f.schema,
    version: f.version,
    name: f.name,
    direction,
    transactional: isTransactional(sql),
    file: direction === 'up' ? f.upPath : f.downPath!,
    sql,
  }
}

interface SchemaWork {
  /** What would run on this schema, decided under the lock. */
  plan(target: SchemaTarget, files: MigrationFile[], status: SchemaStatus): PlannedStep[]
  /** Sees every schema's plan before anything runs; throws to stop the run. */
  check?: ((planned: PlannedStep[]) => void) | undefined
  /** Runs a non-empty plan (never on a dry run). */
  apply(
    client: pg.PoolClient,
    target: SchemaTarget,
    steps: PlannedStep[],
  ): Promise<Array<PlannedStep & { ms: number }>>
}

/**
 * One client per database and the migration lock on each of them (taken in a fixed order, so two
 * runners cannot hold one each), then: plan every schema, check the plans, apply them. Planning
 * everything before applying anything means a refusal (a changed plan, a missing down file)
 * leaves every schema as it was. A dry run takes the locks too, so its plan is not racing a runner
 * that is applying right now.
 */
async function runLocked(targets: SchemaTarget[], options: RunOptions, work: SchemaWork): Promise<RunResult> {
  // Read every file first: a misnamed file is a usage error before anything is touched.
  const filesBySchema = new Map(
    targets.map((t) => [t.schema, discoverMigrations(options.migrationsDir, t.schema)]),
  )
  const dbs = [...new Set(targets.map((t) => t.db))]
  const clients = new Map<Database, pg.PoolClient>()
  let failed: unknown
  try {
    for (const db of dbs) clients.set(db, await db.pool.connect())
    const lockOrder = [...dbs].sort((a, b) => (a.label < b.label ? -1 : a.label > b.label ? 1 : 0))
    return await withLocks(lockOrder, clients, options, async () => {
      const plans: Array<{ target: SchemaTarget; status: SchemaStatus; steps: PlannedStep[] }> = []
      for (const target of targets) {
        const client = clients.get(target.db)!
        const files = filesBySchema.get(target.schema)!
        if (!options.dryRun) await bootstrap(client, target.schema)
        const status = buildStatus(target, files, await readApplied(client, target.schema))
        assertConsistent(status, files)
        plans.push({ target, status, steps: work.plan(target, files, status) })
      }
      work.check?.(plans.flatMap((p) => p.steps))
      const steps: RunResult['steps'] = []
      for (const { target, status, steps: planned } of plans) {
        if (planned.length === 0) {
          options.onEvent?.({ type: 'nothing', schema: target.schema, current: status.current })
        } else if (options.dryRun) {
          steps.push(...planned.map((s) => ({ ...s, ms: null })))
        } else {
          steps.push(...(await work.apply(clients.get(target.db)!, target, planned)))
        }
      }
      return { steps, dryRun: options.dryRun === true }
    })
  } catch (err) {
    failed = err
    throw err
  } finally {
    // A client whose connection failed must not go back to the pool.
    for (const client of clients.values()) {
      client.release(isConnectionError(failed) ? (failed as Error) : undefined)
    }
  }
}

function withLocks<T>(
  dbs: Database[],
  clients: Map<Database, pg.PoolClient>,
  options: RunOptions,
  fn: () => Promise<T>,
): Promise<T> {
  const [db, ...rest] = dbs
  if (!db) return fn()
  return withAdvisoryLock(
    clients.get(db)!,
    LOCKS.migrations,
    {
      timeoutMs: options.timeoutMs,
      name: 'migrations',
      onWait: () => options.onEvent?.({ type: 'lock-wait', database: db.label }),
      ...(options.signal ? { signal: options.signal } : {}),
    },
    () => withLocks(rest, clients, options, fn),
  )
}

async function bootstrap(client: pg.ClientBase, schema: SchemaName): Promise<void> {
  await client.query(`create schema if not exists ${schema}`)
  await client.query(
    `create table if not exists ${schema}.${TABLE} (
       version integer primary key check (version > 0),
       name text not null,
       checksum text not null,
       applied_at timestamptz not null default now(),
       execution_ms integer not null
     )`,
  )
}

async function applyStep(client: pg.ClientBase, s: PlannedStep, options: RunOptions): Promise<number> {
  if (options.signal?.aborted) throw new InterruptedError()
  options.onEvent?.({ type: 'start', step: s })
  const started = performance.now()
  const record = async () => {
    const ms = Math.round(performance.now() - started)
    if (s.direction === 'up') {
      await client.query(
        `insert into ${s.schema}.${TABLE} (version, name, checksum, execution_ms) values ($1, $2, $3, $4)`,
        [s.version, s.name, checksum(s.sql), ms],
      )
    } else {
      await client.query(`delete from ${s.schema}.${TABLE} where version = $1`, [s.version])
    }
    return ms
  }

  let ms: number
  if (s.transactional) {
    try {
      await client.query('BEGIN')
      await client.query(s.sql)
      ms = await record()
      await client.query('COMMIT')
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {})
      throw stepError(err, s, options, 'Nothing from this migration was applied.')
    }
  } else {
    const statements = splitStatements(s.sql)
    for (const [i, stmt] of statements.entries()) {
      try {
        await client.query(stmt)
      } catch (err) {
        throw stepError(
          err,
          s,
          options,
          `It runs without a transaction: statement ${i + 1} of ${statements.length} failed` +
            (i > 0
              ? `, and statements 1-${i} stay applied; write them so they can run again (IF NOT EXISTS).`
              : '; nothing was applied.'),
          stmt,
        )
      }
    }
    ms = await record()
  }
  options.onEvent?.({ type: 'done', step: s, ms })
  return ms
}

function stepError(
  err: unknown,
  s: PlannedStep,
  options: RunOptions,
  consequence: string,
  sql = s.sql,
): Error {
  const what = `Migration ${s.file}${s.direction === 'down' ? ' (down)' : ''}`
  if (isTimeout(err)) {
    const t = toTimeoutError(err, what, options.timeoutMs)
    return new TimeoutError(`${t.message} ${consequence}`, { hint: t.hint, cause: err })
  }
  return new OperationError(`${what} failed: ${describeSqlError(err, sql)}. ${consequence}`, {
    code: 'MIGRATION_FAILED',
    cause: err,
  })
}
