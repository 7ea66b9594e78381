/**
 * Lines of JSON objects scanned for a few fields, in WebAssembly (AssemblyScript, compiled to
 * dist/core/shadow/scan-lines.wasm by `npm run build`); src/core/shadow/scan-lines.ts drives it.
 *
 * The replay needs eight or so fields of each traffic line but must check the whole line is JSON.
 * JSON.parse builds every field's string and the object, most of which is never read; this checks
 * JSON's grammar and records only where the wanted fields' values are, 16 bytes at a time through
 * strings. It never decides a line it is unsure of: a line that is not one JSON object, a wanted
 * field holding an object or an array, an escaped member name, deep nesting, all come back
 * "not scanned", and the caller reads that line with JSON.parse, which also words the error.
 *
 * Per line l and wanted field k (S fields), at index l * S + k:
 * - KIND (u8): ABSENT, STRING, NUMBER, NULL, TRUE or FALSE, or'ed with ESCAPED / WIDE (a string
 *   with an escape / a byte over 0x7f: the caller decodes it) or NUMBER_TEXT (not a whole number
 *   of up to 15 digits: the caller reads the text with Number()). The last occurrence wins, as in
 *   JSON.parse.
 * - START, END (i32): a string's bytes between its quotes, a number's text.
 * - NUM (f64): a number's value; for field 0 given as a plain string, the ISO-8601 UTC time it
 *   spells in epoch milliseconds (NaN if not the form `2026-01-01T00:00:00[.fff]Z`).
 * Per line: LINE_END (i32), where its newline is (or the input's end), and OK (u8), 1 if scanned.
 */

export const ABSENT: u8 = 0
export const STRING: u8 = 1
export const NUMBER: u8 = 2
export const NULL: u8 = 3
export const TRUE: u8 = 4
export const FALSE: u8 = 5
export const ESCAPED: u8 = 0x10
export const WIDE: u8 = 0x20
export const NUMBER_TEXT: u8 = 0x40

/** The wanted names, written by the caller before layout(): each a length byte, then its bytes. */
export const NAMES = memory.data(4096, 16)
const MAX_FIELDS = 64
const NAME_AT = memory.data(4 * MAX_FIELDS, 16)
const NAME_LENGTH = memory.data(4 * MAX_FIELDS, 16)
/** Deeper than this, a value is left to JSON.parse (keeps the recursion small). */
const MAX_DEPTH = 32

export let IN: usize = 0
export let IN_CAPACITY: i32 = 0
export let LINES: i32 = 0
export let KIND: usize = 0
export let START: usize = 0
export let END: usize = 0
export let NUM: usize = 0
export let LINE_END: usize = 0
export let OK: usize = 0
let fields: i32 = 0

/**
 * Lays out memory for `count` wanted fields (their names at NAMES), an input of up to
 * `inCapacity` bytes and `lines` lines per scan() call. False if there is not that much memory.
 */
export function layout(count: i32, inCapacity: i32, lines: i32): bool {
  if (count < 1 || count > MAX_FIELDS) return false
  let at = NAMES
  for (let k = 0; k < count; k++) {
    const n = <i32>load<u8>(at)
    store<i32>(NAME_AT + ((<usize>k) << 2), <i32>(at + 1))
    store<i32>(NAME_LENGTH + ((<usize>k) << 2), n)
    at += 1 + n
  }
  fields = count
  const cells = <usize>lines * <usize>count
  let p = (<usize>__heap_base + 15) & ~15
  IN = p
  p += (<usize>inCapacity + 31) & ~15
  NUM = p
  p += cells << 3
  START = p
  p += cells << 2
  END = p
  p += cells << 2
  LINE_END = p
  p += (<usize>lines) << 2
  KIND = p
  p += cells
  OK = p
  p += <usize>lines
  const pages = <i32>((p + 0xffff) >> 16)
  if (pages > memory.size() && memory.grow(pages - memory.size()) < 0) return false
  IN_CAPACITY = inCapacity
  LINES = lines
  return true
}

// What the last string or number scan saw, beside the position it returns.
let stringFlags: u8 = 0
let numberSimple = false
let numberValue: f64 = 0

