/**
 * Ledger writes: topup, consume, reserve, commit, cancel, expire. Each is applied exactly once
 * (idempotency keys), never takes a balance below zero (checked on the locked row, then the
 * UPDATE is conditional on that row being unchanged, and the CHECKs are the last line), and
 * appends one row to the tenant's audit chain in the same transaction as the balance.
 *
 * Why the SQL is sent as two simple-protocol batches with escaped literals: the audit hash needs
 * the balance after the change, which only exists once the account row is locked, and the HMAC
 * key must not travel to the server. So batch 1 locks and reads the row (BEGIN; SELECT ... FOR
 * UPDATE; the key), the change and its hash are computed here, and batch 2 is one statement that
 * updates the account and inserts the transaction, the chain link and the key, then COMMITs. Two
 * round trips, one account UPDATE: the hot row stays locked as briefly as this design allows.
 * Every value is either validated (tenant ids, uuids, integers) or escaped with pg's escapeLiteral.
 */
import { createHash, randomUUID } from 'node:crypto'
import pg from 'pg'
import type { Keyring } from '../config/secrets.js'
import { isConnectionError, isTimeout, toTimeoutError } from '../db/pg-errors.js'
import { withRetry } from '../db/retry.js'
import { ConflictError, OperationError, UsageError } from '../errors.js'
import { chainHash, GENESIS } from '../audit/chain.js'
import { encryptPaymentToken, maskToken } from '../crypto/payment.js'

export type LedgerRequest =
  | {
      kind: 'topup'
      tenantId: string
      amount: number
      description?: string | null
      paymentToken?: string | null
      paymentMethod?: string | null
    }
  | { kind: 'consume'; tenantId: string; amount: number; description?: string | null }
  | { kind: 'reserve'; tenantId: string; amount: number; ttlMs: number; description?: string | null }
  | { kind: 'commit'; reservationId: string; amount?: number | null }
  | { kind: 'cancel'; reservationId: string }
  /** Internal (credits gc): release a held reservation whose time ran out, on database time. */
  | { kind: 'expire'; reservationId: string }

export interface LedgerResult {
  transaction_id: string
  tenant_id: string
  kind: LedgerRequest['kind']
  amount: number
  balance: number
  reserved: number
  available: number
  replayed: boolean
  idempotency_key: string
  reservation_id?: string
  expires_at?: string
  /** The account version after this change: guards the balance cache. Not in --json output. */
  version: number
}

export interface LedgerKeys {
  audit: Keyring
  /** Needed only for a topup that carries a payment token. */
  payment?: Keyring
}

export interface ApplyOptions {
  /** 'transaction': BEGIN/COMMIT per operation. 'savepoint': inside the caller's transaction. */
  mode?: 'transaction' | 'savepoint'
  timeoutMs?: number
}

/** Idempotency keys live this long; a replay after that is a new operation. */
export const IDEMPOTENCY_TTL = '24 hours'

const lit = pg.escapeLiteral
const bytea = (b: Buffer) => `'\\x${b.toString('hex')}'::bytea`
const int = (n: number) => {
  if (!Number.isSafeInteger(n)) throw new Error(`not an integer: ${n}`)
  return String(n)
}
const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest()

/** What identifies a request: the same key with a different fingerprint is a conflict (exit 5). */
export function requestFingerprint(req: LedgerRequest): Buffer {
  const parts: unknown[] = [req.kind]
  switch (req.kind) {
    case 'topup':
      parts.push(req.tenantId, req.amount, req.description ?? null, req.paymentMethod ?? null)
      // The token itself never goes into the database, not even inside a hash input we store.
      parts.push(req.paymentToken ? sha256(req.paymentToken).toString('hex') : null)
      break
    case 'consume':
      parts.push(req.tenantId, req.amount, req.description ?? null)
      break
    case 'reserve':
      parts.push(req.tenantId, req.amount, req.ttlMs, req.description ?? null)
      break
    case 'commit':
      parts.push(req.reservationId, req.amount ?? null)
      break
    case 'cancel':
    case 'expire':
      parts.push(req.reservationId)
      break
  }
  return sha256(JSON.stringify(parts))
}

/** Apply one operation, retrying on serialization failures, deadlocks and lost connections. */
export async function applyOperation(
  pool: pg.Pool,
  req: LedgerRequest,
  idempotencyKey: string,
  keys: LedgerKeys,
  options: ApplyOptions = {},
): Promise<LedgerResult> {
  try {
    return await withRetry(
      async () => {
        const client = await pool.connect()
        let failed: unknown
        try {
          return await applyOn(client, req, idempotencyKey, keys, { ...options, mode: 'transaction' })
        } catch (err) {
          failed = err
          throw err
        } finally {
          client.release(isConnectionError(failed) ? (failed as Error) : undefined)
        }
      },
      // The idempotency key makes a retry after a lost COMMIT safe: it replays instead.
      { maxAttempts: 8, onConnectionLoss: true, retryIf: isDuplicateKeyRace },
    )
  } catch (err) {
    if (isTimeout(err)) throw toTimeoutError(err, `credits ${req.kind}`, options.timeoutMs ?? 0)
    throw err
  }
}

