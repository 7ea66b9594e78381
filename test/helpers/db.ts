/**
 * Each test file gets a fresh database of its own on the real server (created here, dropped
 * after), and its own Redis key prefix, so files run in parallel and never touch anyone's data.
 */
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import pg from 'pg'
import { adminUrl, redisUrl } from './env.js'

export interface TestDatabase {
  name: string
  url: string
  /** A URL for the same server with this database and a password that must never be printed. */
  urlWithPassword(password: string): string
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params?: unknown[],
  ): Promise<pg.QueryResult<R>>
  drop(): Promise<void>
}

function withDatabase(url: string, name: string): string {
  const u = new URL(url)
  u.pathname = `/${name}`
  return u.toString()
}

export async function createTestDatabase(label = 'test'): Promise<TestDatabase> {
  const name = `shx_${label.replace(/[^a-z0-9_]/gi, '_').toLowerCase()}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: adminUrl() })
  await admin.connect()
  try {
    await admin.query(`create database ${name}`)
  } finally {
    await admin.end()
  }
  const url = withDatabase(adminUrl(), name)
  const pool = new pg.Pool({ connectionString: url, max: 3 })
  pool.on('error', () => {})
  return {
    name,
    url,
    urlWithPassword(password: string) {
      const u = new URL(url)
      u.password = password
      return u.toString()
    },
    query: (sql, params) => pool.query(sql, params as unknown[]),
    async drop() {
      await pool.end()
      const a = new pg.Client({ connectionString: adminUrl() })
      await a.connect()
      try {
        await a.query(`drop database if exists ${name} with (force)`)
      } finally {
        await a.end()
      }
    },
  }
}

export interface TestRedis {
  prefix: string
  client: Redis
  /** Delete every key under this file's prefix and disconnect. */
  cleanup(): Promise<void>
}

export async function createTestRedis(): Promise<TestRedis> {
  const prefix = `shx-test:${randomBytes(4).toString('hex')}:`
  const client = new Redis(redisUrl(), { lazyConnect: true, maxRetriesPerRequest: 1 })
  await client.connect()
  return {
    prefix,
    client,
    async cleanup() {
      let cursor = '0'
      do {
        const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500)
        if (keys.length) await client.del(...keys)
        cursor = next
      } while (cursor !== '0')
      client.disconnect()
    },
  }
}
