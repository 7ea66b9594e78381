/**
 * The balance cache: a write-through copy of each tenant's balance in Redis, so `credits balance`
 * can answer without a database round trip.
 *
 * - Written after commit, guarded by the account version: a Lua script stores a value only if the
 *   cached version is missing or lower, so a slow process that read version 5 cannot overwrite 7.
 * - Invalidated on every write. Invalidation keeps a version-only tombstone (same TTL), so an
 *   older value still cannot come back, while the same or a newer version re-populates.
 * - Only `balance` reads it (`--fresh` bypasses it); `consume` and `reserve` never trust it.
 * - Optional and never in the way: every call is bounded by a timeout and a circuit breaker
 *   (cockatiel), never throws, and a Redis that is down or slow only costs one warning.
 *
 * Connection handling is deliberately hand-rolled around ioredis: its own reconnect loop is off
 * (retryStrategy returns null) and a failed connection is thrown away; the breaker decides when to
 * try a fresh one (half-open). So there is never a background timer or a queued command that
 * could keep the process alive or grow while Redis is away.
 */
import {
  CircuitState,
  ConsecutiveBreaker,
  TaskCancelledError,
  TimeoutStrategy,
  circuitBreaker,
  handleAll,
  isBrokenCircuitError,
  timeout,
  wrap,
} from 'cockatiel'
import type { Redis } from 'ioredis'
import { redactUrl, scrubSecrets, urlUserinfo } from '../config/redact.js'

export interface CachedBalance {
  tenant_id: string
  balance: number
  reserved: number
  version: number
}

export interface BalanceCache {
  /** null on a miss, or when Redis is unavailable (never throws). */
  get(tenantId: string): Promise<CachedBalance | null>
  /** Store after commit, only if no newer version is cached (atomic compare in a Lua script). Never throws. */
  set(value: CachedBalance): Promise<void>
  /** Drop the entry (called before/after every write). Never throws. */
  invalidate(tenantId: string): Promise<void>
  /**
   * Drop every cached balance of this database (of every database, for a cache without one),
   * version markers included: after a restore the account versions go backwards, and neither an
   * old value nor an old marker may outlive it. Never throws.
   */
  invalidateAll(): Promise<void>
  /** Disconnect; safe to call twice. */
  close(): Promise<void>
  /** True once Redis has failed and the breaker is open (for status output). */
  readonly degraded: boolean
}

export interface BalanceCacheOptions {
  /**
   * null: cache off (a no-op cache whose get() is always null). Checked by the caller
   * (settings.ts's cacheUrl), before anything is written: ioredis takes a malformed URL quietly.
   */
  url: string | null
  /** Default 'shieldx:'; keys look like `${prefix}db:${database}:balance:${tenantId}`. */
  keyPrefix?: string
  /**
   * The database whose balances these are (db/identity.ts). Two databases' tenants of the same
   * name are different accounts: without it, environments sharing a Redis showed each other's
   * balances. Left out only where one cache serves one database (its own tests).
   */
  database?: string
  /** Default 60. */
  ttlSeconds?: number
  /** Default 250: a slow Redis counts as down. Bounds each call, connecting included. */
  commandTimeoutMs?: number
  /** Called once per cache instance, the first time Redis fails, with one sentence (no secrets). */
  onWarning?: (message: string) => void
}

const DEFAULT_KEY_PREFIX = 'shieldx:'
const DEFAULT_TTL_SECONDS = 60
const DEFAULT_COMMAND_TIMEOUT_MS = 250
/** Consecutive failed calls that open the breaker; while open, calls return at once. */
const BREAKER_THRESHOLD = 3
/** How long the breaker stays open before one call is let through to probe Redis again. */
const HALF_OPEN_AFTER_MS = 3_000

/**
 * KEYS[1] the tenant's key; ARGV version, balance, reserved, ttl seconds.
 * Writes unless the stored version is higher, or equal on a live entry (an equal version on a
 * tombstone re-populates it). Returns 1 when written.
 */
const SET_SCRIPT = `
local stored = tonumber(redis.call('HGET', KEYS[1], 'version'))
local incoming = tonumber(ARGV[1])
if stored ~= nil then
  if incoming < stored then return 0 end
  if incoming == stored and redis.call('HEXISTS', KEYS[1], 'balance') == 1 then return 0 end
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'balance', ARGV[2], 'reserved', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
`

/**
 * KEYS[1] the tenant's key; ARGV ttl seconds. Drops the value but keeps its version as a
 * tombstone (with a fresh TTL), so a stale set from before the invalidation is still refused.
 */
const INVALIDATE_SCRIPT = `
if redis.call('HDEL', KEYS[1], 'balance', 'reserved') > 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
  return 1
end
return 0
`

/**
 * ioredis, loaded on first use: most ledger commands (verify-chain, history, gc, anything
 * without a Redis URL) never touch the cache, and the module costs ~60 ms of start-up.
 */
let RedisClient: typeof Redis | undefined
async function loadRedis(): Promise<typeof Redis> {
  RedisClient ??= (await import('ioredis')).Redis
  return RedisClient
}

