import type { Context } from '../context.js'
import type { Databases } from '../core/db/pool.js'
import { EXIT } from '../core/errors.js'
import {
  createMigrationFiles,
  fileLabel,
  isSchemaName,
  pad,
  type SchemaName,
} from '../core/migrations/files.js'
import {
  type MigrationEvent,
  migrateDown,
  migrateUp,
  migrationStatus,
  type PlannedStep,
  type RunResult,
  type SchemaTarget,
} from '../core/migrations/runner.js'
import { confirm } from '../ui/prompt.js'
import { renderTable } from '../ui/table.js'

type SchemaChoice = SchemaName | 'all'

function targets(dbs: Databases, choice: SchemaChoice, order: 'up' | 'down' = 'up'): SchemaTarget[] {
  const all: SchemaTarget[] = [
    { schema: 'credits', db: dbs.credits },
    { schema: 'shadow', db: dbs.shadow },
  ]
  const chosen = choice === 'all' ? all : all.filter((t) => t.schema === choice)
  return order === 'down' ? chosen.reverse() : chosen
}

function reporter(ctx: Context) {
  return (e: MigrationEvent) => {
    const out = ctx.out
    if (!out.interactive) {
      if (e.type === 'lock-wait') out.log('migration.lock_wait', { database: e.database })
      if (e.type === 'start') out.log('migration.start', stepFields(e.step))
      if (e.type === 'done') out.log('migration.done', { ...stepFields(e.step), ms: e.ms })
      return
    }
    if (e.type === 'lock-wait') out.info(`Waiting for another shieldx to finish migrating ${e.database}...`)
    if (e.type === 'start')
      out.info(
        out.styleErr(
          'gray',
          `${e.step.direction === 'up' ? 'applying' : 'reverting'} ${fileLabel(e.step)} ...`,
        ),
      )
    if (e.type === 'done')
      out.success(`${e.step.direction === 'up' ? 'applied' : 'reverted'} ${fileLabel(e.step)} (${e.ms} ms)`)
  }
}

function stepFields(s: PlannedStep) {
  return { schema: s.schema, version: s.version, name: s.name, direction: s.direction }
}

function printPlan(ctx: Context, steps: PlannedStep[]): void {
  for (const s of steps) {
    ctx.out.result(
      ctx.out.style(
        'bold',
        `-- ${fileLabel(s)} ${s.direction}${s.transactional ? ' (one transaction)' : ' (no transaction)'}: ${s.file}`,
      ),
    )
    ctx.out.result(s.sql.trimEnd())
    ctx.out.result()
  }
}

function resultDoc(result: RunResult) {
  return {
    dry_run: result.dryRun,
    steps: result.steps.map((s) => ({
      ...stepFields(s),
      transactional: s.transactional,
      file: s.file,
      ms: s.ms,
      ...(result.dryRun ? { sql: s.sql } : {}),
    })),
  }
}

export async function up(
  ctx: Context,
  opts: { schema: SchemaChoice; to?: number; dryRun?: boolean; backup?: boolean },
) {
  const settings = ctx.settings()
  const dbs = await ctx.databases(settings)
  const result = await migrateUp(targets(dbs, opts.schema), {
    migrationsDir: settings.migrationsDir.value,
    signal: ctx.signal,
    timeoutMs: settings.timeoutMs.value,
    to: opts.to,
    dryRun: opts.dryRun,
    onEvent: reporter(ctx),
    beforeApply: async (target, steps) => {
      // Against a server, a backup before anything changes: what `rollback --migration` restores.
      if (target.db.kind !== 'server' || opts.backup === false) return
      const { backupDatabase } = await import('./backup.js')
      const current = Math.min(...steps.map((s) => s.version)) - 1
      const label = `pre-migrate-${target.schema}-${pad(current)}`
      const r = await backupDatabase(ctx, settings, target.db, target.schema, label)
      if (!ctx.out.json) ctx.out.info(`pre-migration backup of ${target.schema}: ${r.file}`)
      else ctx.out.log('migration.backup', { schema: target.schema, file: r.file })
    },
  })
  if (ctx.out.json) return ctx.out.document(resultDoc(result))
  if (result.dryRun) {
    if (result.steps.length === 0) ctx.out.result('Nothing to apply.')
    else printPlan(ctx, result.steps)
    ctx.out.info(`Dry run: ${result.steps.length} migration(s) would be applied; nothing was changed.`)
    return
  }
  ctx.out.result(
    result.steps.length === 0
      ? 'Nothing to apply: every schema is up to date.'
      : `Applied ${result.steps.length} migration(s): ${result.steps.map((s) => fileLabel(s)).join(', ')}.`,
  )
}

