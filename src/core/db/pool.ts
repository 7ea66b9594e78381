/**
 * Opening the databases a command touches: a pg Pool on a server URL, or on the embedded PGlite.
 * Every connection carries the statement timeout; an unreachable server is one sentence naming
 * host and port, within the timeout.
 */
import type pg from 'pg'
import { Client, Pool } from './driver.js'
import { tildify } from '../config/paths.js'
import { redactUrl, urlUserinfo } from '../config/redact.js'
import { embeddedDataDir, type Settings } from '../config/settings.js'
import { OperationError, TimeoutError, UsageError } from '../errors.js'
import { type EmbeddedServer, startEmbedded } from './embedded.js'
import type { PgErrorLike } from './pg-errors.js'

export type DbRole = 'credits' | 'shadow'

export interface Database {
  kind: 'server' | 'embedded'
  /** What to show the user: a redacted URL or the embedded data directory. */
  label: string
  /** For connections of our own (worker threads, pg_dump); null for the embedded database. Never print it. */
  connectionString: string | null
  /** The embedded database's PGlite instance (its pg_dump runs on it); null for a server. */
  pglite: import('@electric-sql/pglite').PGlite | null
  pool: pg.Pool
  timeoutMs: number
  /** The server's major version, e.g. 15 or 18. */
  serverMajor: number
  /** Set when the embedded database was created by this start. */
  createdEmbedded: boolean
  /**
   * Cancel the statements running on this pool's connections (Ctrl-C): they fail, their
   * transactions roll back, session locks are released, and close() can finish.
   * A no-op for the embedded database, whose single backend cannot be interrupted.
   */
  cancelActive(): Promise<void>
  close(): Promise<void>
}

export interface Databases {
  credits: Database
  /** May be the same object as credits. */
  shadow: Database
  cancelActive(): Promise<void>
  close(): Promise<void>
}

export interface OpenOptions {
  timeoutMs: number
  env: NodeJS.ProcessEnv
  /** Connections in the pool (servers only; the embedded database is always 1). */
  max?: number
  onNotice?: (message: string) => void
}

/** Is the shadow database one of its own? Otherwise its schema lives in the credits database. */
export function separateShadow(settings: Settings): boolean {
  return settings.shadowDb.value !== null && settings.shadowDb.value !== settings.creditsDb.value
}

export async function openDatabases(settings: Settings, options: OpenOptions): Promise<Databases> {
  const credits = await openDatabase(settings, 'credits', options)
  let shadow = credits
  if (separateShadow(settings)) {
    try {
      shadow = await openDatabase(settings, 'shadow', options)
    } catch (err) {
      await credits.close()
      throw err
    }
  }
  return {
    credits,
    shadow,
    async close() {
      await Promise.allSettled([credits.close(), shadow === credits ? Promise.resolve() : shadow.close()])
    },
    async cancelActive() {
      await Promise.allSettled([
        credits.cancelActive(),
        shadow === credits ? Promise.resolve() : shadow.cancelActive(),
      ])
    },
  }
}

export async function openDatabase(
  settings: Settings,
  role: DbRole,
  options: OpenOptions,
): Promise<Database> {
  const url = roleUrl(settings, role)
  if (url === null) {
    const dataDir = embeddedDataDir(settings.home.value)
    return openEmbedded(dataDir, tildify(dataDir, options.env), options)
  }
  return openServer(url, sourceOf(settings, role), options)
}

/**
 * The URL a server connection of `role` uses (as Database.connectionString will hold it), before
 * the database is opened; null for the embedded database. For threads that connect on their own.
 */
export function serverUrl(settings: Settings, role: DbRole): string | null {
  const url = roleUrl(settings, role)
  return url === null ? null : parseTarget(url, sourceOf(settings, role)).url
}

function roleUrl(settings: Settings, role: DbRole): string | null {
  return role === 'shadow' ? (settings.shadowDb.value ?? settings.creditsDb.value) : settings.creditsDb.value
}

function sourceOf(settings: Settings, role: DbRole): string {
  return role === 'shadow' && settings.shadowDb.value !== null
    ? settings.shadowDb.source
    : settings.creditsDb.source
}

