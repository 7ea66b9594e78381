/**
 * Checking one tenant's chain, row by row in seq order, with one row of look-ahead (enough to tell
 * two swapped neighbours from an edited row). Pure: no I/O, so the same code runs in a worker
 * thread or in the main thread, and is tested directly.
 *
 * Rows arrive as WireRows (see chain.ts) whose bytes are only valid during push(): each row is
 * checked as it arrives, and the one thing the look-ahead needs from a row that failed (its
 * prev_hash) is copied until the next row has been seen.
 */
import { type ChainKey, ChainMessage, GENESIS, type WireRow } from './chain.js'
import type { HmacLanes, LaneOwner } from './hmac-lanes.js'

export type BreakReason =
  | 'hash_mismatch'
  | 'missing_row'
  | 'reordered'
  | 'truncated'
  | 'unknown_key'
  /** The account's balance or reservation is not what its chain's head row says (verify.ts). */
  | 'balance_mismatch'

export interface Broken {
  tenant_id: string
  seq: number
  reason: BreakReason
}

export interface Head {
  seq: number
  /** hex */
  head: string
}

/** canonical(row) || prev_hash of the row being checked: one per thread, rows are checked one at a time. */
const message = new ChainMessage()

export class TenantChecker implements LaneOwner {
  private expectedSeq = 1
  /** The hash of the last verified row (GENESIS before the first). */
  private readonly prevHash = Buffer.from(GENESIS)
  /** A row that is not signed by its own prev_hash: reordered or edited, the next row will tell. */
  private undecided: { seq: number; prevHash: Buffer | null } | null = null
  private broken: Broken | null = null
  rows = 0

  /**
   * @param lanes where rows are hashed four at a time (one per reader, shared by its checkers);
   *   null: each row is hashed as it comes
   */
  constructor(
    readonly tenantId: string,
    private readonly checkpoint?: Head,
    private readonly lanes: HmacLanes | null = null,
  ) {}

  /** False once the chain is broken: the rest of its rows need not be decoded, only counted. */
  get wantsRows(): boolean {
    return this.broken === null
  }

  /**
   * The next row in seq order; `key` is the key its key_id names, undefined if we do not hold it.
   * With lanes, the row may only be decided at the lanes' next flush (finish() flushes).
   */
  push(row: WireRow, key: ChainKey | undefined): void {
    this.rows++
    // A broken chain stays broken: nothing a later row says changes its first break.
    if (this.broken) return
    if (this.lanes) {
      if (key && this.lanes.add(this, row, key)) return
      // Rows still in the lanes (this tenant's among them) are decided before this one.
      this.lanes.flush()
    }
    const signed =
      key !== undefined && message.write(row) && key.signs(message, row.src, row.hashOffset, row.hashLength)
    this.decideRow(row, key !== undefined, signed)
  }

  /** A row back from the lanes, its key held and its HMAC known. */
  settle(row: WireRow, signed: boolean): void {
    this.decideRow(row, true, signed)
  }

  /** The row's place in the chain, once its HMAC is known. */
  private decideRow(row: WireRow, keyHeld: boolean, signed: boolean): void {
    if (this.undecided) this.decide(row)
    if (this.broken) return
    if (row.seq !== this.expectedSeq) {
      this.fail(this.expectedSeq, row.seq > this.expectedSeq ? 'missing_row' : 'reordered')
      return
    }
    if (!keyHeld) {
      this.fail(row.seq, 'unknown_key')
      return
    }
    const linked = bytesEqual(row.src, row.prevHashOffset, row.prevHashLength, this.prevHash)
    if (!signed || !linked) {
      // A genuine row that points at its successor, or at something other than its predecessor,
      // has been moved; anything else was edited or forged.
      if (signed) this.fail(row.seq, 'reordered')
      else {
        const prev =
          row.prevHashLength < 0
            ? null
            : Buffer.from(row.src.subarray(row.prevHashOffset, row.prevHashOffset + row.prevHashLength))
        this.undecided = { seq: row.seq, prevHash: prev }
      }
      return
    }
    if (
      this.checkpoint &&
      row.seq === this.checkpoint.seq &&
      row.src.toString('hex', row.hashOffset, row.hashOffset + row.hashLength) !== this.checkpoint.head
    ) {
      // The chain no longer holds the head we signed: it was cut back and grown again.
      this.fail(row.seq, 'truncated')
      return
    }
    for (let i = 0; i < 32; i++) this.prevHash[i] = row.src[row.hashOffset + i]!
    this.expectedSeq++
  }

  /**
   * After the last row: compare the end of the chain with the account's head and the checkpoint.
   * Returns the first broken link, or null if the chain is intact.
   */
  finish(account: { seq: number; head: Buffer | null } | null): Broken | null {
    this.lanes?.flush()
    if (this.undecided) this.decide(null)
    if (this.broken) return this.broken
    const lastSeq = this.expectedSeq - 1
    if (this.checkpoint && lastSeq < this.checkpoint.seq) return this.fail(lastSeq + 1, 'truncated')
    if (account) {
      if (account.seq > lastSeq) return this.fail(lastSeq + 1, 'truncated')
      // Rows past the head the account knows: appended by something other than the ledger.
      if (account.seq < lastSeq) return this.fail(account.seq + 1, 'hash_mismatch')
      if (lastSeq > 0 && !(account.head ?? GENESIS).equals(this.prevHash))
        return this.fail(lastSeq, 'hash_mismatch')
    }
    return null
  }

  /** The verified head: what a checkpoint records. */
  get head(): Head {
    return { seq: this.expectedSeq - 1, head: this.prevHash.toString('hex') }
  }

  private fail(seq: number, reason: BreakReason): Broken {
    this.broken ??= { tenant_id: this.tenantId, seq, reason }
    return this.broken
  }

  /** An unsigned row was moved if it points at the row after it (its old successor's hash). */
  private decide(next: WireRow | null): void {
    const { seq, prevHash } = this.undecided!
    this.undecided = null
    const moved =
      next !== null && prevHash !== null && bytesEqual(next.src, next.hashOffset, next.hashLength, prevHash)
    this.fail(seq, moved ? 'reordered' : 'hash_mismatch')
  }
}

/**
 * Whether src[offset, offset + length) holds exactly the bytes of b (length -1: null, never equal).
 * chain.ts exports the same function for the readers; this copy is the hottest comparison of
 * verify-chain (every row's prev_hash) and on its own measured 1.5% faster than sharing that one.
 */
function bytesEqual(src: Buffer, offset: number, length: number, b: Buffer): boolean {
  if (length !== b.length) return false
  for (let i = 0; i < length; i++) if (src[offset + i] !== b[i]) return false
  return true
}
