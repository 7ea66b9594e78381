/**
 * Classifying errors from `pg`: which are worth a retry, which mean the connection is gone,
 * and how to say what happened in one sentence.
 */
import { TimeoutError } from '../errors.js'

export interface PgErrorLike extends Error {
  code?: string
  severity?: string
  position?: string
  detail?: string
  hint?: string
}

/** serialization_failure, deadlock_detected: the transaction can simply run again. */
const RETRY_SQLSTATES = new Set(['40001', '40P01'])

/** admin_shutdown (pg_terminate_backend), crash_shutdown, cannot_connect_now, and class 08. */
const CONNECTION_SQLSTATES = new Set(['57P01', '57P02', '57P03'])
const CONNECTION_NODE_CODES = new Set([
  'ECONNRESET',
  'EPIPE',
  'ECONNREFUSED',
  'ETIMEDOUT',
  'ENOTCONN',
  'ECONNABORTED',
])
const CONNECTION_MESSAGES = [
  'Connection terminated',
  'Client has encountered a connection error',
  'Client was closed',
  'terminating connection',
  'server closed the connection',
]

export function isSerializationError(err: unknown): boolean {
  return RETRY_SQLSTATES.has((err as PgErrorLike)?.code ?? '')
}

export function isConnectionError(err: unknown): boolean {
  const e = err as PgErrorLike
  if (!e || typeof e !== 'object') return false
  const code = e.code ?? ''
  if (CONNECTION_SQLSTATES.has(code) || code.startsWith('08') || CONNECTION_NODE_CODES.has(code)) return true
  return CONNECTION_MESSAGES.some((m) => typeof e.message === 'string' && e.message.includes(m))
}

/** statement_timeout / lock_timeout on the server, or pg's own client-side query timeout. */
export function isTimeout(err: unknown): boolean {
  const e = err as PgErrorLike
  return (
    e?.code === '57014' ||
    e?.code === '55P03' ||
    (typeof e?.message === 'string' &&
      /Query read timeout|timeout exceeded when trying to connect/.test(e.message))
  )
}

export function toTimeoutError(err: unknown, what: string, timeoutMs: number): TimeoutError {
  return new TimeoutError(`${what} did not finish within ${timeoutMs / 1000}s.`, {
    hint: 'Raise the limit with --timeout (e.g. --timeout 5m) if the work is expected to take longer.',
    cause: err,
  })
}

/** "syntax error at or near "FOO" (line 3)" from a pg error and the SQL it ran. */
export function describeSqlError(err: unknown, sql?: string): string {
  const e = err as PgErrorLike
  let text = e?.message ?? String(err)
  if (sql && e?.position) {
    const pos = Number(e.position)
    if (Number.isInteger(pos) && pos > 0) {
      const line = sql.slice(0, pos - 1).split('\n').length
      text += ` (line ${line})`
    }
  }
  if (e?.code) text += ` [SQLSTATE ${e.code}]`
  return text
}
