/**
 * The ledger's SQL, prepared once per connection and run with EXECUTE inside simple-protocol
 * batches.
 *
 * Why SQL-level PREPARE/EXECUTE rather than pg's `name:` query config: pg's named statements use
 * the extended protocol, one query (and one round trip) at a time, so BEGIN + lock + key read
 * would be three round trips and write + COMMIT two. A simple-protocol message may hold several
 * statements, answered in one round trip, and `EXECUTE name(args)` runs a plan the server made
 * once for this session instead of parsing and planning the full statement every time (that was
 * about 40% of the server's CPU per operation). The arguments are SQL literals: validated values
 * quoted as pg.escapeLiteral does, as before.
 *
 * A connection prepares what it lacks on first use: it asks pg_prepared_statements (the embedded
 * database is one session shared by every connection made to it, so another connection may have
 * prepared them already), then sends one PREPARE per missing statement. Names carry a hash of
 * their SQL, so a statement that changes is a new name. Should the server forget them (DISCARD
 * ALL), EXECUTE fails with 26000: isStalePrepared() says so, and the retry prepares afresh.
 */
import { createHash } from 'node:crypto'
import { isoString } from '../audit/chain.js'
import type pg from 'pg'

export interface Statement {
  name: string
  types: string[]
  sql: string
}

function statement(base: string, types: string[], sql: string): Statement {
  const text = `(${types.join(', ')}) as ${sql.replace(/\s+/g, ' ').trim()}`
  const hash = createHash('sha256').update(text).digest('hex').slice(0, 10)
  return { name: `shx_ledger_${base}_${hash}`, types, sql: text }
}

/** New accounts for topups: created empty, then locked like any other. */
export const ENSURE_ACCOUNTS = statement(
  'ensure',
  ['text[]'],
  `insert into credits.credit_accounts (tenant_id)
   select t from unnest($1) t order by t
   on conflict do nothing`,
)

/** Reservations are locked before accounts, in id order: one lock order everywhere, no deadlocks. */
export const LOCK_RESERVATIONS = statement(
  'lock_res',
  ['uuid[]'],
  `select r.id::text as id, r.tenant_id, r.amount, r.status, r.expires_at <= now() as expired
     from credits.reservations r
    where r.id = any($1)
    order by r.id
      for update`,
)

/** The accounts of the given tenants and of the given reservations, in tenant order. */
export const LOCK_ACCOUNTS = statement(
  'lock_acct',
  ['text[]', 'uuid[]'],
  `select a.tenant_id, a.balance, a.reserved, a.version, a.chain_seq, a.chain_head,
          (extract(epoch from date_trunc('milliseconds', now())) * 1000)::int8 as ts_ms
     from credits.credit_accounts a
    where a.tenant_id = any($1 || array(select r.tenant_id from credits.reservations r where r.id = any($2)))
    order by a.tenant_id
      for update`,
)

/**
 * The stored keys, read by a statement of its own *after* the locks: its snapshot then includes
 * every operation that held the account before us, so a replay always sees the first result.
 */
export const READ_KEYS = statement(
  'keys',
  ['text[]', 'uuid[]', 'text[]'],
  `select k.tenant_id, k.key_hash, k.request_hash, k.response, k.expires_at <= now() as expired
     from unnest($1, $2, $3) q(tenant_id, reservation_id, key_hash)
     join credits.idempotency_keys k
       on k.tenant_id = coalesce(q.tenant_id, (select r.tenant_id from credits.reservations r where r.id = q.reservation_id))
      and k.key_hash = decode(q.key_hash, 'hex')`,
)

// ---- one operation on one account (topup, consume): the common case, in scalar form --------------
// The same reads and writes as the array forms above and below, for a set of one topup or
// consume: plain index lookups and one row per insert, with no unnest, join or sort to set up on
// every execution (which costs about as much as the work itself at this size).

export const ENSURE_ACCOUNT = statement(
  'ensure1',
  ['text'],
  `insert into credits.credit_accounts (tenant_id) values ($1) on conflict do nothing`,
)

