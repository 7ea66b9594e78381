/**
 * Input checks for the ledger: one sentence naming the field, exit 2, before anything is written.
 */
import { parseDuration } from '../config/duration.js'
import { UUID } from '../uuid.js'
import { wholeNumberOf } from '../whole-number.js'
import { UsageError } from '../errors.js'

const TENANT = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/

export function tenantId(value: unknown, field = 'TENANT'): string {
  if (typeof value !== 'string' || !TENANT.test(value)) {
    throw new UsageError(
      `${field} must be 1-128 characters of letters, digits, '.', '_', ':', '@' or '-', starting with a letter or digit; got ${shown(value)}.`,
    )
  }
  return value
}

/** A bad value as an error quotes it: a long one cut (a 100 KB id is not a sentence). */
export function shown(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value)
  return text.length > 80 ? `${text.slice(0, 60)}... (${text.length} characters)` : text
}

/** A positive whole number of credits. Accepts a number or the digits of one. */
export function amount(value: unknown, field = 'AMOUNT'): number {
  const n = wholeNumberOf(value)
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`${field} must be a positive whole number of credits; got ${JSON.stringify(value)}.`)
  }
  return n
}

export function reservationId(value: unknown, field = 'RESERVATION'): string {
  if (typeof value !== 'string' || !UUID.test(value)) {
    throw new UsageError(
      `${field} must be a reservation id (a UUID, as printed by 'credits reserve'); got ${JSON.stringify(value)}.`,
    )
  }
  return value.toLowerCase()
}

export function ttl(value: unknown, field = '--ttl'): number {
  const ms = parseDuration(String(value ?? ''), field)
  if (ms < 1000) throw new UsageError(`${field} must be at least 1s; got '${value}'.`)
  return ms
}

export function description(value: unknown, field = '--description'): string | null {
  if (value === undefined || value === null) return null
  if (typeof value !== 'string' || value.length > 1000 || /[\u0000-\u0008\u000b-\u001f\u007f]/.test(value)) {
    throw new UsageError(`${field} must be text of at most 1000 characters, without control characters.`)
  }
  return value
}

export function idempotencyKey(value: unknown, field = '--idempotency-key'): string {
  if (
    typeof value !== 'string' ||
    value.length < 1 ||
    value.length > 255 ||
    /[\u0000-\u001f\u007f]/.test(value)
  ) {
    throw new UsageError(`${field} must be 1-255 printable characters.`)
  }
  return value
}
