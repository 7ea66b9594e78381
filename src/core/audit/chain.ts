/**
 * The audit chain's arithmetic, shared by the writer (ledger) and the verifier: the canonical
 * form of a row and its keyed hash. Per tenant, row n stores
 *   hash = HMAC-SHA256(key[key_id], canonical(row n) || prev_hash)
 * with prev_hash of row 1 = 32 zero bytes. Changing the format breaks every chain: version it.
 */
import { createHmac } from 'node:crypto'
import type { Key } from '../config/secrets.js'

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

/** JSON of a fixed-order array: unambiguous, and the same in every language that reads it. */
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
    row.created_at.toISOString(),
  ])
}

export function chainHash(key: Key, row: AuditRow, prevHash: Buffer): Buffer {
  return createHmac('sha256', key.bytes).update(canonical(row)).update(prevHash).digest()
}
