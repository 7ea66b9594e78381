/**
 * One line of labelled traffic: `{ ts, ip, tenant_id, method, path, status, latency_ms, label }`
 * plus any other fields rules may read. Validation names the field; the caller adds the line.
 */

export type TrafficEvent = Record<string, unknown> & { label: 'attack' | 'benign' }

export type ParsedLine = { ok: true; event: TrafficEvent; ts: number } | { ok: false; error: string }

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

function digits(s: string, from: number, count: number): number {
  let n = 0
  for (let i = from; i < from + count; i++) {
    const c = s.charCodeAt(i) - 48
    if (c < 0 || c > 9) return NaN
    n = n * 10 + c
  }
  return n
}

/** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
function daysFromCivil(y: number, m: number, d: number): number {
  y -= m <= 2 ? 1 : 0
  const era = Math.floor(y / 400)
  const yoe = y - era * 400
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
}

/**
 * `2026-01-01T00:00:00Z` or `2026-01-01T00:00:00.123Z` read by hand: this runs once per event and
 * a regular expression plus Date.UTC cost as much as the JSON.parse of the line. NaN if not that form.
 */
function fastIsoUtc(v: string): number {
  const len = v.length
  if (
    len < 20 ||
    v.charCodeAt(len - 1) !== 90 /* Z */ ||
    v[4] !== '-' ||
    v[7] !== '-' ||
    v[10] !== 'T' ||
    v[13] !== ':' ||
    v[16] !== ':'
  )
    return NaN
  const y = digits(v, 0, 4)
  const mo = digits(v, 5, 2)
  const d = digits(v, 8, 2)
  const h = digits(v, 11, 2)
  const mi = digits(v, 14, 2)
  const sec = digits(v, 17, 2)
  let ms = 0
  if (len > 20) {
    if (v[19] !== '.' || len > 30 || len === 21) return NaN
    const frac = digits(v, 20, len - 21)
    if (Number.isNaN(frac)) return NaN
    ms = len - 21 >= 3 ? Math.floor(frac / 10 ** (len - 24)) : frac * 10 ** (24 - len)
  }
  if (!(mo >= 1 && mo <= 12 && h < 24 && mi < 60 && sec < 60 && d >= 1)) return NaN
  const leap = y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0)
  if (d > (mo === 2 && leap ? 29 : DAYS_IN_MONTH[mo - 1]!)) return NaN
  return ((daysFromCivil(y, mo, d) * 24 + h) * 60 + mi) * 60000 + sec * 1000 + ms
}

// Anything else ISO-8601 with a date, a time and a zone (an offset, a space instead of T) goes to
// Date.parse. The zone is required: without one Date.parse reads the machine's local time, and
// the same file would give other windows on a laptop than in CI.
const ISO_ANY = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})$/
const ISO_NO_ZONE = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?$/
/** Date's own range; beyond it a timestamp cannot be printed. */
const MAX_MS = 8.64e15
/** Epoch milliseconds below this are before March 1973: almost surely epoch seconds. */
const MIN_PLAUSIBLE_MS = 1e11

/** Milliseconds since the epoch, or NaN. Numbers are epoch milliseconds. */
export function parseTimestamp(v: unknown): number {
  if (typeof v === 'number') return Number.isFinite(v) && v >= MIN_PLAUSIBLE_MS && v <= MAX_MS ? v : NaN
  if (typeof v !== 'string') return NaN
  const fast = fastIsoUtc(v)
  if (!Number.isNaN(fast)) return fast
  if (!ISO_ANY.test(v)) return NaN
  // Date.parse rolls 2026-02-30 over into March: refuse a day the month does not have.
  const y = digits(v, 0, 4)
  const mo = digits(v, 5, 2)
  const d = digits(v, 8, 2)
  const leap = y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0)
  if (!(mo >= 1 && mo <= 12 && d >= 1 && d <= (mo === 2 && leap ? 29 : DAYS_IN_MONTH[mo - 1]!))) return NaN
  return Date.parse(v)
}

function badString(v: unknown, name: string): string | undefined {
  return v === undefined || v === null || typeof v === 'string' ? undefined : `"${name}" must be a string`
}

function badNumber(v: unknown, name: string): string | undefined {
  return v === undefined || v === null || (typeof v === 'number' && Number.isFinite(v))
    ? undefined
    : `"${name}" must be a number`
}

/** Parse and check one line. Never throws. */
export function parseTrafficLine(line: string): ParsedLine {
  let v: unknown
  try {
    v = JSON.parse(line)
  } catch (err) {
    // V8 quotes a piece of the line in its message; traffic may carry tokens, so keep only the why.
    return { ok: false, error: `not valid JSON (${(err as Error).message.replace(/,? ".*$/s, '')})` }
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    return { ok: false, error: 'must be a JSON object' }
  const e = v as Record<string, unknown>
  const ts = parseTimestamp(e.ts)
  if (Number.isNaN(ts)) return { ok: false, error: timestampProblem(e.ts) }
  if (e.label !== 'attack' && e.label !== 'benign') {
    return {
      ok: false,
      error:
        e.label === undefined
          ? '"label" is missing ("attack" or "benign")'
          : `"label" must be "attack" or "benign"; got ${JSON.stringify(e.label)}`,
    }
  }
  // Written out, not looped over names: this runs per event, and direct property reads are faster.
  const bad =
    badString(e.ip, 'ip') ??
    badString(e.tenant_id, 'tenant_id') ??
    badString(e.method, 'method') ??
    badString(e.path, 'path') ??
    badNumber(e.status, 'status') ??
    badNumber(e.latency_ms, 'latency_ms')
  if (bad) return { ok: false, error: bad }
  return { ok: true, event: e as TrafficEvent, ts }
}

/** A field by name; `a.b` reads nested objects. */
export function fieldReader(field: string): (e: Record<string, unknown>) => unknown {
  if (!field.includes('.')) return (e) => e[field]
  const parts = field.split('.')
  return (e) => {
    let cur: unknown = e
    for (const p of parts) {
      if (typeof cur !== 'object' || cur === null) return undefined
      cur = (cur as Record<string, unknown>)[p]
    }
    return cur
  }
}

function timestampProblem(v: unknown): string {
  if (v === undefined) return '"ts" is missing (ISO-8601 with a zone, or epoch milliseconds)'
  if (typeof v === 'number' && Number.isFinite(v) && v > 0 && v < MIN_PLAUSIBLE_MS)
    return `"ts" ${v} looks like epoch seconds; give epoch milliseconds (${v * 1000}) or ISO-8601`
  if (typeof v === 'string' && ISO_NO_ZONE.test(v))
    return `"ts" "${v}" has no time zone; add Z (UTC) or an offset such as +01:00`
  return `"ts" must be ISO-8601 with a zone (e.g. 2026-01-01T00:00:00Z) or epoch milliseconds; got ${JSON.stringify(v)?.slice(0, 40)}`
}