/** One ioredis client and its connection attempt; replaced as a whole after a failure. */
interface Connection {
  client: Redis
  /** The database of the URL (redis://host:6379/N), selected by ready() before any command. */
  db: number
  ready: Promise<void> | null
  /** The last 'error' event: the real cause behind a generic "Connection is closed.". */
  lastError: unknown
}

export function createBalanceCache(options: BalanceCacheOptions): BalanceCache {
  if (options.url === null) return new NoopBalanceCache()
  return new RedisBalanceCache(options.url, options)
}

class NoopBalanceCache implements BalanceCache {
  readonly degraded = false
  async get(): Promise<CachedBalance | null> {
    return null
  }
  async set(): Promise<void> {}
  async invalidate(): Promise<void> {}
  async invalidateAll(): Promise<void> {}
  async close(): Promise<void> {}
}

class RedisBalanceCache implements BalanceCache {
  /** up to and including 'balance:' */
  private readonly prefix: string
  private readonly ttlSeconds: number
  private readonly timeoutMs: number
  private readonly secrets: string[]
  private readonly breaker = circuitBreaker(handleAll, {
    halfOpenAfter: HALF_OPEN_AFTER_MS,
    breaker: new ConsecutiveBreaker(BREAKER_THRESHOLD),
  })
  // Breaker outside, timeout inside: a call that times out counts as a failure.
  private readonly policy
  private conn: Connection | null = null
  private closed = false
  private warned = false

  constructor(
    private readonly url: string,
    private readonly options: BalanceCacheOptions,
  ) {
    const database = options.database === undefined ? '' : `db:${options.database}:`
    this.prefix = `${options.keyPrefix ?? DEFAULT_KEY_PREFIX}${database}balance:`
    this.ttlSeconds = positiveInt(options.ttlSeconds, DEFAULT_TTL_SECONDS)
    this.timeoutMs = positiveInt(options.commandTimeoutMs, DEFAULT_COMMAND_TIMEOUT_MS)
    // Aggressive: ioredis commands cannot be cancelled, so stop waiting for them instead.
    this.policy = wrap(this.breaker, timeout(this.timeoutMs, TimeoutStrategy.Aggressive))
    const password = urlUserinfo(url)?.password
    this.secrets = password ? [password, safeDecode(password)] : []
  }

  get degraded(): boolean {
    return this.breaker.state !== CircuitState.Closed
  }

  async get(tenantId: string): Promise<CachedBalance | null> {
    const fields = await this.run(null, (client) =>
      client.hmget(this.key(tenantId), 'version', 'balance', 'reserved'),
    )
    if (!fields) return null
    const [version, balance, reserved] = fields.map((f) => (f === null ? NaN : Number(f)))
    if (![version, balance, reserved].every((n) => Number.isSafeInteger(n))) return null
    return { tenant_id: tenantId, balance: balance!, reserved: reserved!, version: version! }
  }

  async set(value: CachedBalance): Promise<void> {
    const { tenant_id, balance, reserved, version } = value
    if (![balance, reserved, version].every((n) => Number.isSafeInteger(n))) return
    await this.run(undefined, (client) =>
      client.eval(SET_SCRIPT, 1, this.key(tenant_id), version, balance, reserved, this.ttlSeconds),
    )
  }

  async invalidate(tenantId: string): Promise<void> {
    await this.run(undefined, (client) =>
      client.eval(INVALIDATE_SCRIPT, 1, this.key(tenantId), this.ttlSeconds),
    )
  }

  async invalidateAll(): Promise<void> {
    let cursor = '0'
    do {
      // One SCAN page per call, so each stays within the command timeout.
      const page = await this.run(null, (client) =>
        client.scan(cursor, 'MATCH', `${globEscape(this.prefix)}*`, 'COUNT', 1000),
      )
      if (!page) return
      const [next, keys] = page
      if (keys.length > 0) await this.run(undefined, (client) => client.del(...keys))
      cursor = next
    } while (cursor !== '0')
  }

  async close(): Promise<void> {
    this.closed = true
    if (this.conn) {
      discard(this.conn)
      this.conn = null
    }
  }

  private key(tenantId: string): string {
    return `${this.prefix}${tenantId}`
  }

  /** Runs one Redis call through the breaker and timeout; on any failure, `fallback`. */
  private async run<T, F>(fallback: F, op: (client: Redis) => Promise<T>): Promise<T | F> {
    if (this.closed) return fallback
    // Outside the breaker and its timeout: loading a module is not Redis being slow.
    await loadRedis()
    let used: Connection | null = null
    try {
      // A signal of its own per call: without one, cockatiel hangs every call's abort listener
      // on one shared signal, and more than 10 concurrent calls make Node warn about a leak.
      return await this.policy.execute(async () => {
        used = this.connection()
        await ready(used)
        return await op(used.client)
      }, new AbortController().signal)
    } catch (err) {
      if (isBrokenCircuitError(err) || this.closed) return fallback
      // A reply error (e.g. a script error) comes over a working connection: keep it.
      // Anything else (refused, reset, timed out) leaves the connection suspect: start afresh.
      if (used !== null && !isReplyError(err)) this.drop(used)
      this.warnOnce(err, used)
      return fallback
    }
  }

