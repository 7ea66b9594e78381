/**
 * One line of labelled traffic: `{ ts, ip, tenant_id, method, path, status, latency_ms, label }`
 * plus any other fields rules may read. Validation names the field; the caller adds the line.
 */
import { isAscii } from 'node:buffer'
import { ABSENT, LineScanner, NULL, NUMBER, STRING } from './scan-lines.js'

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
export function fastIsoUtc(v: string): number {
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

/**
 * A field by name; `a.b` reads nested objects. Only the event's own fields: a line without
 * "constructor" has no such field, whatever objects inherit.
 */
export function fieldReader(field: string): (e: Record<string, unknown>) => unknown {
  if (!field.includes('.')) return (e) => (Object.hasOwn(e, field) ? e[field] : undefined)
  const parts = field.split('.')
  return (e) => {
    let cur: unknown = e
    for (const p of parts) {
      if (typeof cur !== 'object' || cur === null || !Object.hasOwn(cur, p)) return undefined
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

/** The fields parseTrafficLine checks: text (or null) and finite numbers (or null). */
const TEXT_CHECKED = ['ip', 'tenant_id', 'method', 'path']
const NUMBER_CHECKED = ['status', 'latency_ms']
/** Every line's checked fields, the scanner's first fields: ts, label, then the ones above. */
const CHECKED = ['ts', 'label', ...TEXT_CHECKED, ...NUMBER_CHECKED]
const TS = 0
const LABEL = 1
const STRING_FIELDS = TEXT_CHECKED.map((f) => CHECKED.indexOf(f))
const NUMBER_FIELDS = NUMBER_CHECKED.map((f) => CHECKED.indexOf(f))

/**
 * Traffic lines read from the file's bytes: each as an event (its time, its label, the fields the
 * rules read and the rate-limit keys), a blank line, or an invalid one with the reason.
 *
 * Most lines go through LineScanner, which reads only those fields; a line it is not sure of, and
 * every line when a rule reads a nested field or WebAssembly cannot run, goes through
 * parseTrafficLine, so errors and odd lines are worded and decided in one place.
 */
export class TrafficLineReader {
  /** after next(): what the line was */
  kind: 'event' | 'blank' | 'invalid' = 'blank'
  error = ''
  ts = 0
  attack = false
  /** the fields rules read, as JSON.parse gives them (own properties; the object may be reused) */
  event: Record<string, unknown> = {}
  /** the rate-limit keys' values, in the order asked for; undefined when not a string */
  readonly keys: Array<string | undefined>
  private readonly scanner: LineScanner | null
  /** [field name, scanner field] of each field rules read */
  private readonly ruleFields: Array<[string, number]>
  private readonly keyFields: number[]
  private readonly record: Record<string, unknown>
  private buf: Buffer = Buffer.alloc(0)
  private pos = 0
  private scanned = false
  private row = 0
  private rows = 0

  constructor(
    ruleFields: readonly string[],
    private readonly keyNames: readonly string[],
    private readonly decoder: InstanceType<typeof TextDecoder>,
  ) {
    const names: string[] = [...CHECKED]
    const field = (name: string) => {
      if (!names.includes(name)) names.push(name)
      return names.indexOf(name)
    }
    const fields = [...new Set(ruleFields)]
    // Nested fields need the line's objects; __proto__ cannot be an own property of a record.
    const scannable = fields.every((f) => !f.includes('.') && f !== '__proto__')
    this.ruleFields = fields.map((f) => [f, field(f)])
    this.keyFields = keyNames.map(field)
    this.keys = keyNames.map(() => undefined)
    this.scanner = scannable ? LineScanner.create(names, decoder) : null
    this.record = Object.fromEntries(fields.map((f) => [f, undefined]))
  }

  /** Read b's lines from `from` on: next() takes them one by one. */
  begin(b: Buffer, from: number): void {
    this.buf = b
    this.pos = from
    this.row = 0
    this.rows = 0
    this.scanned = this.scanner !== null && this.scanner.load(b, from)
  }

  /** The next line into kind, ts, attack, event, keys (or error); false when there is none. */
  next(): boolean {
    const b = this.buf
    const start = this.pos
    if (start >= b.length) return false
    let lineEnd: number
    if (this.scanned) {
      const s = this.scanner!
      if (this.row === this.rows) {
        this.rows = s.scan()
        this.row = 0
      }
      const l = this.row++
      lineEnd = s.lineEnd(l)
      this.pos = lineEnd + 1
      if (s.ok(l) && this.fromScan(s, l)) return true
    } else {
      lineEnd = b.indexOf(0x0a, start)
      if (lineEnd === -1) lineEnd = b.length
      this.pos = lineEnd + 1
    }
    let last = lineEnd
    if (last > start && b[last - 1] === 13) last--
    const bytes = b.subarray(start, last)
    // ASCII (nearly all traffic logs) decodes as latin1 at twice TextDecoder's speed, same result.
    this.fromText(isAscii(bytes) ? bytes.toString('latin1') : this.decoder.decode(bytes))
    return true
  }

  /** Row l of the scan as an event; false when parseTrafficLine is to decide the line. */
  private fromScan(s: LineScanner, l: number): boolean {
    let ts: number
    const tsKind = s.kind(l, TS)
    if (tsKind === STRING) {
      ts = s.isPlain(l, TS) ? s.number(l, TS) : NaN
      if (Number.isNaN(ts)) ts = parseTimestamp(s.text(l, TS))
    } else if (tsKind === NUMBER) ts = parseTimestamp(s.number(l, TS))
    else return false
    if (Number.isNaN(ts) || s.kind(l, LABEL) !== STRING) return false
    const attack = s.textIs(l, LABEL, 'attack')
    if (!attack && !s.textIs(l, LABEL, 'benign')) return false
    for (const f of STRING_FIELDS) {
      const k = s.kind(l, f)
      if (k !== ABSENT && k !== STRING && k !== NULL) return false
    }
    for (const f of NUMBER_FIELDS) {
      const k = s.kind(l, f)
      if (k !== ABSENT && k !== NULL && !(k === NUMBER && Number.isFinite(s.number(l, f)))) return false
    }
    this.kind = 'event'
    this.ts = ts
    this.attack = attack
    const record = this.record
    for (const [name, f] of this.ruleFields) record[name] = s.value(l, f)
    this.event = record
    for (let k = 0; k < this.keyFields.length; k++) {
      const f = this.keyFields[k]!
      this.keys[k] = s.kind(l, f) === STRING ? s.text(l, f) : undefined
    }
    return true
  }

  private fromText(raw: string): void {
    // A line that starts with '{' is not blank: the trim is only for the odd one that does not.
    if (raw.charCodeAt(0) !== 123 && raw.trim() === '') {
      this.kind = 'blank'
      return
    }
    const parsed = parseTrafficLine(raw)
    if (!parsed.ok) {
      this.kind = 'invalid'
      this.error = parsed.error
      return
    }
    const e = parsed.event
    this.kind = 'event'
    this.ts = parsed.ts
    this.attack = e.label === 'attack'
    this.event = e
    for (let k = 0; k < this.keyNames.length; k++) {
      const v = e[this.keyNames[k]!]
      this.keys[k] = typeof v === 'string' ? v : undefined
    }
  }
}
