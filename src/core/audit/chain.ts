/**
 * The audit chain's arithmetic, shared by the writer (ledger) and the verifier: the canonical
 * form of a row and its keyed hash. Per tenant, row n stores
 *   hash = HMAC-SHA256(key[key_id], canonical(row n) || prev_hash)
 * with prev_hash of row 1 = 32 zero bytes. Changing the format breaks every chain: version it.
 */
import { createHash, createHmac } from 'node:crypto'
import type { Key } from '../config/secrets.js'

/** The audit HMAC key: here, not with the ledger, so that reading a key does not load the ledger. */
export const AUDIT_KEY_SPEC = { envName: 'AUDIT_HMAC_KEY', bytes: { min: 32 } } as const

export const GENESIS = Buffer.alloc(32)
export const CANONICAL_VERSION = 'shieldx.audit.v1'

export interface AuditRow {
  tenant_id: string
  seq: number
  transaction_id: string | null
  action: string
  amount: number
  balance_after: number
  reserved_after: number
  key_id: string
  /** Milliseconds precision: written from the database's now() truncated to ms. */
  created_at: Date
}

/**
 * JSON of a fixed-order array: unambiguous, and the same in every language that reads it.
 * ChainMessage (below) writes the same bytes for the verifier: a change here is a change there.
 */
export function canonical(row: AuditRow): string {
  return JSON.stringify([
    CANONICAL_VERSION,
    row.tenant_id,
    row.seq,
    row.transaction_id,
    row.action,
    row.amount,
    row.balance_after,
    row.reserved_after,
    row.key_id,
    isoString(row.created_at),
  ])
}

/** toISOString, remembered for the last time seen: the rows a transaction writes share one. */
export function isoString(d: Date): string {
  const t = d.getTime()
  if (t !== lastIsoTime) {
    lastIso = d.toISOString()
    lastIsoTime = t
  }
  return lastIso
}
let lastIsoTime = Number.NaN
let lastIso = ''

export function chainHash(key: Key, row: AuditRow, prevHash: Buffer): Buffer {
  let signer = signers.get(key)
  if (!signer) {
    signer = new ChainKey(key)
    signers.set(key, signer)
  }
  return signer.sign(canonical(row), prevHash)
}
/** Each key's prepared state, for the writer: a keyring's keys live as long as the process. */
const signers = new WeakMap<Key, ChainKey>()

// ---- the verifier's hot loop ----------------------------------------------------------------
// verify-chain checks every row ever written, so per row it avoids what chainHash() may afford
// once per write: strings, a Date, an array for JSON.stringify, and a new Hmac object. What it
// hashes is byte-for-byte what chainHash() hashes; ChainKey confirms every mismatch with
// chainHash()'s own createHmac before it counts.

/**
 * A stored row as the verifier reads it off the wire (PostgreSQL's binary format): text as UTF-8
 * bytes in `src`, integers decoded, created_at as epoch milliseconds. One object serves every
 * row; offsets point into `src`, whose bytes are only valid while the row is being checked.
 */
export interface WireRow {
  src: Buffer
  /** canonicalPrefix(tenant_id) */
  tenantPrefix: Buffer
  seq: number
  /** Offset of transaction_id's 16 bytes; -1 when it is null. */
  transactionId: number
  actionOffset: number
  /** -1 when null */
  actionLength: number
  amount: number
  balanceAfter: number
  reservedAfter: number
  keyIdOffset: number
  /** -1 when null */
  keyIdLength: number
  /** NaN when there is none (null). */
  createdAtMs: number
  prevHashOffset: number
  /** -1 when null */
  prevHashLength: number
  hashOffset: number
  /** -1 when null */
  hashLength: number
}

const NO_BYTES = Buffer.alloc(0)

/** A WireRow with every field unset (nulls as -1 lengths), in the one shape every reader uses. */
export function emptyWireRow(src: Buffer = NO_BYTES): WireRow {
  return {
    src,
    tenantPrefix: NO_BYTES,
    seq: 0,
    transactionId: -1,
    actionOffset: 0,
    actionLength: -1,
    amount: 0,
    balanceAfter: 0,
    reservedAfter: 0,
    keyIdOffset: 0,
    keyIdLength: -1,
    createdAtMs: Number.NaN,
    prevHashOffset: 0,
    prevHashLength: -1,
    hashOffset: 0,
    hashLength: -1,
  }
}

/** Whether src[offset, offset + length) holds exactly the bytes of b (length -1: null, never equal). */
export function bytesEqual(src: Buffer, offset: number, length: number, b: Buffer): boolean {
  if (length !== b.length) return false
  for (let i = 0; i < length; i++) if (src[offset + i] !== b[i]) return false
  return true
}

/**
 * The ChainKey a row's key_id names (undefined when we do not hold it, or the key_id is null),
 * each prepared once. Rows come in runs signed by one key: the last key_id's bytes are kept, so
 * most rows cost one byte comparison and no string.
 */
export class ChainKeys {
  private readonly prepared = new Map<string, ChainKey | undefined>()
  private lastKid: Buffer | null = null
  private last: ChainKey | undefined

  constructor(private readonly keys: ReadonlyMap<string, Key>) {}

  for(src: Buffer, offset: number, length: number): ChainKey | undefined {
    if (length < 0) return undefined
    if (this.lastKid !== null && bytesEqual(src, offset, length, this.lastKid)) return this.last
    const kid = src.toString('utf8', offset, offset + length)
    if (!this.prepared.has(kid)) {
      const key = this.keys.get(kid)
      this.prepared.set(kid, key ? new ChainKey(key) : undefined)
    }
    this.lastKid = Buffer.from(src.subarray(offset, offset + length))
    this.last = this.prepared.get(kid)
    return this.last
  }
}

/** What canonical() writes before a row's seq: `["shieldx.audit.v1","<tenant>",`. */
export function canonicalPrefix(tenantId: string): Buffer {
  const head = JSON.stringify([CANONICAL_VERSION, tenantId])
  return Buffer.from(`${head.slice(0, -1)},`)
}

const HEX = Buffer.from('0123456789abcdef', 'latin1')
const COMMA = 0x2c
const QUOTE = 0x22
/** 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the years toISOString writes with 4 digits. */
const ISO_MIN_MS = -62167219200000
const ISO_MAX_MS = 253402300799999

/**
 * The bytes chainHash() feeds the HMAC, canonical(row) || prev_hash, written from a WireRow into
 * one reused buffer. For every row, write() produces exactly
 * `Buffer.concat([Buffer.from(canonical(row)), prev_hash])`, where the row's fields are what pg
 * would have decoded (numbers as Number(text), created_at as a Date, text as UTF-8).
 */
export class ChainMessage {
  /** The same bytes, for ChainKey to read as words. */
  view: DataView
  length = 0
  /** The tenant prefix at the start of `bytes`. */
  private prefix: Buffer | null = null

  /** `bytes`: where to write (HmacLanes gives each lane's); it grows when a row needs more. */
  constructor(public bytes: Buffer = Buffer.alloc(1024)) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length)
  }

  /** The bytes write() needs for the row, padding room included: at most this, often less. */
  static room(row: WireRow): number {
    // Each byte of text can become at most 6 (\u00XX); numbers are at most 24 bytes; then room
    // for the hash's padding (ChainKey pads in place).
    return (
      row.tenantPrefix.length +
      6 * (Math.max(row.actionLength, 0) + Math.max(row.keyIdLength, 0)) +
      Math.max(row.prevHashLength, 0) +
      256
    )
  }

  /**
   * Returns false when chainHash() could not have hashed the row: no prev_hash, or no created_at
   * a Date can hold (null, infinity, beyond ±275,760 years). Not a row the ledger signed.
   */
  write(row: WireRow): boolean {
    const { src, tenantPrefix } = row
    // chainHash() cannot hash a null prev_hash, nor canonical() a missing created_at.
    if (row.prevHashLength < 0 || Number.isNaN(row.createdAtMs)) return false
    const need = ChainMessage.room(row)
    if (this.bytes.length < need) {
      this.bytes = Buffer.alloc(2 * need)
      this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.length)
      this.prefix = null
    }
    const b = this.bytes
    // Byte loops rather than Buffer#copy: for a few dozen bytes the call costs more than the copy.
    // The tenant's prefix stays in place from the tenant's previous row.
    if (tenantPrefix !== this.prefix) {
      for (let i = 0; i < tenantPrefix.length; i++) b[i] = tenantPrefix[i]!
      this.prefix = tenantPrefix
    }
    let p = tenantPrefix.length
    p = writeInteger(b, p, row.seq)
    b[p++] = COMMA
    p = row.transactionId < 0 ? writeNull(b, p) : writeUuid(b, p, src, row.transactionId)
    b[p++] = COMMA
    p = writeJsonText(b, p, src, row.actionOffset, row.actionLength)
    b[p++] = COMMA
    p = writeInteger(b, p, row.amount)
    b[p++] = COMMA
    p = writeInteger(b, p, row.balanceAfter)
    b[p++] = COMMA
    p = writeInteger(b, p, row.reservedAfter)
    b[p++] = COMMA
    p = writeJsonText(b, p, src, row.keyIdOffset, row.keyIdLength)
    b[p++] = COMMA
    p = writeIsoString(b, p, row.createdAtMs)
    if (p < 0) return false
    b[p++] = 0x5d // ]
    for (let i = row.prevHashOffset, end = i + row.prevHashLength; i < end; i++) b[p++] = src[i]!
    this.length = p
    return true
  }
}