/**
 * Scans the lines of IN[from, length) into rows 0, 1, ... and returns how many it scanned: all
 * of them, or LINES. The next line starts after LINE_END of the last.
 */
export function scan(from: i32, length: i32): i32 {
  const end = IN + <usize>length
  let p = IN + <usize>from
  let l: i32 = 0
  while (p < end && l < LINES) {
    const row = <usize>l * <usize>fields
    memory.fill(KIND + row, 0, <usize>fields)
    let lineEnd = scanLine(p, end, row)
    if (lineEnd < 0) {
      store<u8>(OK + <usize>l, 0)
      lineEnd = <isize>findNewline(p, end)
    } else {
      store<u8>(OK + <usize>l, 1)
      const kind = load<u8>(KIND + row)
      if (kind === STRING) {
        const s = <usize>load<i32>(START + (row << 2))
        const e = <usize>load<i32>(END + (row << 2))
        store<f64>(NUM + (row << 3), isoUtc(IN + s, <i32>(e - s)))
      }
    }
    store<i32>(LINE_END + ((<usize>l) << 2), <i32>(<usize>lineEnd - IN))
    p = <usize>lineEnd + 1
    l++
  }
  return l
}

const NL = i8x16.splat(0x0a)
const QUOTE = i8x16.splat(0x22)
const BACKSLASH = i8x16.splat(0x5c)
const BLANK = i8x16.splat(0x20)

function findNewline(p: usize, end: usize): usize {
  while (p + 16 <= end) {
    const mask = i8x16.bitmask(i8x16.eq(v128.load(p), NL))
    if (mask !== 0) return p + <usize>ctz(mask)
    p += 16
  }
  while (p < end && load<u8>(p) !== 0x0a) p++
  return p
}

/** JSON's blanks but the newline, which ends the line: a scan never runs on into the next one. */
function skipSpace(p: usize, end: usize): usize {
  while (p < end) {
    const c = load<u8>(p)
    if (c !== 0x20 && c !== 0x09 && c !== 0x0d) break
    p++
  }
  return p
}

/** One line's object from p: where the line ends (its newline or `end`), or -1. */
function scanLine(p: usize, end: usize, row: usize): isize {
  p = skipSpace(p, end)
  if (p >= end || load<u8>(p) !== 0x7b) return -1
  const next = skipContainer(p, end, 0, <isize>row)
  if (next < 0) return -1
  p = skipSpace(<usize>next, end)
  return p === end || load<u8>(p) === 0x0a ? <isize>p : -1
}

function fieldOf(start: usize, end: usize): i32 {
  const n = <i32>(end - start)
  for (let k = 0; k < fields; k++) {
    if (load<i32>(NAME_LENGTH + ((<usize>k) << 2)) !== n) continue
    const name = <usize>load<i32>(NAME_AT + ((<usize>k) << 2))
    let i = 0
    while (i < n && load<u8>(name + <usize>i) === load<u8>(start + <usize>i)) i++
    if (i === n) return k
  }
  return -1
}

/** From just after an opening quote: the position of the closing one, or -1. */
function scanString(p: usize, end: usize): isize {
  let flags: u8 = 0
  while (true) {
    // 16 bytes at a time to the next quote, backslash or control character
    while (p + 16 <= end) {
      const v = v128.load(p)
      const stop = i8x16.bitmask(
        v128.or(v128.or(i8x16.eq(v, QUOTE), i8x16.eq(v, BACKSLASH)), i8x16.lt_u(v, BLANK)),
      )
      const wide = i8x16.bitmask(v)
      if (stop !== 0) {
        const n = ctz(stop)
        if ((wide & ((1 << n) - 1)) !== 0) flags |= WIDE
        p += <usize>n
        break
      }
      if (wide !== 0) flags |= WIDE
      p += 16
    }
    if (p >= end) return -1
    const c = load<u8>(p)
    if (c === 0x22) {
      stringFlags = flags
      return <isize>p
    }
    if (c === 0x5c) {
      flags |= ESCAPED
      p++
      if (p >= end) return -1
      const e = load<u8>(p)
      if (e === 0x75) {
        if (p + 4 >= end) return -1
        for (let i: usize = 1; i <= 4; i++) if (!isHex(load<u8>(p + i))) return -1
        p += 4
      } else if (
        e !== 0x22 &&
        e !== 0x5c &&
        e !== 0x2f &&
        e !== 0x62 &&
        e !== 0x66 &&
        e !== 0x6e &&
        e !== 0x72 &&
        e !== 0x74
      )
        return -1
    } else if (c < 0x20) return -1
    else if (c > 0x7f) flags |= WIDE
    p++
  }
  return -1 // not reached: the loop returns
}