  private connection(): Connection {
    if (!this.conn) {
      const client = new RedisClient!(this.url, {
        lazyConnect: true,
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        autoResendUnfulfilledCommands: false,
        // No reconnect loop of ioredis' own (and so no timer): the breaker decides when to retry.
        retryStrategy: () => null,
        connectTimeout: this.timeoutMs,
        // One round trip to be ready (TCP) instead of three (CLIENT SETINFO, INFO ready check):
        // the whole call, connecting included, must fit in commandTimeoutMs.
        enableReadyCheck: false,
        disableClientInfo: true,
        // A disconnect waits this long for the peer's FIN before destroying the socket.
        disconnectTimeout: this.timeoutMs,
      })
      // ioredis sends SELECT on connect but does not wait for it: a database the server refuses
      // (SELECT 99 on a Redis with 16) was only an 'error' event, and the commands behind it ran
      // in db 0, another environment's. ready() selects it and waits for the answer instead.
      const db = client.options.db ?? 0
      client.options.db = 0
      const conn: Connection = { client, db, ready: null, lastError: undefined }
      // Without a listener ioredis prints "[ioredis] Unhandled error event" to the console.
      client.on('error', (err: unknown) => {
        conn.lastError = err
      })
      this.conn = conn
    }
    return this.conn
  }

  private drop(conn: Connection): void {
    // Only the current connection: a late failure on an old one must not drop its successor.
    if (this.conn === conn) this.conn = null
    discard(conn)
  }

  private warnOnce(err: unknown, conn: Connection | null): void {
    if (this.warned) return
    this.warned = true
    const reason = this.describe(err, conn)
    const message = `Redis at ${redactUrl(this.url)} is unavailable (${reason}); continuing without the balance cache.`
    try {
      this.options.onWarning?.(message)
    } catch {
      // A failing warning sink must not turn a cache miss into an error.
    }
  }

  private describe(err: unknown, conn: Connection | null): string {
    // Not cockatiel's isTaskCancelledError(): in 3.2.1 it tests the wrong marker and is always false.
    if (err instanceof TaskCancelledError) return `no answer within ${this.timeoutMs} ms`
    if (err instanceof SelectError) {
      const why = err.cause instanceof Error ? err.cause.message : String(err.cause)
      return `cannot select database ${err.db}: ${scrubSecrets(why.split('\n')[0]!.trim(), this.secrets)}`
    }
    const cause = conn?.lastError ?? err
    const code = (cause as { code?: unknown } | null)?.code
    switch (code) {
      case 'ECONNREFUSED':
        return 'connection refused'
      case 'ENOTFOUND':
      case 'EAI_AGAIN':
        return 'host not found'
      case 'ETIMEDOUT':
        return 'connection timed out'
      case 'ECONNRESET':
      case 'EPIPE':
        return 'connection reset'
      case 'EHOSTUNREACH':
      case 'ENETUNREACH':
        return 'host unreachable'
    }
    const text = cause instanceof Error ? cause.message : String(cause)
    const line = (text.split('\n')[0] ?? '').trim().replace(/\.$/, '').slice(0, 200)
    return scrubSecrets(redactUrl(line), this.secrets) || 'unknown error'
  }
}

/** The URL's database refused (SELECT): not a reply error, so the connection is thrown away. */
class SelectError extends Error {
  constructor(
    readonly db: number,
    cause: unknown,
  ) {
    super(`Cannot select Redis database ${db}.`, { cause })
    this.name = 'SelectError'
  }
}

/**
 * Connects once per connection, and selects its database before anything else is sent;
 * concurrent callers share the attempt.
 */
function ready(conn: Connection): Promise<void> {
  if (!conn.ready) {
    const { client, db } = conn
    conn.ready = client.connect().then(async () => {
      if (db === 0) return
      try {
        await client.select(db)
      } catch (err) {
        throw new SelectError(db, err)
      }
    })
    conn.ready.catch(() => {}) // observed by the caller; this only avoids an unhandled rejection
  }
  return conn.ready
}

/** Close now, without QUIT (a hung Redis would never answer it) and without a lingering socket. */
function discard(conn: Connection): void {
  const { client } = conn
  client.disconnect()
  // disconnect() ends the socket and keeps a timer until the peer closes its side; destroy it
  // now so a closed cache never holds the event loop open.
  ;(client.stream as { destroy?: () => void } | undefined)?.destroy?.()
}

function isReplyError(err: unknown): boolean {
  return err instanceof Error && err.name === 'ReplyError'
}

function positiveInt(value: number | undefined, fallback: number): number {
  return value !== undefined && Number.isFinite(value) && value >= 1 ? Math.floor(value) : fallback
}

/** A literal for SCAN's MATCH: a prefix of the caller's choosing may hold glob characters. */
function globEscape(s: string): string {
  return s.replace(/[\\*?[\]]/g, '\\$&')
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    return s
  }
}