export const LOCK_ACCOUNT = statement(
  'lock_acct1',
  ['text'],
  `select a.tenant_id, a.balance, a.reserved, a.version, a.chain_seq, a.chain_head,
          (extract(epoch from date_trunc('milliseconds', now())) * 1000)::int8 as ts_ms
     from credits.credit_accounts a
    where a.tenant_id = $1
      for update`,
)

export const READ_KEY = statement(
  'key1',
  ['text', 'bytea'],
  `select k.tenant_id, k.key_hash, k.request_hash, k.response, k.expires_at <= now() as expired
     from credits.idempotency_keys k
    where k.tenant_id = $1 and k.key_hash = $2`,
)

/** Write statements by shape, built on first use (declared before WRITE_ONE_CHECKED builds one). */
const writes = new Map<string, Statement>()

/**
 * The write of one topup or consume: $1-$7 the account (tenant, balance, reserved, version,
 * chain_seq before and after, head), $8 transaction id, $9 kind, $10 amount, $11 key hash,
 * $12-$14 description, payment masked and encrypted, $15 key id, $16 prev hash, $17 hash, $18
 * time, $19 request fingerprint. The stored response is built here from the same values the
 * client returns (transaction_id, tenant_id, kind, amount, balance, reserved, available, version).
 * Keys as in writeStatement(). `checked`: see WRITE_ONE_CHECKED and WRITE_ONE_UNLOCKED.
 */
export function writeOneStatement(
  replacesKey: boolean,
  checked: 'checked' | 'unlocked' | false = false,
): Statement {
  const name = checked === 'unlocked' ? 'write1u' : checked ? 'write1c' : `write1${replacesKey ? '_kx' : ''}`
  const cached = writes.get(name)
  if (cached) return cached
  const s = statement(
    name,
    [
      ...['text', 'int8', 'int8', 'int8', 'int8', 'int8', 'bytea', 'uuid', 'text', 'int8', 'bytea'],
      ...['text', 'text', 'bytea', 'text', 'bytea', 'bytea', 'timestamptz', 'bytea'],
      ...(checked === 'unlocked' ? ['int8', 'int8', 'int8'] : []),
    ],
    `with
     u as (
       update credits.credit_accounts
          set balance = $2, reserved = $3, version = $4, chain_seq = $6, chain_head = $7, updated_at = now()
        where tenant_id = $1 and chain_seq = $5
        ${checked ? 'and not exists (select 1 from credits.idempotency_keys where tenant_id = $1 and key_hash = $11)' : ''}
        ${
          checked === 'unlocked'
            ? `and chain_head = $16 and balance = $20 and reserved = $21 and version = $22
               and $18 between now() - interval '1 second' and now() + interval '1 second'`
            : ''
        }
        returning tenant_id),
     t as (
       insert into credits.credit_transactions (id, tenant_id, kind, amount, balance_after, reservation_id,
                   idempotency_key_hash, description, payment_masked, payment_encrypted, created_at)
       select $8, $1, $9, $10, $2, null, $11, $12, $13, $14, $18 from u),
     l as (
       insert into credits.audit_logs (tenant_id, seq, transaction_id, action, amount, balance_after,
                   reserved_after, key_id, prev_hash, hash, created_at)
       select $1, $6, $8, $9, $10, $2, $3, $15, $16, $17, $18 from u),
     k as (
       insert into credits.idempotency_keys (tenant_id, key_hash, request_hash, response, created_at, expires_at)
       select $1, $11, $19, jsonb_build_object('transaction_id', $8, 'tenant_id', $1, 'kind', $9, 'amount', $10,
              'balance', $2, 'reserved', $3, 'available', $2 - $3, 'version', $4), $18, $18 + interval '24 hours' from u
       ${
         replacesKey
           ? `on conflict (tenant_id, key_hash) do update
                 set request_hash = excluded.request_hash, response = excluded.response,
                     created_at = excluded.created_at, expires_at = excluded.expires_at`
           : ''
       })
     select count(*)::int as applied from u`,
  )
  writes.set(name, s)
  return s
}

