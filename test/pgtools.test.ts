/**
 * Finding pg_dump / pg_restore: the real Debian binaries, and fake ones in SHIELDX_PG_BIN that
 * count how often they are asked for their version.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { findTool, toolConnection, warmTool } from '../src/core/backup/pgtools.js'

const dirs: string[] = []
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-pgtools-'))
  dirs.push(d)
  return d
}
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
})

/** A pg_restore that says it is `version` and notes each time it is asked. */
function countingTool(dir: string, version: string): { asked: () => number } {
  const log = path.join(dir, 'asked')
  fs.writeFileSync(
    path.join(dir, 'pg_restore'),
    `#!/bin/sh\necho x >> '${log}'\necho "pg_restore (PostgreSQL) ${version}"\n`,
    { mode: 0o755 },
  )
  return { asked: () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').length - 1 : 0) }
}

describe('findTool', () => {
  it("finds the server's own major on this machine, the same with or without warming first", async () => {
    const env = { PATH: process.env.PATH }
    const cold = await findTool('pg_restore', 15, env)
    expect(cold.major).toBeGreaterThanOrEqual(15)
    expect(cold.path).toMatch(/^\/usr\/lib\/postgresql\/\d+\/bin\/pg_restore$/)
    warmTool('pg_restore', env)
    expect(await findTool('pg_restore', 15, env)).toEqual(cold)
  })

  it('asks a binary for its version once, however often it is warmed and looked for', async () => {
    const dir = tmp()
    const tool = countingTool(dir, '15.4')
    const env = { SHIELDX_PG_BIN: dir }
    warmTool('pg_restore', env)
    warmTool('pg_restore', env)
    const [a, b] = await Promise.all([findTool('pg_restore', 15, env), findTool('pg_restore', 14, env)])
    expect(a).toEqual({ path: path.join(dir, 'pg_restore'), major: 15, version: '15.4' })
    expect(b).toEqual(a)
    expect(tool.asked()).toBe(1)
  })

  it('asks again after a failed look: a tool installed since is found', async () => {
    const dir = tmp()
    const env = { SHIELDX_PG_BIN: dir }
    warmTool('pg_restore', env)
    await expect(findTool('pg_restore', 15, env)).rejects.toThrow(
      `pg_restore was not found in SHIELDX_PG_BIN (${dir}).`,
    )
    const tool = countingTool(dir, '16.2')
    expect((await findTool('pg_restore', 15, env)).version).toBe('16.2')
    expect(tool.asked()).toBe(1)
  })

  it('still refuses a tool older than the server after warming, naming both versions', async () => {
    const dir = tmp()
    countingTool(dir, '11.22')
    const env = { SHIELDX_PG_BIN: dir }
    warmTool('pg_restore', env)
    await expect(findTool('pg_restore', 15, env)).rejects.toThrow(
      /pg_restore 11\.22 \(.*\) is older than the PostgreSQL 15 server and cannot restore to it\./,
    )
  })
})

describe('toolConnection', () => {
  it('moves the password from the URL into PGPASSWORD and drops our other PG* variables', () => {
    const c = toolConnection('postgresql://app:s%40cret@db.example:5432/ledger', {
      PATH: '/bin',
      PGHOST: 'elsewhere',
      PGPASSWORD: 'old',
    })
    expect(c.dbname).toBe('postgresql://app@db.example:5432/ledger')
    expect(c.env).toEqual({ PATH: '/bin', PGPASSWORD: 's@cret' })
  })
})
