/**
 * Transactions: BEGIN ... COMMIT on one client, rolled back on any error, retried on
 * serialization failures, deadlocks and lost connections. A connection lost *during* COMMIT
 * leaves the outcome unknown: that is only retried when the caller says the work is idempotent
 * (the ledger's idempotency keys make it so); otherwise the user is told plainly.
 */
import type pg from 'pg'
import { OperationError } from '../errors.js'
import { isConnectionError, isTimeout, toTimeoutError } from './pg-errors.js'
import { withRetry } from './retry.js'

export interface TxOptions {
  /** Safe to run again even if a previous attempt may have committed. */
  idempotent?: boolean
  maxAttempts?: number
  /** For timeout messages: "applying credits 0002_x". */
  what?: string
  timeoutMs?: number
}

export async function transaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  options: TxOptions = {},
): Promise<T> {
  try {
    return await withRetry(() => attempt(pool, fn, options), { maxAttempts: options.maxAttempts ?? 6 })
  } catch (err) {
    if (isTimeout(err)) throw toTimeoutError(err, options.what ?? 'The transaction', options.timeoutMs ?? 0)
    throw err
  }
}

async function attempt<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  options: TxOptions,
): Promise<T> {
  const client = await pool.connect()
  let committing = false
  let failed: unknown
  try {
    await client.query('BEGIN')
    const result = await fn(client)
    committing = true
    await client.query('COMMIT')
    return result
  } catch (err) {
    failed = err
    if (!isConnectionError(err)) {
      await client.query('ROLLBACK').catch(() => {})
      throw err
    }
    if (committing && !options.idempotent) {
      // Not a connection error itself, so withRetry stops here.
      throw new OperationError(
        'The connection was lost while committing; the change may or may not have been applied.',
        {
          code: 'COMMIT_OUTCOME_UNKNOWN',
          hint: 'Check the current state before running it again.',
          cause: err,
        },
      )
    }
    throw err
  } finally {
    // A client whose connection failed must not go back to the pool.
    client.release(failed !== undefined && isConnectionError(failed) ? (failed as Error) : undefined)
  }
}