/**
 * writeOneStatement(false) with the key check folded in, for a set of one topup or consume whose
 * key was not read before: the update (and so every write) happens only if no key row exists for
 * (tenant, key hash). Its snapshot is taken after the account lock was granted (round trip 1), so
 * it sees every operation that held the lock before, as the separate key read does. When it
 * writes nothing, the caller runs the operation again the long way (reading the key under the
 * lock: a replay, a conflict, or an expired key to replace).
 */
export const WRITE_ONE_CHECKED = writeOneStatement(false, 'checked')

/**
 * WRITE_ONE_CHECKED without a lock taken first: one round trip, a statement on its own (its own
 * transaction), from the account as this process's last commit left it (known-accounts.ts). Its
 * UPDATE takes the lock, and its conditions, rechecked on the newest row once the lock is granted,
 * make it write nothing if anything changed the account since: chain_seq ($5) and chain_head
 * ($16) as we left them, and balance, reserved and version too ($20-$22, as they were before this
 * change), so that not even a change made by hand outside the ledger is overwritten. The time
 * ($18) is chosen by the client, from the database's clock as last read: the statement writes
 * nothing unless it is within a second of the database's now().
 */
export const WRITE_ONE_UNLOCKED = writeOneStatement(false, 'unlocked')

/** Which optional parts a write statement has: each shape is a statement of its own. */
export interface WriteShape {
  /** Some operation reuses a key whose TTL ran out: that key row is replaced. */
  replacesKeys: boolean
  /** Some operation makes or settles a reservation. */
  reservations: boolean
}

/**
 * Every write of a set of operations in one statement. Each account is updated once, to its
 * final state, on condition that its chain is still where we read it; every other row is written
 * only if that update matched. Returns how many accounts it updated: with one account, a miss
 * writes nothing (so COMMIT can travel with it); with several, the caller rolls back unless all
 * matched (they cannot miss while we hold their locks). The filter is "any matched", not a join
 * with u: a set's statements run with hash and merge joins off (see applySetOnce), and a nested
 * loop would compare every operation with every account.
 *
 * The rows come as JSON arrays of objects, with short field names (spelt out in the statement)
 * and bytes in base64, a field left out for null. The stored response of a topup or consume is
 * built here from the row (the same fields and values the client returns: transaction_id,
 * tenant_id, kind, amount, balance, reserved, available, version); other kinds send theirs. $1 the accounts, $2 the operations, $4 the
 * reservations (null without), and $3 is the transaction's time (created_at of everything
 * written). A JSON literal costs the client one JSON.stringify and the server one
 * parse, where arrays of literals cost an escape per element on one side and an array parse per
 * column on the other: for a chunk of `credits apply` that was most of the client's work.
 *
 * A settled reservation (rs) is only ever one still held: settled_at is null exactly when the
 * status is 'held' (a CHECK says so), and unlike the status it does not match the partial index
 * of held reservations, which a plan made on a new database would read whole per set.
 *
 * A new key (k) is a plain insert: its unique key is the last guard against applying twice. A key
 * past its TTL names a new operation (kx): it is replaced (we hold the lock that guards it).
 * The parts a set does not need are left out rather than run empty: each one opens its table
 * and indexes on every execution. (No SQL comments in here: the text is folded onto one line.)
 */
