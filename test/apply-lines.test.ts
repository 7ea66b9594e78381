/**
 * applyLines (src/core/ledger/apply.ts) on a real server, where the CLI cannot reach the case: a
 * failure while the input is quiet. The database here has no ledger tables, so the first chunk
 * fails; the input never ends on its own, as a pipe whose writer is waiting.
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseKeyring } from '../src/core/config/secrets.js'
import { applyLines } from '../src/core/ledger/apply.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'

let db: TestDatabase
let pool: pg.Pool
beforeAll(async () => {
  db = await createTestDatabase('applylines')
  pool = new pg.Pool({ connectionString: db.url, max: 2 })
})
afterAll(async () => {
  await pool?.end()
  await db?.drop()
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

describe('applyLines', () => {
  it('a failure while the input is quiet stops the reading and is thrown, not held until the next line', async () => {
    const input = quietInput([JSON.stringify({ op: 'consume', tenant: 'acme', amount: 1 })])
    let stopped = 0
    const started = Date.now()
    await expect(
      applyLines(
        pool,
        input.lines,
        {
          audit: parseKeyring(
            `k1:${randomBytes(32).toString('base64')}`,
            { envName: 'AUDIT_HMAC_KEY', bytes: { min: 32 } },
            'test',
          ),
        },
        {
          batch: () => 'quiet',
          onResults: () => {},
          stopReading: () => {
            stopped++
            input.stop()
          },
        },
      ),
    ).rejects.toThrow(/credits\./)
    expect(stopped).toBe(1)
    expect(Date.now() - started).toBeLessThan(5000)
  })
})
