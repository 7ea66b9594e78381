/**
 * Each tenant's account as this process's last commit on a pool left it, so that the next topup
 * or consume on it can go in one round trip (statements.ts, WRITE_ONE_UNLOCKED) instead of two.
 *
 * It is only a guess, never trusted: that statement writes nothing unless the account's chain is
 * still exactly where we left it (every change moves the chain), the key is new and the time we
 * chose is within a second of the database's clock. When it writes nothing, the operation goes
 * the way with two round trips, which reads the locked row. Bounded: the least recently used
 * account goes first.
 */
import type pg from 'pg'

/** An account as a committed write left it; `ts` is the time to stamp the next change with. */
export interface KnownAccount {
  tenant: string
  balance: number
  reserved: number
  version: number
  seq: number
  head: Buffer
  ts: Date
}

interface Entry {
  balance: number
  reserved: number
  version: number
  seq: number
  head: Buffer
  /** The time of the account's newest chain row (database time), epoch ms. */
  tsMs: number
}

export class KnownAccounts {
  private readonly accounts = new Map<string, Entry>()
  /** The database's clock minus ours, in ms, as of the last account read under a lock. */
  private offsetMs: number | null = null

  constructor(private readonly max = 10_000) {}

  get size(): number {
    return this.accounts.size
  }

  /**
   * The account, stamped with the database's time now, and always later than its newest row (so
   * that separate transactions never share a time); or undefined.
   */
  get(tenant: string): KnownAccount | undefined {
    const e = this.accounts.get(tenant)
    if (!e || this.offsetMs === null) return undefined
    const { tsMs, ...rest } = e
    return { tenant, ...rest, ts: new Date(Math.max(Date.now() + this.offsetMs, tsMs + 1)) }
  }

  /**
   * The database's now() (epoch ms) of a transaction whose BEGIN we sent at `sentAt` (our clock):
   * it ran just after, and before any wait for a lock, so the difference is the clocks' offset
   * plus the time the message took to arrive.
   */
  sawDatabaseTime(ms: number, sentAt: number): void {
    this.offsetMs = ms - sentAt
  }

  /** After a COMMIT: every written account as the transaction left it. */
  committed(accounts: Iterable<KnownAccount & { written: boolean }>): void {
    for (const a of accounts) {
      if (!a.written) continue
      // Delete first: a Map iterates in insertion order, so the first entry is the least recent.
      this.accounts.delete(a.tenant)
      this.accounts.set(a.tenant, {
        balance: a.balance,
        reserved: a.reserved,
        version: a.version,
        seq: a.seq,
        head: a.head,
        tsMs: a.ts.getTime(),
      })
      if (this.accounts.size > this.max) this.accounts.delete(this.accounts.keys().next().value!)
    }
  }

  /** Forget an account: its write failed, wrote nothing, or its outcome is unknown. */
  delete(tenant: string): void {
    this.accounts.delete(tenant)
  }
}

const byPool = new WeakMap<pg.Pool, KnownAccounts>()

/** The known accounts of a pool (one per pool: what one pool's commits left). */
export function knownAccounts(pool: pg.Pool): KnownAccounts {
  let known = byPool.get(pool)
  if (!known) byPool.set(pool, (known = new KnownAccounts()))
  return known
}
