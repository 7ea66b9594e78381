/**
 * Ledger writes: topup, consume, reserve, commit, cancel, expire. Each is applied exactly once
 * (idempotency keys), never takes a balance below zero (checked on the locked row, then the
 * UPDATE is conditional on that row being unchanged, and the CHECKs are the last line), and
 * appends one row to the tenant's audit chain in the same transaction as the balance.
 *
 * Everything goes through one engine, applySet(): a set of operations (one, a tenant's queue, or
 * a chunk of `credits apply`) in one transaction, in two round trips. The audit hash needs the
 * balance after the change, which only exists once the account row is locked, and the HMAC key
 * must not travel to the server, so:
 *   1. one message: BEGIN; lock the reservations, then the accounts (each in id order); read the
 *      stored idempotency keys (a statement of its own, after the locks; one topup or consume
 *      checks its key inside the write instead, see WRITE_ONE_CHECKED);
 *   2. here: each operation in order against the locked rows, as if applied one by one: a
 *      replay, a refusal (its own error, nothing written for it) or a change, with its chain
 *      link hashed here;
 *   3. one message: one statement writing every account once and every row of every change, each
 *      conditional on its account still being where we read it; COMMIT.
 * A set of one topup or consume on an account this pool's last commit left (known-accounts.ts)
 * skips step 1: it is decided against that account, and its write is a statement on its own that
 * writes nothing unless the account's chain is still where we left it (one round trip; else the
 * two, under the lock).
 * The statements are prepared once per connection (statements.ts). A set is all-or-nothing as a
 * transaction, and each operation in it all-or-nothing on its own: a refused operation writes
 * nothing, and a failure of the whole set (a lost connection, a race on a key) commits nothing,
 * so the retry replays or applies each operation exactly once.
 *
 * applyOperation() adds per-tenant group commit: an operation goes at once when nothing is in
 * flight for its tenant on its pool; operations that arrive while a transaction for that tenant
 * is in flight wait, and go together in the next one.
 * A hot tenant then pays one lock, two round trips and one commit per group instead of per
 * operation; each operation still has its own key, chain row and result. Unrelated tenants never
 * share a transaction.
 */