function writeNull(b: Buffer, p: number): number {
  b[p] = 0x6e // n
  b[p + 1] = 0x75 // u
  b[p + 2] = 0x6c // l
  b[p + 3] = 0x6c // l
  return p + 4
}

/** JSON.stringify(n) for the integers an int8 column holds. */
function writeInteger(b: Buffer, p: number, n: number): number {
  if (n >= 0 && n < 0x80000000) return writeDigits(b, p, n | 0)
  if (!(n <= Number.MAX_SAFE_INTEGER && n >= -Number.MAX_SAFE_INTEGER))
    return p + b.write(String(n), p, 'latin1')
  if (n < 0) {
    b[p++] = 0x2d // -
    n = -n
    if (n < 0x80000000) return writeDigits(b, p, n | 0)
  }
  // Up to 2^53: nine digits at a time, each part small enough for integer arithmetic.
  const high = Math.floor(n / 1e9)
  p = writeDigits(b, p, high | 0)
  const low = (n - high * 1e9) | 0
  for (let i = 8, rest = low; i >= 0; i--) {
    b[p + i] = 0x30 + (rest % 10)
    rest = (rest / 10) | 0
  }
  return p + 9
}

/** The decimal digits of 0 <= n < 2^31 (an int32, so % and / stay integer operations). */
function writeDigits(b: Buffer, p: number, n: number): number {
  if (n < 10) {
    b[p] = 0x30 + n
    return p + 1
  }
  let width = 2
  while (width < 10 && n >= POW10[width]!) width++
  for (let i = p + width - 1; i >= p; i--) {
    b[i] = 0x30 + (n % 10)
    n = (n / 10) | 0
  }
  return p + width
}
const POW10 = new Int32Array([1, 10, 100, 1000, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9])

/** A uuid as PostgreSQL prints it, quoted: lower-case hex in 8-4-4-4-12 groups. */
function writeUuid(b: Buffer, p: number, src: Buffer, o: number): number {
  b[p++] = QUOTE
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) b[p++] = 0x2d
    const v = src[o + i]!
    b[p++] = HEX[v >> 4]!
    b[p++] = HEX[v & 15]!
  }
  b[p++] = QUOTE
  return p
}

/**
 * JSON.stringify(text) as UTF-8, for text given as its UTF-8 bytes: printable ASCII is copied as
 * is; anything else (quotes, backslashes, control characters, non-ASCII) goes through
 * JSON.stringify of the decoded string, exactly as canonical() would treat it.
 */
function writeJsonText(b: Buffer, p: number, src: Buffer, o: number, len: number): number {
  if (len < 0) return writeNull(b, p)
  const end = o + len
  for (let i = o; i < end; i++) {
    const c = src[i]!
    if (c < 0x20 || c > 0x7e || c === QUOTE || c === 0x5c) {
      return p + b.write(JSON.stringify(src.toString('utf8', o, end)), p, 'utf8')
    }
  }
  b[p++] = QUOTE
  for (let i = o; i < end; i++) b[p++] = src[i]!
  b[p++] = QUOTE
  return p
}

/** JSON.stringify(new Date(ms).toISOString()), or -1 when that throws. */
function writeIsoString(b: Buffer, p: number, ms: number): number {
  if (!(ms >= ISO_MIN_MS && ms <= ISO_MAX_MS)) {
    const d = new Date(ms)
    if (Number.isNaN(d.getTime())) return -1
    return p + b.write(`"${d.toISOString()}"`, p, 'latin1')
  }
  const minute = Math.floor(ms / 60000)
  if (minute !== isoMinute) {
    isoMinute = minute
    writeIsoMinute(ISO_MINUTE, minute)
  }
  for (let i = 0; i < ISO_MINUTE.length; i++) b[p++] = ISO_MINUTE[i]!
  const rest = (ms - minute * 60000) | 0
  const second = (rest / 1000) | 0
  const milli = rest - second * 1000
  b[p++] = 0x30 + ((second / 10) | 0)
  b[p++] = 0x30 + (second % 10)
  b[p++] = 0x2e // .
  b[p++] = 0x30 + ((milli / 100) | 0)
  b[p++] = 0x30 + (((milli / 10) | 0) % 10)
  b[p++] = 0x30 + (milli % 10)
  b[p++] = 0x5a // Z
  b[p++] = QUOTE
  return p
}

/** `"YYYY-MM-DDTHH:MM:` of the last minute written: rows come in time order, minutes repeat. */
const ISO_MINUTE = Buffer.alloc(18)
let isoMinute = Number.NaN

/**
 * Minutes since 1970-01-01 to `"YYYY-MM-DDTHH:MM:` in the proleptic Gregorian calendar Date uses
 * (H. Hinnant's civil_from_days), for years 0 to 9999.
 */
function writeIsoMinute(b: Buffer, minutes: number): void {
  const days = Math.floor(minutes / 1440)
  const ofDay = minutes - days * 1440
  const z = days + 719468
  const era = Math.floor(z / 146097)
  const doe = z - era * 146097
  const yoe = Math.floor(
    (doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365,
  )
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100))
  const mp = Math.floor((5 * doy + 2) / 153)
  const day = doy - Math.floor((153 * mp + 2) / 5) + 1
  const month = mp < 10 ? mp + 3 : mp - 9
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0)
  b[0] = QUOTE
  digits(b, 1, year, 4)
  b[5] = 0x2d // -
  digits(b, 6, month, 2)
  b[8] = 0x2d
  digits(b, 9, day, 2)
  b[11] = 0x54 // T
  digits(b, 12, Math.floor(ofDay / 60), 2)
  b[14] = 0x3a // :
  digits(b, 15, ofDay % 60, 2)
  b[17] = 0x3a
}

function digits(b: Buffer, p: number, n: number, width: number): number {
  for (let i = width - 1; i >= 0; i--) {
    const d = n % 10
    b[p + i] = 0x30 + d
    n = (n - d) / 10
  }
  return p + width
}

// ---- HMAC-SHA256 with the key prepared once ----------------------------------------------------

/**
 * HMAC-SHA256 under one key, its two padded key blocks hashed once (RFC 2104:
 * HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m))), so that a row costs the four SHA-256 blocks
 * its message needs and nothing else.
 *
 * Written by hand, on purpose: on Node 20 (OpenSSL 3.0) every createHmac() fetches the digest,
 * hashes both pad blocks and builds two objects, about 2 µs a row and the largest cost of
 * verify-chain; node:crypto cannot reuse a keyed state and no dependency of ours offers one.
 * It is checked against createHmac when prepared (and steps aside if it ever disagreed), and
 * signs() confirms every mismatch with createHmac, so a break is only ever reported on
 * node:crypto's word.
 */
export class ChainKey {
  /** SHA-256's state after the key's inner and outer pad block (HmacLanes copies them too). */
  readonly inner = new Int32Array(8)
  readonly outer = new Int32Array(8)
  /** Whether the hand-written HMAC agreed with createHmac on every self-test length. */
  readonly fast: boolean

  constructor(readonly key: Key) {
    const k = key.bytes.length > 64 ? createHash('sha256').update(key.bytes).digest() : key.bytes
    const pad = Buffer.alloc(64)
    const view = new DataView(pad.buffer, pad.byteOffset, 64)
    for (let i = 0; i < 64; i++) pad[i] = (k[i] ?? 0) ^ 0x36
    this.inner.set(SHA256_IV)
    compress(this.inner, view, 0)
    for (let i = 0; i < 64; i++) pad[i] = (k[i] ?? 0) ^ 0x5c
    this.outer.set(SHA256_IV)
    compress(this.outer, view, 0)
    this.fast = this.selfTest()
  }