export async function down(
  ctx: Context,
  opts: { schema: SchemaChoice; steps?: number; to?: number; dryRun?: boolean },
) {
  const settings = ctx.settings()
  const dbs = await ctx.databases(settings)
  const base = {
    migrationsDir: settings.migrationsDir.value,
    signal: ctx.signal,
    timeoutMs: settings.timeoutMs.value,
    steps: opts.steps,
    to: opts.to,
  }
  const chosen = targets(dbs, opts.schema, 'down')
  const plan = await migrateDown(chosen, { ...base, dryRun: true })
  if (opts.dryRun || plan.steps.length === 0) {
    if (ctx.out.json) return ctx.out.document(resultDoc(plan))
    if (plan.steps.length === 0) ctx.out.result('Nothing to revert.')
    else printPlan(ctx, plan.steps)
    if (opts.dryRun)
      ctx.out.info(`Dry run: ${plan.steps.length} migration(s) would be reverted; nothing was changed.`)
    return
  }

  ctx.out.info('This will revert, in this order:')
  for (const s of plan.steps) ctx.out.info(`  ${fileLabel(s)}  (${s.file})`)
  await confirm(ctx.io, {
    yes: ctx.yes,
    noInput: ctx.noInput,
    action: 'migrate down',
    question: `Revert ${plan.steps.length} migration(s) on ${[...new Set(chosen.map((t) => t.db.label))].join(', ')}?`,
  })
  // Revert exactly what was shown: if another runner changed the applied migrations since the
  // plan was made, the runner refuses (exit 5) instead of reverting something else.
  const result = await migrateDown(chosen, {
    ...base,
    expect: plan.steps.map((s) => ({ schema: s.schema, version: s.version })),
    onEvent: reporter(ctx),
  })
  if (ctx.out.json) return ctx.out.document(resultDoc(result))
  ctx.out.result(
    `Reverted ${result.steps.length} migration(s): ${result.steps.map((s) => fileLabel(s)).join(', ')}.`,
  )
}

export async function status(ctx: Context, opts: { schema: SchemaChoice }) {
  const settings = ctx.settings()
  const dbs = await ctx.databases(settings)
  const statuses = await migrationStatus(targets(dbs, opts.schema), settings.migrationsDir.value)
  const problems = statuses.flatMap((s) =>
    s.applied.filter((a) => a.state !== 'ok').map((a) => ({ schema: s.schema, ...a })),
  )

  if (ctx.out.json) {
    ctx.out.document({
      schemas: Object.fromEntries(
        statuses.map((s) => [
          s.schema,
          { database: s.database, current: s.current, applied: s.applied, pending: s.pending },
        ]),
      ),
    })
  } else {
    for (const s of statuses) {
      ctx.out.result(`${ctx.out.style('bold', s.schema)}  ${s.database}  current: ${pad(s.current)}`)
      const rows = [
        ...s.applied.map((a) => [
          pad(a.version),
          a.name,
          a.state === 'ok'
            ? 'applied'
            : ctx.out.style('red', a.state === 'drift' ? 'CHANGED AFTER APPLY' : 'FILE MISSING'),
          a.applied_at.replace('T', ' ').slice(0, 19),
          `${a.execution_ms} ms`,
        ]),
        ...s.pending.map((p) => [pad(p.version), p.name, ctx.out.style('yellow', 'pending'), '', '']),
      ]
      ctx.out.result(
        rows.length
          ? renderTable(['version', 'name', 'state', 'applied at', 'took'], rows)
          : '  no migrations',
      )
      ctx.out.result()
    }
  }
  for (const p of problems) {
    if (p.state === 'drift') {
      ctx.out.error(
        `${p.schema}/${pad(p.version)}_${p.name}.up.sql was changed after it was applied (checksum differs).`,
      )
    } else {
      ctx.out.warn(`${p.schema} has ${pad(p.version)}_${p.name} applied, which this shieldx does not have.`)
    }
  }
  if (problems.some((p) => p.state === 'drift')) ctx.exitCode = EXIT.integrity
}

export async function create(ctx: Context, name: string, opts: { schema: string }) {
  if (!isSchemaName(opts.schema)) return
  const settings = ctx.settings()
  const files = createMigrationFiles(settings.migrationsDir.value, opts.schema, name)
  if (ctx.out.json) return ctx.out.document(files)
  ctx.out.result(files.up)
  ctx.out.result(files.down)
  ctx.out.info('Write the change in the up file and its exact undo in the down file.')
}
