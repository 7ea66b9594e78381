import type { Context } from '../context.js'
import { separateShadow } from '../core/db/pool.js'
import { EXIT } from '../core/errors.js'
import { schemaLag } from '../core/migrations/current.js'
import { ledgerHealth } from '../core/ledger/queries.js'
import { unguardedDeployments } from '../core/shadow/health.js'
import { renderTable } from '../ui/table.js'

/**
 * A check's state: `unknown` when its figure cannot be had (the chain never verified, a schema
 * not migrated, a shadow database that cannot be reached), which is not an integrity failure but
 * is no all-clear either.
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
 * exit 1 when none fails but one cannot be known (a schema not migrated, or a table or column of
 * it missing, among the causes: the table is printed all the same, those rows UNKNOWN with the
 * cause).
 */
export async function status(ctx: Context) {
  const settings = ctx.settings()
  const dir = settings.migrationsDir.value
  const credits = await ctx.database('credits', settings)
  const creditsLag = lagNote('credits', await schemaLag(credits.pool, dir, 'credits'))
  const h = creditsLag === null ? await ledgerHealth(credits.pool) : null
  const creditsUnknown = (name: string) => unknownCheck(name, creditsLag ?? '')
  const chainErrors = h?.last_verification?.chain_errors ?? null
  const checks: Check[] = [
    h?.negative_balances != null
      ? { name: 'negative_balances', value: h.negative_balances, state: zero(h.negative_balances) }
      : unknownCheck('negative_balances', h?.unreadable.negative_balances ?? creditsLag ?? ''),
    h?.unreadable.last_verification !== undefined
      ? unknownCheck('chain_errors', h.unreadable.last_verification)
      : h
        ? {
            name: 'chain_errors',
            value: chainErrors,
            state: chainErrors === null ? 'unknown' : zero(chainErrors),
            note: h.last_verification
              ? `last verify-chain ${h.last_verification.finished_at}`
              : "never verified: run 'shieldx verify-chain'",
          }
        : creditsUnknown('chain_errors'),
  ]
  try {
    // A shadow database of its own that cannot be reached leaves its figure unknown: the credits
    // figures above still count (a broken chain is exit 4 whatever the shadow database does).
    const shadow = separateShadow(settings) ? await ctx.database('shadow', settings) : credits
    const shadowLag = lagNote('shadow', await schemaLag(shadow.pool, dir, 'shadow'))
    if (shadowLag !== null) {
      checks.push(unknownCheck('unguarded_deployments', shadowLag))
    } else {
      const unguarded = await unguardedDeployments(shadow.pool)
      checks.push({
        name: 'unguarded_deployments',
        value: unguarded.length,
        state: zero(unguarded.length),
        note: unguarded.length
          ? `no approving evaluation: ${unguarded.map((u) => `${u.rule_id}@${u.version} (${u.role})`).join(', ')}`
          : '',
      })
    }
  } catch (err) {
    // A shadow database of its own that cannot be opened leaves the figure unknown; Ctrl-C, or a
    // statement timing out on a database that answered, is the command's failure, with its own
    // exit code. (DB_UNREACHABLE: openServer's one sentence for refused, unknown host, no such
    // database...)
    const code = (err as { code?: string }).code
    if (ctx.signal.aborted || code !== 'DB_UNREACHABLE') throw err
    checks.push(unknownCheck('unguarded_deployments', (err as Error).message))
  }
  // Not a P0 invariant: housekeeping that `credits gc` does. Shown, never fails the run.
  // Unknown only when it cannot be read (its table missing...): that is no all-clear either.
  const overdue: Check =
    h?.overdue_reservations != null
      ? {
          name: 'overdue_reservations',
          value: h.overdue_reservations,
          state: 'ok',
          note: h.overdue_reservations > 0 ? "'shieldx credits gc' releases them" : '',
        }
      : unknownCheck('overdue_reservations', h?.unreadable.overdue_reservations ?? creditsLag ?? '')
  checks.push(overdue)
  const failed = checks.some((c) => c.state === 'fail')
  const unknown = checks.some((c) => c.state === 'unknown')
  if (failed) ctx.exitCode = EXIT.integrity
  else if (unknown) ctx.exitCode = EXIT.failed
  if (ctx.out.json) {
    return ctx.out.document({
      ok: !failed && !unknown,
      database: credits.label,
      checks: checks.map((c) => ({ ...c, ok: c.state === 'ok' })),
      last_verification: h?.last_verification ?? null,
    })
  }
  ctx.out.result(`credits database: ${credits.label}`)
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

const unknownCheck = (name: string, note: string): Check => ({ name, value: null, state: 'unknown', note })

/** Why a schema's figures cannot be had, in a table cell; null when the schema is current. */
function lagNote(schema: string, lag: { current: number; wanted: number } | null): string | null {
  if (!lag) return null
  const why =
    lag.current === 0 ? 'not migrated' : `at version ${lag.current}, this shieldx needs ${lag.wanted}`
  return `${schema} schema ${why}: run 'shieldx migrate up'`
}
