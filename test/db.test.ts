/**
 * The database layer against a real PostgreSQL: connect errors within the timeout, retries on
 * serialization failures and killed connections, statement timeouts, the polled advisory lock.
 */
import net from 'node:net'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { resolveSettings } from '../src/core/config/settings.js'
import { LOCK_CLASS, withAdvisoryLock } from '../src/core/db/lock.js'
import { openDatabases, openServer } from '../src/core/db/pool.js'
import { transaction } from '../src/core/db/tx.js'
import { ConflictError, OperationError, TimeoutError, UsageError } from '../src/core/errors.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

let db: TestDatabase

beforeAll(async () => {
  db = await createTestDatabase('db')
  await db.query('create table counter (id int primary key, n int not null)')
  await db.query('insert into counter values (1, 0)')
})
afterAll(async () => {
  await db.drop()
})

const open = (url: string, timeoutMs = 5000) =>
  openServer(url, 'env CREDITS_DATABASE_URL', { timeoutMs, env: {} })

describe('connecting', () => {
  it('names host and port when nothing listens', async () => {
    const err = await open('postgres://postgres@127.0.0.1:1/x').catch((e) => e)
    expect(err).toBeInstanceOf(OperationError)
    expect(err.message).toBe('Cannot connect to PostgreSQL at 127.0.0.1:1: connection refused.')
  })

  it('gives up within the timeout on a server that accepts but never answers', async () => {
    const silent = net.createServer(() => {}) // accepts the TCP connection, says nothing
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
    const port = (silent.address() as net.AddressInfo).port
    try {
      const started = Date.now()
      const err = await open(`postgres://postgres:pw123456@127.0.0.1:${port}/x`, 1000).catch((e) => e)
      const took = Date.now() - started
      // Timed out, as --timeout promises: exit 124, not 1.
      expect(err).toBeInstanceOf(TimeoutError)
      expect(err.exitCode).toBe(124)
      expect(err.message).toBe(`Cannot connect to PostgreSQL at 127.0.0.1:${port}: no answer within 1s.`)
      expect(took).toBeLessThan(5000)
    } finally {
      silent.close()
    }
  })

  it('says which database does not exist, and rejects a URL that is not postgres://', async () => {
    const u = new URL(db.url)
    u.pathname = '/shx_no_such_database'
    const err = await open(u.toString()).catch((e) => e)
    expect(err.message).toContain("database 'shx_no_such_database' does not exist")
    await expect(open('mysql://root@127.0.0.1/x')).rejects.toBeInstanceOf(UsageError)
  })

  it('shares one pool when the shadow database is the credits database, and only then', async () => {
    const same = await openDatabases(resolveSettings({ env: cleanEnv({ CREDITS_DATABASE_URL: db.url }) }), {
      timeoutMs: 5000,
      env: {},
    })
    try {
      expect(same.credits.kind).toBe('server')
      expect(same.credits.serverMajor).toBeGreaterThanOrEqual(13)
      expect(same.shadow).toBe(same.credits)
    } finally {
      await same.close()
    }
    const sameUrl = await openDatabases(
      resolveSettings({ env: cleanEnv({ CREDITS_DATABASE_URL: db.url, SHADOW_DATABASE_URL: db.url }) }),
      { timeoutMs: 5000, env: {} },
    )
    try {
      expect(sameUrl.shadow).toBe(sameUrl.credits)
    } finally {
      await sameUrl.close()
    }
    const shadowUrl = `${db.url}?application_name=shieldx_shadow`
    const separate = await openDatabases(
      resolveSettings({ env: cleanEnv({ CREDITS_DATABASE_URL: db.url, SHADOW_DATABASE_URL: shadowUrl }) }),
      { timeoutMs: 5000, env: {} },
    )
    try {
      expect(separate.shadow).not.toBe(separate.credits)
      expect(separate.shadow.pool).not.toBe(separate.credits.pool)
      await separate.shadow.pool.query('select 1')
    } finally {
      await separate.close()
    }
  })

  it('reads a password with unencoded @, / and : as a password, and connects to the right host', async () => {
    // The server trusts local connections, so any password gets in, if it reaches the right host.
    const u = new URL(db.url)
    const url = `postgres://${u.username || 'postgres'}:p@ss/w0rd:x@${u.host}${u.pathname}`
    const database = await open(url)
    try {
      const { rows } = await database.pool.query<{ d: string }>('select current_database() as d')
      expect(rows[0]!.d).toBe(db.name)
      expect(database.label).toBe(`postgres://${u.username || 'postgres'}:****@${u.host}${u.pathname}`)
    } finally {
      await database.close()
    }
  })

  it('a malformed %-escape is a UsageError naming the source, never the password', async () => {
    for (const [url, what] of [
      ['postgres://us%zzer:pw@127.0.0.1/x', 'user name'],
      ['postgres://app:se%zzcret@127.0.0.1/x', 'password'],
      ['postgres://app@127.0.0.1/x%', 'database name'],
    ] as const) {
      const err = await open(url).catch((e) => e)
      expect(err, url).toBeInstanceOf(UsageError)
      expect(err.message).toBe(
        `The ${what} in the database URL from env CREDITS_DATABASE_URL has a '%' that is not a valid %XX escape.`,
      )
    }
  })
})

