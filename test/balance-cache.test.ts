/**
 * The Redis balance cache (src/core/ledger/cache.ts) against the real Redis, plus a local TCP
 * server that refuses, hangs or forwards, to play a Redis that is down, hung or recovering.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createBalanceCache, type BalanceCache, type CachedBalance } from '../src/core/ledger/cache.js'
import { createTestRedis, type TestRedis } from './helpers/db.js'
import { redisUrl } from './helpers/env.js'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

let redis: TestRedis
const opened: BalanceCache[] = []

/** A cache on the real Redis under this file's prefix, closed after the file. */
function cacheFor(sub: string, extra: { ttlSeconds?: number } = {}): BalanceCache {
  const cache = createBalanceCache({ url: redisUrl(), keyPrefix: `${redis.prefix}${sub}:`, ...extra })
  opened.push(cache)
  return cache
}

function value(tenant: string, version: number, balance = version * 10, reserved = 1): CachedBalance {
  return { tenant_id: tenant, balance, reserved, version }
}

async function timed<T>(fn: () => Promise<T>): Promise<{ result: T; ms: number }> {
  const start = performance.now()
  const result = await fn()
  return { result, ms: performance.now() - start }
}

type Mode = 'up' | 'down' | 'hung'

/** A TCP server standing in for Redis: forwards to the real one, drops connections, or hangs. */
async function fakeRedis(initial: Mode): Promise<{ url: string; mode: Mode; close(): Promise<void> }> {
  const upstream = new URL(redisUrl())
  const sockets = new Set<net.Socket>()
  const track = (s: net.Socket) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => {})
  }
  const state = { mode: initial }
  const server = net.createServer((socket) => {
    track(socket)
    if (state.mode === 'down') {
      socket.destroy()
    } else if (state.mode === 'up') {
      const up = net.connect({ host: upstream.hostname, port: Number(upstream.port || 6379) })
      track(up)
      up.on('close', () => socket.destroy())
      socket.on('close', () => up.destroy())
      socket.pipe(up).pipe(socket)
    }
    // 'hung': accept, read, never answer.
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  const u = new URL(redisUrl())
  u.hostname = '127.0.0.1'
  u.port = String(port)
  return {
    url: u.toString(),
    get mode() {
      return state.mode
    },
    set mode(m: Mode) {
      state.mode = m
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}

beforeAll(async () => {
  redis = await createTestRedis()
})

afterAll(async () => {
  for (const c of opened) await c.close()
  await redis.cleanup()
})

describe('balance cache on a working Redis', () => {
  it('misses, then hits with exactly the stored value', async () => {
    const cache = cacheFor('hit')
    expect(await cache.get('acme')).toBeNull()
    await cache.set({ tenant_id: 'acme', balance: 1200, reserved: 200, version: 3 })
    expect(await cache.get('acme')).toEqual({ tenant_id: 'acme', balance: 1200, reserved: 200, version: 3 })
    expect(await cache.get('other')).toBeNull()
    expect(cache.degraded).toBe(false)
  })

  it('sets a TTL of about 60 s by default, and the configured one otherwise', async () => {
    const cache = cacheFor('ttl')
    await cache.set(value('acme', 1))
    const ttl = await redis.client.ttl(`${redis.prefix}ttl:balance:acme`)
    expect(ttl).toBeGreaterThan(55)
    expect(ttl).toBeLessThanOrEqual(60)

    const short = cacheFor('ttl7', { ttlSeconds: 7 })
    await short.set(value('acme', 1))
    const ttl7 = await redis.client.ttl(`${redis.prefix}ttl7:balance:acme`)
    expect(ttl7).toBeGreaterThan(0)
    expect(ttl7).toBeLessThanOrEqual(7)
  })

  it('never lets an older version overwrite a newer one', async () => {
    const cache = cacheFor('guard')
    await cache.set(value('acme', 7))
    await cache.set(value('acme', 5))
    expect(await cache.get('acme')).toEqual(value('acme', 7))
    await cache.set(value('acme', 8))
    expect(await cache.get('acme')).toEqual(value('acme', 8))
    // The same version again is not a newer value: the entry stays as it was.
    await cache.set(value('acme', 8, 999_999))
    expect(await cache.get('acme')).toEqual(value('acme', 8))
  })

  it('ends at the highest version when sets race in shuffled order', async () => {
    const versions = Array.from({ length: 40 }, (_, i) => i + 1)
    for (let i = versions.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1))
      ;[versions[i], versions[j]] = [versions[j]!, versions[i]!]
    }
    // Keep the highest version away from the end, so "last write wins" would fail this test.
    const top = versions.indexOf(40)
    ;[versions[top], versions[0]] = [versions[0]!, versions[top]!]

    // One connection (sends in the shuffled order) and four (really interleaved).
    const single = cacheFor('race1')
    await Promise.all(versions.map((v) => single.set(value('acme', v))))
    expect(await single.get('acme')).toEqual(value('acme', 40))

    const many = [cacheFor('race4'), cacheFor('race4'), cacheFor('race4'), cacheFor('race4')]
    await Promise.all(versions.map((v, i) => many[i % many.length]!.set(value('acme', v))))
    for (const c of many) expect(await c.get('acme')).toEqual(value('acme', 40))
  })

  it('invalidate empties the entry; the same or a newer version re-populates it, an older one not', async () => {
    const cache = cacheFor('inval')
    await cache.set(value('acme', 7))
    await cache.invalidate('acme')
    expect(await cache.get('acme')).toBeNull()

    // A slow reader that saw version 5 before the write must not bring it back.
    await cache.set(value('acme', 5))
    expect(await cache.get('acme')).toBeNull()

    // The next set with the current version fills it again, with a fresh TTL.
    await cache.set(value('acme', 7, 71))
    expect(await cache.get('acme')).toEqual(value('acme', 7, 71))
    expect(await redis.client.ttl(`${redis.prefix}inval:balance:acme`)).toBeGreaterThan(55)

    await cache.invalidate('acme')
    await cache.set(value('acme', 9))
    expect(await cache.get('acme')).toEqual(value('acme', 9))

    // Invalidating what is not there is fine, and the first set then works.
    await cache.invalidate('nobody')
    expect(await cache.get('nobody')).toBeNull()
    await cache.set(value('nobody', 1))
    expect(await cache.get('nobody')).toEqual(value('nobody', 1))
  })

  it('keeps its keys under the given prefix', async () => {
    const a = cacheFor('pa')
    const b = cacheFor('pb')
    await a.set(value('tenant-1', 2))
    expect(await b.get('tenant-1')).toBeNull()
    const [, keys] = await redis.client.scan('0', 'MATCH', `${redis.prefix}p*`, 'COUNT', 1000)
    expect(keys).toEqual([`${redis.prefix}pa:balance:tenant-1`])
    expect(await redis.client.hgetall(keys[0]!)).toEqual({ version: '2', balance: '20', reserved: '1' })
  })

  it('ignores values it cannot store and entries it cannot read, without throwing', async () => {
    const cache = cacheFor('odd')
    await cache.set({ tenant_id: 'acme', balance: Number.NaN, reserved: 0, version: 1 })
    expect(await cache.get('acme')).toBeNull()
    await redis.client.hset(`${redis.prefix}odd:balance:junk`, { version: '1', balance: 'x', reserved: '0' })
    expect(await cache.get('junk')).toBeNull()
    expect(cache.degraded).toBe(false)
  })

  it('close() twice is fine, and a closed cache answers null without reconnecting', async () => {
    const cache = createBalanceCache({ url: redisUrl(), keyPrefix: `${redis.prefix}close:` })
    await cache.set(value('acme', 1))
    expect(await cache.get('acme')).toEqual(value('acme', 1))
    await cache.close()
    await cache.close()
    expect(await cache.get('acme')).toBeNull()
    await cache.set(value('acme', 2))
    await cache.invalidate('acme')
    expect(await redis.client.hget(`${redis.prefix}close:balance:acme`, 'version')).toBe('1')
  })
})

describe('balance cache switched off', () => {
  it('with url null is a no-op whose get() is always null', async () => {
    const warnings: string[] = []
    const cache = createBalanceCache({ url: null, onWarning: (m) => warnings.push(m) })
    await cache.set(value('acme', 1))
    expect(await cache.get('acme')).toBeNull()
    await cache.invalidate('acme')
    expect(cache.degraded).toBe(false)
    await cache.close()
    await cache.close()
    expect(warnings).toEqual([])
  })
})

describe('balance cache when Redis is down or slow', () => {
  it('Redis down: fast nulls, one warning without the password, degraded', async () => {
    const warnings: string[] = []
    const cache = createBalanceCache({
      url: 'redis://:s3cretpw@127.0.0.1:1',
      keyPrefix: redis.prefix,
      onWarning: (m) => warnings.push(m),
    })
    opened.push(cache)
    for (let i = 0; i < 6; i++) {
      const { result, ms } = await timed(() => cache.get('acme'))
      expect(result).toBeNull()
      expect(ms).toBeLessThan(1000)
    }
    await expect(cache.set(value('acme', 1))).resolves.toBeUndefined()
    await expect(cache.invalidate('acme')).resolves.toBeUndefined()
    expect(cache.degraded).toBe(true)
    expect(warnings).toHaveLength(1)
    expect(warnings[0]).toBe(
      'Redis at redis://:****@127.0.0.1:1 is unavailable (connection refused); continuing without the balance cache.',
    )
    expect(warnings[0]).not.toContain('s3cretpw')
    await cache.close()
    await cache.close()
  })

  it('Redis hung (accepts, never answers): every call returns within the timeout', async () => {
    const server = await fakeRedis('hung')
    const warnings: string[] = []
    const cache = createBalanceCache({
      url: server.url,
      keyPrefix: redis.prefix,
      commandTimeoutMs: 200,
      onWarning: (m) => warnings.push(m),
    })
    try {
      const times: number[] = []
      for (let i = 0; i < 5; i++) {
        const { result, ms } = await timed(() => cache.get('acme'))
        expect(result).toBeNull()
        times.push(ms)
      }
      const { ms: setMs } = await timed(() => cache.set(value('acme', 1)))
      const { ms: invMs } = await timed(() => cache.invalidate('acme'))
      for (const ms of [...times, setMs, invMs]) expect(ms).toBeLessThan(200 + 150)
      // The first calls really waited (the server hung, it did not refuse)...
      expect(times[0]).toBeGreaterThanOrEqual(180)
      // ...and once the breaker opened (3 failures), calls stop waiting at all.
      for (const ms of [times[3]!, times[4]!, setMs, invMs]) expect(ms).toBeLessThan(50)
      expect(cache.degraded).toBe(true)
      expect(warnings).toEqual([
        `Redis at ${server.url} is unavailable (no answer within 200 ms); continuing without the balance cache.`,
      ])
    } finally {
      await cache.close()
      await server.close()
    }
  })

  it('recovers when Redis comes back (half-open after 3 s), still with one warning', async () => {
    const server = await fakeRedis('down')
    const warnings: string[] = []
    const cache = createBalanceCache({
      url: server.url,
      keyPrefix: `${redis.prefix}recover:`,
      commandTimeoutMs: 200,
      onWarning: (m) => warnings.push(m),
    })
    try {
      for (let i = 0; i < 3; i++) await cache.set(value('acme', 1))
      expect(cache.degraded).toBe(true)
      server.mode = 'up'
      expect(await cache.get('acme')).toBeNull() // breaker still open: Redis not even asked
      await new Promise((r) => setTimeout(r, 3_200))
      await cache.set(value('acme', 4))
      expect(cache.degraded).toBe(false)
      expect(await cache.get('acme')).toEqual(value('acme', 4))
      expect(warnings).toHaveLength(1)
      expect(warnings[0]).toMatch(/^Redis at redis:\/\/127\.0\.0\.1:\d+\/? is unavailable \(.+\); continuing/)
    } finally {
      await cache.close()
      await server.close()
    }
  })

  it('a throwing onWarning does not make the cache throw', async () => {
    const cache = createBalanceCache({
      url: 'redis://127.0.0.1:1',
      onWarning: () => {
        throw new Error('sink broke')
      },
    })
    await expect(cache.get('acme')).resolves.toBeNull()
    await expect(cache.set(value('acme', 1))).resolves.toBeUndefined()
    await cache.close()
  })
})

/**
 * Whether a closed cache lets the process exit is only observable from outside the process, so
 * these run the compiled cache (dist/, built by the global setup) in a child node process:
 * set, get, invalidate, close, then print and fall off the end. The child must exit by itself
 * promptly. The control case (a connected cache that is never closed) must NOT exit, which shows
 * the check can fail.
 */
describe('balance cache lets the process exit after close()', () => {
  const distCache = path.join(root, 'dist/core/ledger/cache.js')

  function runChild(
    url: string,
    close: boolean,
    limitMs = 1500,
  ): Promise<{ exited: boolean; code: number | null; afterMs: number; hit: unknown; stderr: string }> {
    const script = `
      const { createBalanceCache } = await import(${JSON.stringify(pathToFileURL(distCache).href)})
      const cache = createBalanceCache({ url: process.env.CACHE_URL, keyPrefix: process.env.CACHE_PREFIX, commandTimeoutMs: 200 })
      await cache.set({ tenant_id: 'acme', balance: 5, reserved: 1, version: 1 })
      const hit = await cache.get('acme')
      await cache.invalidate('acme')
      if (process.env.CACHE_CLOSE === '1') { await cache.close(); await cache.close() }
      process.stdout.write(JSON.stringify({ hit }) + '\\n')
    `
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        env: {
          ...process.env,
          CACHE_URL: url,
          CACHE_PREFIX: `${redis.prefix}child:`,
          CACHE_CLOSE: close ? '1' : '0',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      let out = ''
      let stderr = ''
      let doneAt = 0
      let timer: NodeJS.Timeout | undefined
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString()
        if (!doneAt && out.includes('\n')) {
          doneAt = performance.now()
          timer = setTimeout(() => child.kill('SIGKILL'), limitMs)
        }
      })
      const overall = setTimeout(() => child.kill('SIGKILL'), 15_000)
      child.on('error', reject)
      child.on('exit', (code, signal) => {
        clearTimeout(timer)
        clearTimeout(overall)
        const line = out.split('\n')[0] ?? ''
        resolve({
          exited: signal === null,
          code,
          afterMs: doneAt ? performance.now() - doneAt : NaN,
          hit: line ? (JSON.parse(line) as { hit: unknown }).hit : undefined,
          stderr,
        })
      })
    })
  }

  beforeAll(() => {
    if (!existsSync(distCache)) throw new Error(`${distCache} is missing: the global setup builds dist/.`)
  })

  it('on a working Redis (and the control: not closed, it keeps running)', async () => {
    const closed = await runChild(redisUrl(), true)
    expect(closed.stderr).toBe('')
    expect(closed.hit).toEqual({ tenant_id: 'acme', balance: 5, reserved: 1, version: 1 })
    expect(closed).toMatchObject({ exited: true, code: 0 })
    expect(closed.afterMs).toBeLessThan(1000)

    const control = await runChild(redisUrl(), false)
    expect(control.hit).toEqual({ tenant_id: 'acme', balance: 5, reserved: 1, version: 1 })
    expect(control.exited).toBe(false)
  })

  it('on a hung Redis and on a Redis that is down', async () => {
    const server = await fakeRedis('hung')
    try {
      const hung = await runChild(server.url, true)
      expect(hung.hit).toBeNull()
      expect(hung).toMatchObject({ exited: true, code: 0, stderr: '' })
      expect(hung.afterMs).toBeLessThan(1000)
    } finally {
      await server.close()
    }
    const down = await runChild('redis://127.0.0.1:1', true)
    expect(down.hit).toBeNull()
    expect(down).toMatchObject({ exited: true, code: 0, stderr: '' })
    expect(down.afterMs).toBeLessThan(1000)
  })
})

