/** The test helpers themselves: a fresh database per file, and a Redis key space of its own. */
import pg from 'pg'
import { describe, expect, it } from 'vitest'
import { createTestDatabase, createTestRedis } from './helpers/db.js'
import { adminUrl } from './helpers/env.js'

async function databaseExists(name: string): Promise<boolean> {
  const c = new pg.Client({ connectionString: adminUrl() })
  await c.connect()
  try {
    const { rows } = await c.query('select 1 from pg_database where datname = $1', [name])
    return rows.length === 1
  } finally {
    await c.end()
  }
}

describe('createTestDatabase', () => {
  it('creates an empty database of its own and drops it afterwards', async () => {
    const a = await createTestDatabase('helper')
    const b = await createTestDatabase('helper')
    try {
      expect(a.name).not.toBe(b.name)
      expect(await databaseExists(a.name)).toBe(true)
      await a.query('create table only_in_a (x int)')
      await expect(b.query('select * from only_in_a')).rejects.toThrow(/does not exist/)
    } finally {
      await a.drop()
      await b.drop()
    }
    expect(await databaseExists(a.name)).toBe(false)
  })
})

describe('createTestRedis', () => {
  it('gives each file its own prefix and deletes only its own keys', async () => {
    const a = await createTestRedis()
    const b = await createTestRedis()
    expect(a.prefix).not.toBe(b.prefix)
    await a.client.set(`${a.prefix}balance:t1`, '5')
    await b.client.set(`${b.prefix}balance:t1`, '7')
    await a.cleanup()
    expect(await b.client.get(`${b.prefix}balance:t1`)).toBe('7')
    expect(await b.client.exists(`${a.prefix}balance:t1`)).toBe(0)
    await b.cleanup()
  })
})
