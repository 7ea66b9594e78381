/**
 * The ledger as the commands use it: the credits database checked to be at the schema version
 * this shieldx expects, the audit (and payment) keys, and the balance cache.
 */
import { AUDIT_KEY_SPEC } from '../audit/chain.js'
import { loadKeyring, PAYMENT_KEY_SPEC } from '../config/secrets.js'
import { cacheUrl, type Settings } from '../config/settings.js'
import { databaseIdentity } from '../db/identity.js'
import type { Database } from '../db/pool.js'
import { assertSchemaCurrent } from '../migrations/current.js'
import { type BalanceCache, createBalanceCache } from './cache.js'
import type { LedgerKeys } from './operations.js'

export interface Ledger {
  db: Database
  keys: LedgerKeys
  cache: BalanceCache
}

export interface OpenLedgerOptions {
  /** Load ENCRYPT_KEY too (a topup with a payment token). */
  paymentKey?: boolean
  /** Connect the balance cache (balance reads and writes; not gc, not verify). */
  cache?: boolean
  notice: (message: string) => void
}

export async function openLedger(
  settings: Settings,
  db: Database,
  options: OpenLedgerOptions,
): Promise<Ledger> {
  // A malformed Redis URL is bad input (exit 2), found before anything else is done.
  const url = options.cache === false ? null : cacheUrl(settings)
  await assertSchemaCurrent(db.pool, settings.migrationsDir.value)
  const audit = loadKeyring(settings.auditHmacKey, AUDIT_KEY_SPEC)
  if (audit.generatedAt) options.notice(`Generated a new audit HMAC key in ${audit.generatedAt} (mode 0600).`)
  const keys: LedgerKeys = { audit: audit.keyring }
  if (options.paymentKey) {
    const payment = loadKeyring(settings.encryptKey, PAYMENT_KEY_SPEC)
    if (payment.generatedAt)
      options.notice(`Generated a new payment-data key in ${payment.generatedAt} (mode 0600).`)
    keys.payment = payment.keyring
  }
  const database = url === null ? undefined : await cacheScope(db, options.notice)
  const cache = createBalanceCache({
    url: database === undefined ? null : url,
    ...(database ? { database } : {}),
    onWarning: options.notice,
  })
  return { db, keys, cache }
}

/**
 * The database's identity, for the cache's keys; undefined (no cache, one warning) if it cannot
 * be read: a cache keyed without it could show another database's balances.
 */
async function cacheScope(db: Database, notice: (message: string) => void): Promise<string | undefined> {
  try {
    return await databaseIdentity(db.pool)
  } catch (err) {
    notice(
      `Cannot tell which database this is (${(err as Error).message}); continuing without the balance cache.`,
    )
    return undefined
  }
}
