/**
 * Four rows' HMACs at once: the JavaScript side of asm/hmac-lanes.ts, which hashes four messages
 * in the lanes of WebAssembly's vectors at about a third of the cost of hashing them one by one.
 *
 * A TenantChecker hands a row to add(), which writes its message into a free lane and keeps what
 * the checker needs to decide about it later (its seq, its prev_hash and its hash, copied: a
 * row's own bytes are gone once the reader moves on). When the four lanes are full, or before
 * anyone reads a checker's result, flush() hashes them and hands each row back to its checker,
 * in the order they came. Rows the lanes do not take (an unusual length, a key without a prepared
 * state, a message too long for a lane) are checked by the caller as before, after a flush().
 */
import { createHmac, randomBytes } from 'node:crypto'
import path from 'node:path'
import { PACKAGE_ROOT } from '../config/paths.js'
import { instantiate, type WasmGlobal } from '../wasm.js'
import { ChainKey, ChainMessage, emptyWireRow, type WireRow } from './chain.js'

/** Who gets a row back from flush(): the checker that added it. */
export interface LaneOwner {
  /** The row's decision, now that its HMAC is known (`signed`). */
  settle(row: WireRow, signed: boolean): void
}

const LANES = 4

/** What asm/hmac-lanes.ts exports: its memory, hmac(), and where each region starts. */
interface LaneExports {
  memory: { buffer: ArrayBuffer }
  hmac(): number
  LANE_BYTES: WasmGlobal
  MESSAGES: WasmGlobal
  LENGTHS: WasmGlobal
  INNER: WasmGlobal
  OUTER: WasmGlobal
  EXPECTED: WasmGlobal
}

/** Built by `npm run build` next to the compiled JavaScript (the tests run src/ and find it there too). */
const WASM_FILE = path.join(PACKAGE_ROOT, 'dist/core/audit/hmac-lanes.wasm')

/**
 * Whether the first instance in this thread passed the self-test: every instance runs the same
 * compiled code, so one test answers for all of them (a reader makes one per partition).
 */
let tested: boolean | undefined

export class HmacLanes {
  private readonly hmac: () => number
  private readonly memory: Buffer
  private readonly laneBytes: number
  private readonly messagesAt: number
  private readonly expectedAt: number
  private readonly lengths: Int32Array
  private readonly inner: Int32Array
  private readonly outer: Int32Array
  private readonly messages: ChainMessage[] = []
  /** Per lane: the row as its checker will see it (seq, prev_hash and hash in lane memory). */
  private readonly rows: WireRow[] = []
  private readonly owners: Array<LaneOwner | null> = []
  /** The key whose states each lane holds. */
  private readonly keys: Array<ChainKey | null> = []
  private filled = 0

  /** Lanes for this thread, or null when WebAssembly cannot run them or they fail the self-test. */
  static create(): HmacLanes | null {
    if (tested === false) return null
    const exports = instantiate<LaneExports>(WASM_FILE)
    if (exports === null) return null
    try {
      const lanes = new HmacLanes(exports)
      tested ??= lanes.selfTest()
      return tested ? lanes : null
    } catch {
      return null
    }
  }

  private constructor(exports: LaneExports) {
    const buffer = exports.memory.buffer
    const at = (a: WasmGlobal) => a.value
    this.hmac = exports.hmac
    this.memory = Buffer.from(buffer)
    this.laneBytes = at(exports.LANE_BYTES)
    this.messagesAt = at(exports.MESSAGES)
    this.expectedAt = at(exports.EXPECTED)
    this.lengths = new Int32Array(buffer, at(exports.LENGTHS), LANES)
    this.inner = new Int32Array(buffer, at(exports.INNER), 8 * LANES)
    this.outer = new Int32Array(buffer, at(exports.OUTER), 8 * LANES)
    for (let k = 0; k < LANES; k++) {
      const start = this.messagesAt + k * this.laneBytes
      this.messages.push(new ChainMessage(this.memory.subarray(start, start + this.laneBytes)))
      const row = emptyWireRow(this.memory)
      row.prevHashLength = 32
      row.hashOffset = this.expectedAt + 32 * k
      row.hashLength = 32
      this.rows.push(row)
      this.owners.push(null)
      this.keys.push(null)
    }
  }