export function writeStatement(shape: WriteShape): Statement {
  const name = `write${shape.replacesKeys ? '_kx' : ''}${shape.reservations ? '_res' : ''}`
  const cached = writes.get(name)
  if (cached) return cached
  const keyInsert = `insert into credits.idempotency_keys (tenant_id, key_hash, request_hash, response, created_at, expires_at)
       select tenant_id, key_hash, request_hash, response, $3, $3 + interval '24 hours' from op`
  const ctes = [
    `u as (
       update credits.credit_accounts a
          set balance = x.b, reserved = x.r, version = x.v,
              chain_seq = x.s, chain_head = decode(x.h, 'base64'), updated_at = now()
         from json_to_recordset($1) x(t text, b int8, r int8, v int8, s0 int8, s int8, h text)
        where a.tenant_id = x.t and a.chain_seq = x.s0
        returning a.tenant_id)`,
    `op as (
       select o.i as id, o.t as tenant_id, o.k as kind, o.a as amount, o.b as balance_after,
              o.r as reserved_after, o.rid as reservation_id, decode(o.kh, 'base64') as key_hash,
              o.d as description, o.pm as payment_masked, decode(o.pe, 'base64') as payment_encrypted,
              o.s as seq, o.ki as key_id, decode(o.p, 'base64') as prev_hash, decode(o.h, 'base64') as hash,
              decode(o.rh, 'base64') as request_hash,
              coalesce(o.o, jsonb_build_object('transaction_id', o.i, 'tenant_id', o.t, 'kind', o.k,
                'amount', o.a, 'balance', o.b, 'reserved', o.r, 'available', o.b - o.r, 'version', o.v)) as response,
              coalesce(o.x, false) as replaces_key
         from json_to_recordset($2)
              o(i uuid, t text, k text, a int8, b int8, r int8, rid uuid, kh text, d text, pm text, pe text,
                s int8, ki text, p text, h text, rh text, o jsonb, v int8, x bool)
        where exists (select from u))`,
    `t as (
       insert into credits.credit_transactions (id, tenant_id, kind, amount, balance_after, reservation_id,
                   idempotency_key_hash, description, payment_masked, payment_encrypted, created_at)
       select id, tenant_id, kind, amount, balance_after, reservation_id, key_hash, description,
              payment_masked, payment_encrypted, $3 from op)`,
    `l as (
       insert into credits.audit_logs (tenant_id, seq, transaction_id, action, amount, balance_after,
                   reserved_after, key_id, prev_hash, hash, created_at)
       select tenant_id, seq, id, kind, amount, balance_after, reserved_after, key_id, prev_hash, hash, $3 from op)`,
    `k as (${keyInsert} ${shape.replacesKeys ? 'where not replaces_key' : ''})`,
  ]
  if (shape.replacesKeys) {
    ctes.push(`kx as (${keyInsert} where replaces_key
       on conflict (tenant_id, key_hash) do update
          set request_hash = excluded.request_hash, response = excluded.response,
              created_at = excluded.created_at, expires_at = excluded.expires_at)`)
  }
  if (shape.reservations) {
    ctes.push(
      `rv as (
         select * from json_to_recordset($4)
           r(id uuid, tenant_id text, amount int8, status text, expires_at timestamptz, committed_amount int8, is_new bool)
          where exists (select from u))`,
      `rn as (
         insert into credits.reservations (id, tenant_id, amount, committed_amount, status, expires_at, created_at, settled_at)
         select id, tenant_id, amount, committed_amount, status, expires_at, $3,
                case when status = 'held' then null else $3 end
           from rv where is_new)`,
      `rs as (
         update credits.reservations s
            set status = rv.status, committed_amount = rv.committed_amount, settled_at = $3
           from rv
          where not rv.is_new and s.id = rv.id and s.settled_at is null)`,
    )
  }
  const s = statement(
    name,
    ['json', 'json', 'timestamptz', 'json'],
    `with ${ctes.join(',\n')} select count(*)::int as applied from u`,
  )
  writes.set(name, s)
  return s
}

/** What each connection (client object) has prepared; a new connection is a new object. */
const preparedOn = new WeakMap<pg.ClientBase, Set<string>>()

/**
 * The PREPAREs this connection still needs before a batch that executes `statements`, as text to
 * send at the head of that batch (empty once they are all prepared). On a connection's first use
 * it asks the server what it already has. After the batch, call prepared() if it succeeded and
 * forgetPrepared() if it failed (some PREPAREs may or may not have run).
 */