/** Two requests with the same new key raced; the loser retries and then replays. */
export function isDuplicateKeyRace(err: unknown): boolean {
  const e = err as { code?: string; constraint?: string }
  return e?.code === '23505' && e.constraint === 'idempotency_keys_pkey'
}

/**
 * Apply one operation on a client the caller holds. In 'savepoint' mode the caller has an open
 * transaction (credits apply): this operation is all-or-nothing on its own inside it.
 */
export async function applyOn(
  client: pg.ClientBase,
  req: LedgerRequest,
  idempotencyKey: string,
  keys: LedgerKeys,
  options: ApplyOptions,
): Promise<LedgerResult> {
  const mode = options.mode ?? 'transaction'
  const begin = mode === 'transaction' ? 'BEGIN' : 'SAVEPOINT ledger_op'
  const abort =
    mode === 'transaction' ? 'ROLLBACK' : 'ROLLBACK TO SAVEPOINT ledger_op; RELEASE SAVEPOINT ledger_op'
  const end = mode === 'transaction' ? 'COMMIT' : 'RELEASE SAVEPOINT ledger_op'

  if (req.kind === 'topup' && req.paymentToken && !keys.payment) {
    throw new UsageError('A payment token needs ENCRYPT_KEY to store it encrypted.')
  }
  const keyHash = sha256(idempotencyKey)
  const fingerprint = requestFingerprint(req)
  const isReservationOp = req.kind === 'commit' || req.kind === 'cancel' || req.kind === 'expire'

  // ---- batch 1: lock the account row (and the reservation), then read the key -------------------------
  // The reservation is locked before the account wherever both are involved: one lock order, no
  // deadlocks. The key is read by a second statement, after the lock: every operation with this key
  // for this tenant is serialized by the account lock, so a replay always sees the first result.
  const batch1: string[] = [begin]
  if (req.kind === 'topup') {
    batch1.push(
      `insert into credits.credit_accounts (tenant_id) values (${lit(req.tenantId)}) on conflict do nothing`,
    )
  }
  const cols = `a.tenant_id, a.balance, a.reserved, a.version, a.chain_seq, a.chain_head, date_trunc('milliseconds', now()) as ts`
  let tenantExpr: string
  if (isReservationOp) {
    batch1.push(
      `select ${cols}, r.amount as res_amount, r.status as res_status, r.expires_at <= now() as res_expired
         from credits.reservations r join credits.credit_accounts a on a.tenant_id = r.tenant_id
        where r.id = ${lit(req.reservationId)} for update of r, a`,
    )
    tenantExpr = `(select tenant_id from credits.reservations where id = ${lit(req.reservationId)})`
  } else {
    const expires =
      req.kind === 'reserve' ? `, now() + ${int(req.ttlMs)} * interval '1 millisecond' as res_expires_at` : ''
    batch1.push(
      `select ${cols}${expires} from credits.credit_accounts a where a.tenant_id = ${lit(req.tenantId)} for update of a`,
    )
    tenantExpr = lit(req.tenantId)
  }
  batch1.push(
    `select request_hash, response, expires_at <= now() as key_expired from credits.idempotency_keys
      where tenant_id = ${tenantExpr} and key_hash = ${bytea(keyHash)}`,
  )

  let results: pg.QueryResult[]
  try {
    results = (await client.query(batch1.join(';\n'))) as unknown as pg.QueryResult[]
  } catch (err) {
    if (!isConnectionError(err)) await client.query(abort).catch(() => {})
    throw err
  }
  const row = results.at(-2)!.rows[0] as LockedRow | undefined
  const key = results.at(-1)!.rows[0] as StoredKey | undefined

  if (key && !key.key_expired) {
    await client.query(abort)
    if (!key.request_hash.equals(fingerprint)) {
      throw new ConflictError(
        `Idempotency key '${idempotencyKey}' was already used for a different request; nothing was changed.`,
        {
          code: 'IDEMPOTENCY_KEY_REUSED',
          hint: 'Use a new key for a new operation, or repeat the original request exactly.',
        },
      )
    }
    return { ...key.response, replayed: true, idempotency_key: idempotencyKey }
  }

  // ---- decide, on the locked row -------------------------------------------------------------------
  const plan = row ? planChange(req, row) : null
  if (!row || plan instanceof Error) {
    await client.query(abort)
    throw row ? plan : missing(req)
  }
  const change = plan as Change
  const balance = Number(row.balance) + change.balanceDelta
  const reserved = Number(row.reserved) + change.reservedDelta
  const seq = Number(row.chain_seq) + 1
  const version = Number(row.version) + 1
  const transactionId = randomUUID()
  const signing = keys.audit.current
  const tenant = row.tenant_id
  const prevHash = row.chain_head ?? GENESIS
  const hash = chainHash(
    signing,
    {
      tenant_id: tenant,
      seq,
      transaction_id: transactionId,
      action: req.kind,
      amount: change.amount,
      balance_after: balance,
      reserved_after: reserved,
      key_id: signing.kid,
      created_at: row.ts,
    },
    prevHash,
  )
  const reservationIdOut =
    req.kind === 'reserve' ? randomUUID() : isReservationOp ? req.reservationId : undefined
  const response: StoredResponse = {
    transaction_id: transactionId,
    tenant_id: tenant,
    kind: req.kind,
    amount: change.amount,
    balance,
    reserved,
    available: balance - reserved,
    ...(reservationIdOut ? { reservation_id: reservationIdOut } : {}),
    ...(req.kind === 'reserve' && row.res_expires_at
      ? { expires_at: new Date(row.res_expires_at).toISOString() }
      : {}),
    version,
  }

  // ---- batch 2: every write in one statement, each conditional on the account update; commit ----------
  let paymentMasked = 'null'
  let paymentEncrypted = 'null'
  if (req.kind === 'topup' && req.paymentToken && keys.payment) {
    paymentMasked = lit(maskToken(req.paymentToken))
    paymentEncrypted = bytea(encryptPaymentToken(req.paymentToken, keys.payment, { tenantId: tenant }))
  }
  const description = 'description' in req && req.description ? lit(req.description) : 'null'
  const ts = lit(row.ts.toISOString())
  const ctes: string[] = [
    // The guard: the row we locked and read is still at this seq, and the CHECKs hold.
    `u as (update credits.credit_accounts set balance = ${int(balance)}, reserved = ${int(reserved)}, version = ${int(version)},
             chain_seq = ${int(seq)}, chain_head = ${bytea(hash)}, updated_at = now()
           where tenant_id = ${lit(tenant)} and chain_seq = ${int(seq - 1)} returning tenant_id)`,
    `t as (insert into credits.credit_transactions (id, tenant_id, kind, amount, balance_after, reservation_id, idempotency_key_hash, description, payment_masked, payment_encrypted, created_at)
           select ${lit(transactionId)}, ${lit(tenant)}, ${lit(req.kind)}, ${int(change.amount)}, ${int(balance)}, ${reservationIdOut ? lit(reservationIdOut) : 'null'}, ${bytea(keyHash)}, ${description}, ${paymentMasked}, ${paymentEncrypted}, ${ts} from u)`,
    `l as (insert into credits.audit_logs (tenant_id, seq, transaction_id, action, amount, balance_after, reserved_after, key_id, prev_hash, hash, created_at)
           select ${lit(tenant)}, ${int(seq)}, ${lit(transactionId)}, ${lit(req.kind)}, ${int(change.amount)}, ${int(balance)}, ${int(reserved)}, ${lit(signing.kid)}, ${bytea(prevHash)}, ${bytea(hash)}, ${ts} from u)`,
    // A key past its TTL names a new operation: replace it (we hold the lock that guards it).
    // Otherwise a plain insert, whose unique key is the last guard against applying twice.
    `k as (insert into credits.idempotency_keys (tenant_id, key_hash, request_hash, response, created_at, expires_at)
           select ${lit(tenant)}, ${bytea(keyHash)}, ${bytea(fingerprint)}, ${lit(JSON.stringify(response))}, ${ts}, ${ts}::timestamptz + interval '${IDEMPOTENCY_TTL}' from u
           ${
             key?.key_expired
               ? `on conflict (tenant_id, key_hash) do update set request_hash = excluded.request_hash, response = excluded.response,
                  created_at = excluded.created_at, expires_at = excluded.expires_at`
               : ''
           })`,
  ]
  if (req.kind === 'reserve') {
    ctes.push(
      `r as (insert into credits.reservations (id, tenant_id, amount, status, expires_at, created_at)
             select ${lit(reservationIdOut!)}, ${lit(tenant)}, ${int(req.amount)}, 'held', ${lit(new Date(row.res_expires_at!).toISOString())}, ${ts} from u)`,
    )
  } else if (isReservationOp) {
    const status = req.kind === 'commit' ? 'committed' : req.kind === 'cancel' ? 'cancelled' : 'expired'
    const committed = req.kind === 'commit' ? int(change.amount) : 'null'
    ctes.push(
      `r as (update credits.reservations set status = '${status}', committed_amount = ${committed}, settled_at = ${ts}
             where id = ${lit(req.reservationId)} and status = 'held' and exists (select 1 from u))`,
    )
  }
  const batch2 = `with ${ctes.join(',\n')}\nselect count(*)::int as applied from u;\n${end}`
  let applied: number
  try {
    const out = (await client.query(batch2)) as unknown as pg.QueryResult<{ applied: number }>[]
    applied = out[0]!.rows[0]!.applied
  } catch (err) {
    if (!isConnectionError(err)) await client.query(abort).catch(() => {})
    // The key insert lost a race with the same key (or its expired twin): retry, which replays.
    throw err
  }
  if (applied !== 1) {
    // Cannot happen while we hold the row lock; if it does, nothing was written (every insert hangs off u).
    throw new OperationError(
      `The account of '${tenant}' changed underneath a locked operation; nothing was applied.`,
      {
        code: 'LEDGER_CONFLICT',
      },
    )
  }
  return { ...response, replayed: false, idempotency_key: idempotencyKey }
}

