import { UsageError } from '../errors.js'

/** Timers and PostgreSQL's timeout settings overflow far above this; nothing we run needs more. */
const MAX_MS = 86_400_000

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/**
 * Parse "500ms", "30s", "15m", "2h", "7d" or a bare number of seconds into milliseconds.
 * `field` names the flag or setting in the error so the user knows what to fix.
 */
export function parseDuration(input: string, field: string): number {
  const text = input.trim()
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text)
  if (!match) {
    throw new UsageError(`${field} must be a duration like 30s, 500ms, 15m or 2h; got '${input}'.`)
  }
  const ms = Math.round(Number(match[1]) * UNITS[match[2] ?? 's']!)
  // 0 means "no timeout" to PostgreSQL and pg: never let a tiny value switch timeouts off.
  if (!Number.isFinite(ms) || ms < 1) {
    throw new UsageError(`${field} must be at least 1ms; got '${input}'.`)
  }
  if (ms > MAX_MS) {
    throw new UsageError(`${field} must be at most 24h; got '${input}'.`)
  }
  return ms
}