describe('transactions', () => {
  it('retry serialization failures until both writers succeed', async () => {
    const database = await open(db.url)
    try {
      await db.query('update counter set n = 0 where id = 1')
      let attempts = 0
      // Two SERIALIZABLE read-modify-write transactions on one row: one must fail with 40001
      // and be retried, so the counter still ends at exactly 2.
      const bump = () =>
        transaction(database.pool, async (c) => {
          attempts++
          await c.query('set transaction isolation level serializable')
          const { rows } = await c.query<{ n: number }>('select n from counter where id = 1')
          await new Promise((r) => setTimeout(r, 100))
          await c.query('update counter set n = $1 where id = 1', [rows[0]!.n + 1])
        })
      await Promise.all([bump(), bump()])
      const { rows } = await db.query<{ n: number }>('select n from counter where id = 1')
      expect(rows[0]!.n).toBe(2)
      expect(attempts).toBeGreaterThan(2)
    } finally {
      await database.close()
    }
  })

  it('retry when the server kills the connection mid-transaction, and roll the first attempt back', async () => {
    const database = await open(db.url)
    const killer = new pg.Client({ connectionString: db.url })
    await killer.connect()
    try {
      await db.query('update counter set n = 0 where id = 1')
      let attempts = 0
      await transaction(database.pool, async (c) => {
        attempts++
        await c.query('update counter set n = n + 1 where id = 1')
        if (attempts === 1) {
          const { rows } = await c.query<{ pid: number }>('select pg_backend_pid() as pid')
          await killer.query('select pg_terminate_backend($1)', [rows[0]!.pid])
          await c.query('select 1') // fails: the connection is gone
        }
      })
      expect(attempts).toBe(2)
      const { rows } = await db.query<{ n: number }>('select n from counter where id = 1')
      expect(rows[0]!.n).toBe(1) // applied exactly once
    } finally {
      await killer.end()
      await database.close()
    }
  })

  it('turn a statement timeout into a TimeoutError (exit 124) and roll back', async () => {
    const database = await open(db.url, 500)
    try {
      await db.query('update counter set n = 0 where id = 1')
      const err = await transaction(
        database.pool,
        async (c) => {
          await c.query('update counter set n = 99 where id = 1')
          await c.query('select pg_sleep(3)')
        },
        { what: 'The test update', timeoutMs: 500 },
      ).catch((e) => e)
      expect(err).toBeInstanceOf(TimeoutError)
      expect(err.exitCode).toBe(124)
      expect(err.message).toBe('The test update did not finish within 0.5s.')
      const { rows } = await db.query<{ n: number }>('select n from counter where id = 1')
      expect(rows[0]!.n).toBe(0)
    } finally {
      await database.close()
    }
  })

  it('do not retry ordinary SQL errors', async () => {
    const database = await open(db.url)
    try {
      let attempts = 0
      await expect(
        transaction(database.pool, async (c) => {
          attempts++
          await c.query('select * from no_such_table')
        }),
      ).rejects.toThrow(/does not exist/)
      expect(attempts).toBe(1)
    } finally {
      await database.close()
    }
  })
})

describe('advisory lock', () => {
  it('is exclusive, polled, and released after the work', async () => {
    const a = new pg.Client({ connectionString: db.url })
    const b = new pg.Client({ connectionString: db.url })
    await a.connect()
    await b.connect()
    try {
      let waited = false
      await withAdvisoryLock(a, 42, { timeoutMs: 1000, name: 'test' }, async () => {
        const err = await withAdvisoryLock(
          b,
          42,
          { timeoutMs: 300, name: 'test', pollMs: 50, onWait: () => (waited = true) },
          async () => 'never',
        ).catch((e) => e)
        expect(err).toBeInstanceOf(ConflictError)
        expect(err.exitCode).toBe(5)
        expect(err.message).toMatch(/holding the test lock \(pid \d+ on the server\)/)
      })
      expect(waited).toBe(true)
      // a released it, so b gets it now
      expect(await withAdvisoryLock(b, 42, { timeoutMs: 300, name: 'test' }, async () => 'got it')).toBe(
        'got it',
      )
      const { rows } = await a.query(
        `select 1 from pg_locks where locktype = $1 and classid = $2::int::oid
         and database = (select oid from pg_database where datname = current_database())`,
        ['advisory', LOCK_CLASS],
      )
      expect(rows).toHaveLength(0)
    } finally {
      await a.end()
      await b.end()
    }
  })
})