  /** Whether HMAC(key, message) is the hash stored at src[hashOffset, +hashLength). */
  signs(message: ChainMessage, src: Buffer, hashOffset: number, hashLength: number): boolean {
    if (hashLength !== 32) return false
    if (this.fast) {
      const h = this.digest(message.bytes, message.view, message.length)
      let same = true
      for (let i = 0; i < 8 && same; i++) same = h[i] === readInt32(src, hashOffset + 4 * i)
      if (same) return true
    }
    return createHmac('sha256', this.key.bytes)
      .update(message.bytes.subarray(0, message.length))
      .digest()
      .equals(src.subarray(hashOffset, hashOffset + 32))
  }

  /**
   * HMAC(key, text || suffix), for the writer: the same bytes as createHmac's, at about half its
   * cost per row (measured 1.7 against 3.3 µs). Messages longer than the self-test covers, or a
   * key whose self-test failed, go to createHmac.
   */
  sign(text: string, suffix: Buffer): Buffer {
    const room = 3 * text.length + suffix.length + 72
    if (this.fast && room <= SIGN.length) {
      const length = SIGN.write(text, 0, 'utf8')
      suffix.copy(SIGN, length)
      const h = this.digest(SIGN, SIGN_VIEW, length + suffix.length)
      const out = Buffer.allocUnsafe(32)
      for (let i = 0; i < 8; i++) out.writeInt32BE(h[i]!, 4 * i)
      return out
    }
    return createHmac('sha256', this.key.bytes).update(text).update(suffix).digest()
  }

  /**
   * The digest of m[0, length), as eight big-endian words in a buffer reused per call. Pads in
   * place: m must have 72 bytes to spare after `length` (ChainMessage keeps them).
   */
  private digest(m: Buffer, view: DataView, length: number): Int32Array {
    const h = DIGEST
    h.set(this.inner)
    // Padding: 0x80, zeros, then the length in bits (after the 64-byte inner pad block) as a
    // 64-bit big-endian number; messages stay far below 512 MB, so its high word is 0.
    const blocks = Math.floor((length + 8) / 64) + 1
    const end = blocks * 64
    m[length] = 0x80
    for (let i = length + 1; i < end - 4; i++) m[i] = 0
    const bits = (length + 64) * 8
    m[end - 4] = bits >>> 24
    m[end - 3] = (bits >>> 16) & 0xff
    m[end - 2] = (bits >>> 8) & 0xff
    m[end - 1] = bits & 0xff
    for (let o = 0; o < end; o += 64) compress(h, view, o)
    // Outer hash: the 32-byte inner digest, padded, after the 64-byte outer pad block.
    for (let i = 0; i < 8; i++) OUTER_VIEW.setInt32(4 * i, h[i]!)
    h.set(this.outer)
    compress(h, OUTER_VIEW, 0)
    return h
  }

  private selfTest(): boolean {
    const m = Buffer.alloc(SIGN.length)
    const view = new DataView(m.buffer, m.byteOffset, m.length)
    for (const len of SELF_TEST_LENGTHS) {
      for (let i = 0; i < m.length; i++) m[i] = (i * 131 + len) & 0xff
      const expected = createHmac('sha256', this.key.bytes).update(m.subarray(0, len)).digest()
      const h = this.digest(m, view, len)
      for (let i = 0; i < 8; i++) if (h[i] !== readInt32(expected, 4 * i)) return false
    }
    return true
  }
}

