/**
 * Checking one tenant's chain, row by row in seq order, with one row of look-ahead (enough to tell
 * two swapped neighbours from an edited row). Pure: no I/O, so the same code runs in a worker
 * thread or in the main thread, and is tested directly.
 */
import type { Key } from '../config/secrets.js'
import { type AuditRow, chainHash, GENESIS } from './chain.js'

export type BreakReason = 'hash_mismatch' | 'missing_row' | 'reordered' | 'truncated' | 'unknown_key'

export interface Broken {
  tenant_id: string
  seq: number
  reason: BreakReason
}

export interface StoredRow extends AuditRow {
  prev_hash: Buffer
  hash: Buffer
}

export interface Head {
  seq: number
  /** hex */
  head: string
}

export class TenantChecker {
  private expectedSeq = 1
  private prevHash: Buffer = GENESIS
  private pending: StoredRow | null = null
  private broken: Broken | null = null
  rows = 0

  constructor(
    readonly tenantId: string,
    private readonly keys: ReadonlyMap<string, Key>,
    private readonly checkpoint?: Head,
  ) {}

  push(row: StoredRow): void {
    this.rows++
    if (this.pending) this.check(this.pending, row)
    this.pending = row
  }

  /**
   * After the last row: compare the end of the chain with the account's head and the checkpoint.
   * Returns the first broken link, or null if the chain is intact.
   */
  finish(account: { seq: number; head: Buffer | null } | null): Broken | null {
    if (this.pending) this.check(this.pending, null)
    this.pending = null
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

  private check(row: StoredRow, next: StoredRow | null): void {
    if (this.broken) return
    if (row.seq !== this.expectedSeq) {
      this.fail(this.expectedSeq, row.seq > this.expectedSeq ? 'missing_row' : 'reordered')
      return
    }
    const key = this.keys.get(row.key_id)
    if (!key) {
      this.fail(row.seq, 'unknown_key')
      return
    }
    const signed = chainHash(key, row, row.prev_hash).equals(row.hash)
    const linked = row.prev_hash.equals(this.prevHash)
    if (!signed || !linked) {
      // A genuine row that points at its successor, or at something other than its predecessor,
      // has been moved; anything else was edited or forged.
      const moved = (next !== null && row.prev_hash.equals(next.hash)) || (signed && !linked)
      this.fail(row.seq, moved ? 'reordered' : 'hash_mismatch')
      return
    }
    if (
      this.checkpoint &&
      row.seq === this.checkpoint.seq &&
      row.hash.toString('hex') !== this.checkpoint.head
    ) {
      // The chain no longer holds the head we signed: it was cut back and grown again.
      this.fail(row.seq, 'truncated')
      return
    }
    this.prevHash = row.hash
    this.expectedSeq++
  }
}