type StoredResponse = Omit<LedgerResult, 'idempotency_key' | 'replayed'>

interface StoredKey {
  request_hash: Buffer
  response: StoredResponse
  key_expired: boolean
}

interface LockedRow {
  tenant_id: string
  balance: string
  reserved: string
  version: string
  chain_seq: string
  chain_head: Buffer | null
  ts: Date
  res_expires_at?: Date | null
  res_amount?: string
  res_status?: string
  res_expired?: boolean
}

interface Change {
  amount: number
  balanceDelta: number
  reservedDelta: number
}

/** What the operation does to the locked row, or why it cannot: the figures are in the sentence. */
function planChange(req: LedgerRequest, row: LockedRow): Change | Error {
  const balance = Number(row.balance)
  const reserved = Number(row.reserved)
  const available = balance - reserved
  switch (req.kind) {
    case 'topup':
      return { amount: req.amount, balanceDelta: req.amount, reservedDelta: 0 }
    case 'consume':
    case 'reserve':
      if (available < req.amount) {
        return new OperationError(
          `Insufficient credits: tenant '${req.tenantId}' has ${available} available (balance ${balance}, reserved ${reserved}); cannot ${req.kind} ${req.amount}.`,
          {
            code: 'INSUFFICIENT_CREDITS',
            data: { tenant_id: req.tenantId, balance, reserved, available, requested: req.amount },
          },
        )
      }
      return req.kind === 'consume'
        ? { amount: req.amount, balanceDelta: -req.amount, reservedDelta: 0 }
        : { amount: req.amount, balanceDelta: 0, reservedDelta: req.amount }
    case 'commit':
    case 'cancel':
    case 'expire': {
      const held = Number(row.res_amount)
      if (row.res_status !== 'held') {
        return new OperationError(
          `Reservation ${req.reservationId} is already ${row.res_status}; nothing was changed.`,
          {
            code: 'RESERVATION_NOT_HELD',
            data: { status: row.res_status },
          },
        )
      }
      if (req.kind === 'commit') {
        if (row.res_expired) {
          return new OperationError(
            `Reservation ${req.reservationId} expired before it was committed; its credits are released by 'credits gc'.`,
            { code: 'RESERVATION_EXPIRED' },
          )
        }
        const spend = req.amount ?? held
        if (spend > held) {
          return new OperationError(
            `Cannot commit ${spend} credits: reservation ${req.reservationId} holds only ${held}.`,
            {
              code: 'COMMIT_EXCEEDS_RESERVATION',
              data: { reserved: held, requested: spend },
            },
          )
        }
        return { amount: spend, balanceDelta: -spend, reservedDelta: -held }
      }
      if (req.kind === 'expire' && !row.res_expired) {
        return new OperationError(`Reservation ${req.reservationId} has not expired yet.`, {
          code: 'RESERVATION_NOT_HELD',
        })
      }
      return { amount: held, balanceDelta: 0, reservedDelta: -held }
    }
  }
}

function missing(req: LedgerRequest): Error {
  if (req.kind === 'commit' || req.kind === 'cancel' || req.kind === 'expire') {
    return new OperationError(`Reservation ${req.reservationId} does not exist.`, {
      code: 'RESERVATION_NOT_FOUND',
    })
  }
  return new OperationError(`Tenant '${req.tenantId}' has no credits account; top it up first.`, {
    code: 'ACCOUNT_NOT_FOUND',
  })
}
