/**
 * HMAC-SHA256 of four messages at once, one in each 32-bit lane of WebAssembly's 128-bit vectors
 * (AssemblyScript, compiled to dist/core/audit/hmac-lanes.wasm by `npm run build`).
 *
 * verify-chain's rows are independent of each other: each carries its predecessor's hash, so four
 * rows can be hashed together and compared afterwards. Four lanes cost about a third of four
 * hashes in JavaScript (measured 0.40 against 1.18 µs a row); this is where verify-chain spends
 * most of its time. src/core/audit/hmac-lanes.ts drives it and checks it against createHmac.
 *
 * Every lane's key is prepared beforehand: INNER and OUTER hold SHA-256's state after the key's
 * inner and outer pad block, so a message costs its own blocks plus one.
 */

/** Bytes each lane's message may use, padding included. */
export const LANE_BYTES: i32 = 2048
/** The four messages, LANE_BYTES apart. hmac() pads them in place, after their length. */
export const MESSAGES = memory.data(4 * LANE_BYTES, 16)
/** Each lane's message length in bytes (i32); -1 leaves the lane out. */
export const LENGTHS = memory.data(16, 16)
/** The states after the key's pad blocks, word-major: word j of lane k is the i32 at 4 * (4j + k). */
export const INNER = memory.data(128, 16)
export const OUTER = memory.data(128, 16)
/** The hash each lane's message should have, 32 bytes per lane. */
export const EXPECTED = memory.data(128, 16)

const STATE = memory.data(128, 16)
const SAVED = memory.data(128, 16)
/** The four digests, 32 bytes per lane, big-endian like EXPECTED. */
const DIGESTS = memory.data(128, 16)
/** The message schedule of four blocks, one vector per word. */
const SCHEDULE = memory.data(64 * 16, 16)
/** The round constants, each repeated in the four lanes. */
const ROUND = memory.data(64 * 16, 16)
const K = memory.data<u32>([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
  0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
  0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
  0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2,
])
for (let i: usize = 0; i < 64; i++) v128.store(ROUND + (i << 4), i32x4.splat(load<i32>(K + (i << 2))))

/** Big-endian words to the machine's order and back, in all four lanes. */
const SWAP = i8x16(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12)

/**
 * Hashes every lane's message and compares it with EXPECTED: bit k of the result is set when
 * lane k's HMAC equals its expected hash.
 */
export function hmac(): i32 {
  const m0 = MESSAGES
  const m1 = m0 + LANE_BYTES
  const m2 = m1 + LANE_BYTES
  const m3 = m2 + LANE_BYTES
  const b0 = pad(m0, load<i32>(LENGTHS))
  const b1 = pad(m1, load<i32>(LENGTHS, 4))
  const b2 = pad(m2, load<i32>(LENGTHS, 8))
  const b3 = pad(m3, load<i32>(LENGTHS, 12))
  const most = max(max(b0, b1), max(b2, b3))
  // Lanes with fewer blocks keep their state once their last block is done.
  const uneven = min(min(b0, b1), min(b2, b3)) != most
  const blocks = i32x4(b0, b1, b2, b3)

  memory.copy(STATE, INNER, 128)
  for (let b = 0; b < most; b++) {
    if (uneven) memory.copy(SAVED, STATE, 128)
    const o = <usize>(b << 6)
    for (let j: usize = 0; j < 64; j += 4) {
      let w = i32x4.splat(load<i32>(m0 + o + j))
      w = i32x4.replace_lane(w, 1, load<i32>(m1 + o + j))
      w = i32x4.replace_lane(w, 2, load<i32>(m2 + o + j))
      w = i32x4.replace_lane(w, 3, load<i32>(m3 + o + j))
      v128.store(SCHEDULE + (j << 2), i8x16.swizzle(w, SWAP))
    }
    compress()
    if (uneven) {
      const live = i32x4.gt_s(blocks, i32x4.splat(b))
      for (let j: usize = 0; j < 128; j += 16) {
        v128.store(STATE + j, v128.bitselect(v128.load(STATE + j), v128.load(SAVED + j), live))
      }
    }
  }

  // The outer hash: the inner digest (already eight words in lane order), then padding for 96 bytes.
  memory.copy(SCHEDULE, STATE, 128)
  v128.store(SCHEDULE, i32x4.splat(0x80000000), 128)
  memory.fill(SCHEDULE + 144, 0, 96)
  v128.store(SCHEDULE, i32x4.splat((64 + 32) * 8), 240)
  memory.copy(STATE, OUTER, 128)
  compress()

  for (let j: usize = 0; j < 8; j++) {
    const d = i8x16.swizzle(v128.load(STATE + (j << 4)), SWAP)
    store<i32>(DIGESTS + (j << 2), i32x4.extract_lane(d, 0))
    store<i32>(DIGESTS + (j << 2), i32x4.extract_lane(d, 1), 32)
    store<i32>(DIGESTS + (j << 2), i32x4.extract_lane(d, 2), 64)
    store<i32>(DIGESTS + (j << 2), i32x4.extract_lane(d, 3), 96)
  }
  let same = 0
  for (let k = 0; k < 4; k++) {
    const d = DIGESTS + ((<usize>k) << 5)
    const e = EXPECTED + ((<usize>k) << 5)
    const low = i32x4.eq(v128.load(d), v128.load(e))
    const high = i32x4.eq(v128.load(d, 16), v128.load(e, 16))
    if (i32x4.all_true(v128.and(low, high))) same |= 1 << k
  }
  return same
}

