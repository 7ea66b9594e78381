import type { Context } from '../context.js'
import { EXIT } from '../core/errors.js'
import { assertSchemaCurrent } from '../core/migrations/current.js'
import { ledgerHealth } from '../core/ledger/queries.js'
import { unguardedDeployments } from '../core/shadow/health.js'
import { renderTable } from '../ui/table.js'

/**
 * A check's state: `unknown` when its figure cannot be had (the chain never verified, the shadow
 * schema missing), which is not an integrity failure but is no all-clear either.
 */
type State = 'ok' | 'fail' | 'unknown'

interface Check {
  name: string
  value: number | null
  state: State
  note?: string
}

/**
 * The P0 invariants: each must be 0. Exit 4 when one is not, so a CronJob or CI step can alert;
 * exit 1 when none fails but one cannot be known.
 */
export async function status(ctx: Context) {
  const settings = ctx.settings()
  const dbs = await ctx.databases(settings)
  await assertSchemaCurrent(dbs.credits.pool, settings.migrationsDir.value)
  const h = await ledgerHealth(dbs.credits.pool)
  const chainErrors = h.last_verification?.chain_errors ?? null
  const checks: Check[] = [
    { name: 'negative_balances', value: h.negative_balances, state: zero(h.negative_balances) },
    {
      name: 'chain_errors',
      value: chainErrors,
      state: chainErrors === null ? 'unknown' : zero(chainErrors),
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
      state: zero(unguarded.length),
      note: unguarded.length
        ? `no approving evaluation: ${unguarded.map((u) => `${u.rule_id}@${u.version} (${u.role})`).join(', ')}`
        : '',
    })
  } catch (err) {
    // Only a shadow schema that is not there (or behind) leaves the figure unknown; a timeout or a
    // server gone is the command's failure, with its own exit code.
    if ((err as { code?: string }).code !== 'SCHEMA_NOT_CURRENT') throw err
    checks.push({
      name: 'unguarded_deployments',
      value: null,
      state: 'unknown',
      note: (err as Error).message,
    })
  }
  // Not a P0 invariant: housekeeping that `credits gc` does. Shown, never fails the run.
  const overdue: Check = {
    name: 'overdue_reservations',
    value: h.overdue_reservations,
    state: 'ok',
    note: h.overdue_reservations > 0 ? "'shieldx credits gc' releases them" : '',
  }
  const failed = checks.some((c) => c.state === 'fail')
  const unknown = checks.some((c) => c.state === 'unknown')
  checks.push(overdue)
  if (failed) ctx.exitCode = EXIT.integrity
  else if (unknown) ctx.exitCode = EXIT.failed
  if (ctx.out.json) {
    return ctx.out.document({
      ok: !failed && !unknown,
      database: dbs.credits.label,
      checks: checks.map((c) => ({ ...c, ok: c.state === 'ok' })),
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
        c.state === 'ok'
          ? ctx.out.style('green', 'ok')
          : c.state === 'fail'
            ? ctx.out.style('red', 'FAIL')
            : ctx.out.style('yellow', 'UNKNOWN'),
        c.note ?? '',
      ]),
    ),
  )
}

const zero = (n: number): State => (n === 0 ? 'ok' : 'fail')
