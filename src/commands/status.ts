import type { Context } from '../context.js'
import { EXIT } from '../core/errors.js'
import { assertSchemaCurrent } from '../core/migrations/current.js'
import { ledgerHealth } from '../core/ledger/queries.js'
import { unguardedDeployments } from '../core/shadow/health.js'
import { renderTable } from '../ui/table.js'

/** The P0 invariants: each must be 0. Exit 4 when one is not, so a CronJob or CI step can alert. */
export async function status(ctx: Context) {
  const settings = ctx.settings()
  const dbs = await ctx.databases(settings)
  await assertSchemaCurrent(dbs.credits.pool, settings.migrationsDir.value)
  const h = await ledgerHealth(dbs.credits.pool)
  const chainErrors = h.last_verification?.chain_errors ?? null
  const checks = [
    { name: 'negative_balances', value: h.negative_balances, ok: h.negative_balances === 0 },
    {
      name: 'chain_errors',
      value: chainErrors,
      ok: chainErrors === 0,
      note: h.last_verification
        ? `last verify-chain ${h.last_verification.finished_at}`
        : "never verified: run 'shieldx verify-chain'",
    },
  ]
  try {
    await assertSchemaCurrent(dbs.shadow.pool, settings.migrationsDir.value, 'shadow')
    const unguarded = await unguardedDeployments(dbs.shadow.pool)
    checks.push({
      name: 'unguarded_deployments',
      value: unguarded.length,
      ok: unguarded.length === 0,
      note: unguarded.length
        ? `no approving evaluation: ${unguarded.map((u) => `${u.rule_id}@${u.version} (${u.role})`).join(', ')}`
        : '',
    })
  } catch (err) {
    checks.push({ name: 'unguarded_deployments', value: null, ok: false, note: (err as Error).message })
  }
  // Not a P0 invariant: housekeeping that `credits gc` does. Shown, never fails the run.
  const overdue = {
    name: 'overdue_reservations',
    value: h.overdue_reservations,
    ok: true,
    note: h.overdue_reservations > 0 ? "'shieldx credits gc' releases them" : '',
  }
  const ok = checks.every((c) => c.ok)
  checks.push(overdue)
  if (!ok) ctx.exitCode = EXIT.integrity
  if (ctx.out.json) {
    return ctx.out.document({
      ok,
      database: dbs.credits.label,
      checks,
      last_verification: h.last_verification,
    })
  }
  ctx.out.result(`credits database: ${dbs.credits.label}`)
  ctx.out.result(
    renderTable(
      ['invariant', 'value', 'state', 'note'],
      checks.map((c) => [
        c.name,
        c.value === null ? '-' : String(c.value),
        c.ok ? ctx.out.style('green', 'ok') : ctx.out.style('red', 'FAIL'),
        c.note ?? '',
      ]),
    ),
  )
}