function isHex(c: u8): bool {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66)
}

function isDigit(c: u8): bool {
  return c >= 0x30 && c <= 0x39
}

/** JSON's number grammar from p: the position after it, or -1. */
function scanNumber(p: usize, end: usize): isize {
  const negative = load<u8>(p) === 0x2d
  if (negative) p++
  if (p >= end) return -1
  let c = load<u8>(p)
  let value: f64 = 0
  let digits = 0
  if (c === 0x30) p++
  else if (c >= 0x31 && c <= 0x39) {
    while (p < end && isDigit((c = load<u8>(p)))) {
      value = value * 10 + <f64>(c - 0x30)
      digits++
      p++
    }
  } else return -1
  let simple = digits <= 15
  if (p < end && load<u8>(p) === 0x2e) {
    simple = false
    const from = ++p
    while (p < end && isDigit(load<u8>(p))) p++
    if (p === from) return -1
  }
  if (p < end && (load<u8>(p) | 0x20) === 0x65) {
    simple = false
    p++
    if (p < end && (load<u8>(p) === 0x2b || load<u8>(p) === 0x2d)) p++
    const from = p
    while (p < end && isDigit(load<u8>(p))) p++
    if (p === from) return -1
  }
  numberSimple = simple
  numberValue = negative ? -value : value
  return <isize>p
}

/** true, false or null from p: the position after it, or -1. */
function scanLiteral(p: usize, end: usize): isize {
  const c = load<u8>(p)
  if (c === 0x74 || c === 0x6e) {
    // true, null
    if (p + 4 > end) return -1
    const word = load<u32>(p)
    return word === 0x65757274 || word === 0x6c6c756e ? <isize>(p + 4) : -1
  }
  if (c === 0x66) {
    if (p + 5 > end) return -1
    return load<u32>(p + 1) === 0x65736c61 ? <isize>(p + 5) : -1
  }
  return -1
}

/**
 * Any JSON value from p, checked and passed over: the position after it, or -1. A wanted field's
 * (its cell, else -1) is recorded there; if it is an object or an array, JSON.parse decides.
 */
function skipValue(p: usize, end: usize, depth: i32, cell: isize): isize {
  if (p >= end) return -1
  const c = load<u8>(p)
  let q: isize
  let kind: u8
  if (c === 0x22) {
    q = scanString(p + 1, end)
    if (q < 0) return -1
    kind = STRING | stringFlags
    p++
  } else if (c === 0x2d || isDigit(c)) {
    q = scanNumber(p, end)
    if (q < 0) return -1
    kind = numberSimple ? NUMBER : NUMBER | NUMBER_TEXT
    if (cell >= 0) store<f64>(NUM + ((<usize>cell) << 3), numberValue)
  } else if (c === 0x7b || c === 0x5b) {
    return cell >= 0 ? -1 : skipContainer(p, end, depth, -1)
  } else {
    q = scanLiteral(p, end)
    if (q < 0) return -1
    kind = c === 0x6e ? NULL : c === 0x74 ? TRUE : FALSE
  }
  if (cell >= 0) {
    store<u8>(KIND + <usize>cell, kind)
    store<i32>(START + ((<usize>cell) << 2), <i32>(p - IN))
    store<i32>(END + ((<usize>cell) << 2), <i32>(<usize>q - IN))
  }
  // a string ends after its closing quote
  return c === 0x22 ? q + 1 : q
}

/**
 * An object or an array from its opening bracket at p: the position after it, or -1. With a
 * `row` (the line's own object) the wanted fields' values go into that row's cells.
 */