function readInt32(b: Uint8Array, o: number): number {
  return (b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!
}

/**
 * Message lengths around every block boundary the padding can fall on, up to the longest message
 * sign() takes (SIGN less the padding's room): all of a ledger row's, with a 128-character tenant.
 */
const SELF_TEST_LENGTHS = [
  0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 183, 184, 200, 256, 300, 311, 312, 375, 376, 439, 440,
  503, 504, 567, 568, 631, 632, 695, 696, 760,
]
/** sign()'s message, padded in place: one per thread. */
const SIGN = Buffer.alloc(832)
const SIGN_VIEW = new DataView(SIGN.buffer, SIGN.byteOffset, SIGN.length)

const SHA256_IV = new Int32Array([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
])
/** The digest, and the outer hash's one block (the inner digest, then fixed padding): one per thread. */
const DIGEST = new Int32Array(8)
const OUTER = Buffer.alloc(64)
OUTER[32] = 0x80
OUTER.writeUInt16BE((64 + 32) * 8, 62) // its length in bits, after the 64-byte outer pad block
const OUTER_VIEW = new DataView(OUTER.buffer, OUTER.byteOffset, 64)

/**
 * One SHA-256 compression (FIPS 180-4, 6.2.2) of the 64-byte block at v[o] into state h, written
 * out round by round: each round names the working variables in its own order instead of shifting
 * them, and the message schedule lives in sixteen locals w0..w15 (W[i] for i >= 16 overwrites
 * w[i % 16]), read as big-endian words through a DataView. A loop over arrays K and W runs about
 * a quarter slower. Round i, over the names it gives:
 *   h += Σ1(e) + Ch(e, f, g) + K[i] + W[i];  d += h;  h += Σ0(a) + Maj(a, b, c)
 * with the constants K[i] inline. Checked against createHmac (ChainKey.selfTest).
 */
// prettier-ignore
function compress(h: Int32Array, v: DataView, o: number): void {
  let a = h[0]!, b = h[1]!, c = h[2]!, d = h[3]!, e = h[4]!, f = h[5]!, g = h[6]!, hh = h[7]!
  let w0 = v.getInt32(o + 0), w1 = v.getInt32(o + 4), w2 = v.getInt32(o + 8), w3 = v.getInt32(o + 12)
  let w4 = v.getInt32(o + 16), w5 = v.getInt32(o + 20), w6 = v.getInt32(o + 24), w7 = v.getInt32(o + 28)
  let w8 = v.getInt32(o + 32), w9 = v.getInt32(o + 36), w10 = v.getInt32(o + 40), w11 = v.getInt32(o + 44)
  let w12 = v.getInt32(o + 48), w13 = v.getInt32(o + 52), w14 = v.getInt32(o + 56), w15 = v.getInt32(o + 60)
  hh = (hh + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + (g ^ (e & (f ^ g))) + 0x428a2f98 + w0) | 0; d = (d + hh) | 0
  hh = (hh + (((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) | (c & (a | b)))) | 0
  g = (g + (((d >>> 6) | (d << 26)) ^ ((d >>> 11) | (d << 21)) ^ ((d >>> 25) | (d << 7))) + (f ^ (d & (e ^ f))) + 0x71374491 + w1) | 0; c = (c + g) | 0
  g = (g + (((hh >>> 2) | (hh << 30)) ^ ((hh >>> 13) | (hh << 19)) ^ ((hh >>> 22) | (hh << 10))) + ((hh & a) | (b & (hh | a)))) | 0
  f = (f + (((c >>> 6) | (c << 26)) ^ ((c >>> 11) | (c << 21)) ^ ((c >>> 25) | (c << 7))) + (e ^ (c & (d ^ e))) + 0xb5c0fbcf + w2) | 0; b = (b + f) | 0
  f = (f + (((g >>> 2) | (g << 30)) ^ ((g >>> 13) | (g << 19)) ^ ((g >>> 22) | (g << 10))) + ((g & hh) | (a & (g | hh)))) | 0
  e = (e + (((b >>> 6) | (b << 26)) ^ ((b >>> 11) | (b << 21)) ^ ((b >>> 25) | (b << 7))) + (d ^ (b & (c ^ d))) + 0xe9b5dba5 + w3) | 0; a = (a + e) | 0
  e = (e + (((f >>> 2) | (f << 30)) ^ ((f >>> 13) | (f << 19)) ^ ((f >>> 22) | (f << 10))) + ((f & g) | (hh & (f | g)))) | 0
  d = (d + (((a >>> 6) | (a << 26)) ^ ((a >>> 11) | (a << 21)) ^ ((a >>> 25) | (a << 7))) + (c ^ (a & (b ^ c))) + 0x3956c25b + w4) | 0; hh = (hh + d) | 0
  d = (d + (((e >>> 2) | (e << 30)) ^ ((e >>> 13) | (e << 19)) ^ ((e >>> 22) | (e << 10))) + ((e & f) | (g & (e | f)))) | 0
  c = (c + (((hh >>> 6) | (hh << 26)) ^ ((hh >>> 11) | (hh << 21)) ^ ((hh >>> 25) | (hh << 7))) + (b ^ (hh & (a ^ b))) + 0x59f111f1 + w5) | 0; g = (g + c) | 0
  c = (c + (((d >>> 2) | (d << 30)) ^ ((d >>> 13) | (d << 19)) ^ ((d >>> 22) | (d << 10))) + ((d & e) | (f & (d | e)))) | 0
  b = (b + (((g >>> 6) | (g << 26)) ^ ((g >>> 11) | (g << 21)) ^ ((g >>> 25) | (g << 7))) + (a ^ (g & (hh ^ a))) + 0x923f82a4 + w6) | 0; f = (f + b) | 0
  b = (b + (((c >>> 2) | (c << 30)) ^ ((c >>> 13) | (c << 19)) ^ ((c >>> 22) | (c << 10))) + ((c & d) | (e & (c | d)))) | 0
  a = (a + (((f >>> 6) | (f << 26)) ^ ((f >>> 11) | (f << 21)) ^ ((f >>> 25) | (f << 7))) + (hh ^ (f & (g ^ hh))) + 0xab1c5ed5 + w7) | 0; e = (e + a) | 0
  a = (a + (((b >>> 2) | (b << 30)) ^ ((b >>> 13) | (b << 19)) ^ ((b >>> 22) | (b << 10))) + ((b & c) | (d & (b | c)))) | 0
  hh = (hh + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + (g ^ (e & (f ^ g))) + 0xd807aa98 + w8) | 0; d = (d + hh) | 0
  hh = (hh + (((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) | (c & (a | b)))) | 0
  g = (g + (((d >>> 6) | (d << 26)) ^ ((d >>> 11) | (d << 21)) ^ ((d >>> 25) | (d << 7))) + (f ^ (d & (e ^ f))) + 0x12835b01 + w9) | 0; c = (c + g) | 0
  g = (g + (((hh >>> 2) | (hh << 30)) ^ ((hh >>> 13) | (hh << 19)) ^ ((hh >>> 22) | (hh << 10))) + ((hh & a) | (b & (hh | a)))) | 0
  f = (f + (((c >>> 6) | (c << 26)) ^ ((c >>> 11) | (c << 21)) ^ ((c >>> 25) | (c << 7))) + (e ^ (c & (d ^ e))) + 0x243185be + w10) | 0; b = (b + f) | 0
  f = (f + (((g >>> 2) | (g << 30)) ^ ((g >>> 13) | (g << 19)) ^ ((g >>> 22) | (g << 10))) + ((g & hh) | (a & (g | hh)))) | 0
  e = (e + (((b >>> 6) | (b << 26)) ^ ((b >>> 11) | (b << 21)) ^ ((b >>> 25) | (b << 7))) + (d ^ (b & (c ^ d))) + 0x550c7dc3 + w11) | 0; a = (a + e) | 0
  e = (e + (((f >>> 2) | (f << 30)) ^ ((f >>> 13) | (f << 19)) ^ ((f >>> 22) | (f << 10))) + ((f & g) | (hh & (f | g)))) | 0
  d = (d + (((a >>> 6) | (a << 26)) ^ ((a >>> 11) | (a << 21)) ^ ((a >>> 25) | (a << 7))) + (c ^ (a & (b ^ c))) + 0x72be5d74 + w12) | 0; hh = (hh + d) | 0
  d = (d + (((e >>> 2) | (e << 30)) ^ ((e >>> 13) | (e << 19)) ^ ((e >>> 22) | (e << 10))) + ((e & f) | (g & (e | f)))) | 0
  c = (c + (((hh >>> 6) | (hh << 26)) ^ ((hh >>> 11) | (hh << 21)) ^ ((hh >>> 25) | (hh << 7))) + (b ^ (hh & (a ^ b))) + 0x80deb1fe + w13) | 0; g = (g + c) | 0
  c = (c + (((d >>> 2) | (d << 30)) ^ ((d >>> 13) | (d << 19)) ^ ((d >>> 22) | (d << 10))) + ((d & e) | (f & (d | e)))) | 0
  b = (b + (((g >>> 6) | (g << 26)) ^ ((g >>> 11) | (g << 21)) ^ ((g >>> 25) | (g << 7))) + (a ^ (g & (hh ^ a))) + 0x9bdc06a7 + w14) | 0; f = (f + b) | 0
  b = (b + (((c >>> 2) | (c << 30)) ^ ((c >>> 13) | (c << 19)) ^ ((c >>> 22) | (c << 10))) + ((c & d) | (e & (c | d)))) | 0
  a = (a + (((f >>> 6) | (f << 26)) ^ ((f >>> 11) | (f << 21)) ^ ((f >>> 25) | (f << 7))) + (hh ^ (f & (g ^ hh))) + 0xc19bf174 + w15) | 0; e = (e + a) | 0
  a = (a + (((b >>> 2) | (b << 30)) ^ ((b >>> 13) | (b << 19)) ^ ((b >>> 22) | (b << 10))) + ((b & c) | (d & (b | c)))) | 0
  w0 = (w0 + (((w1 >>> 7) | (w1 << 25)) ^ ((w1 >>> 18) | (w1 << 14)) ^ (w1 >>> 3)) + w9 + (((w14 >>> 17) | (w14 << 15)) ^ ((w14 >>> 19) | (w14 << 13)) ^ (w14 >>> 10))) | 0
  hh = (hh + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + (g ^ (e & (f ^ g))) + 0xe49b69c1 + w0) | 0; d = (d + hh) | 0
  hh = (hh + (((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) | (c & (a | b)))) | 0
  w1 = (w1 + (((w2 >>> 7) | (w2 << 25)) ^ ((w2 >>> 18) | (w2 << 14)) ^ (w2 >>> 3)) + w10 + (((w15 >>> 17) | (w15 << 15)) ^ ((w15 >>> 19) | (w15 << 13)) ^ (w15 >>> 10))) | 0
  g = (g + (((d >>> 6) | (d << 26)) ^ ((d >>> 11) | (d << 21)) ^ ((d >>> 25) | (d << 7))) + (f ^ (d & (e ^ f))) + 0xefbe4786 + w1) | 0; c = (c + g) | 0
  g = (g + (((hh >>> 2) | (hh << 30)) ^ ((hh >>> 13) | (hh << 19)) ^ ((hh >>> 22) | (hh << 10))) + ((hh & a) | (b & (hh | a)))) | 0
  w2 = (w2 + (((w3 >>> 7) | (w3 << 25)) ^ ((w3 >>> 18) | (w3 << 14)) ^ (w3 >>> 3)) + w11 + (((w0 >>> 17) | (w0 << 15)) ^ ((w0 >>> 19) | (w0 << 13)) ^ (w0 >>> 10))) | 0
  f = (f + (((c >>> 6) | (c << 26)) ^ ((c >>> 11) | (c << 21)) ^ ((c >>> 25) | (c << 7))) + (e ^ (c & (d ^ e))) + 0x0fc19dc6 + w2) | 0; b = (b + f) | 0
  f = (f + (((g >>> 2) | (g << 30)) ^ ((g >>> 13) | (g << 19)) ^ ((g >>> 22) | (g << 10))) + ((g & hh) | (a & (g | hh)))) | 0
  w3 = (w3 + (((w4 >>> 7) | (w4 << 25)) ^ ((w4 >>> 18) | (w4 << 14)) ^ (w4 >>> 3)) + w12 + (((w1 >>> 17) | (w1 << 15)) ^ ((w1 >>> 19) | (w1 << 13)) ^ (w1 >>> 10))) | 0
  e = (e + (((b >>> 6) | (b << 26)) ^ ((b >>> 11) | (b << 21)) ^ ((b >>> 25) | (b << 7))) + (d ^ (b & (c ^ d))) + 0x240ca1cc + w3) | 0; a = (a + e) | 0
  e = (e + (((f >>> 2) | (f << 30)) ^ ((f >>> 13) | (f << 19)) ^ ((f >>> 22) | (f << 10))) + ((f & g) | (hh & (f | g)))) | 0
  w4 = (w4 + (((w5 >>> 7) | (w5 << 25)) ^ ((w5 >>> 18) | (w5 << 14)) ^ (w5 >>> 3)) + w13 + (((w2 >>> 17) | (w2 << 15)) ^ ((w2 >>> 19) | (w2 << 13)) ^ (w2 >>> 10))) | 0
  d = (d + (((a >>> 6) | (a << 26)) ^ ((a >>> 11) | (a << 21)) ^ ((a >>> 25) | (a << 7))) + (c ^ (a & (b ^ c))) + 0x2de92c6f + w4) | 0; hh = (hh + d) | 0
  d = (d + (((e >>> 2) | (e << 30)) ^ ((e >>> 13) | (e << 19)) ^ ((e >>> 22) | (e << 10))) + ((e & f) | (g & (e | f)))) | 0
  w5 = (w5 + (((w6 >>> 7) | (w6 << 25)) ^ ((w6 >>> 18) | (w6 << 14)) ^ (w6 >>> 3)) + w14 + (((w3 >>> 17) | (w3 << 15)) ^ ((w3 >>> 19) | (w3 << 13)) ^ (w3 >>> 10))) | 0
  c = (c + (((hh >>> 6) | (hh << 26)) ^ ((hh >>> 11) | (hh << 21)) ^ ((hh >>> 25) | (hh << 7))) + (b ^ (hh & (a ^ b))) + 0x4a7484aa + w5) | 0; g = (g + c) | 0
  c = (c + (((d >>> 2) | (d << 30)) ^ ((d >>> 13) | (d << 19)) ^ ((d >>> 22) | (d << 10))) + ((d & e) | (f & (d | e)))) | 0
  w6 = (w6 + (((w7 >>> 7) | (w7 << 25)) ^ ((w7 >>> 18) | (w7 << 14)) ^ (w7 >>> 3)) + w15 + (((w4 >>> 17) | (w4 << 15)) ^ ((w4 >>> 19) | (w4 << 13)) ^ (w4 >>> 10))) | 0
  b = (b + (((g >>> 6) | (g << 26)) ^ ((g >>> 11) | (g << 21)) ^ ((g >>> 25) | (g << 7))) + (a ^ (g & (hh ^ a))) + 0x5cb0a9dc + w6) | 0; f = (f + b) | 0
  b = (b + (((c >>> 2) | (c << 30)) ^ ((c >>> 13) | (c << 19)) ^ ((c >>> 22) | (c << 10))) + ((c & d) | (e & (c | d)))) | 0
  w7 = (w7 + (((w8 >>> 7) | (w8 << 25)) ^ ((w8 >>> 18) | (w8 << 14)) ^ (w8 >>> 3)) + w0 + (((w5 >>> 17) | (w5 << 15)) ^ ((w5 >>> 19) | (w5 << 13)) ^ (w5 >>> 10))) | 0
  a = (a + (((f >>> 6) | (f << 26)) ^ ((f >>> 11) | (f << 21)) ^ ((f >>> 25) | (f << 7))) + (hh ^ (f & (g ^ hh))) + 0x76f988da + w7) | 0; e = (e + a) | 0
  a = (a + (((b >>> 2) | (b << 30)) ^ ((b >>> 13) | (b << 19)) ^ ((b >>> 22) | (b << 10))) + ((b & c) | (d & (b | c)))) | 0
  w8 = (w8 + (((w9 >>> 7) | (w9 << 25)) ^ ((w9 >>> 18) | (w9 << 14)) ^ (w9 >>> 3)) + w1 + (((w6 >>> 17) | (w6 << 15)) ^ ((w6 >>> 19) | (w6 << 13)) ^ (w6 >>> 10))) | 0
  hh = (hh + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + (g ^ (e & (f ^ g))) + 0x983e5152 + w8) | 0; d = (d + hh) | 0
  hh = (hh + (((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) | (c & (a | b)))) | 0
  w9 = (w9 + (((w10 >>> 7) | (w10 << 25)) ^ ((w10 >>> 18) | (w10 << 14)) ^ (w10 >>> 3)) + w2 + (((w7 >>> 17) | (w7 << 15)) ^ ((w7 >>> 19) | (w7 << 13)) ^ (w7 >>> 10))) | 0
  g = (g + (((d >>> 6) | (d << 26)) ^ ((d >>> 11) | (d << 21)) ^ ((d >>> 25) | (d << 7))) + (f ^ (d & (e ^ f))) + 0xa831c66d + w9) | 0; c = (c + g) | 0
  g = (g + (((hh >>> 2) | (hh << 30)) ^ ((hh >>> 13) | (hh << 19)) ^ ((hh >>> 22) | (hh << 10))) + ((hh & a) | (b & (hh | a)))) | 0
  w10 = (w10 + (((w11 >>> 7) | (w11 << 25)) ^ ((w11 >>> 18) | (w11 << 14)) ^ (w11 >>> 3)) + w3 + (((w8 >>> 17) | (w8 << 15)) ^ ((w8 >>> 19) | (w8 << 13)) ^ (w8 >>> 10))) | 0
  f = (f + (((c >>> 6) | (c << 26)) ^ ((c >>> 11) | (c << 21)) ^ ((c >>> 25) | (c << 7))) + (e ^ (c & (d ^ e))) + 0xb00327c8 + w10) | 0; b = (b + f) | 0
  f = (f + (((g >>> 2) | (g << 30)) ^ ((g >>> 13) | (g << 19)) ^ ((g >>> 22) | (g << 10))) + ((g & hh) | (a & (g | hh)))) | 0
  w11 = (w11 + (((w12 >>> 7) | (w12 << 25)) ^ ((w12 >>> 18) | (w12 << 14)) ^ (w12 >>> 3)) + w4 + (((w9 >>> 17) | (w9 << 15)) ^ ((w9 >>> 19) | (w9 << 13)) ^ (w9 >>> 10))) | 0
  e = (e + (((b >>> 6) | (b << 26)) ^ ((b >>> 11) | (b << 21)) ^ ((b >>> 25) | (b << 7))) + (d ^ (b & (c ^ d))) + 0xbf597fc7 + w11) | 0; a = (a + e) | 0
  e = (e + (((f >>> 2) | (f << 30)) ^ ((f >>> 13) | (f << 19)) ^ ((f >>> 22) | (f << 10))) + ((f & g) | (hh & (f | g)))) | 0
  w12 = (w12 + (((w13 >>> 7) | (w13 << 25)) ^ ((w13 >>> 18) | (w13 << 14)) ^ (w13 >>> 3)) + w5 + (((w10 >>> 17) | (w10 << 15)) ^ ((w10 >>> 19) | (w10 << 13)) ^ (w10 >>> 10))) | 0
  d = (d + (((a >>> 6) | (a << 26)) ^ ((a >>> 11) | (a << 21)) ^ ((a >>> 25) | (a << 7))) + (c ^ (a & (b ^ c))) + 0xc6e00bf3 + w12) | 0; hh = (hh + d) | 0
  d = (d + (((e >>> 2) | (e << 30)) ^ ((e >>> 13) | (e << 19)) ^ ((e >>> 22) | (e << 10))) + ((e & f) | (g & (e | f)))) | 0
  w13 = (w13 + (((w14 >>> 7) | (w14 << 25)) ^ ((w14 >>> 18) | (w14 << 14)) ^ (w14 >>> 3)) + w6 + (((w11 >>> 17) | (w11 << 15)) ^ ((w11 >>> 19) | (w11 << 13)) ^ (w11 >>> 10))) | 0
  c = (c + (((hh >>> 6) | (hh << 26)) ^ ((hh >>> 11) | (hh << 21)) ^ ((hh >>> 25) | (hh << 7))) + (b ^ (hh & (a ^ b))) + 0xd5a79147 + w13) | 0; g = (g + c) | 0
  c = (c + (((d >>> 2) | (d << 30)) ^ ((d >>> 13) | (d << 19)) ^ ((d >>> 22) | (d << 10))) + ((d & e) | (f & (d | e)))) | 0
  w14 = (w14 + (((w15 >>> 7) | (w15 << 25)) ^ ((w15 >>> 18) | (w15 << 14)) ^ (w15 >>> 3)) + w7 + (((w12 >>> 17) | (w12 << 15)) ^ ((w12 >>> 19) | (w12 << 13)) ^ (w12 >>> 10))) | 0
  b = (b + (((g >>> 6) | (g << 26)) ^ ((g >>> 11) | (g << 21)) ^ ((g >>> 25) | (g << 7))) + (a ^ (g & (hh ^ a))) + 0x06ca6351 + w14) | 0; f = (f + b) | 0
  b = (b + (((c >>> 2) | (c << 30)) ^ ((c >>> 13) | (c << 19)) ^ ((c >>> 22) | (c << 10))) + ((c & d) | (e & (c | d)))) | 0
  w15 = (w15 + (((w0 >>> 7) | (w0 << 25)) ^ ((w0 >>> 18) | (w0 << 14)) ^ (w0 >>> 3)) + w8 + (((w13 >>> 17) | (w13 << 15)) ^ ((w13 >>> 19) | (w13 << 13)) ^ (w13 >>> 10))) | 0
  a = (a + (((f >>> 6) | (f << 26)) ^ ((f >>> 11) | (f << 21)) ^ ((f >>> 25) | (f << 7))) + (hh ^ (f & (g ^ hh))) + 0x14292967 + w15) | 0; e = (e + a) | 0
  a = (a + (((b >>> 2) | (b << 30)) ^ ((b >>> 13) | (b << 19)) ^ ((b >>> 22) | (b << 10))) + ((b & c) | (d & (b | c)))) | 0
  w0 = (w0 + (((w1 >>> 7) | (w1 << 25)) ^ ((w1 >>> 18) | (w1 << 14)) ^ (w1 >>> 3)) + w9 + (((w14 >>> 17) | (w14 << 15)) ^ ((w14 >>> 19) | (w14 << 13)) ^ (w14 >>> 10))) | 0
  hh = (hh + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + (g ^ (e & (f ^ g))) + 0x27b70a85 + w0) | 0; d = (d + hh) | 0
  hh = (hh + (((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) | (c & (a | b)))) | 0
  w1 = (w1 + (((w2 >>> 7) | (w2 << 25)) ^ ((w2 >>> 18) | (w2 << 14)) ^ (w2 >>> 3)) + w10 + (((w15 >>> 17) | (w15 << 15)) ^ ((w15 >>> 19) | (w15 << 13)) ^ (w15 >>> 10))) | 0
  g = (g + (((d >>> 6) | (d << 26)) ^ ((d >>> 11) | (d << 21)) ^ ((d >>> 25) | (d << 7))) + (f ^ (d & (e ^ f))) + 0x2e1b2138 + w1) | 0; c = (c + g) | 0
  g = (g + (((hh >>> 2) | (hh << 30)) ^ ((hh >>> 13) | (hh << 19)) ^ ((hh >>> 22) | (hh << 10))) + ((hh & a) | (b & (hh | a)))) | 0
  w2 = (w2 + (((w3 >>> 7) | (w3 << 25)) ^ ((w3 >>> 18) | (w3 << 14)) ^ (w3 >>> 3)) + w11 + (((w0 >>> 17) | (w0 << 15)) ^ ((w0 >>> 19) | (w0 << 13)) ^ (w0 >>> 10))) | 0
  f = (f + (((c >>> 6) | (c << 26)) ^ ((c >>> 11) | (c << 21)) ^ ((c >>> 25) | (c << 7))) + (e ^ (c & (d ^ e))) + 0x4d2c6dfc + w2) | 0; b = (b + f) | 0
  f = (f + (((g >>> 2) | (g << 30)) ^ ((g >>> 13) | (g << 19)) ^ ((g >>> 22) | (g << 10))) + ((g & hh) | (a & (g | hh)))) | 0
  w3 = (w3 + (((w4 >>> 7) | (w4 << 25)) ^ ((w4 >>> 18) | (w4 << 14)) ^ (w4 >>> 3)) + w12 + (((w1 >>> 17) | (w1 << 15)) ^ ((w1 >>> 19) | (w1 << 13)) ^ (w1 >>> 10))) | 0
  e = (e + (((b >>> 6) | (b << 26)) ^ ((b >>> 11) | (b << 21)) ^ ((b >>> 25) | (b << 7))) + (d ^ (b & (c ^ d))) + 0x53380d13 + w3) | 0; a = (a + e) | 0
  e = (e + (((f >>> 2) | (f << 30)) ^ ((f >>> 13) | (f << 19)) ^ ((f >>> 22) | (f << 10))) + ((f & g) | (hh & (f | g)))) | 0
  w4 = (w4 + (((w5 >>> 7) | (w5 << 25)) ^ ((w5 >>> 18) | (w5 << 14)) ^ (w5 >>> 3)) + w13 + (((w2 >>> 17) | (w2 << 15)) ^ ((w2 >>> 19) | (w2 << 13)) ^ (w2 >>> 10))) | 0
  d = (d + (((a >>> 6) | (a << 26)) ^ ((a >>> 11) | (a << 21)) ^ ((a >>> 25) | (a << 7))) + (c ^ (a & (b ^ c))) + 0x650a7354 + w4) | 0; hh = (hh + d) | 0
  d = (d + (((e >>> 2) | (e << 30)) ^ ((e >>> 13) | (e << 19)) ^ ((e >>> 22) | (e << 10))) + ((e & f) | (g & (e | f)))) | 0
  w5 = (w5 + (((w6 >>> 7) | (w6 << 25)) ^ ((w6 >>> 18) | (w6 << 14)) ^ (w6 >>> 3)) + w14 + (((w3 >>> 17) | (w3 << 15)) ^ ((w3 >>> 19) | (w3 << 13)) ^ (w3 >>> 10))) | 0
  c = (c + (((hh >>> 6) | (hh << 26)) ^ ((hh >>> 11) | (hh << 21)) ^ ((hh >>> 25) | (hh << 7))) + (b ^ (hh & (a ^ b))) + 0x766a0abb + w5) | 0; g = (g + c) | 0
  c = (c + (((d >>> 2) | (d << 30)) ^ ((d >>> 13) | (d << 19)) ^ ((d >>> 22) | (d << 10))) + ((d & e) | (f & (d | e)))) | 0
  w6 = (w6 + (((w7 >>> 7) | (w7 << 25)) ^ ((w7 >>> 18) | (w7 << 14)) ^ (w7 >>> 3)) + w15 + (((w4 >>> 17) | (w4 << 15)) ^ ((w4 >>> 19) | (w4 << 13)) ^ (w4 >>> 10))) | 0
  b = (b + (((g >>> 6) | (g << 26)) ^ ((g >>> 11) | (g << 21)) ^ ((g >>> 25) | (g << 7))) + (a ^ (g & (hh ^ a))) + 0x81c2c92e + w6) | 0; f = (f + b) | 0
  b = (b + (((c >>> 2) | (c << 30)) ^ ((c >>> 13) | (c << 19)) ^ ((c >>> 22) | (c << 10))) + ((c & d) | (e & (c | d)))) | 0
  w7 = (w7 + (((w8 >>> 7) | (w8 << 25)) ^ ((w8 >>> 18) | (w8 << 14)) ^ (w8 >>> 3)) + w0 + (((w5 >>> 17) | (w5 << 15)) ^ ((w5 >>> 19) | (w5 << 13)) ^ (w5 >>> 10))) | 0
  a = (a + (((f >>> 6) | (f << 26)) ^ ((f >>> 11) | (f << 21)) ^ ((f >>> 25) | (f << 7))) + (hh ^ (f & (g ^ hh))) + 0x92722c85 + w7) | 0; e = (e + a) | 0
  a = (a + (((b >>> 2) | (b << 30)) ^ ((b >>> 13) | (b << 19)) ^ ((b >>> 22) | (b << 10))) + ((b & c) | (d & (b | c)))) | 0
  w8 = (w8 + (((w9 >>> 7) | (w9 << 25)) ^ ((w9 >>> 18) | (w9 << 14)) ^ (w9 >>> 3)) + w1 + (((w6 >>> 17) | (w6 << 15)) ^ ((w6 >>> 19) | (w6 << 13)) ^ (w6 >>> 10))) | 0
  hh = (hh + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + (g ^ (e & (f ^ g))) + 0xa2bfe8a1 + w8) | 0; d = (d + hh) | 0
  hh = (hh + (((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) | (c & (a | b)))) | 0
  w9 = (w9 + (((w10 >>> 7) | (w10 << 25)) ^ ((w10 >>> 18) | (w10 << 14)) ^ (w10 >>> 3)) + w2 + (((w7 >>> 17) | (w7 << 15)) ^ ((w7 >>> 19) | (w7 << 13)) ^ (w7 >>> 10))) | 0
  g = (g + (((d >>> 6) | (d << 26)) ^ ((d >>> 11) | (d << 21)) ^ ((d >>> 25) | (d << 7))) + (f ^ (d & (e ^ f))) + 0xa81a664b + w9) | 0; c = (c + g) | 0
  g = (g + (((hh >>> 2) | (hh << 30)) ^ ((hh >>> 13) | (hh << 19)) ^ ((hh >>> 22) | (hh << 10))) + ((hh & a) | (b & (hh | a)))) | 0
  w10 = (w10 + (((w11 >>> 7) | (w11 << 25)) ^ ((w11 >>> 18) | (w11 << 14)) ^ (w11 >>> 3)) + w3 + (((w8 >>> 17) | (w8 << 15)) ^ ((w8 >>> 19) | (w8 << 13)) ^ (w8 >>> 10))) | 0
  f = (f + (((c >>> 6) | (c << 26)) ^ ((c >>> 11) | (c << 21)) ^ ((c >>> 25) | (c << 7))) + (e ^ (c & (d ^ e))) + 0xc24b8b70 + w10) | 0; b = (b + f) | 0
  f = (f + (((g >>> 2) | (g << 30)) ^ ((g >>> 13) | (g << 19)) ^ ((g >>> 22) | (g << 10))) + ((g & hh) | (a & (g | hh)))) | 0
  w11 = (w11 + (((w12 >>> 7) | (w12 << 25)) ^ ((w12 >>> 18) | (w12 << 14)) ^ (w12 >>> 3)) + w4 + (((w9 >>> 17) | (w9 << 15)) ^ ((w9 >>> 19) | (w9 << 13)) ^ (w9 >>> 10))) | 0
  e = (e + (((b >>> 6) | (b << 26)) ^ ((b >>> 11) | (b << 21)) ^ ((b >>> 25) | (b << 7))) + (d ^ (b & (c ^ d))) + 0xc76c51a3 + w11) | 0; a = (a + e) | 0
  e = (e + (((f >>> 2) | (f << 30)) ^ ((f >>> 13) | (f << 19)) ^ ((f >>> 22) | (f << 10))) + ((f & g) | (hh & (f | g)))) | 0
  w12 = (w12 + (((w13 >>> 7) | (w13 << 25)) ^ ((w13 >>> 18) | (w13 << 14)) ^ (w13 >>> 3)) + w5 + (((w10 >>> 17) | (w10 << 15)) ^ ((w10 >>> 19) | (w10 << 13)) ^ (w10 >>> 10))) | 0
  d = (d + (((a >>> 6) | (a << 26)) ^ ((a >>> 11) | (a << 21)) ^ ((a >>> 25) | (a << 7))) + (c ^ (a & (b ^ c))) + 0xd192e819 + w12) | 0; hh = (hh + d) | 0
  d = (d + (((e >>> 2) | (e << 30)) ^ ((e >>> 13) | (e << 19)) ^ ((e >>> 22) | (e << 10))) + ((e & f) | (g & (e | f)))) | 0
  w13 = (w13 + (((w14 >>> 7) | (w14 << 25)) ^ ((w14 >>> 18) | (w14 << 14)) ^ (w14 >>> 3)) + w6 + (((w11 >>> 17) | (w11 << 15)) ^ ((w11 >>> 19) | (w11 << 13)) ^ (w11 >>> 10))) | 0
  c = (c + (((hh >>> 6) | (hh << 26)) ^ ((hh >>> 11) | (hh << 21)) ^ ((hh >>> 25) | (hh << 7))) + (b ^ (hh & (a ^ b))) + 0xd6990624 + w13) | 0; g = (g + c) | 0
  c = (c + (((d >>> 2) | (d << 30)) ^ ((d >>> 13) | (d << 19)) ^ ((d >>> 22) | (d << 10))) + ((d & e) | (f & (d | e)))) | 0
  w14 = (w14 + (((w15 >>> 7) | (w15 << 25)) ^ ((w15 >>> 18) | (w15 << 14)) ^ (w15 >>> 3)) + w7 + (((w12 >>> 17) | (w12 << 15)) ^ ((w12 >>> 19) | (w12 << 13)) ^ (w12 >>> 10))) | 0
  b = (b + (((g >>> 6) | (g << 26)) ^ ((g >>> 11) | (g << 21)) ^ ((g >>> 25) | (g << 7))) + (a ^ (g & (hh ^ a))) + 0xf40e3585 + w14) | 0; f = (f + b) | 0
  b = (b + (((c >>> 2) | (c << 30)) ^ ((c >>> 13) | (c << 19)) ^ ((c >>> 22) | (c << 10))) + ((c & d) | (e & (c | d)))) | 0
  w15 = (w15 + (((w0 >>> 7) | (w0 << 25)) ^ ((w0 >>> 18) | (w0 << 14)) ^ (w0 >>> 3)) + w8 + (((w13 >>> 17) | (w13 << 15)) ^ ((w13 >>> 19) | (w13 << 13)) ^ (w13 >>> 10))) | 0
  a = (a + (((f >>> 6) | (f << 26)) ^ ((f >>> 11) | (f << 21)) ^ ((f >>> 25) | (f << 7))) + (hh ^ (f & (g ^ hh))) + 0x106aa070 + w15) | 0; e = (e + a) | 0
  a = (a + (((b >>> 2) | (b << 30)) ^ ((b >>> 13) | (b << 19)) ^ ((b >>> 22) | (b << 10))) + ((b & c) | (d & (b | c)))) | 0
  w0 = (w0 + (((w1 >>> 7) | (w1 << 25)) ^ ((w1 >>> 18) | (w1 << 14)) ^ (w1 >>> 3)) + w9 + (((w14 >>> 17) | (w14 << 15)) ^ ((w14 >>> 19) | (w14 << 13)) ^ (w14 >>> 10))) | 0
  hh = (hh + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + (g ^ (e & (f ^ g))) + 0x19a4c116 + w0) | 0; d = (d + hh) | 0
  hh = (hh + (((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) | (c & (a | b)))) | 0
  w1 = (w1 + (((w2 >>> 7) | (w2 << 25)) ^ ((w2 >>> 18) | (w2 << 14)) ^ (w2 >>> 3)) + w10 + (((w15 >>> 17) | (w15 << 15)) ^ ((w15 >>> 19) | (w15 << 13)) ^ (w15 >>> 10))) | 0
  g = (g + (((d >>> 6) | (d << 26)) ^ ((d >>> 11) | (d << 21)) ^ ((d >>> 25) | (d << 7))) + (f ^ (d & (e ^ f))) + 0x1e376c08 + w1) | 0; c = (c + g) | 0
  g = (g + (((hh >>> 2) | (hh << 30)) ^ ((hh >>> 13) | (hh << 19)) ^ ((hh >>> 22) | (hh << 10))) + ((hh & a) | (b & (hh | a)))) | 0
  w2 = (w2 + (((w3 >>> 7) | (w3 << 25)) ^ ((w3 >>> 18) | (w3 << 14)) ^ (w3 >>> 3)) + w11 + (((w0 >>> 17) | (w0 << 15)) ^ ((w0 >>> 19) | (w0 << 13)) ^ (w0 >>> 10))) | 0
  f = (f + (((c >>> 6) | (c << 26)) ^ ((c >>> 11) | (c << 21)) ^ ((c >>> 25) | (c << 7))) + (e ^ (c & (d ^ e))) + 0x2748774c + w2) | 0; b = (b + f) | 0
  f = (f + (((g >>> 2) | (g << 30)) ^ ((g >>> 13) | (g << 19)) ^ ((g >>> 22) | (g << 10))) + ((g & hh) | (a & (g | hh)))) | 0
  w3 = (w3 + (((w4 >>> 7) | (w4 << 25)) ^ ((w4 >>> 18) | (w4 << 14)) ^ (w4 >>> 3)) + w12 + (((w1 >>> 17) | (w1 << 15)) ^ ((w1 >>> 19) | (w1 << 13)) ^ (w1 >>> 10))) | 0
  e = (e + (((b >>> 6) | (b << 26)) ^ ((b >>> 11) | (b << 21)) ^ ((b >>> 25) | (b << 7))) + (d ^ (b & (c ^ d))) + 0x34b0bcb5 + w3) | 0; a = (a + e) | 0
  e = (e + (((f >>> 2) | (f << 30)) ^ ((f >>> 13) | (f << 19)) ^ ((f >>> 22) | (f << 10))) + ((f & g) | (hh & (f | g)))) | 0
  w4 = (w4 + (((w5 >>> 7) | (w5 << 25)) ^ ((w5 >>> 18) | (w5 << 14)) ^ (w5 >>> 3)) + w13 + (((w2 >>> 17) | (w2 << 15)) ^ ((w2 >>> 19) | (w2 << 13)) ^ (w2 >>> 10))) | 0
  d = (d + (((a >>> 6) | (a << 26)) ^ ((a >>> 11) | (a << 21)) ^ ((a >>> 25) | (a << 7))) + (c ^ (a & (b ^ c))) + 0x391c0cb3 + w4) | 0; hh = (hh + d) | 0
  d = (d + (((e >>> 2) | (e << 30)) ^ ((e >>> 13) | (e << 19)) ^ ((e >>> 22) | (e << 10))) + ((e & f) | (g & (e | f)))) | 0
  w5 = (w5 + (((w6 >>> 7) | (w6 << 25)) ^ ((w6 >>> 18) | (w6 << 14)) ^ (w6 >>> 3)) + w14 + (((w3 >>> 17) | (w3 << 15)) ^ ((w3 >>> 19) | (w3 << 13)) ^ (w3 >>> 10))) | 0
  c = (c + (((hh >>> 6) | (hh << 26)) ^ ((hh >>> 11) | (hh << 21)) ^ ((hh >>> 25) | (hh << 7))) + (b ^ (hh & (a ^ b))) + 0x4ed8aa4a + w5) | 0; g = (g + c) | 0
  c = (c + (((d >>> 2) | (d << 30)) ^ ((d >>> 13) | (d << 19)) ^ ((d >>> 22) | (d << 10))) + ((d & e) | (f & (d | e)))) | 0
  w6 = (w6 + (((w7 >>> 7) | (w7 << 25)) ^ ((w7 >>> 18) | (w7 << 14)) ^ (w7 >>> 3)) + w15 + (((w4 >>> 17) | (w4 << 15)) ^ ((w4 >>> 19) | (w4 << 13)) ^ (w4 >>> 10))) | 0
  b = (b + (((g >>> 6) | (g << 26)) ^ ((g >>> 11) | (g << 21)) ^ ((g >>> 25) | (g << 7))) + (a ^ (g & (hh ^ a))) + 0x5b9cca4f + w6) | 0; f = (f + b) | 0
  b = (b + (((c >>> 2) | (c << 30)) ^ ((c >>> 13) | (c << 19)) ^ ((c >>> 22) | (c << 10))) + ((c & d) | (e & (c | d)))) | 0
  w7 = (w7 + (((w8 >>> 7) | (w8 << 25)) ^ ((w8 >>> 18) | (w8 << 14)) ^ (w8 >>> 3)) + w0 + (((w5 >>> 17) | (w5 << 15)) ^ ((w5 >>> 19) | (w5 << 13)) ^ (w5 >>> 10))) | 0
  a = (a + (((f >>> 6) | (f << 26)) ^ ((f >>> 11) | (f << 21)) ^ ((f >>> 25) | (f << 7))) + (hh ^ (f & (g ^ hh))) + 0x682e6ff3 + w7) | 0; e = (e + a) | 0
  a = (a + (((b >>> 2) | (b << 30)) ^ ((b >>> 13) | (b << 19)) ^ ((b >>> 22) | (b << 10))) + ((b & c) | (d & (b | c)))) | 0
  w8 = (w8 + (((w9 >>> 7) | (w9 << 25)) ^ ((w9 >>> 18) | (w9 << 14)) ^ (w9 >>> 3)) + w1 + (((w6 >>> 17) | (w6 << 15)) ^ ((w6 >>> 19) | (w6 << 13)) ^ (w6 >>> 10))) | 0
  hh = (hh + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + (g ^ (e & (f ^ g))) + 0x748f82ee + w8) | 0; d = (d + hh) | 0
  hh = (hh + (((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) | (c & (a | b)))) | 0
  w9 = (w9 + (((w10 >>> 7) | (w10 << 25)) ^ ((w10 >>> 18) | (w10 << 14)) ^ (w10 >>> 3)) + w2 + (((w7 >>> 17) | (w7 << 15)) ^ ((w7 >>> 19) | (w7 << 13)) ^ (w7 >>> 10))) | 0
  g = (g + (((d >>> 6) | (d << 26)) ^ ((d >>> 11) | (d << 21)) ^ ((d >>> 25) | (d << 7))) + (f ^ (d & (e ^ f))) + 0x78a5636f + w9) | 0; c = (c + g) | 0
  g = (g + (((hh >>> 2) | (hh << 30)) ^ ((hh >>> 13) | (hh << 19)) ^ ((hh >>> 22) | (hh << 10))) + ((hh & a) | (b & (hh | a)))) | 0
  w10 = (w10 + (((w11 >>> 7) | (w11 << 25)) ^ ((w11 >>> 18) | (w11 << 14)) ^ (w11 >>> 3)) + w3 + (((w8 >>> 17) | (w8 << 15)) ^ ((w8 >>> 19) | (w8 << 13)) ^ (w8 >>> 10))) | 0
  f = (f + (((c >>> 6) | (c << 26)) ^ ((c >>> 11) | (c << 21)) ^ ((c >>> 25) | (c << 7))) + (e ^ (c & (d ^ e))) + 0x84c87814 + w10) | 0; b = (b + f) | 0
  f = (f + (((g >>> 2) | (g << 30)) ^ ((g >>> 13) | (g << 19)) ^ ((g >>> 22) | (g << 10))) + ((g & hh) | (a & (g | hh)))) | 0
  w11 = (w11 + (((w12 >>> 7) | (w12 << 25)) ^ ((w12 >>> 18) | (w12 << 14)) ^ (w12 >>> 3)) + w4 + (((w9 >>> 17) | (w9 << 15)) ^ ((w9 >>> 19) | (w9 << 13)) ^ (w9 >>> 10))) | 0
  e = (e + (((b >>> 6) | (b << 26)) ^ ((b >>> 11) | (b << 21)) ^ ((b >>> 25) | (b << 7))) + (d ^ (b & (c ^ d))) + 0x8cc70208 + w11) | 0; a = (a + e) | 0
  e = (e + (((f >>> 2) | (f << 30)) ^ ((f >>> 13) | (f << 19)) ^ ((f >>> 22) | (f << 10))) + ((f & g) | (hh & (f | g)))) | 0
  w12 = (w12 + (((w13 >>> 7) | (w13 << 25)) ^ ((w13 >>> 18) | (w13 << 14)) ^ (w13 >>> 3)) + w5 + (((w10 >>> 17) | (w10 << 15)) ^ ((w10 >>> 19) | (w10 << 13)) ^ (w10 >>> 10))) | 0
  d = (d + (((a >>> 6) | (a << 26)) ^ ((a >>> 11) | (a << 21)) ^ ((a >>> 25) | (a << 7))) + (c ^ (a & (b ^ c))) + 0x90befffa + w12) | 0; hh = (hh + d) | 0
  d = (d + (((e >>> 2) | (e << 30)) ^ ((e >>> 13) | (e << 19)) ^ ((e >>> 22) | (e << 10))) + ((e & f) | (g & (e | f)))) | 0
  w13 = (w13 + (((w14 >>> 7) | (w14 << 25)) ^ ((w14 >>> 18) | (w14 << 14)) ^ (w14 >>> 3)) + w6 + (((w11 >>> 17) | (w11 << 15)) ^ ((w11 >>> 19) | (w11 << 13)) ^ (w11 >>> 10))) | 0
  c = (c + (((hh >>> 6) | (hh << 26)) ^ ((hh >>> 11) | (hh << 21)) ^ ((hh >>> 25) | (hh << 7))) + (b ^ (hh & (a ^ b))) + 0xa4506ceb + w13) | 0; g = (g + c) | 0
  c = (c + (((d >>> 2) | (d << 30)) ^ ((d >>> 13) | (d << 19)) ^ ((d >>> 22) | (d << 10))) + ((d & e) | (f & (d | e)))) | 0
  w14 = (w14 + (((w15 >>> 7) | (w15 << 25)) ^ ((w15 >>> 18) | (w15 << 14)) ^ (w15 >>> 3)) + w7 + (((w12 >>> 17) | (w12 << 15)) ^ ((w12 >>> 19) | (w12 << 13)) ^ (w12 >>> 10))) | 0
  b = (b + (((g >>> 6) | (g << 26)) ^ ((g >>> 11) | (g << 21)) ^ ((g >>> 25) | (g << 7))) + (a ^ (g & (hh ^ a))) + 0xbef9a3f7 + w14) | 0; f = (f + b) | 0
  b = (b + (((c >>> 2) | (c << 30)) ^ ((c >>> 13) | (c << 19)) ^ ((c >>> 22) | (c << 10))) + ((c & d) | (e & (c | d)))) | 0
  w15 = (w15 + (((w0 >>> 7) | (w0 << 25)) ^ ((w0 >>> 18) | (w0 << 14)) ^ (w0 >>> 3)) + w8 + (((w13 >>> 17) | (w13 << 15)) ^ ((w13 >>> 19) | (w13 << 13)) ^ (w13 >>> 10))) | 0
  a = (a + (((f >>> 6) | (f << 26)) ^ ((f >>> 11) | (f << 21)) ^ ((f >>> 25) | (f << 7))) + (hh ^ (f & (g ^ hh))) + 0xc67178f2 + w15) | 0; e = (e + a) | 0
  a = (a + (((b >>> 2) | (b << 30)) ^ ((b >>> 13) | (b << 19)) ^ ((b >>> 22) | (b << 10))) + ((b & c) | (d & (b | c)))) | 0
  h[0] = (h[0]! + a) | 0; h[1] = (h[1]! + b) | 0; h[2] = (h[2]! + c) | 0; h[3] = (h[3]! + d) | 0
  h[4] = (h[4]! + e) | 0; h[5] = (h[5]! + f) | 0; h[6] = (h[6]! + g) | 0; h[7] = (h[7]! + hh) | 0
}