/** Session settings every connection gets, so a stuck statement cannot hold a lock forever. */
function sessionTimeouts(timeoutMs: number) {
  return {
    statement_timeout: timeoutMs,
    idle_in_transaction_session_timeout: Math.max(timeoutMs * 2, 60_000),
    // The server's timeout should fire first (SQLSTATE 57014); this one catches a dead server.
    query_timeout: timeoutMs + 5000,
    connectionTimeoutMillis: timeoutMs,
    application_name: 'shieldx',
  }
}

export async function openServer(url: string, source: string, options: OpenOptions): Promise<Database> {
  const target = parseTarget(url, source)
  // From here on, the URL with its userinfo encoded: pg reads it the way we do.
  url = target.url
  const pool = new Pool({
    connectionString: url,
    max: options.max ?? 4,
    idleTimeoutMillis: 10_000,
    ...sessionTimeouts(options.timeoutMs),
  })
  swallowClientErrors(pool)
  let serverMajor: number
  try {
    const { rows } = await pool.query<{ v: string }>(`select current_setting('server_version_num') as v`)
    serverMajor = Math.floor(Number(rows[0]!.v) / 10000)
  } catch (err) {
    await pool.end().catch(() => {})
    throw connectError(err, target, options.timeoutMs)
  }
  // Connections in use, so that Ctrl-C can cancel what they are running.
  const active = new Set<pg.PoolClient>()
  pool.on('acquire', (client) => active.add(client))
  pool.on('release', (_err, client) => active.delete(client))
  return {
    kind: 'server',
    label: redactUrl(url),
    connectionString: url,
    pglite: null,
    pool,
    timeoutMs: options.timeoutMs,
    serverMajor,
    createdEmbedded: false,
    async cancelActive() {
      const pids = [...active].map((c) => (c as unknown as { processID?: number }).processID).filter(Boolean)
      if (pids.length === 0) return
      const canceller = new Client({ connectionString: url, connectionTimeoutMillis: 5000 })
      try {
        await canceller.connect()
        await canceller.query('select pg_cancel_backend(pid) from unnest($1::int[]) as pid', [pids])
      } finally {
        await canceller.end().catch(() => {})
      }
    },
    close: once(() => pool.end()),
  }
}

/** An empty embedded database in memory, reached like any other: a backup's test restore. */
export function openScratchEmbedded(options: OpenOptions): Promise<Database> {
  return openEmbedded(null, 'scratch, in memory', options)
}

async function openEmbedded(dataDir: string | null, label: string, options: OpenOptions): Promise<Database> {
  const server: EmbeddedServer = await startEmbedded(dataDir, options.timeoutMs)
  if (server.created && dataDir) options.onNotice?.(`Created the embedded database in ${label}.`)
  // Every connection field is given, so that the PG* variables meant for a real server
  // (PGSSLMODE=require, PGUSER, PGDATABASE, PGPASSWORD, ...) cannot change how we reach our own
  // socket. pg reads the environment for any field that is missing or empty: hence the password
  // as a function, and ssl: false rather than leaving it out.
  const pool = new Pool({
    host: server.socketDir,
    port: server.port,
    user: 'postgres',
    database: 'postgres',
    password: () => '',
    ssl: false,
    // PGSSLNEGOTIATION=direct would demand TLS (not typed in @types/pg 8.15).
    ...({ sslnegotiation: 'postgres' } as pg.PoolConfig),
    // PGlite is one backend session: a second connection would share the first one's transaction.
    max: 1,
    ...sessionTimeouts(options.timeoutMs),
  })
  swallowClientErrors(pool)
  let serverMajor: number
  try {
    const { rows } = await pool.query<{ v: string }>(`select current_setting('server_version_num') as v`)
    serverMajor = Math.floor(Number(rows[0]!.v) / 10000)
  } catch (err) {
    await pool.end().catch(() => {})
    await server.stop()
    throw new OperationError(`The embedded database in ${label} does not answer: ${(err as Error).message}`, {
      cause: err,
    })
  }
  return {
    kind: 'embedded',
    label: `embedded PGlite (${label})`,
    connectionString: null,
    pglite: server.pglite,
    pool,
    timeoutMs: options.timeoutMs,
    serverMajor,
    createdEmbedded: server.created,
    cancelActive: async () => {},
    close: once(async () => {
      await pool.end().catch(() => {})
      await server.stop()
    }),
  }
}