/** SHA-256's padding after a lane's message, in place; returns its number of blocks (0 for length -1). */
function pad(m: usize, length: i32): i32 {
  if (length < 0) return 0
  const n = <usize>length
  const blocks = ((n + 8) >> 6) + 1
  const end = blocks << 6
  store<u8>(m + n, 0x80)
  memory.fill(m + n + 1, 0, end - 4 - n - 1)
  // The length in bits, counting the key's pad block; its high word is 0 for any message that fits.
  store<u32>(m + end - 4, bswap<u32>(<u32>((n + 64) << 3)))
  return <i32>blocks
}

function rotr4(x: v128, n: i32): v128 {
  return v128.or(i32x4.shr_u(x, n), i32x4.shl(x, 32 - n))
}

/** SHA-256's compression of the block in SCHEDULE[0, 16) into STATE, in four lanes. */
function compress(): void {
  for (let i: usize = 16; i < 64; i++) {
    const x = v128.load(SCHEDULE + ((i - 15) << 4))
    const y = v128.load(SCHEDULE + ((i - 2) << 4))
    const s0 = v128.xor(v128.xor(rotr4(x, 7), rotr4(x, 18)), i32x4.shr_u(x, 3))
    const s1 = v128.xor(v128.xor(rotr4(y, 17), rotr4(y, 19)), i32x4.shr_u(y, 10))
    const w16 = v128.load(SCHEDULE + ((i - 16) << 4))
    const w7 = v128.load(SCHEDULE + ((i - 7) << 4))
    v128.store(SCHEDULE + (i << 4), i32x4.add(i32x4.add(w16, s0), i32x4.add(w7, s1)))
  }
  let a = v128.load(STATE)
  let b = v128.load(STATE, 16)
  let c = v128.load(STATE, 32)
  let d = v128.load(STATE, 48)
  let e = v128.load(STATE, 64)
  let f = v128.load(STATE, 80)
  let g = v128.load(STATE, 96)
  let h = v128.load(STATE, 112)
  for (let i: usize = 0; i < 64; i++) {
    const s1 = v128.xor(v128.xor(rotr4(e, 6), rotr4(e, 11)), rotr4(e, 25))
    // ch(e, f, g) and maj(a, b, c) as bit selections.
    const ch = v128.bitselect(f, g, e)
    const t1 = i32x4.add(
      i32x4.add(h, s1),
      i32x4.add(ch, i32x4.add(v128.load(ROUND + (i << 4)), v128.load(SCHEDULE + (i << 4)))),
    )
    const s0 = v128.xor(v128.xor(rotr4(a, 2), rotr4(a, 13)), rotr4(a, 22))
    const t2 = i32x4.add(s0, v128.bitselect(c, b, v128.xor(a, b)))
    h = g
    g = f
    f = e
    e = i32x4.add(d, t1)
    d = c
    c = b
    b = a
    a = i32x4.add(t1, t2)
  }
  v128.store(STATE, i32x4.add(v128.load(STATE), a))
  v128.store(STATE, i32x4.add(v128.load(STATE, 16), b), 16)
  v128.store(STATE, i32x4.add(v128.load(STATE, 32), c), 32)
  v128.store(STATE, i32x4.add(v128.load(STATE, 48), d), 48)
  v128.store(STATE, i32x4.add(v128.load(STATE, 64), e), 64)
  v128.store(STATE, i32x4.add(v128.load(STATE, 80), f), 80)
  v128.store(STATE, i32x4.add(v128.load(STATE, 96), g), 96)
  v128.store(STATE, i32x4.add(v128.load(STATE, 112), h), 112)
}