function skipContainer(p: usize, end: usize, depth: i32, row: isize): isize {
  if (depth >= MAX_DEPTH) return -1
  const object = load<u8>(p) === 0x7b
  const close: u8 = object ? 0x7d : 0x5d
  p = skipSpace(p + 1, end)
  if (p < end && load<u8>(p) === close) return <isize>(p + 1)
  while (true) {
    let field = -1
    if (object) {
      if (p >= end || load<u8>(p) !== 0x22) return -1
      const q = scanString(p + 1, end)
      if (q < 0) return -1
      if (row >= 0) {
        // an escaped name could spell a wanted one: JSON.parse decides
        if ((stringFlags & ESCAPED) !== 0) return -1
        field = fieldOf(p + 1, <usize>q)
      }
      p = skipSpace(<usize>q + 1, end)
      if (p >= end || load<u8>(p) !== 0x3a) return -1
      p = skipSpace(p + 1, end)
    }
    const next = skipValue(p, end, depth + 1, field < 0 ? -1 : row + <isize>field)
    if (next < 0) return -1
    p = skipSpace(<usize>next, end)
    if (p >= end) return -1
    const d = load<u8>(p)
    if (d === close) return <isize>(p + 1)
    if (d !== 0x2c) return -1
    p = skipSpace(p + 1, end)
  }
  return -1 // not reached: the loop returns
}

const POWERS_OF_TEN = memory.data<f64>([1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9])

/** 10 ** n for n in 0..9 (AssemblyScript's Math.pow is computed in software) */
function pow10(n: i32): f64 {
  return load<f64>(POWERS_OF_TEN + ((<usize>n) << 3))
}

const DAYS_IN_MONTH = memory.data<u8>([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])

function digits(p: usize, count: i32): f64 {
  let n: f64 = 0
  for (let i = 0; i < count; i++) {
    const c = <i32>load<u8>(p + <usize>i) - 48
    if (c < 0 || c > 9) return NaN
    n = n * 10 + <f64>c
  }
  return n
}

/**
 * `2026-01-01T00:00:00Z` or `2026-01-01T00:00:00.123Z` in epoch milliseconds, NaN if not that
 * form: fastIsoUtc of src/core/shadow/traffic.ts in bytes, which the tests hold this to.
 */
function isoUtc(s: usize, len: i32): f64 {
  if (
    len < 20 ||
    len > 30 ||
    load<u8>(s + <usize>len - 1) !== 90 ||
    load<u8>(s + 4) !== 45 ||
    load<u8>(s + 7) !== 45 ||
    load<u8>(s + 10) !== 84 ||
    load<u8>(s + 13) !== 58 ||
    load<u8>(s + 16) !== 58
  )
    return NaN
  const y = digits(s, 4)
  const mo = digits(s + 5, 2)
  const d = digits(s + 8, 2)
  const h = digits(s + 11, 2)
  const mi = digits(s + 14, 2)
  const sec = digits(s + 17, 2)
  let ms: f64 = 0
  if (len > 20) {
    if (load<u8>(s + 19) !== 46 || len === 21) return NaN
    const frac = digits(s + 20, len - 21)
    if (isNaN(frac)) return NaN
    ms = len - 21 >= 3 ? Math.floor(frac / pow10(len - 24)) : frac * pow10(24 - len)
  }
  // NaN fails every comparison, so a non-digit anywhere ends here
  if (isNaN(y) || !(mo >= 1 && mo <= 12 && h < 24 && mi < 60 && sec < 60 && d >= 1)) return NaN
  const yi = <i32>y
  const leap = yi % 4 === 0 && (yi % 100 !== 0 || yi % 400 === 0)
  const m = <i32>mo
  if (d > (m === 2 && leap ? 29 : <f64>load<u8>(DAYS_IN_MONTH + <usize>(m - 1)))) return NaN
  return ((daysFromCivil(y, mo, d) * 24 + h) * 60 + mi) * 60000 + sec * 1000 + ms
}

/** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
function daysFromCivil(y: f64, m: f64, d: f64): f64 {
  y -= m <= 2 ? 1 : 0
  const era = Math.floor(y / 400)
  const yoe = y - era * 400
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
}