describe('one Redis, several databases', () => {
  it("keeps each database's balances apart, and invalidateAll drops its own database's only", async () => {
    const redis = await createTestRedis()
    // glob characters in the prefix are matched literally by invalidateAll's SCAN
    const prefix = `${redis.prefix}[x]*:`
    const a = createBalanceCache({ url: redisUrl(), keyPrefix: prefix, database: '7001.16384' })
    const b = createBalanceCache({ url: redisUrl(), keyPrefix: prefix, database: '7002.16384' })
    try {
      await a.set({ tenant_id: 'acme', balance: 10, reserved: 0, version: 1 })
      await b.set({ tenant_id: 'acme', balance: 20, reserved: 5, version: 1 })
      expect(await a.get('acme')).toMatchObject({ balance: 10, reserved: 0 })
      expect(await b.get('acme')).toMatchObject({ balance: 20, reserved: 5 })
      await redis.client.hset(`${redis.prefix}xy:db:7001.16384:balance:acme`, { version: '1', balance: '1' })
      await a.invalidateAll()
      expect(await a.get('acme')).toBeNull()
      expect(await b.get('acme')).toMatchObject({ balance: 20 })
      expect(await redis.client.exists(`${redis.prefix}xy:db:7001.16384:balance:acme`)).toBe(1)
    } finally {
      await a.close()
      await b.close()
      await redis.cleanup()
    }
  })
})