import crypto, { randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { Keyring } from '../config/secrets.js'
import { isConnectionError, isTimeout, toTimeoutError } from '../db/pg-errors.js'
import { withRetry } from '../db/retry.js'
import { ConflictError, OperationError, type ShieldxError, UsageError } from '../errors.js'
import { chainHash, GENESIS } from '../audit/chain.js'
import { encryptPaymentToken, maskToken } from '../crypto/payment.js'
import { uuidV7 } from '../uuid.js'
import { type KnownAccounts, knownAccounts } from './known-accounts.js'
import * as sql from './statements.js'

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

export type PrintedResult = Omit<LedgerResult, 'version'>

export interface LedgerKeys {
  audit: Keyring
  /** Needed only for a topup that carries a payment token. */
  payment?: Keyring
}

export interface ApplyOptions {
  /** For the message of a timeout (the statement timeout itself is set on the connection). */
  timeoutMs?: number
}

/** Idempotency keys live this long; a replay after that is a new operation. */
export const IDEMPOTENCY_TTL = '24 hours'

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

/** One operation of a set: the request and the client's idempotency key. */
export interface SetItem {
  req: LedgerRequest
  key: string
}

/** What became of one operation of a set: its result, or why it was refused (nothing written). */
export type SetOutcome = { ok: true; result: LedgerResult } | { ok: false; error: ShieldxError }

/** Apply one operation, retrying on serialization failures, deadlocks and lost connections. */
export async function applyOperation(
  pool: pg.Pool,
  req: LedgerRequest,
  idempotencyKey: string,
  keys: LedgerKeys,
  options: ApplyOptions = {},
): Promise<LedgerResult> {
  const item = { req, key: idempotencyKey }
  // A reservation names its tenant only once it is read: those run on their own.
  if (!('tenantId' in req)) return applyAlone(pool, item, keys, options)
  let byTenant = queues.get(pool)
  if (!byTenant) queues.set(pool, (byTenant = new Map()))
  const queue = byTenant.get(req.tenantId)
  if (queue) {
    // A transaction for this tenant is in flight: wait for the next group.
    return new Promise((resolve, reject) => queue.push({ item, keys, options, resolve, reject }))
  }
  // Nothing in flight for this tenant: go now; whatever queues meanwhile goes next, together.
  const behind: Waiting[] = []
  byTenant.set(req.tenantId, behind)
  try {
    return await applyAlone(pool, item, keys, options)
  } finally {
    if (behind.length === 0) byTenant.delete(req.tenantId)
    else void drain(pool, byTenant, req.tenantId, behind)
  }
}

/** One operation in a transaction of its own: its result, or its error. */
async function applyAlone(pool: pg.Pool, item: SetItem, keys: LedgerKeys, options: ApplyOptions) {
  let outcome: SetOutcome
  try {
    outcome = (await applySetWithRetry(pool, [item], keys))[0]!
  } catch (err) {
    throw isTimeout(err) ? toTimeoutError(err, `credits ${item.req.kind}`, options.timeoutMs ?? 0) : err
  }
  if (!outcome.ok) throw outcome.error
  return outcome.result
}

/** Two requests with the same new key raced; the loser retries and then replays. */
export function isDuplicateKeyRace(err: unknown): boolean {
  const e = err as { code?: string; constraint?: string }
  return e?.code === '23505' && e.constraint === 'idempotency_keys_pkey'
}

/** Worth running the whole set again: its keys make that a replay of whatever committed. */
export function isRetryableSetError(err: unknown): boolean {
  return isDuplicateKeyRace(err) || sql.isStalePrepared(err)
}

// ---- group commit ------------------------------------------------------------------------------

interface Waiting {
  item: SetItem
  keys: LedgerKeys
  options: ApplyOptions
  resolve: (r: LedgerResult) => void
  reject: (err: unknown) => void
}

/** Operations per transaction at most; more wait for the next one. */
const MAX_GROUP = 64

/** Per pool, per tenant: the operations waiting while one transaction for the tenant is in flight. */
const queues = new WeakMap<pg.Pool, Map<string, Waiting[]>>()

/**
 * The operations that queued behind a tenant's transaction: one transaction at a time, each
 * taking every operation waiting when it starts.
 */
async function drain(pool: pg.Pool, byTenant: Map<string, Waiting[]>, tenant: string, queue: Waiting[]) {
  try {
    while (queue.length > 0) {
      const keys = queue[0]!.keys
      const group: Waiting[] = []
      for (let i = 0; i < queue.length && group.length < MAX_GROUP;) {
        if (queue[i]!.keys === keys) group.push(...queue.splice(i, 1))
        else i++
      }
      await runGroup(pool, group)
      // Let the callers just answered send their next operation before deciding the queue is empty.
      await new Promise((resolve) => setImmediate(resolve))
    }
  } finally {
    byTenant.delete(tenant)
  }
}

/** Apply a group in one transaction (with retries) and answer each caller; never throws. */
async function runGroup(pool: pg.Pool, group: Waiting[]): Promise<void> {
  const keys = group[0]!.keys
  try {
    const outcomes = await applySetWithRetry(
      pool,
      group.map((w) => w.item),
      keys,
    )
    outcomes.forEach((o, i) => (o.ok ? group[i]!.resolve(o.result) : group[i]!.reject(o.error)))
  } catch (err) {
    if (group.length > 1 && !isTimeout(err) && !isConnectionError(err)) {
      // The whole set failed for a reason no retry cured: apply each on its own, so that the
      // error lands on the operation it belongs to and the others go through.
      for (const w of group) await runGroup(pool, [w])
      return
    }
    for (const w of group) {
      w.reject(
        isTimeout(err) ? toTimeoutError(err, `credits ${w.item.req.kind}`, w.options.timeoutMs ?? 0) : err,
      )
    }
  }
}

async function applySetWithRetry(pool: pg.Pool, items: SetItem[], keys: LedgerKeys): Promise<SetOutcome[]> {
  return withRetry(
    async () => {
      const client = await pool.connect()
      let failed: unknown
      try {
        return await applySet(client, items, keys, { transaction: 'own', known: knownAccounts(pool) })
      } catch (err) {
        failed = err
        throw err
      } finally {
        client.release(isConnectionError(failed) ? (failed as Error) : undefined)
      }
    },
    // The idempotency keys make a retry after a lost COMMIT safe: it replays instead.
    { maxAttempts: 8, onConnectionLoss: true, retryIf: isRetryableSetError },
  )
}

// ---- the engine ------------------------------------------------------------------------------

export interface SetOptions {
  /**
   * 'own': BEGIN and COMMIT here. 'open': BEGIN here, and the transaction is left open for the
   * caller to COMMIT (credits apply). On an error both roll back before throwing.
   */
  transaction: 'own' | 'open'
  /**
   * For one topup or consume in its own transaction: check the key inside the write instead of
   * reading it first (one statement less). Off for the second, long way (when the write found a
   * key: a replay, a conflict or an expired key).
   */
  checkKeyInWrite?: boolean
  /**
   * The accounts as this pool's last commits left them: a set of one topup or consume on a known
   * account goes in one round trip (WRITE_ONE_UNLOCKED), and every commit here updates them.
   */
  known?: KnownAccounts
}

/**
 * Apply operations in order in one transaction on a client the caller holds. Returns one outcome
 * per item; throws (having rolled back) when the set as a whole failed, and then nothing of it
 * was written.
 */
export async function applySet(
  client: pg.ClientBase,
  items: SetItem[],
  keys: LedgerKeys,
  options: SetOptions,
): Promise<SetOutcome[]> {
  try {
    return await applySetOnce(client, items, keys, options)
  } catch (err) {
    // Whatever failed, a failed statement or an error of our own between the round trips (a bad
    // value, a bug), the transaction must not stay open on a pooled connection, where the next
    // caller's statements would run inside it. pg knows whether one is open (a statement that is
    // its own transaction leaves none).
    if (!isConnectionError(err) && transactionStatus(client) !== 'I') {
      await client.query('rollback').catch(() => {})
    }
    throw err
  }
}

/** pg's view of the connection: 'I' idle, 'T' in a transaction, 'E' in a failed one. */
function transactionStatus(client: pg.ClientBase): string | null {
  return (
    (client as unknown as { getTransactionStatus?: () => string | null }).getTransactionStatus?.() ?? null
  )
}

async function applySetOnce(
  client: pg.ClientBase,
  items: SetItem[],
  keys: LedgerKeys,
  options: SetOptions,
): Promise<SetOutcome[]> {
  const outcomes: SetOutcome[] = new Array(items.length)
  const ops: Op[] = []
  items.forEach(({ req, key }, i) => {
    if (req.kind === 'topup' && req.paymentToken && !keys.payment) {
      outcomes[i] = {
        ok: false,
        error: new UsageError('A payment token needs ENCRYPT_KEY to store it encrypted.'),
      }
      return
    }
    const reservationId = isReservationOp(req) ? req.reservationId : null
    ops.push({
      i,
      req,
      key,
      keyHash: sha256(key),
      fingerprint: requestFingerprint(req),
      reservationId,
      tenantId: 'tenantId' in req ? req.tenantId : null,
    })
  })
  if (ops.length === 0) return outcomes

  const run = async (text: string, statements: sql.Statement[] = []): Promise<pg.QueryResult[]> => {
    const prepare =
      statements.length === 0
        ? ''
        : (sql.knownToPrepare(client, statements) ?? (await sql.toPrepare(client, statements)))
    try {
      const r = (await client.query(prepare + text)) as unknown as pg.QueryResult | pg.QueryResult[]
      if (prepare) sql.prepared(client, statements)
      const results = Array.isArray(r) ? r : [r]
      // Without the PREPAREs' own (empty) results: one result per statement of `text`.
      return prepare ? results.filter((x) => x.command !== 'PREPARE') : results
    } catch (err) {
      // (applySet rolls back.)
      if (prepare || sql.isStalePrepared(err)) sql.forgetPrepared(client)
      throw err
    }
  }

  // ---- round trip 1: lock, then read the keys ---------------------------------------------------
  const sorted = (xs: Array<string | null>) => [...new Set(xs.filter((x): x is string => x !== null))].sort()
  const created = sorted(ops.map((o) => (o.req.kind === 'topup' ? o.tenantId : null)))
  const reservationIds = sorted(ops.map((o) => o.reservationId))
  // One topup or consume takes the scalar statements; anything else the array forms.
  const one = ops.length === 1 && (ops[0]!.req.kind === 'topup' || ops[0]!.req.kind === 'consume')
  const checkKeyInWrite = one && options.transaction === 'own' && options.checkKeyInWrite !== false
  // This pool's last commit on the account: then there is nothing to read first (one round trip).
  // (Never on a connection inside a transaction: the write would be part of it, not its own.)
  const known =
    checkKeyInWrite && transactionStatus(client) === 'I' ? options.known?.get(ops[0]!.tenantId!) : undefined
  let keyRows: StoredKeyRow[] = []
  let accountRows: AccountRow[] = []
  let reservationRows: ReservationRow[] = []
  if (!known) {
    const batch1 = ['begin']
    const used1: sql.Statement[] = []
    const exec = (s: sql.Statement, args: string[]) => {
      batch1.push(sql.execute(s, args))
      used1.push(s)
    }
    if (one) {
      const tenant = sql.textLiteral(ops[0]!.tenantId)
      if (created.length > 0) exec(sql.ENSURE_ACCOUNT, [tenant])
      exec(sql.LOCK_ACCOUNT, [tenant])
      if (!checkKeyInWrite) exec(sql.READ_KEY, [tenant, sql.bytesLiteral(ops[0]!.keyHash)])
    } else {
      // The plans made once, not a custom plan per call: with arrays of a few elements the planner
      // finds custom plans cheaper and would plan every call (only for this transaction).
      batch1.push('set local plan_cache_mode = force_generic_plan')
      // Every row they read or update is found by an index probe, whatever the tables held when
      // the plans were made. Plans made on a new database, while the tables are nearly empty,
      // read the whole key and account tables on every chunk instead, and kept doing so as they
      // grew until autovacuum analyzed them: a first `credits apply` of 100,000 topups to new
      // tenants took 71 s, and 10 s with these.
      batch1.push(
        'set local enable_seqscan = off',
        'set local enable_hashjoin = off',
        'set local enable_mergejoin = off',
      )
      if (created.length > 0) exec(sql.ENSURE_ACCOUNTS, [sql.textArray(created)])
      if (reservationIds.length > 0) exec(sql.LOCK_RESERVATIONS, [sql.uuidArray(reservationIds)])
      exec(sql.LOCK_ACCOUNTS, [
        sql.textArray(sorted(ops.map((o) => o.tenantId))),
        sql.uuidArray(reservationIds),
      ])
      exec(sql.READ_KEYS, [
        sql.textArray(ops.map((o) => o.tenantId)),
        sql.uuidArray(ops.map((o) => o.reservationId)),
        sql.hexArray(ops.map((o) => o.keyHash)),
      ])
    }
    const sentAt = Date.now()
    const read = await run(batch1.join(';\n'), used1)
    if (checkKeyInWrite) read.push({ rows: [] } as unknown as pg.QueryResult)
    keyRows = read.at(-1)!.rows as StoredKeyRow[]
    accountRows = read.at(-2)!.rows as AccountRow[]
    if (reservationIds.length > 0) reservationRows = read.at(-3)!.rows as ReservationRow[]
    // now() is the time BEGIN ran, just after we sent it (before any wait for the lock).
    if (one && accountRows.length === 1) options.known?.sawDatabaseTime(Number(accountRows[0]!.ts_ms), sentAt)
  }

  const accounts = new Map<string, Account>()
  for (const r of accountRows) {
    const seq = Number(r.chain_seq)
    accounts.set(r.tenant_id, {
      tenant: r.tenant_id,
      balance: Number(r.balance),
      reserved: Number(r.reserved),
      version: Number(r.version),
      seqBefore: seq,
      seq,
      head: r.chain_head ?? GENESIS,
      // Database time (the transaction's now(), to the millisecond), as epoch ms: cheaper to read.
      ts: new Date(Number(r.ts_ms)),
      written: false,
    })
  }
  if (known) accounts.set(ops[0]!.tenantId!, { ...known, seqBefore: known.seq, written: false })
  const reservations = new Map<string, Reservation>()
  for (const r of reservationRows) {
    reservations.set(r.id, {
      id: r.id,
      tenant: r.tenant_id,
      amount: Number(r.amount),
      status: r.status,
      expired: r.expired,
      isNew: false,
      changed: false,
      expiresAt: null,
      committed: null,
    })
  }
  const keyId = (tenant: string, keyHash: Buffer) => `${tenant}\u0000${keyHash.toString('hex')}`
  const stored = new Map<string, StoredKey>()
  for (const k of keyRows) {
    stored.set(keyId(k.tenant_id, k.key_hash), {
      request_hash: k.request_hash,
      response: k.response,
      expired: k.expired,
    })
  }

  // ---- each operation in order, against the locked rows -------------------------------------------
  const signing = keys.audit.current
  const w = new SetWrites()
  /** Keys this set writes: a later operation with the same key replays it, as it would in order. */
  const written = new Map<string, StoredKey>()
  let ts: Date | null = null
  for (const o of ops) {
    const res = o.reservationId === null ? undefined : reservations.get(o.reservationId)
    const tenant = o.tenantId ?? res?.tenant ?? null
    // (A set of one with no stored key needs no lookup: the common case skips the hex.)
    const id = tenant === null || (ops.length === 1 && stored.size === 0) ? null : keyId(tenant, o.keyHash)
    const prior = id === null ? undefined : (written.get(id) ?? stored.get(id))
    if (prior && !prior.expired) {
      outcomes[o.i] = replay(o, prior)
      continue
    }
    const account = tenant === null ? undefined : accounts.get(tenant)
    if (!account || (o.reservationId !== null && !res)) {
      outcomes[o.i] = { ok: false, error: missing(o.req) }
      continue
    }
    const plan = planChange(o.req, account, res)
    if (plan instanceof Error) {
      outcomes[o.i] = { ok: false, error: plan }
      continue
    }

    const req = o.req
    const balance = account.balance + plan.balanceDelta
    const reserved = account.reserved + plan.reservedDelta
    const seq = account.seq + 1
    const version = account.version + 1
    const transactionId = uuidV7(account.ts.getTime())
    const prevHash = account.head
    ts = account.ts
    const hash = chainHash(
      signing,
      {
        tenant_id: account.tenant,
        seq,
        transaction_id: transactionId,
        action: req.kind,
        amount: plan.amount,
        balance_after: balance,
        reserved_after: reserved,
        key_id: signing.kid,
        created_at: account.ts,
      },
      prevHash,
    )
    let reservationOut: string | undefined
    let expiresAt: Date | undefined
    if (req.kind === 'reserve') {
      reservationOut = randomUUID()
      expiresAt = new Date(account.ts.getTime() + req.ttlMs)
      reservations.set(reservationOut, {
        id: reservationOut,
        tenant: account.tenant,
        amount: req.amount,
        status: 'held',
        expired: false,
        isNew: true,
        changed: true,
        expiresAt,
        committed: null,
      })
    } else if (res) {
      reservationOut = res.id
      res.status = req.kind === 'commit' ? 'committed' : req.kind === 'cancel' ? 'cancelled' : 'expired'
      res.committed = req.kind === 'commit' ? plan.amount : null
      res.changed = true
    }
    const response: StoredResponse = {
      transaction_id: transactionId,
      tenant_id: account.tenant,
      kind: req.kind,
      amount: plan.amount,
      balance,
      reserved,
      available: balance - reserved,
      version,
    }
    if (reservationOut) response.reservation_id = reservationOut
    if (expiresAt) response.expires_at = expiresAt.toISOString()
    let paymentMasked: string | null = null
    let paymentEncrypted: Buffer | null = null
    if (req.kind === 'topup' && req.paymentToken && keys.payment) {
      paymentMasked = maskToken(req.paymentToken)
      paymentEncrypted = encryptPaymentToken(req.paymentToken, keys.payment, { tenantId: account.tenant })
    }
    w.op({
      id: transactionId,
      tenant: account.tenant,
      kind: req.kind,
      amount: plan.amount,
      balanceAfter: balance,
      reservedAfter: reserved,
      reservationId: reservationOut ?? null,
      keyHash: o.keyHash,
      description: 'description' in req && req.description ? req.description : null,
      paymentMasked,
      paymentEncrypted,
      seq,
      keyId: signing.kid,
      prevHash,
      hash,
      requestHash: o.fingerprint,
      response,
      replacesKey: prior?.expired === true,
    })
    Object.assign(account, { balance, reserved, seq, version, head: hash, written: true })
    if (id !== null) written.set(id, { request_hash: o.fingerprint, response, expired: false })
    outcomes[o.i] = { ok: true, result: ledgerResult(response, false, o.key) }
  }

  // ---- round trip 2: every write in one statement; commit ---------------------------------------
  if (known) {
    // Decided on the account as we last left it, with no lock and no transaction open yet.
    const tenant = known.tenant
    // A refusal is decided under the lock, by the way with two round trips (the account may have
    // been topped up since).
    if (ts === null) {
      options.known!.delete(tenant)
      return applySetOnce(client, items, keys, options)
    }
    const write = w.statementOne(accounts.get(tenant)!, ts, sql.WRITE_ONE_UNLOCKED, [
      sql.int(known.balance),
      sql.int(known.reserved),
      sql.int(known.version),
    ])
    let applied: number
    try {
      const [out] = await run(write.text, [write.prepared])
      applied = (out!.rows[0] as { applied: number }).applied
    } catch (err) {
      options.known!.delete(tenant)
      throw err
    }
    if (applied === 1) {
      options.known!.committed(accounts.values())
      return outcomes
    }
    // Nothing was written: the account changed since, the key exists, or the clocks disagree.
    options.known!.delete(tenant)
    return applySetOnce(client, items, keys, options)
  }
  if (ts === null) {
    // Nothing to write: replays and refusals only.
    if (checkKeyInWrite) {
      // A refusal, decided without the key: a stored key (a replay, or a conflict) comes first.
      const o = ops[0]!
      const [found] = await run(
        `${sql.execute(sql.READ_KEY, [sql.textLiteral(o.tenantId), sql.bytesLiteral(o.keyHash)])};\nrollback`,
        [sql.READ_KEY],
      )
      const k = found!.rows[0] as StoredKeyRow | undefined
      if (k && !k.expired) outcomes[o.i] = replay(o, k)
      return outcomes
    }
    if (options.transaction === 'own') await run('rollback')
    return outcomes
  }
  const changedAccounts = [...accounts.values()].filter((a) => a.written)
  const changedReservations = [...reservations.values()].filter((r) => r.changed)
  if (checkKeyInWrite) {
    const write = w.statementOne(changedAccounts[0]!, ts, sql.WRITE_ONE_CHECKED)
    const [out] = await run(`${write.text};\ncommit`, [write.prepared])
    if ((out!.rows[0] as { applied: number }).applied === 1) {
      options.known?.committed(accounts.values())
      return outcomes
    }
    // Nothing was written (the COMMIT committed nothing): the key exists, or (it cannot while we
    // hold the lock) the account changed. The long way reads the key under the lock and decides.
    return applySetOnce(client, items, keys, { ...options, checkKeyInWrite: false })
  }
  const write =
    changedAccounts.length === 1 && changedReservations.length === 0 && w.size === 1
      ? w.statementOne(changedAccounts[0]!, ts)
      : w.statement(changedAccounts, changedReservations, ts)
  // With one account, everything hangs off its update: if it did not match, nothing was written
  // and the COMMIT commits nothing, so COMMIT can travel with the write. With several, a mismatch
  // must roll back the others: check first.
  const commitWithWrite = options.transaction === 'own' && changedAccounts.length === 1
  const out = await run(commitWithWrite ? `${write.text};\ncommit` : write.text, [write.prepared])
  const applied = (out[0]!.rows[0] as { applied: number }).applied
  if (applied !== changedAccounts.length) {
    if (!commitWithWrite) await run('rollback')
    // Cannot happen while we hold the row locks.
    throw new OperationError(
      `An account changed underneath a locked operation (${changedAccounts.length - applied} of ${changedAccounts.length}); nothing was applied.`,
      { code: 'LEDGER_CONFLICT' },
    )
  }
  if (options.transaction === 'own' && !commitWithWrite) await run('commit')
  if (options.transaction === 'own') options.known?.committed(accounts.values())
  return outcomes
}

function isReservationOp(
  req: LedgerRequest,
): req is Extract<LedgerRequest, { kind: 'commit' | 'cancel' | 'expire' }> {
  return req.kind === 'commit' || req.kind === 'cancel' || req.kind === 'expire'
}

/** SHA-256; crypto.hash (Node >= 20.12) skips the Hash object, a third of the cost for short input. */
const sha256: (s: string | Buffer) => Buffer =
  typeof crypto.hash === 'function'
    ? (s) => crypto.hash('sha256', s, 'buffer') as unknown as Buffer
    : (s) => crypto.createHash('sha256').update(s).digest()

function replay(o: Op, prior: StoredKey): SetOutcome {
  if (!prior.request_hash.equals(o.fingerprint)) {
    return {
      ok: false,
      error: new ConflictError(
        `Idempotency key '${o.key}' was already used for a different request; nothing was changed.`,
        {
          code: 'IDEMPOTENCY_KEY_REUSED',
          hint: 'Use a new key for a new operation, or repeat the original request exactly.',
        },
      ),
    }
  }
  return { ok: true, result: ledgerResult(prior.response, true, o.key) }
}

/**
 * A result with its fields in the order they are printed, the same for a first answer and its
 * replay (whose stored response comes back from jsonb in jsonb's own key order). Built field by
 * field: spreading the response was a tenth of `credits apply`'s own CPU.
 */
function ledgerResult(r: StoredResponse, replayed: boolean, key: string): LedgerResult {
  const out = resultFields(r, replayed, key) as LedgerResult
  out.version = r.version
  return out
}

/** A result as `--json` and `credits apply` print it: without the account version. */
export function printedResult(r: LedgerResult): PrintedResult {
  return resultFields(r, r.replayed, r.idempotency_key)
}

function resultFields(r: Omit<StoredResponse, 'version'>, replayed: boolean, key: string): PrintedResult {
  const out: PrintedResult = {
    transaction_id: r.transaction_id,
    tenant_id: r.tenant_id,
    kind: r.kind,
    amount: r.amount,
    balance: r.balance,
    reserved: r.reserved,
    available: r.available,
    replayed,
    idempotency_key: key,
  }
  if (r.reservation_id !== undefined) out.reservation_id = r.reservation_id
  if (r.expires_at !== undefined) out.expires_at = r.expires_at
  return out
}

interface Op {
  /** Index in the caller's items. */
  i: number
  req: LedgerRequest
  key: string
  keyHash: Buffer
  fingerprint: Buffer
  reservationId: string | null
  tenantId: string | null
}

type StoredResponse = Omit<LedgerResult, 'idempotency_key' | 'replayed'>

interface StoredKey {
  request_hash: Buffer
  response: StoredResponse
  expired: boolean
}

interface StoredKeyRow extends StoredKey {
  tenant_id: string
  key_hash: Buffer
}

interface AccountRow {
  tenant_id: string
  balance: string
  reserved: string
  version: string
  chain_seq: string
  chain_head: Buffer | null
  ts_ms: string
}

interface ReservationRow {
  id: string
  tenant_id: string
  amount: string
  status: string
  expired: boolean
}

/** A locked account as the set has changed it so far. */
interface Account {
  tenant: string
  balance: number
  reserved: number
  version: number
  seqBefore: number
  seq: number
  head: Buffer
  ts: Date
  written: boolean
}

/** A locked (or newly made) reservation as the set has changed it so far. */
interface Reservation {
  id: string
  tenant: string
  amount: number
  status: string
  expired: boolean
  isNew: boolean
  changed: boolean
  expiresAt: Date | null
  committed: number | null
}

interface OpRow {
  id: string
  tenant: string
  kind: string
  amount: number
  balanceAfter: number
  reservedAfter: number
  reservationId: string | null
  keyHash: Buffer
  description: string | null
  paymentMasked: string | null
  paymentEncrypted: Buffer | null
  seq: number
  keyId: string
  prevHash: Buffer
  hash: Buffer
  requestHash: Buffer
  response: StoredResponse
  replacesKey: boolean
}

/** The rows of a set's changes, as the arguments of the one write statement. */
class SetWrites {
  private readonly ops: OpRow[] = []

  op(row: OpRow): void {
    this.ops.push(row)
  }

  get size(): number {
    return this.ops.length
  }

  /** One operation on one account, in the scalar statement. */
  statementOne(
    a: Account,
    ts: Date,
    statement?: sql.Statement,
    extra: string[] = [],
  ): { prepared: sql.Statement; text: string } {
    const r = this.ops[0]!
    const prepared = statement ?? sql.writeOneStatement(r.replacesKey)
    return {
      prepared,
      text: sql.execute(prepared, [
        sql.textLiteral(a.tenant),
        sql.int(a.balance),
        sql.int(a.reserved),
        sql.int(a.version),
        sql.int(a.seqBefore),
        sql.int(a.seq),
        sql.bytesLiteral(a.head),
        sql.textLiteral(r.id),
        sql.textLiteral(r.kind),
        sql.int(r.amount),
        sql.bytesLiteral(r.keyHash),
        sql.textLiteral(r.description),
        sql.textLiteral(r.paymentMasked),
        sql.bytesLiteral(r.paymentEncrypted),
        sql.textLiteral(r.keyId),
        sql.bytesLiteral(r.prevHash),
        sql.bytesLiteral(r.hash),
        sql.timestamp(ts),
        sql.bytesLiteral(r.requestHash),
        ...extra,
      ]),
    }
  }

  /** The write statement for the set and its EXECUTE text (the rows as one JSON document). */
  statement(
    accounts: Account[],
    reservations: Reservation[],
    ts: Date,
  ): { prepared: sql.Statement; text: string } {
    const b64 = (b: Buffer) => b.toString('base64')
    let replacesKeys = false
    // Field names as in writeStatement(); undefined (a null) is left out of the JSON.
    const doc = {
      a: accounts.map((a) => ({
        t: a.tenant,
        b: a.balance,
        r: a.reserved,
        v: a.version,
        s0: a.seqBefore,
        s: a.seq,
        h: b64(a.head),
      })),
      o: this.ops.map((r) => {
        replacesKeys ||= r.replacesKey
        return {
          i: r.id,
          t: r.tenant,
          k: r.kind,
          a: r.amount,
          b: r.balanceAfter,
          r: r.reservedAfter,
          rid: r.reservationId ?? undefined,
          kh: b64(r.keyHash),
          d: r.description ?? undefined,
          pm: r.paymentMasked ?? undefined,
          pe: r.paymentEncrypted ? b64(r.paymentEncrypted) : undefined,
          s: r.seq,
          ki: r.keyId,
          p: b64(r.prevHash),
          h: b64(r.hash),
          rh: b64(r.requestHash),
          // A topup's or consume's response is built by the statement from the row (see there).
          o: r.kind === 'topup' || r.kind === 'consume' ? undefined : r.response,
          v: r.response.version,
          x: r.replacesKey || undefined,
        }
      }),
      r: reservations.map((r) => ({
        id: r.id,
        tenant_id: r.tenant,
        amount: r.amount,
        status: r.status,
        expires_at: r.expiresAt?.toISOString() ?? null,
        committed_amount: r.committed,
        is_new: r.isNew,
      })),
    }
    const prepared = sql.writeStatement({ replacesKeys, reservations: reservations.length > 0 })
    return {
      prepared,
      text: sql.execute(prepared, [
        sql.jsonLiteral(doc.a),
        sql.jsonLiteral(doc.o),
        sql.timestamp(ts),
        reservations.length > 0 ? sql.jsonLiteral(doc.r) : 'null',
      ]),
    }
  }
}

interface Change {
  amount: number
  balanceDelta: number
  reservedDelta: number
}

/** What the operation does to the locked row, or why it cannot: the figures are in the sentence. */
function planChange(
  req: LedgerRequest,
  account: Account,
  res: Reservation | undefined,
): Change | ShieldxError {
  const balance = account.balance
  const reserved = account.reserved
  const available = balance - reserved
  switch (req.kind) {
    case 'topup':
      // Past 2^53 - 1 a balance is no longer exact in JavaScript (nor safe to read back).
      if (balance + req.amount > Number.MAX_SAFE_INTEGER) {
        return new OperationError(
          `A topup of ${req.amount} would take tenant '${req.tenantId}' (balance ${balance}) past the largest balance shieldx keeps exact, ${Number.MAX_SAFE_INTEGER}.`,
          { code: 'BALANCE_LIMIT', data: { tenant_id: req.tenantId, balance, requested: req.amount } },
        )
      }
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
      const held = res!.amount
      if (res!.status !== 'held') {
        return new OperationError(
          `Reservation ${req.reservationId} is already ${res!.status}; nothing was changed.`,
          {
            code: 'RESERVATION_NOT_HELD',
            data: { status: res!.status },
          },
        )
      }
      if (req.kind === 'commit') {
        if (res!.expired) {
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
      if (req.kind === 'expire' && !res!.expired) {
        return new OperationError(`Reservation ${req.reservationId} has not expired yet.`, {
          code: 'RESERVATION_NOT_HELD',
        })
      }
      return { amount: held, balanceDelta: 0, reservedDelta: -held }
    }
  }
}

function missing(req: LedgerRequest): ShieldxError {
  if (isReservationOp(req)) {
    return new OperationError(`Reservation ${req.reservationId} does not exist.`, {
      code: 'RESERVATION_NOT_FOUND',
    })
  }
  return new OperationError(`Tenant '${req.tenantId}' has no credits account; top it up first.`, {
    code: 'ACCOUNT_NOT_FOUND',
  })
}
