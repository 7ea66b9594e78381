/**
 * backup create stopped at once (Ctrl-C a moment in): the .partial file it had begun is removed,
 * also when the write stream had not finished opening it when the run was stopped.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createBackup } from '../src/core/backup/create.js'
import { parseKeyring } from '../src/core/config/secrets.js'
import { type Database, openServer } from '../src/core/db/pool.js'
import { InterruptedError } from '../src/core/errors.js'
import { runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

let db: TestDatabase
let server: Database
const keys = parseKeyring(
  `bk1:${randomBytes(32).toString('base64')}`,
  { envName: 'BACKUP_KEY', bytes: { min: 32 } },
  'test',
)
const dirs: string[] = []

beforeAll(async () => {
  db = await createTestDatabase('fix2_backup_interrupt')
  const env = cleanEnv({
    CREDITS_DATABASE_URL: db.url,
    SHIELDX_HOME: tempHome('backup-interrupt'),
    AUDIT_HMAC_KEY: `a1:${randomBytes(32).toString('base64')}`,
  })
  const r = await runCli(['migrate', 'up', '--no-backup'], { env })
  expect(r.code, r.stderr).toBe(0)
  server = await openServer(db.url, 'test', { timeoutMs: 10_000, env: cleanEnv() })
})
afterAll(async () => {
  await server?.close()
  await db?.drop()
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
})

describe('backup create interrupted', () => {
  it('before the .partial file is even open: rejected as interrupted, and no .partial is left behind', async () => {
    for (let i = 0; i < 10; i++) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-fix2-partial-'))
      dirs.push(dir)
      const ac = new AbortController()
      ac.abort()
      await expect(
        createBackup(server, 'credits', {
          dir,
          keys,
          env: cleanEnv(),
          timeoutMs: 10_000,
          signal: ac.signal,
        }),
      ).rejects.toBeInstanceOf(InterruptedError)
      // A file opened late would appear after the rejection: give it the time to.
      await new Promise((resolve) => setTimeout(resolve, 100))
      expect(fs.readdirSync(dir), `run ${i}`).toEqual([])
    }
  })
})
