/**
 * Ledger reads and housekeeping: balance, history, gc, and the P0 figures for `status`.
 */
import type pg from 'pg'
import { OperationError, UsageError } from '../errors.js'
import { parseDuration } from '../config/duration.js'
import type { CachedBalance } from './cache.js'
import { applyOperation, type LedgerKeys } from './operations.js'

export interface Balance {
  tenant_id: string
  balance: number
  reserved: number
  available: number
  version: number
}

export async function readBalance(pool: pg.Pool, tenantId: string): Promise<Balance> {
  const { rows } = await pool.query<{ balance: string; reserved: string; version: string }>(
    'select balance, reserved, version from credits.credit_accounts where tenant_id = $1',
    [tenantId],
  )
  const row = rows[0]
  if (!row) {
    throw new OperationError(`Tenant '${tenantId}' has no credits account.`, { code: 'ACCOUNT_NOT_FOUND' })
  }
  return toBalance(tenantId, Number(row.balance), Number(row.reserved), Number(row.version))
}

export function toBalance(tenantId: string, balance: number, reserved: number, version: number): Balance {
  return { tenant_id: tenantId, balance, reserved, available: balance - reserved, version }
}

export function fromCache(c: CachedBalance): Balance {
  return toBalance(c.tenant_id, c.balance, c.reserved, c.version)
}

export interface HistoryEntry {
  transaction_id: string
  kind: string
  amount: number
  balance_after: number
  reservation_id: string | null
  description: string | null
  payment: string | null
  created_at: string
}

/** "2026-11-01", an ISO timestamp, or a duration back from now ("24h", "7d"). */
export function parseSince(value: string): Date {
  if (/^\d+(\.\d+)?(ms|s|m|h|d)$/.test(value)) return new Date(Date.now() - parseDuration(value, '--since'))
  const d = new Date(value)
  if (Number.isNaN(d.getTime())) {
    throw new UsageError(
      `--since must be a date (2026-11-01), a timestamp, or a duration back from now (24h); got '${value}'.`,
    )
  }
  return d
}

export async function readHistory(
  pool: pg.Pool,
  tenantId: string,
  options: { limit: number; since?: Date },
): Promise<HistoryEntry[]> {
  if (!Number.isInteger(options.limit) || options.limit < 1 || options.limit > 10_000) {
    throw new UsageError(`--limit must be a whole number from 1 to 10000; got '${options.limit}'.`)
  }
  const { rows } = await pool.query<{
    id: string
    kind: string
    amount: string
    balance_after: string
    reservation_id: string | null
    description: string | null
    payment_masked: string | null
    created_at: Date
  }>(
    `select id, kind, amount, balance_after, reservation_id, description, payment_masked, created_at
       from credits.credit_transactions
      where tenant_id = $1 and ($2::timestamptz is null or created_at >= $2)
      order by created_at desc, id desc
      limit $3`,
    [tenantId, options.since ?? null, options.limit],
  )
  return rows.map((r) => ({
    transaction_id: r.id,
    kind: r.kind,
    amount: Number(r.amount),
    balance_after: Number(r.balance_after),
    reservation_id: r.reservation_id,
    description: r.description,
    payment: r.payment_masked,
    created_at: new Date(r.created_at).toISOString(),
  }))
}

export interface GcResult {
  idempotency_keys_purged: number
  reservations_expired: number
  credits_released: number
}

/** Purge expired idempotency keys and release overdue reservations, all on database time. */
export async function collectGarbage(
  pool: pg.Pool,
  keys: LedgerKeys,
  timeoutMs: number,
  onReleased?: (tenantId: string) => void,
): Promise<GcResult> {
  const purged = await pool.query('delete from credits.idempotency_keys where expires_at <= now()')
  let expired = 0
  let released = 0
  for (;;) {
    const { rows } = await pool.query<{ id: string }>(
      `select id from credits.reservations where status = 'held' and expires_at <= now() order by expires_at limit 200`,
    )
    if (rows.length === 0) break
    for (const { id } of rows) {
      try {
        // A fixed key per reservation: a gc that dies half way and runs again replays, never double-releases.
        const r = await applyOperation(pool, { kind: 'expire', reservationId: id }, `gc:expire:${id}`, keys, {
          timeoutMs,
        })
        if (!r.replayed) {
          expired++
          released += r.amount
          onReleased?.(r.tenant_id)
        }
      } catch (err) {
        // Committed or cancelled between our select and its lock: nothing to release.
        if ((err as { code?: string }).code !== 'RESERVATION_NOT_HELD') throw err
      }
    }
  }
  return {
    idempotency_keys_purged: purged.rowCount ?? 0,
    reservations_expired: expired,
    credits_released: released,
  }
}

export type HealthFigure = 'negative_balances' | 'overdue_reservations' | 'last_verification'

export interface LedgerHealth {
  /** null when unreadable (see `unreadable`). */
  negative_balances: number | null
  /** null when unreadable (see `unreadable`). */
  overdue_reservations: number | null
  /** null when never verified, or when unreadable (see `unreadable`). */
  last_verification: null | {
    finished_at: string
    ok: boolean
    chain_errors: number
    tenants_checked: number
    rows_checked: number
  }
  /**
   * The figures whose table or column is missing (a half-broken schema, e.g. a table dropped by
   * hand), each with the SQL error's message. The other figures are still read.
   */
  unreadable: Partial<Record<HealthFigure, string>>
}

/** undefined_table, undefined_column: the schema lacks what a figure reads. */
const MISSING_SQLSTATES = new Set(['42P01', '42703'])

/**
 * The P0 figures, one statement each, so that a table missing from a half-broken schema costs
 * only the figures that read it. Errors other than a missing table or column are thrown.
 */
export async function ledgerHealth(pool: pg.Pool): Promise<LedgerHealth> {
  const unreadable: LedgerHealth['unreadable'] = {}
  async function read<T>(figure: HealthFigure, sql: string, map: (row: pg.QueryResultRow | undefined) => T) {
    try {
      return map((await pool.query(sql)).rows[0])
    } catch (err) {
      const code = (err as { code?: unknown }).code
      if (typeof code !== 'string' || !MISSING_SQLSTATES.has(code)) throw err
      unreadable[figure] = (err as Error).message
      return null
    }
  }
  const negative_balances = await read(
    'negative_balances',
    'select count(*) as n from credits.credit_accounts where balance < 0 or reserved < 0 or reserved > balance',
    (r) => Number(r!.n),
  )
  const overdue_reservations = await read(
    'overdue_reservations',
    "select count(*) as n from credits.reservations where status = 'held' and expires_at <= now()",
    (r) => Number(r!.n),
  )
  const last_verification = await read(
    'last_verification',
    `select finished_at, ok, broken_count, tenants_checked, rows_checked
       from credits.chain_verifications order by finished_at desc, id desc limit 1`,
    (r) =>
      r?.finished_at
        ? {
            finished_at: new Date(r.finished_at as Date).toISOString(),
            ok: r.ok === true,
            chain_errors: (r.broken_count as number | null) ?? 0,
            tenants_checked: Number(r.tenants_checked),
            rows_checked: Number(r.rows_checked),
          }
        : null,
  )
  return { negative_balances, overdue_reservations, last_verification, unreadable }
}
