/**
 * TextChainChecker, which `restore` uses to verify the audit chains from the dump while it is
 * restored, on the text real pg_dump and pg_restore write for a ledger the CLI filled: an intact
 * chain passes (in any time zone, with rows out of order), and anything else makes it give up.
 */
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Head } from '../src/core/audit/checker.js'
import { TextChainChecker } from '../src/core/audit/copy-text.js'
import type { Key } from '../src/core/config/secrets.js'
import { runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

let db: TestDatabase
let home: string
const keyBytes = randomBytes(32)
const keys = new Map<string, Key>([['k1', { kid: 'k1', bytes: keyBytes }]])
let heads: Record<string, Head>

const cli = (args: string[]) =>
  runCli(args, {
    env: cleanEnv({
      CREDITS_DATABASE_URL: db.url,
      SHIELDX_HOME: home,
      AUDIT_HMAC_KEY: `k1:${keyBytes.toString('base64')}`,
    }),
  })

/** The audit table's data as `pg_restore --data-only` writes it from a `pg_dump -Fc` taken in `tz`. */
function dumpText(tz: string): string {
  const file = path.join(home, `dump-${tz.replace('/', '-')}.fc`)
  const env = { ...cleanEnv(), PGTZ: tz }
  execFileSync('pg_dump', ['-Fc', '-Z0', '--schema=credits', '-f', file, '-d', db.url], { env })
  return execFileSync(
    'pg_restore',
    ['--data-only', '--schema=credits', '--table=audit_logs', '--file=-', file],
    { env, encoding: 'utf8', maxBuffer: 64 << 20 },
  )
}

function check(
  text: string,
  options: { heads?: Record<string, Head>; keys?: Map<string, Key>; chunk?: number } = {},
) {
  const checker = new TextChainChecker(options.keys ?? keys, 'credits.audit_logs', options.heads ?? heads)
  const bytes = Buffer.from(text)
  const step = options.chunk ?? bytes.length
  for (let i = 0; i < bytes.length; i += step) checker.write(bytes.subarray(i, i + step))
  return checker.end()
}

/** The data lines of the COPY, and a function to put edited ones back. */
function rowsOf(text: string): { rows: string[]; join(rows: string[]): string } {
  const lines = text.split('\n')
  const first = lines.findIndex((l) => l.startsWith('COPY credits.audit_logs ')) + 1
  const last = lines.indexOf('\\.', first)
  return {
    rows: lines.slice(first, last),
    join: (rows) => [...lines.slice(0, first), ...rows, ...lines.slice(last)].join('\n'),
  }
}

beforeAll(async () => {
  db = await createTestDatabase('copytext')
  home = tempHome('copytext')
  expect((await cli(['migrate', 'up', '--no-backup'])).code).toBe(0)
  for (const tenant of ['acme', 'globex', 'initech']) {
    expect((await cli(['credits', 'topup', tenant, '1000'])).code).toBe(0)
    for (let i = 1; i <= 4; i++) expect((await cli(['credits', 'consume', tenant, String(i)])).code).toBe(0)
  }
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  const { rows } = await c.query<{ tenant_id: string; chain_seq: string; head: string }>(
    `select tenant_id, chain_seq, encode(chain_head, 'hex') as head from credits.credit_accounts`,
  )
  await c.end()
  heads = Object.fromEntries(rows.map((r) => [r.tenant_id, { seq: Number(r.chain_seq), head: r.head }]))
})
afterAll(async () => {
  await db.drop()
  fs.rmSync(home, { recursive: true, force: true })
})

describe('an intact ledger', () => {
  it('verifies from the dump text in UTC and in zones with odd offsets, in chunks of any size', () => {
    for (const tz of ['UTC', 'Asia/Kolkata', 'America/St_Johns']) {
      const text = dumpText(tz)
      if (tz === 'Asia/Kolkata') expect(text).toContain('+05:30')
      for (const chunk of [undefined, 7, 100]) {
        const r = check(text, chunk ? { chunk } : {})
        expect(r, `${tz} in chunks of ${chunk}`).toEqual({ intact: true, why: null, rows: 15, tenants: 3 })
      }
    }
  })

  it('rows of a tenant that come before their predecessor wait for it', () => {
    const { rows, join } = rowsOf(dumpText('UTC'))
    expect(rows).toHaveLength(15)
    expect(check(join([...rows].reverse())).intact).toBe(true)
  })
})

describe('anything else makes it give up, for verify-chain to name', () => {
  it('an edited amount', () => {
    const { rows, join } = rowsOf(dumpText('UTC'))
    const fields = rows[3]!.split('\t')
    fields[5] = String(Number(fields[5]) + 1) // amount
    rows[3] = fields.join('\t')
    expect(check(join(rows))).toMatchObject({ intact: false, why: expect.stringMatching(/does not verify/) })
  })

  it('a missing row', () => {
    const { rows, join } = rowsOf(dumpText('UTC'))
    rows.splice(2, 1)
    expect(check(join(rows))).toMatchObject({ intact: false, why: expect.stringMatching(/gap/) })
  })

  it('a chain that ends short of the head the manifest recorded', () => {
    const moved = { ...heads, acme: { ...heads.acme!, seq: heads.acme!.seq + 1 } }
    expect(check(dumpText('UTC'), { heads: moved })).toMatchObject({ intact: false })
  })

  it('rows signed with a key it does not hold', () => {
    const other = new Map<string, Key>([['k2', { kid: 'k2', bytes: randomBytes(32) }]])
    expect(check(dumpText('UTC'), { keys: other })).toMatchObject({ intact: false })
  })

  it('a tenant with a chain in the manifest but no rows, and output without the table', () => {
    const withGhost = { ...heads, ghost: { seq: 3, head: 'ab'.repeat(32) } }
    expect(check(dumpText('UTC'), { heads: withGhost })).toMatchObject({
      intact: false,
      why: 'ghost: no rows for its chain',
    })
    expect(check('SET x = 1;\n')).toMatchObject({
      intact: false,
      why: expect.stringMatching(/no complete COPY/),
    })
  })

  it('a line it cannot read', () => {
    const { rows, join } = rowsOf(dumpText('UTC'))
    rows[0] = rows[0]!.replace(/\t\\\\x[0-9a-f]+\t/, '\t\\\\xzz\t')
    expect(check(join(rows))).toMatchObject({ intact: false })
  })
})