describe('invalidateAll (after a restore)', () => {
  it('drops every cached balance and version marker under the prefix, and nothing else', async () => {
    const redis = await createTestRedis()
    const cache = createBalanceCache({ url: redisUrl(), keyPrefix: redis.prefix })
    try {
      await cache.set({ tenant_id: 'a', balance: 5, reserved: 0, version: 9 })
      await cache.set({ tenant_id: 'b', balance: 7, reserved: 1, version: 3 })
      await cache.invalidate('b') // leaves a version marker
      await redis.client.set(`${redis.prefix}other`, 'keep')
      await cache.invalidateAll()
      expect(await cache.get('a')).toBeNull()
      // the marker is gone too: an older version (as after a restore) may be cached again
      await cache.set({ tenant_id: 'b', balance: 2, reserved: 0, version: 1 })
      expect(await cache.get('b')).toEqual({ tenant_id: 'b', balance: 2, reserved: 0, version: 1 })
      expect(await redis.client.get(`${redis.prefix}other`)).toBe('keep')
    } finally {
      await cache.close()
      await redis.cleanup()
    }
  })
})

describe('the Redis database of the URL (redis://host:6379/N)', () => {
  function withDb(n: number): string {
    const u = new URL(redisUrl())
    u.pathname = `/${n}`
    return u.toString()
  }

  it('a database the server refuses (SELECT 99 of 16): one warning, no cache, and nothing written to db 0', async () => {
    const warnings: string[] = []
    const cache = createBalanceCache({
      url: withDb(99),
      keyPrefix: `${redis.prefix}db99:`,
      onWarning: (m) => warnings.push(m),
    })
    opened.push(cache)
    for (let i = 0; i < 4; i++) {
      await cache.set(value('acme', i + 1))
      expect(await cache.get('acme')).toBeNull()
    }
    await cache.invalidate('acme')
    expect(await redis.client.keys(`${redis.prefix}db99:*`)).toEqual([])
    expect(warnings).toHaveLength(1)
    expect(warnings[0]).toMatch(
      /^Redis at redis:\/\/.*\/99 is unavailable \(cannot select database 99: ERR DB index is out of range\); continuing without the balance cache\.$/,
    )
    expect(cache.degraded).toBe(true)
    await cache.close()
  })

  it('a database the server has: the balances go there, not to db 0', async () => {
    const prefix = `${redis.prefix}db1:`
    const cache = createBalanceCache({ url: withDb(1), keyPrefix: prefix })
    opened.push(cache)
    const { Redis } = await import('ioredis')
    const db1 = new Redis(withDb(1), { lazyConnect: true, maxRetriesPerRequest: 1 })
    await db1.connect()
    try {
      await cache.set(value('acme', 3))
      expect(await cache.get('acme')).toMatchObject({ balance: 30, version: 3 })
      expect(await db1.exists(`${prefix}balance:acme`)).toBe(1)
      expect(await redis.client.exists(`${prefix}balance:acme`)).toBe(0)
    } finally {
      const keys = await db1.keys(`${prefix}*`)
      if (keys.length > 0) await db1.del(...keys)
      db1.disconnect()
      await cache.close()
    }
  })
})