interface Target {
  host: string
  port: number
  database: string
  user: string
  /**
   * The URL with its user and password percent-encoded, which is what pg is given: pg's parser
   * splits the userinfo at the first '@', so an unencoded '@', '/' or ':' in a password would
   * send it to the wrong host.
   */
  url: string
}

/**
 * Where a database URL points, read so that no part of the password can end up in a message:
 * the userinfo ends at the *last* '@' (urlUserinfo), and only what follows it is parsed as
 * host, port and database.
 */
function parseTarget(url: string, source: string): Target {
  const info = urlUserinfo(url)
  let parsed: URL
  try {
    // Without the userinfo: the URL parser never sees the password.
    parsed = new URL(info ? `${info.prefix}${info.rest.slice(1)}` : url)
  } catch {
    throw new UsageError(`The database URL from ${source} is not a valid URL: ${redactUrl(url)}.`, {
      hint: 'Expected postgres://user:password@host:5432/database.',
    })
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new UsageError(
      `The database URL from ${source} must start with postgres:// or postgresql://; got ${parsed.protocol}//.`,
    )
  }
  const decode = (text: string, what: string): string => {
    try {
      return decodeURIComponent(text)
    } catch {
      throw new UsageError(
        `The ${what} in the database URL from ${source} has a '%' that is not a valid %XX escape.`,
        { hint: "Percent-encode special characters in it; a literal '%' is %25." },
      )
    }
  }
  const user = info ? decode(info.user, 'user name') : ''
  const password = info && info.password !== null ? decode(info.password, 'password') : null
  const database = decode(parsed.pathname.replace(/^\//, ''), 'database name')
  return {
    host: parsed.hostname || parsed.searchParams.get('host') || 'localhost',
    port: Number(parsed.port || 5432),
    database: database || 'postgres',
    user: user || 'postgres',
    url: info
      ? `${info.prefix}${encodeURIComponent(user)}${password === null ? '' : `:${encodeURIComponent(password)}`}${info.rest}`
      : url,
  }
}

function connectError(err: unknown, t: Target, timeoutMs: number): OperationError | TimeoutError {
  const e = err as PgErrorLike
  const where = `PostgreSQL at ${t.host}:${t.port}`
  // A server that never answered within --timeout: timed out (exit 124), as the README promises.
  if (!e.code && /timeout/i.test(e.message ?? '')) {
    return new TimeoutError(`Cannot connect to ${where}: no answer within ${timeoutMs / 1000}s.`, {
      code: 'DB_UNREACHABLE',
      cause: err,
    })
  }
  const reason = (() => {
    switch (e.code) {
      case 'ECONNREFUSED':
        return 'connection refused'
      case 'ENOTFOUND':
      case 'EAI_AGAIN':
        return `host '${t.host}' not found`
      case 'EHOSTUNREACH':
      case 'ENETUNREACH':
        return 'host unreachable'
      case '28P01':
      case '28000':
        return `authentication failed for user '${t.user}'`
      case '3D000':
        return `database '${t.database}' does not exist`
      case '57P03':
        return 'the server is starting up or shutting down'
    }
    if (/timeout/i.test(e.message ?? '')) return `no answer within ${timeoutMs / 1000}s`
    return e.message ?? String(err)
  })()
  return new OperationError(`Cannot connect to ${where}: ${reason}.`, { code: 'DB_UNREACHABLE', cause: err })
}

/**
 * A connection the server kills (pg_terminate_backend, failover) emits 'error' on its client, and
 * an 'error' event without a listener crashes the process. Idle clients report to the pool,
 * checked-out ones to themselves: listen on both. The query that was running still rejects with
 * the error, and the retry logic sees it there.
 */
function swallowClientErrors(pool: pg.Pool): void {
  pool.on('error', () => {})
  pool.on('connect', (client) => client.on('error', () => {}))
}

function once(fn: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | undefined
  return () => {
    p ??= fn()
    return p
  }
}