  /**
   * Takes the row into a lane, to be settled by its owner at the next flush(); false when the
   * lanes do not take it, and the caller checks it itself.
   */
  add(owner: LaneOwner, row: WireRow, key: ChainKey): boolean {
    if (row.hashLength !== 32 || row.prevHashLength !== 32 || !key.fast) return false
    if (ChainMessage.room(row) > this.laneBytes) return false
    const k = this.filled
    const message = this.messages[k]!
    if (!message.write(row)) return false
    if (this.keys[k] !== key) this.load(k, key)
    this.lengths[k] = message.length
    const m = this.memory
    const src = row.src
    for (let i = 0, e = this.expectedAt + 32 * k, h = row.hashOffset; i < 32; i++) m[e + i] = src[h + i]!
    const lane = this.rows[k]!
    lane.seq = row.seq
    // The message ends with the row's prev_hash.
    lane.prevHashOffset = this.messagesAt + k * this.laneBytes + message.length - 32
    this.owners[k] = owner
    if (++this.filled === LANES) this.flush()
    return true
  }

  /** Hashes the rows in the lanes and settles each with its owner, in the order they came. */
  flush(): void {
    const n = this.filled
    if (n === 0) return
    for (let k = n; k < LANES; k++) this.lengths[k] = -1
    const signed = this.hmac()
    this.filled = 0
    for (let k = 0; k < n; k++) {
      const owner = this.owners[k]!
      this.owners[k] = null
      const row = this.rows[k]!
      // A break is reported on node:crypto's word only, as ChainKey.signs does (its message is
      // intact: the padding is written after it, and signs() pads it the same way).
      const ok =
        ((signed >>> k) & 1) === 1 ||
        this.keys[k]!.signs(this.messages[k]!, this.memory, row.hashOffset, row.hashLength)
      owner.settle(row, ok)
    }
  }

  /** Lane k hashes with `key` from now on: its prepared states, word j of lane k at 4j + k. */
  private load(k: number, key: ChainKey): void {
    for (let j = 0; j < 8; j++) {
      this.inner[LANES * j + k] = key.inner[j]!
      this.outer[LANES * j + k] = key.outer[j]!
    }
    this.keys[k] = key
  }

  /** Every lane against createHmac, at lengths around the block boundaries and with uneven lanes. */
  private selfTest(): boolean {
    // A key of its own in each lane: a lane that hashed with another's would fail.
    const keys = [32, 48, 64, 100].map(
      (n, k) => new ChainKey({ kid: `self-test-${k}`, bytes: randomBytes(n) }),
    )
    const lengths = [0, 55, 56, 63, 64, 119, 120, 183, 184, 247, 248, 500, 1000, this.laneBytes - 72, 1, 2]
    for (let k = 0; k < LANES; k++) this.load(k, keys[k]!)
    for (let i = 0; i < lengths.length; i += LANES) {
      let want = 0
      for (let k = 0; k < LANES; k++) {
        const length = lengths[i + k]!
        const start = this.messagesAt + k * this.laneBytes
        const message = randomBytes(length)
        message.copy(this.memory, start)
        this.lengths[k] = length
        const expected = createHmac('sha256', keys[k]!.key.bytes).update(message).digest()
        // Every other lane claims a wrong hash, which must not pass.
        if ((i / LANES + k) % 2 === 1) expected[k] = expected[k]! ^ 1
        else want |= 1 << k
        expected.copy(this.memory, this.expectedAt + 32 * k)
      }
      if (this.hmac() !== want) return false
    }
    this.keys.fill(null)
    return true
  }
}
