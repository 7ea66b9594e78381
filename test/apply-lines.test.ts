/**
 * applyLines (src/core/ledger/apply.ts) on a real server, for what the CLI cannot stage: an input
 * that fails or goes quiet at a chosen line, a failure while the input is quiet (a database
 * without the ledger's tables), and Ctrl-C at a chosen result.
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseKeyring } from '../src/core/config/secrets.js'
import { type ApplyLineResult, applyLines, repeatedField } from '../src/core/ledger/apply.js'
import { runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

const keys = {
  audit: parseKeyring(
    `k1:${randomBytes(32).toString('base64')}`,
    { envName: 'AUDIT_HMAC_KEY', bytes: { min: 32 } },
    'test',
  ),
}
const run = randomBytes(3).toString('hex')
let empty: TestDatabase
let ledger: TestDatabase
let emptyPool: pg.Pool
let pool: pg.Pool

beforeAll(async () => {
  empty = await createTestDatabase('applyempty')
  ledger = await createTestDatabase('applylines')
  const r = await runCli(['migrate', 'up', '--no-backup'], {
    env: cleanEnv({ CREDITS_DATABASE_URL: ledger.url, SHIELDX_HOME: tempHome('applylines') }),
  })
  expect(r.code, r.stderr).toBe(0)
  emptyPool = new pg.Pool({ connectionString: empty.url, max: 2 })
  pool = new pg.Pool({ connectionString: ledger.url, max: 4 })
})
afterAll(async () => {
  await emptyPool?.end()
  await pool?.end()
  await empty?.drop()
  await ledger?.drop()
})

/** Lines, then a wait that only stop() ends: a pipe whose writer has gone quiet. */
function quietInput(lines: string[]) {
  let stop: () => void = () => {}
  const stopped = new Promise<void>((resolve) => (stop = resolve))
  async function* read() {
    yield* lines
    await stopped
  }
  return { lines: read(), stop: () => stop() }
}

async function balance(tenant: string): Promise<number | null> {
  const { rows } = await pool.query<{ balance: string }>(
    'select balance from credits.credit_accounts where tenant_id = $1',
    [tenant],
  )
  return rows[0] ? Number(rows[0].balance) : null
}

const line = (o: Record<string, unknown>) => JSON.stringify(o)

