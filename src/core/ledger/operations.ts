/**
 * Ledger writes: topup, consume, reserve, commit, cancel, expire. Each is applied exactly once
 * (idempotency keys), never takes a balance below zero (a conditional UPDATE first, CHECKs last),
 * and appends one row to the tenant's audit chain in the same transaction as the balance.
 *
 * Why the SQL is sent as two simple-protocol batches with escaped literals: the audit hash needs
 * the balance after the change, which only exists once the account row is locked, and the HMAC
 * key must not travel to the server. So the row is locked and read in batch 1 (BEGIN; ...;
 * UPDATE ... RETURNING), the hash is computed here, and batch 2 writes the rest and COMMITs.
 * Two round trips instead of one per statement keeps the hot row locked as briefly as we can.
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

interface AccountAfter {
  tenant_id: string
  balance: string
  reserved: string
  version: string
  chain_seq: string
  chain_head: Buffer | null
  ts: Date
  res_amount?: string | null
  res_expires_at?: Date | null
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

  const keyHash = sha256(idempotencyKey)
  const fingerprint = requestFingerprint(req)
  const isReservationOp = req.kind === 'commit' || req.kind === 'cancel' || req.kind === 'expire'
  const tenantExpr = isReservationOp
    ? `(select tenant_id from credits.reservations where id = ${lit(req.reservationId)})`
    : lit(req.tenantId)

  // ---- batch 1: begin, look up the key, lock and change the account row -------------------------
  const batch1: string[] = [begin]
  if (req.kind === 'topup') {
    batch1.push(
      `insert into credits.credit_accounts (tenant_id) values (${lit(req.tenantId)}) on conflict do nothing`,
    )
  }
  batch1.push(
    `delete from credits.idempotency_keys where tenant_id = ${tenantExpr} and key_hash = ${bytea(keyHash)} and expires_at <= now()`,
  )
  const idemAt = batch1.length
  batch1.push(
    `select request_hash, response from credits.idempotency_keys where tenant_id = ${tenantExpr} and key_hash = ${bytea(keyHash)}`,
  )
  let reservationAt = -1
  if (isReservationOp) {
    reservationAt = batch1.length
    // Lock the reservation before the account (the same order everywhere: no deadlocks), so a
    // concurrent commit and cancel of one reservation cannot both release it.
    batch1.push(
      `select tenant_id, amount, status, expires_at <= now() as expired from credits.reservations where id = ${lit(req.reservationId)} for update`,
    )
  }
  const notReplay = `not exists (select 1 from credits.idempotency_keys k where k.tenant_id = a.tenant_id and k.key_hash = ${bytea(keyHash)})`
  const returning = `returning a.tenant_id, a.balance, a.reserved, a.version, a.chain_seq, a.chain_head, date_trunc('milliseconds', now()) as ts`
  const bump = 'version = a.version + 1, chain_seq = a.chain_seq + 1, updated_at = now()'
  const updateAt = batch1.length
  switch (req.kind) {
    case 'topup':
      batch1.push(
        `update credits.credit_accounts a set balance = a.balance + ${int(req.amount)}, ${bump} where a.tenant_id = ${lit(req.tenantId)} and ${notReplay} ${returning}`,
      )
      break
    case 'consume':
      batch1.push(
        `update credits.credit_accounts a set balance = a.balance - ${int(req.amount)}, ${bump} where a.tenant_id = ${lit(req.tenantId)} and a.balance - a.reserved >= ${int(req.amount)} and ${notReplay} ${returning}`,
      )
      break
    case 'reserve':
      batch1.push(
        `update credits.credit_accounts a set reserved = a.reserved + ${int(req.amount)}, ${bump} where a.tenant_id = ${lit(req.tenantId)} and a.balance - a.reserved >= ${int(req.amount)} and ${notReplay} ${returning}, (now() + ${int(req.ttlMs)} * interval '1 millisecond') as res_expires_at`,
      )
      break
    case 'commit': {
      const spend = req.amount == null ? 'r.amount' : int(req.amount)
      batch1.push(
        `update credits.credit_accounts a set balance = a.balance - ${spend}, reserved = a.reserved - r.amount, ${bump} from credits.reservations r where r.id = ${lit(req.reservationId)} and r.tenant_id = a.tenant_id and r.status = 'held' and r.expires_at > now() and ${spend} <= r.amount and ${notReplay} ${returning}, r.amount as res_amount`,
      )
      break
    }
    case 'cancel':
    case 'expire':
      batch1.push(
        `update credits.credit_accounts a set reserved = a.reserved - r.amount, ${bump} from credits.reservations r where r.id = ${lit(req.reservationId)} and r.tenant_id = a.tenant_id and r.status = 'held'${req.kind === 'expire' ? ' and r.expires_at <= now()' : ''} and ${notReplay} ${returning}, r.amount as res_amount`,
      )
      break
  }

  let results: pg.QueryResult[]
  try {
    results = (await client.query(batch1.join(';\n'))) as unknown as pg.QueryResult[]
  } catch (err) {
    await client.query(abort).catch(() => {})
    throw err
  }

  const idem = results[idemAt]!.rows[0] as
    { request_hash: Buffer; response: Omit<LedgerResult, 'idempotency_key' | 'replayed'> } | undefined
  if (idem) {
    await client.query(abort)
    if (!idem.request_hash.equals(fingerprint)) {
      throw new ConflictError(
        `Idempotency key '${idempotencyKey}' was already used for a different request; nothing was changed.`,
        {
          code: 'IDEMPOTENCY_KEY_REUSED',
          hint: 'Use a new key for a new operation, or repeat the original request exactly.',
        },
      )
    }
    return { ...idem.response, replayed: true, idempotency_key: idempotencyKey }
  }

  const acct = results[updateAt]!.rows[0] as AccountAfter | undefined
  if (!acct) {
    const reason = await explainRefusal(
      client,
      req,
      reservationAt >= 0 ? results[reservationAt]!.rows[0] : undefined,
    )
    await client.query(abort)
    throw reason
  }

  // ---- compute the chain link and the result ---------------------------------------------------
  const balance = Number(acct.balance)
  const reserved = Number(acct.reserved)
  const seq = Number(acct.chain_seq)
  const transactionId = randomUUID()
  const signing = keys.audit.current
  const tenant = acct.tenant_id
  let txAmount: number
  switch (req.kind) {
    case 'commit':
      txAmount = req.amount ?? Number(acct.res_amount)
      break
    case 'cancel':
    case 'expire':
      txAmount = Number(acct.res_amount)
      break
    default:
      txAmount = req.amount
  }
  const auditRow = {
    tenant_id: tenant,
    seq,
    transaction_id: transactionId,
    action: req.kind,
    amount: txAmount,
    balance_after: balance,
    reserved_after: reserved,
    key_id: signing.kid,
    created_at: acct.ts,
  }
  const prevHash = acct.chain_head ?? GENESIS
  const hash = chainHash(signing, auditRow, prevHash)

  const reservationIdOut =
    req.kind === 'reserve' ? randomUUID() : isReservationOp ? req.reservationId : undefined
  const response: Omit<LedgerResult, 'idempotency_key' | 'replayed'> = {
    transaction_id: transactionId,
    tenant_id: tenant,
    kind: req.kind,
    amount: txAmount,
    balance,
    reserved,
    available: balance - reserved,
    ...(reservationIdOut ? { reservation_id: reservationIdOut } : {}),
    ...(req.kind === 'reserve' && acct.res_expires_at
      ? { expires_at: new Date(acct.res_expires_at).toISOString() }
      : {}),
    version: Number(acct.version),
  }

  // ---- batch 2: the transaction row, the reservation, the chain link, the key; commit ----------
  let paymentMasked = 'null'
  let paymentEncrypted = 'null'
  if (req.kind === 'topup' && req.paymentToken) {
    if (!keys.payment) throw new UsageError('A payment token needs ENCRYPT_KEY to store it encrypted.')
    paymentMasked = lit(maskToken(req.paymentToken))
    paymentEncrypted = bytea(encryptPaymentToken(req.paymentToken, keys.payment, { tenantId: tenant }))
  }
  const description = 'description' in req && req.description ? lit(req.description) : 'null'
  const ts = lit(acct.ts.toISOString())
  const batch2: string[] = [
    `insert into credits.credit_transactions (id, tenant_id, kind, amount, balance_after, reservation_id, idempotency_key_hash, description, payment_masked, payment_encrypted, created_at)
     values (${lit(transactionId)}, ${lit(tenant)}, ${lit(req.kind)}, ${int(txAmount)}, ${int(balance)}, ${reservationIdOut ? lit(reservationIdOut) : 'null'}, ${bytea(keyHash)}, ${description}, ${paymentMasked}, ${paymentEncrypted}, ${ts})`,
  ]
  if (req.kind === 'reserve') {
    batch2.push(
      `insert into credits.reservations (id, tenant_id, amount, status, expires_at, created_at) values (${lit(reservationIdOut!)}, ${lit(tenant)}, ${int(req.amount)}, 'held', ${lit(new Date(acct.res_expires_at!).toISOString())}, ${ts})`,
    )
  } else if (req.kind === 'commit') {
    batch2.push(
      `update credits.reservations set status = 'committed', committed_amount = ${int(txAmount)}, settled_at = ${ts} where id = ${lit(req.reservationId)}`,
    )
  } else if (req.kind === 'cancel' || req.kind === 'expire') {
    const status = req.kind === 'cancel' ? 'cancelled' : 'expired'
    batch2.push(
      `update credits.reservations set status = '${status}', settled_at = ${ts} where id = ${lit(req.reservationId)}`,
    )
  }
  batch2.push(
    `insert into credits.audit_logs (tenant_id, seq, transaction_id, action, amount, balance_after, reserved_after, key_id, prev_hash, hash, created_at)
     values (${lit(tenant)}, ${int(seq)}, ${lit(transactionId)}, ${lit(req.kind)}, ${int(txAmount)}, ${int(balance)}, ${int(reserved)}, ${lit(signing.kid)}, ${bytea(prevHash)}, ${bytea(hash)}, ${ts})`,
    `update credits.credit_accounts set chain_head = ${bytea(hash)} where tenant_id = ${lit(tenant)}`,
    `insert into credits.idempotency_keys (tenant_id, key_hash, request_hash, response, created_at, expires_at)
     values (${lit(tenant)}, ${bytea(keyHash)}, ${bytea(fingerprint)}, ${lit(JSON.stringify(response))}, ${ts}, ${ts}::timestamptz + interval '${IDEMPOTENCY_TTL}')`,
    end,
  )
  try {
    await client.query(batch2.join(';\n'))
  } catch (err) {
    if (!isConnectionError(err)) await client.query(abort).catch(() => {})
    throw err
  }
  return { ...response, replayed: false, idempotency_key: idempotencyKey }
}

/** The conditional UPDATE changed nothing: say why, with the figures. */
async function explainRefusal(
  client: pg.ClientBase,
  req: LedgerRequest,
  reservation: { tenant_id: string; amount: string; status: string; expired: boolean } | undefined,
): Promise<Error> {
  if (req.kind === 'commit' || req.kind === 'cancel' || req.kind === 'expire') {
    if (!reservation) {
      return new OperationError(`Reservation ${req.reservationId} does not exist.`, {
        code: 'RESERVATION_NOT_FOUND',
      })
    }
    if (reservation.status !== 'held') {
      return new OperationError(
        `Reservation ${req.reservationId} is already ${reservation.status}; nothing was changed.`,
        {
          code: 'RESERVATION_NOT_HELD',
          data: { status: reservation.status },
        },
      )
    }
    if (req.kind === 'commit' && reservation.expired) {
      return new OperationError(
        `Reservation ${req.reservationId} expired before it was committed; its credits are released by 'credits gc'.`,
        {
          code: 'RESERVATION_EXPIRED',
        },
      )
    }
    if (req.kind === 'commit' && req.amount != null && req.amount > Number(reservation.amount)) {
      return new OperationError(
        `Cannot commit ${req.amount} credits: reservation ${req.reservationId} holds only ${reservation.amount}.`,
        {
          code: 'COMMIT_EXCEEDS_RESERVATION',
          data: { reserved: Number(reservation.amount), requested: req.amount },
        },
      )
    }
    return new OperationError(`Reservation ${req.reservationId} could not be settled.`, {
      code: 'RESERVATION_CONFLICT',
    })
  }
  const { rows } = await client.query<{ balance: string; reserved: string }>(
    'select balance, reserved from credits.credit_accounts where tenant_id = $1',
    [req.tenantId],
  )
  const acct = rows[0]
  if (!acct) {
    return new OperationError(`Tenant '${req.tenantId}' has no credits account; top it up first.`, {
      code: 'ACCOUNT_NOT_FOUND',
    })
  }
  const balance = Number(acct.balance)
  const reserved = Number(acct.reserved)
  const available = balance - reserved
  const verb = req.kind === 'reserve' ? 'reserve' : 'consume'
  return new OperationError(
    `Insufficient credits: tenant '${req.tenantId}' has ${available} available (balance ${balance}, reserved ${reserved}); cannot ${verb} ${req.amount}.`,
    {
      code: 'INSUFFICIENT_CREDITS',
      data: { tenant_id: req.tenantId, balance, reserved, available, requested: req.amount },
    },
  )
}