export async function toPrepare(client: pg.ClientBase, statements: Statement[]): Promise<string> {
  return knownToPrepare(client, statements) ?? (await askAndPrepare(client, statements))
}

/** toPrepare() without a round trip, when this connection's statements are known; else undefined. */
export function knownToPrepare(client: pg.ClientBase, statements: Statement[]): string | undefined {
  const have = preparedOn.get(client)
  if (!have) return undefined
  let text = ''
  for (const s of statements) if (!have.has(s.name)) text += `prepare ${s.name} ${s.sql};\n`
  return text
}

async function askAndPrepare(client: pg.ClientBase, statements: Statement[]): Promise<string> {
  let have = preparedOn.get(client)
  if (!have) {
    const { rows } = await client.query<{ name: string }>(
      `select name from pg_prepared_statements where starts_with(name, 'shx_ledger_')`,
    )
    have = new Set(rows.map((r) => r.name))
    preparedOn.set(client, have)
  }
  let text = ''
  for (const s of statements) if (!have.has(s.name)) text += `prepare ${s.name} ${s.sql};\n`
  return text
}

export function prepared(client: pg.ClientBase, statements: Statement[]): void {
  const have = preparedOn.get(client)
  if (have) for (const s of statements) have.add(s.name)
}

/** The server no longer has a statement we prepared (26000): forget, so the retry prepares again. */
export function isStalePrepared(err: unknown): boolean {
  return (err as { code?: string } | null)?.code === '26000'
}

/** After a failed batch: ask the server again on the next use. */
export function forgetPrepared(client: pg.ClientBase): void {
  preparedOn.delete(client)
}

/** `execute name(arg, ...)`: the arguments are SQL literals (see the helpers below). */
export function execute(s: Statement, args: string[]): string {
  return `execute ${s.name}(${args.join(', ')})`
}

// ---- literals --------------------------------------------------------------------------------
// Every value becomes a literal here: text quoted (as pg.escapeLiteral does), numbers checked to
// be safe integers, bytes as hex. An array is one untyped literal in array syntax, '{...}': the
// parameter's declared type reads it with that type's input function while the EXECUTE is parsed,
// with no expression to build and evaluate per element (ARRAY[...] costs several times more).

/** A SQL string literal, as pg.escapeLiteral writes it (E'' with doubled backslashes if any). */
export function quote(s: string): string {
  if (!/['\\]/.test(s)) return `'${s}'`
  const body = s.replace(/'/g, "''")
  return s.includes('\\') ? ` E'${body.replace(/\\/g, '\\\\')}'` : `'${body}'`
}

export function int(n: number): string {
  if (!Number.isSafeInteger(n)) throw new Error(`not an integer: ${n}`)
  return String(n)
}

/** A timestamptz literal, ISO 8601 in UTC with milliseconds. */
export function timestamp(d: Date): string {
  return `'${isoString(d)}'`
}

export const textLiteral = (s: string | null | undefined) =>
  s === null || s === undefined ? 'null' : quote(s)
export const bytesLiteral = (b: Buffer | null | undefined) => (b ? `'\\x${b.toString('hex')}'` : 'null')
export const jsonLiteral = (x: unknown) => quote(JSON.stringify(x))

/** An element of an array literal: quoted, with backslashes and double quotes escaped. */
function element(s: string | null | undefined): string {
  if (s === null || s === undefined) return 'NULL'
  return `"${/["\\]/.test(s) ? s.replace(/["\\]/g, '\\$&') : s}"`
}

/** An array of text (or uuid) as one literal, '{"a","b",NULL}'. */
export function textArray(xs: Array<string | null | undefined>): string {
  return quote(`{${xs.map(element).join(',')}}`)
}
export const uuidArray = textArray
/** Bytes as hex text (decode(x, 'hex') in the statement): no backslash to escape twice. */
export const hexArray = (xs: Buffer[]) => textArray(xs.map((b) => b.toString('hex')))