describe('applyLines', () => {
  it('a failure while the input is quiet stops the reading and is thrown, not held until the next line', async () => {
    const input = quietInput([line({ op: 'consume', tenant: 'acme', amount: 1 })])
    let stopped = 0
    const started = Date.now()
    await expect(
      applyLines(emptyPool, input.lines, keys, {
        batch: () => 'quiet',
        onResults: () => {},
        stopReading: () => {
          stopped++
          input.stop()
        },
      }),
    ).rejects.toThrow(/credits\./)
    expect(stopped).toBe(1)
    expect(Date.now() - started).toBeLessThan(5000)
  })

  it('one valid line and then many refused ones finish: the refused lines wait behind it only until it is handed out', async () => {
    const tenant = `refused-${run}`
    // maxPending is 3 x chunk size x lanes = 6 here: the refused lines pass it at once.
    const lines = [
      line({ op: 'topup', tenant, amount: 5 }),
      ...Array.from({ length: 50 }, () => line({ op: 'consume', tenant, amount: 1, currency: 'EUR' })),
    ]
    const results: ApplyLineResult[] = []
    const summary = await Promise.race([
      applyLines(
        pool,
        (async function* () {
          yield* lines
        })(),
        keys,
        { batch: () => `refused-${run}`, chunkSize: 2, idleMs: 0, onResults: (r) => results.push(...r) },
      ),
      new Promise((_, reject) => setTimeout(() => reject(new Error('applyLines hung')), 10_000)),
    ])
    expect(summary).toEqual({ lines: 51, applied: 1, replayed: 0, failed: 50 })
    expect(results.map((r) => r.line)).toEqual(lines.map((_, i) => i + 1))
    expect(await balance(tenant)).toBe(5)
  })

  it('a steady trickle that is never quiet for 100 ms has its lines applied within about a second, not at 2,000 lines', async () => {
    const tenant = `trickle-${run}`
    const started = performance.now()
    let firstResultAt = 0
    let sent = 0
    const summary = await applyLines(
      pool,
      (async function* () {
        for (; sent < 40; sent++) {
          yield line({ op: 'topup', tenant, amount: 1 })
          await new Promise((r) => setTimeout(r, 50))
        }
      })(),
      keys,
      {
        batch: () => `trickle-${run}`,
        onResults: () => {
          if (firstResultAt === 0) firstResultAt = performance.now()
        },
      },
    )
    expect(summary.applied).toBe(40)
    // the first results came while the input was still coming (it takes 2 s in all)
    expect(firstResultAt - started).toBeLessThan(1600)
    expect(firstResultAt - started).toBeGreaterThan(0)
    expect(await balance(tenant)).toBe(40)
  })

  it('Ctrl-C at a result: the chunks queued behind it are not applied', async () => {
    const tenant = `abort-${run}`
    const lines = [
      line({ op: 'topup', tenant, amount: 100 }),
      ...Array.from({ length: 40 }, () => line({ op: 'consume', tenant, amount: 1 })),
    ]
    const ac = new AbortController()
    const printed: ApplyLineResult[] = []
    await applyLines(
      pool,
      (async function* () {
        yield* lines
      })(),
      keys,
      {
        batch: () => `abort-${run}`,
        chunkSize: 1,
        signal: ac.signal,
        onResults: (r) => {
          // what the user saw: the CLI prints nothing after Ctrl-C
          if (ac.signal.aborted) return
          printed.push(...r)
          ac.abort()
        },
      },
    )
    // Aborted as the first result came: what was applied is what was printed, and no more.
    const applied = printed.filter((r) => r.ok)
    expect(applied.length).toBeGreaterThan(0)
    expect(await balance(tenant)).toBe(100 - (applied.length - 1))
  })

  it('an input that fails after a valid line: its error is thrown, and the line read ahead is never applied', async () => {
    const tenant = `eio-${run}`
    const err = Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' })
    await expect(
      applyLines(
        pool,
        (async function* () {
          yield line({ op: 'topup', tenant, amount: 7 })
          throw err
        })(),
        keys,
        { batch: () => `eio-${run}`, idleMs: 20, onResults: () => {} },
      ),
    ).rejects.toBe(err)
    // well past the idle time: a timer left armed would have applied it by now
    await new Promise((r) => setTimeout(r, 300))
    expect(await balance(tenant)).toBeNull()
  })
})

describe('repeatedField', () => {
  const cases: Array<[string, string | undefined]> = [
    ['{"op":"consume","amount":5,"amount":500}', 'amount'],
    // the same name, escaped: JSON.parse reads both as "amount"
    ['{"amount":5,"\\u0061mount":6}', 'amount'],
    ['{"op":"topup","tenant":"a","amount":5}', undefined],
    // a name inside a string value, with escaped quotes, is not a field
    ['{"description":"\\"amount\\":1,","amount":2}', undefined],
    // nested objects and arrays have fields of their own
    ['{"a":{"b":1,"b":2},"c":[{"a":1}],"b":3}', undefined],
    ['{"a":{"b":1},"a":2}', 'a'],
    [' { "a" : 1 , "b" : [1, 2] , "a" : 3 } ', 'a'],
    ['{}', undefined],
  ]
  it('names the first top-level field given twice, whatever the strings and nesting around it', () => {
    for (const [text, twice] of cases) expect(repeatedField(text), text).toBe(twice)
  })
  it('gives the same answer when told how many fields JSON.parse kept (the count is its short cut)', () => {
    for (const [text, twice] of cases)
      expect(repeatedField(text, Object.keys(JSON.parse(text) as object).length), text).toBe(twice)
  })
})
