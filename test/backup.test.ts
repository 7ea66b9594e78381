/**
 * Backups through the CLI against a real PostgreSQL: create / list / verify (with a test
 * restore), restore and its guards, every way a backup file can be damaged, a backup killed or
 * starved of disk mid-way, retention, and the pre-migration backup that `rollback --migration`
 * restores. What is asserted is what an operator relies on: the exit code, one clear sentence,
 * and that nothing half-done is left looking complete.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { deflateSync, gunzipSync, inflateSync } from 'node:zlib'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { archiveCompressor } from '../src/core/backup/archive-compressor.js'
import { createDecryptStream, createEncryptStream } from '../src/core/backup/envelope.js'
import { Inflater, startChainCheck } from '../src/core/backup/chain-check.js'
import {
  ChunkReader,
  readHead,
  RowCounter,
  type TableData,
  TableDataFinder,
} from '../src/core/backup/custom-format.js'
import { streamDump } from '../src/core/backup/restore.js'
import { parseKeyring } from '../src/core/config/secrets.js'
import { BIN, type CliResult, ROOT, runCli, spawnCli } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { adminUrl, cleanEnv } from './helpers/env.js'

// --- fixtures ----------------------------------------------------------------------------------------

const KID = 'bk1'
const backupKey = `${KID}:${randomBytes(32).toString('base64')}`
const auditKey = `a1:${randomBytes(32).toString('base64')}`
const encryptKey = `e1:${randomBytes(32).toString('base64')}`
/** Plaintext bytes per chunk in the .shxb format (src/core/backup/envelope.ts). */
const CHUNK = 1 << 20
const PKG_VERSION = (
  JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }
).version

/** The small ledger every backup of `db` holds. */
const TENANTS = ['acme', 'beta', 'gamma']

let db: TestDatabase // a few tenants, static after beforeAll
let big: TestDatabase // > 2 MiB once compressed: multi-chunk backups, the kill and disk-full tests
let home: string
const temps: string[] = []
const extraDatabases: string[] = []
/** A pristine backup of `db` and one of `big`; tests copy them before changing anything. */
let smallFile: string
let bigFile: string

function tmp(label: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `shx-backup-${label}-`))
  temps.push(dir)
  return dir
}

function env(extra: Record<string, string | undefined> = {}, url = db.url) {
  return cleanEnv({
    CREDITS_DATABASE_URL: url,
    SHIELDX_HOME: home,
    AUDIT_HMAC_KEY: auditKey,
    BACKUP_KEY: backupKey,
    ENCRYPT_KEY: encryptKey,
    ...extra,
  })
}

interface CliOptions {
  env?: Record<string, string | undefined>
  url?: string
  tty?: boolean
  input?: string
}

const cli = (args: string[], o: CliOptions = {}) =>
  runCli(['--no-color', ...args], {
    env: env(o.env, o.url),
    ...(o.tty ? { tty: true } : {}),
    ...(o.input !== undefined ? { input: o.input } : {}),
  })

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON documents of the CLI
async function json(args: string[], o: CliOptions = {}): Promise<CliResult & { doc: any }> {
  const r = await cli(['--json', ...args], o)
  let doc: unknown
  try {
    doc = JSON.parse(r.stdout)
  } catch {
    throw new Error(`not one JSON document on stdout (exit ${r.code}):\n${r.stdout}\n${r.stderr}`)
  }
  return { ...r, doc }
}

/** One sentence on stderr for the user, never a stack trace or a "this is a bug". */
function expectSentence(r: CliResult, re: RegExp) {
  expect(r.stderr).toMatch(re)
  expect(r.stderr).not.toMatch(/\n\s+at /)
  expect(r.stderr).not.toMatch(/Unexpected error|bug in shieldx/)
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url })
  c.on('error', () => {})
  await c.connect()
  try {
    return await fn(c)
  } finally {
    await c.end()
  }
}

const admin = <T>(fn: (c: pg.Client) => Promise<T>) => withClient(adminUrl(), fn)

function urlFor(name: string): string {
  const u = new URL(adminUrl())
  u.pathname = `/${name}`
  return u.toString()
}

/** A name for a restore target, dropped in afterAll (created or not). */
function targetName(label: string): string {
  const name = `${db.name}_${label}`
  extraDatabases.push(name)
  return name
}

async function createEmptyDatabase(label: string): Promise<{ name: string; url: string }> {
  const name = targetName(label)
  await admin((c) => c.query(`create database ${name}`))
  return { name, url: urlFor(name) }
}

async function databaseExists(name: string): Promise<boolean> {
  return admin(
    async (c) => (await c.query('select 1 from pg_database where datname = $1', [name])).rowCount === 1,
  )
}

async function creditsTables(url: string): Promise<number> {
  return withClient(url, async (c) =>
    Number(
      (await c.query<{ n: string }>("select count(*) as n from pg_tables where schemaname = 'credits'"))
        .rows[0]!.n,
    ),
  )
}

async function accounts(url: string) {
  return withClient(
    url,
    async (c) =>
      (
        await c.query(
          `select tenant_id, balance::text, reserved::text, chain_seq::text, encode(chain_head, 'hex') as head
             from credits.credit_accounts order by tenant_id`,
        )
      ).rows,
  )
}

async function auditRows(url: string) {
  return withClient(
    url,
    async (c) =>
      (
        await c.query(
          `select tenant_id, seq::text, action, amount::text, balance_after::text,
                  encode(prev_hash, 'hex') as prev_hash, encode(hash, 'hex') as hash
             from credits.audit_logs order by tenant_id, seq`,
        )
      ).rows,
  )
}

function manifestOf(file: string): string {
  return file.replace(/\.shxb$/, '.manifest.json')
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the manifest is checked field by field
function readManifest(file: string): any {
  return JSON.parse(fs.readFileSync(manifestOf(file), 'utf8'))
}

/** The .shxb and its manifest copied into a directory of their own. */
function copyBackup(file: string, dir = tmp('copy'), name = path.basename(file)): string {
  const to = path.join(dir, name)
  fs.copyFileSync(file, to)
  fs.copyFileSync(manifestOf(file), manifestOf(to))
  return to
}

/** A copy of a backup whose manifest says `delta` rows more of `table` than the file holds. */
function withRowCountOff(file: string, table: string, delta = 1) {
  const copy = copyBackup(file)
  const manifest = readManifest(copy)
  manifest.row_counts[table] += delta
  fs.writeFileSync(manifestOf(copy), JSON.stringify(manifest))
  return { copy, manifest }
}

/** A command's checks by name. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON documents of the CLI
const checksByName = (doc: any) => Object.fromEntries(doc.checks.map((c: { name: string }) => [c.name, c]))

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex')
}

/** Where chunk i of a .shxb file starts and ends (inclusive), from the header's kid length. */
function chunkRange(file: string, i: number): { start: number; end: number } {
  const fd = fs.openSync(file, 'r')
  const head = Buffer.alloc(6)
  fs.readSync(fd, head, 0, 6, 0)
  fs.closeSync(fd)
  const headerLength = 18 + head[5]!
  const start = headerLength + i * (4 + CHUNK + 16)
  return { start, end: start + 4 + CHUNK + 16 - 1 }
}

function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+')
  const b = Buffer.alloc(1)
  fs.readSync(fd, b, 0, 1, offset)
  b[0] = b[0]! ^ 0xff
  fs.writeSync(fd, b, 0, 1, offset)
  fs.closeSync(fd)
}

async function verifyDatabases(): Promise<string[]> {
  return admin(async (c) =>
    (
      await c.query<{ d: string }>(
        "select datname as d from pg_database where datname like 'shieldx_verify_%'",
      )
    ).rows.map((r) => r.d),
  )
}

/** Whether tmpfs can be mounted here (root in a privileged container); the reason if not. */
function mountProbe(): string | null {
  if (process.platform !== 'linux') return 'not Linux'
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-mount-probe-'))
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', dir], { stdio: 'pipe' })
    execFileSync('umount', [dir], { stdio: 'pipe' })
    return null
  } catch (err) {
    const msg = String((err as { stderr?: Buffer }).stderr ?? (err as Error).message)
      .trim()
      .split('\n')[0]
    return `mount -t tmpfs is not permitted here (${msg})`
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}
const cannotMount = mountProbe()

// --- setup ---------------------------------------------------------------------------------------------

async function ledger(url: string, ops: string[][]) {
  const m = await cli(['migrate', 'up', '--no-backup'], { url })
  expect(m.code, m.stderr).toBe(0)
  for (const op of ops) {
    const r = await cli(['credits', ...op], { url })
    expect(r.code, r.stderr).toBe(0)
  }
}

beforeAll(async () => {
  home = tmp('home')
  ;[db, big] = await Promise.all([createTestDatabase('backup'), createTestDatabase('backup_big')])
  await Promise.all([
    ledger(db.url, [
      ['topup', 'acme', '100'],
      ['consume', 'acme', '30', '--description', 'scan 1'],
      ['topup', 'beta', '50'],
      ['topup', 'gamma', '7'],
      ['consume', 'gamma', '2'],
    ]),
    ledger(big.url, [['topup', 'bulk', '1']]),
  ])
  // 30k transactions with 256 random hex characters each: ~10 MB dumped, ~5 MB gzipped, 5 chunks.
  await big.query(
    `insert into credits.credit_transactions (id, tenant_id, kind, amount, balance_after, description)
     select gen_random_uuid(), 'bulk', 'topup', 1, 1,
            (select string_agg(md5(random()::text || g::text || i::text), '') from generate_series(1, 8) i)
       from generate_series(1, 30000) g`,
  )
  const pristine = tmp('pristine')
  const [s, b] = await Promise.all([
    json(['backup', 'create', '--dir', pristine, '--label', 'small']),
    json(['backup', 'create', '--dir', pristine, '--label', 'big'], { url: big.url }),
  ])
  expect(s.code, s.stderr).toBe(0)
  expect(b.code, b.stderr).toBe(0)
  smallFile = s.doc.file
  bigFile = b.doc.file
  expect(b.doc.bytes, 'the big backup must span several chunks').toBeGreaterThan(3 * CHUNK)
})

afterAll(async () => {
  await admin(async (c) => {
    for (const name of extraDatabases) await c.query(`drop database if exists "${name}" with (force)`)
  })
  await Promise.all([db?.drop(), big?.drop()])
  for (const dir of temps) fs.rmSync(dir, { recursive: true, force: true })
})

// --- 1. create, list, verify ---------------------------------------------------------------------------

describe('backup create, list, verify', () => {
  it('creates an encrypted backup whose manifest describes exactly what the database held; list and verify agree', async () => {
    const dir = tmp('create')
    const before = Date.now()
    const c = await json(['backup', 'create', '--dir', dir, '--label', 'nightly'])
    const after = Date.now()
    expect(c.code, c.stderr).toBe(0)
    expect(Object.keys(c.doc).sort()).toEqual(['bytes', 'duration_ms', 'file', 'manifest'])
    expect(c.doc.file).toMatch(new RegExp(`^${dir}/shieldx-credits-\\d{8}T\\d{6}Z-nightly\\.shxb$`))
    expect(c.doc.duration_ms).toBeGreaterThanOrEqual(0)
    const file: string = c.doc.file
    expect(fs.readdirSync(dir).sort()).toEqual([path.basename(file), path.basename(manifestOf(file))].sort())
    const bytes = fs.readFileSync(file)
    expect(c.doc.bytes).toBe(bytes.length)

    // The manifest on disk is the one create printed, and every fact in it is true.
    const m = readManifest(file)
    expect(m).toEqual(c.doc.manifest)
    const serverVersion = (await db.query<{ v: string }>("select current_setting('server_version') as v"))
      .rows[0]!.v
    expect(m).toMatchObject({
      format: 'shieldx.backup.v2',
      name: path.basename(file),
      label: 'nightly',
      database: 'credits',
      shieldx_version: PKG_VERSION,
      schema_version: 2,
      dump: { format: 'custom', server_version: serverVersion },
      encryption: { algorithm: 'AES-256-GCM-chunked', key_id: KID },
      compression: 'zlib-in-archive',
    })
    expect(m.dump.tool).toMatch(/^pg_dump 1[5-9]\.\d+$/)
    expect(new Date(m.created_at).getTime()).toBeGreaterThanOrEqual(before - 1000)
    expect(new Date(m.created_at).getTime()).toBeLessThanOrEqual(after)
    expect(m.sha256).toBe(createHash('sha256').update(bytes).digest('hex'))
    expect(m.sizes.file_bytes).toBe(bytes.length)
    expect(m.sizes.dump_bytes).toBeGreaterThan(m.sizes.compressed_bytes)
    // header + per chunk (length + tag) + the compressed bytes: a single chunk here
    expect(m.sizes.file_bytes).toBe(18 + KID.length + 20 + m.sizes.compressed_bytes)

    const { rows: tables } = await db.query<{ t: string }>(
      "select tablename as t from pg_tables where schemaname = 'credits' order by 1",
    )
    const realCounts: Record<string, number> = {}
    for (const { t } of tables) {
      realCounts[`credits.${t}`] = Number(
        (await db.query<{ n: string }>(`select count(*) as n from credits.${t}`)).rows[0]!.n,
      )
    }
    expect(m.row_counts).toEqual(realCounts)
    expect(m.row_counts['credits.credit_accounts']).toBe(TENANTS.length)
    expect(m.row_counts['credits.audit_logs']).toBe(5)

    const chains = Object.fromEntries(
      (await accounts(db.url)).map((a) => [a.tenant_id, { seq: Number(a.chain_seq), head: a.head }]),
    )
    expect(Object.keys(chains).sort()).toEqual(TENANTS)
    expect(m.chains).toEqual(chains)

    // Encrypted: nothing of the ledger or of pg_dump's format readable in the file.
    for (const plain of [...TENANTS, 'credit_accounts', 'audit_logs', 'scan 1', 'PGDMP']) {
      expect(bytes.includes(Buffer.from(plain)), `'${plain}' is readable in the backup file`).toBe(false)
    }

    const l = await json(['backup', 'list', '--dir', dir])
    expect(l.code).toBe(0)
    expect(l.doc.backups).toEqual([
      {
        file,
        bytes: bytes.length,
        created_at: m.created_at,
        database: 'credits',
        source: m.source,
        label: 'nightly',
        schema_version: 2,
        verified: null,
        verify_failed: null,
        problem: null,
      },
    ])

    const v = await json(['backup', 'verify', file])
    expect(v.code, v.stderr).toBe(0)
    expect(Object.keys(v.doc).sort()).toEqual(['checks', 'ok'])
    expect(v.doc.ok).toBe(true)
    for (const check of v.doc.checks) {
      expect(Object.keys(check).sort()).toEqual(['detail', 'name', 'ok'])
      expect(check.ok, `${check.name}: ${check.detail}`).toBe(true)
    }
    expect(v.doc.checks.map((ch: { name: string }) => ch.name)).toEqual([
      'manifest',
      'checksum',
      'chunks',
      'archive',
      'table_data',
    ])
    expect(readManifest(file).verified).toMatchObject({ restore_test: false })

    const text = await cli(['backup', 'verify', file])
    expect(text.code).toBe(0)
    expect(text.stdout).toContain('Backup verified.')
  })

  it('verify --restore-test restores into a scratch database, checks rows, chain heads and the chain, then drops it', async () => {
    const file = copyBackup(smallFile)
    const scratchBefore = await verifyDatabases()
    const v = await json(['backup', 'verify', file, '--restore-test'])
    expect(v.code, v.stderr).toBe(0)
    expect(v.doc.ok).toBe(true)
    const names = v.doc.checks.map((c: { name: string }) => c.name)
    expect(names).toEqual(expect.arrayContaining(['restore', 'row_counts', 'chain_heads', 'verify_chain']))
    for (const c of v.doc.checks) expect(c.ok, `${c.name}: ${c.detail}`).toBe(true)
    expect(v.doc.checks.find((c: { name: string }) => c.name === 'verify_chain').detail).toContain(
      `5 rows across ${TENANTS.length} tenants intact`,
    )

    // The scratch database is gone: the one named in the output, and no other was left.
    const restore = v.doc.checks.find((c: { name: string }) => c.name === 'restore')
    const scratch = /\/(shieldx_verify_[0-9a-f]+)\)/.exec(restore.detail)?.[1]
    expect(scratch, restore.detail).toBeDefined()
    extraDatabases.push(scratch!)
    expect(await databaseExists(scratch!)).toBe(false)
    expect((await verifyDatabases()).filter((d) => !scratchBefore.includes(d))).toEqual([])

    expect(readManifest(file).verified).toMatchObject({ restore_test: true })
    const l = await json(['backup', 'list', '--dir', path.dirname(file)])
    expect(l.doc.backups[0].verified).toMatchObject({ restore_test: true })
    const text = await cli(['backup', 'list', '--dir', path.dirname(file)])
    expect(text.stdout).toContain('restore-tested')
  })
})

// --- 3. restore and its guards ---------------------------------------------------------------------------

describe('restore', () => {
  it('restores into a new database (--create --yes) equal to the source; refuses to overwrite it without --force; replaces it with --force', async () => {
    const name = targetName('restored')
    const url = urlFor(name)
    const r = await json(['--yes', 'restore', smallFile, '--target', url, '--create'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.doc.ok).toBe(true)
    for (const c of r.doc.checks) expect(c.ok, `${c.name}: ${c.detail}`).toBe(true)
    // The chains were verified from the dump on its way in, not read back afterwards.
    expect(r.doc.checks.find((c: { name: string }) => c.name === 'verify_chain').detail).toBe(
      '5 rows across 3 tenants intact (verified as they were restored)',
    )
    // The table data went to pg_restore compressed, as it was in the backup: counted in the
    // database, but for the audit table's, counted by its chain check on the way in.
    expect(r.doc.checks.find((c: { name: string }) => c.name === 'row_counts').detail).toBe(
      '8 tables match (credits.audit_logs as counted on the way in)',
    )
    expect(await accounts(url)).toEqual(await accounts(db.url))
    const sourceAudit = await auditRows(db.url)
    expect(sourceAudit).toHaveLength(5)
    expect(await auditRows(url)).toEqual(sourceAudit)

    // Something written in the target since: a second restore must not silently replace it.
    await withClient(url, (c) => c.query("insert into credits.credit_accounts (tenant_id) values ('marker')"))
    const again = await json(['--yes', 'restore', smallFile, '--target', url])
    expect(again.code).toBe(3)
    expect(again.doc.error.code).toBe('TARGET_NOT_EMPTY')
    expectSentence(again, new RegExp(`target database '${name}' already holds the credits schema`))
    expect((await accounts(url)).map((a) => a.tenant_id)).toContain('marker')

    const forced = await json(['--yes', 'restore', smallFile, '--target', url, '--force'])
    expect(forced.code, forced.stderr).toBe(0)
    expect(forced.doc.ok).toBe(true)
    // Replacing a schema goes through psql: the rows are counted in the database.
    expect(forced.doc.checks.find((c: { name: string }) => c.name === 'row_counts').detail).toBe(
      '8 tables match',
    )
    expect(await accounts(url)).toEqual(await accounts(db.url))
    expect(await auditRows(url)).toEqual(sourceAudit)
  })

  it('when the chains cannot be vouched for on the way in (a key it does not hold), verify-chain runs on the restored database and names the break: exit 4', async () => {
    const url = urlFor(targetName('otherkey'))
    const other = `a2:${randomBytes(32).toString('base64')}`
    const r = await json(['--yes', 'restore', smallFile, '--target', url, '--create'], {
      env: { AUDIT_HMAC_KEY: other },
    })
    expect(r.code, r.stderr).toBe(4)
    const chain = r.doc.checks.find((c: { name: string }) => c.name === 'verify_chain')
    expect(chain.ok).toBe(false)
    expect(chain.detail).toMatch(/^broken: .*@1 unknown_key/)
    // The data itself is restored: only the chain check failed.
    expect(await auditRows(url)).toEqual(await auditRows(db.url))
  })

  it('a restored database that differs from its manifest does not take the chains checked on the way in on trust: the full verify-chain runs, exit 4', async () => {
    const { copy } = withRowCountOff(smallFile, 'credits.credit_accounts')
    const r = await json(['--yes', 'restore', copy, '--target', urlFor(targetName('edited')), '--create'])
    expect(r.code, r.stderr).toBe(4)
    const byName = checksByName(r.doc)
    expect(byName.row_counts.ok).toBe(false)
    // The chain itself is intact, and said so by verify-chain on the restored rows.
    expect(byName.verify_chain).toEqual({
      name: 'verify_chain',
      ok: true,
      detail: '5 rows across 3 tenants intact',
    })
  })

  it("an audit row count that differs from the manifest's fails the row counts, though it was counted on the way in: exit 4", async () => {
    const { copy } = withRowCountOff(smallFile, 'credits.audit_logs')
    const r = await json(['--yes', 'restore', copy, '--target', urlFor(targetName('auditcount')), '--create'])
    expect(r.code, r.stderr).toBe(4)
    expect(checksByName(r.doc).row_counts).toMatchObject({
      ok: false,
      detail: 'credits.audit_logs: 5 rows, manifest 6',
    })
  })

  it('without --yes and without a terminal: exit 3, the target stays empty', async () => {
    const t = await createEmptyDatabase('noyes')
    const r = await cli(['restore', smallFile, '--target', t.url])
    expect(r.code).toBe(3)
    expectSentence(r, /Refusing to restore without confirmation: pass --yes/)
    expect(await creditsTables(t.url)).toBe(0)
  })

  // Was a bug, now fixed (the prompt comes first): with --create, the missing target database is created
  // (createTargetDatabase) BEFORE the confirmation, so a refused restore (exit 3, "Refusing to
  // restore without confirmation") or a cancelled prompt still leaves a new empty database
  // behind, although a declined confirmation promises "nothing was changed". Likely fix: ask
  // first (a missing database is empty and unused, so assertRestorable passes on
  // { tables: 0, otherConnections: 0 }), and create it only after confirm() returns.
  it('restore --create without --yes: exit 3 and no database is created', async () => {
    const name = targetName('create_noyes')
    const r = await cli(['restore', smallFile, '--target', urlFor(name), '--create'])
    expect(r.code).toBe(3)
    expect(await databaseExists(name)).toBe(false)
  })

  it('restore --create that fails leaves no database behind: a key it lacks (before creating), a damaged file (dropped again)', async () => {
    const lacking = targetName('create_nokey')
    const r = await json(['--yes', 'restore', smallFile, '--target', urlFor(lacking), '--create'], {
      env: { BACKUP_KEY: `other:${randomBytes(32).toString('base64')}` },
    })
    expect(r.code).toBe(4)
    expect(r.doc.error.code).toBe('BACKUP_UNKNOWN_KEY')
    expect(await databaseExists(lacking)).toBe(false)

    const file = copyBackup(smallFile)
    flipByte(file, chunkRange(file, 0).start + 1000)
    const damaged = targetName('create_damaged')
    const d = await json(['--yes', 'restore', file, '--target', urlFor(damaged), '--create'])
    expect(d.code).toBe(4)
    expect(d.doc.error.code).toBe('BACKUP_CORRUPT')
    expect(await databaseExists(damaged)).toBe(false)
  })

  it('a backup file that is not there, or is a directory: exit 2 in one sentence, for restore, verify and rollback --backup', async () => {
    const missing = path.join(tmp('nofile'), 'gone.shxb')
    const dir = tmp('dir.shxb')
    const t = await createEmptyDatabase('nofile')
    for (const [file, re] of [
      [missing, /^There is no backup file .*gone\.shxb\.$/],
      [dir, /^.*dir\.shxb\S* is a directory, not a backup file\.$/],
    ] as const) {
      for (const args of [
        ['--yes', 'restore', file, '--target', t.url],
        ['backup', 'verify', file],
        ['--yes', 'rollback', '--migration', '--backup', file],
      ]) {
        const r = await json(args, { url: t.url })
        expect(r.code, args.join(' ')).toBe(2)
        expect(r.doc.error.code).toBe('BACKUP_NOT_FOUND')
        expect(r.doc.error.message).toMatch(re)
      }
    }
    expect(await creditsTables(t.url)).toBe(0)
  })

  it('on a terminal asks to type the database name; a wrong answer cancels with exit 3 and the target stays empty', async () => {
    const t = await createEmptyDatabase('tty')
    const r = await cli(['restore', smallFile, '--target', t.url], { tty: true, input: 'yes\n' })
    expect(r.code).toBe(3)
    expect(r.stderr).toContain(`Type '${t.name}' to confirm`)
    expectSentence(r, /Cancelled; nothing was changed\./)
    expect(await creditsTables(t.url)).toBe(0)
  })

  it('refuses an empty target that something else is connected to (exit 3) unless --force', async () => {
    const t = await createEmptyDatabase('busy')
    const other = new pg.Client({ connectionString: t.url, application_name: 'someone else' })
    other.on('error', () => {})
    await other.connect()
    try {
      const r = await json(['--yes', 'restore', smallFile, '--target', t.url])
      expect(r.code).toBe(3)
      expect(r.doc.error.code).toBe('TARGET_IN_USE')
      expectSentence(r, new RegExp(`target database '${t.name}' has 1 other live connection`))
      expect(await creditsTables(t.url)).toBe(0)

      const forced = await json(['--yes', 'restore', smallFile, '--target', t.url, '--force'])
      expect(forced.code, forced.stderr).toBe(0)
      expect(await accounts(t.url)).toEqual(await accounts(db.url))
    } finally {
      await other.end()
    }
  })

  it('an unreachable target host is exit 1 with one sentence naming host:port', async () => {
    const r = await cli(['--yes', 'restore', smallFile, '--target', 'postgres://postgres@127.0.0.1:1/x'])
    expect(r.code).toBe(1)
    expectSentence(r, /127\.0\.0\.1:1\b/)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
  })

  it('a missing target database without --create is exit 1 saying so, and is not created', async () => {
    const name = targetName('missing')
    const r = await cli(['--yes', 'restore', smallFile, '--target', urlFor(name)])
    expect(r.code).toBe(1)
    expectSentence(r, new RegExp(`target database '${name}' does not exist`))
    expect(r.stderr).toContain('--create')
    expect(await databaseExists(name)).toBe(false)
  })
})

// --- 4. damaged backups and failed backups -----------------------------------------------------------------

describe('damaged backups are refused (exit 4) and never marked verified', () => {
  it('a BACKUP_KEY with the same key id but other bytes: verify exit 4 at chunk 0; restore exit 4 BACKUP_CORRUPT, target empty', async () => {
    const file = copyBackup(smallFile)
    const wrongKey = { BACKUP_KEY: `${KID}:${randomBytes(32).toString('base64')}` }
    const v = await json(['backup', 'verify', file], { env: wrongKey })
    expect(v.code).toBe(4)
    expect(v.doc.ok).toBe(false)
    const failed = v.doc.checks.find((c: { ok: boolean }) => !c.ok)
    expect(failed.detail).toMatch(
      /^Chunk 0 \(bytes \d+-\d+ of the file\) failed authentication: wrong BACKUP_KEY/,
    )
    // the file is as written, which points at the key, not the disk
    expect(v.doc.checks.find((c: { name: string }) => c.name === 'checksum')).toMatchObject({
      ok: true,
      detail: expect.stringMatching(
        /^SHA-256 matches the manifest: the file is as it was written .*BACKUP_KEY/,
      ),
    })
    expect(readManifest(file).verified).toBeUndefined()

    const t = await createEmptyDatabase('wrongkey')
    const r = await json(['--yes', 'restore', file, '--target', t.url], { env: wrongKey })
    expect(r.code).toBe(4)
    expect(r.doc.error).toMatchObject({ code: 'BACKUP_CORRUPT', chunk: 0 })
    expect(await creditsTables(t.url)).toBe(0)
  })

  it('a BACKUP_KEY without the key id the backup names: exit 4 naming the key, and the backup stays verified', async () => {
    const file = copyBackup(smallFile)
    expect((await json(['backup', 'verify', file])).code).toBe(0)
    const before = readManifest(file)
    expect(before.verified).toBeDefined()
    const r = await cli(['backup', 'verify', file], {
      env: { BACKUP_KEY: `other:${randomBytes(32).toString('base64')}` },
    })
    expect(r.code).toBe(4)
    expect(r.stderr).toContain(`encrypted with key '${KID}', which BACKUP_KEY does not hold`)
    expect(r.stdout).toBe('')
    // a stale secret in a CronJob is no fault of the backup: not marked failed, still prune-safe
    expect(readManifest(file)).toEqual(before)
  })

  it('a flipped byte in the middle of a multi-chunk backup: exit 4 naming that chunk; verified before, it is no longer', async () => {
    const file = copyBackup(bigFile)
    expect((await json(['backup', 'verify', file])).code).toBe(0)
    expect(readManifest(file).verified).toBeDefined()
    const { start, end } = chunkRange(file, 2)
    expect(end, 'the file must reach past chunk 2').toBeLessThan(fs.statSync(file).size)
    flipByte(file, start + 500_000)
    const v = await json(['backup', 'verify', file])
    expect(v.code).toBe(4)
    const failed = v.doc.checks.filter((c: { ok: boolean }) => !c.ok)
    expect(failed.map((c: { name: string }) => c.name)).toEqual(['chunks', 'checksum'])
    expect(failed[0].detail).toContain(`Chunk 2 (bytes ${start}-${end} of the file) failed authentication`)
    // the whole file's checksum, taken after the read stopped at the damage: the file changed
    expect(failed[1].detail).toMatch(
      /^SHA-256 [0-9a-f]{12}\.\.\. is not the manifest's .*: the file changed after it was written$/,
    )
    // The failure is recorded, and the earlier pass taken back: prune must not keep it as the
    // newest verified backup, and list says it failed.
    expect(readManifest(file).verified).toBeUndefined()
    expect(readManifest(file).verify_failed).toMatchObject({ checks: ['chunks', 'checksum'] })
    const l = await json(['backup', 'list', '--dir', path.dirname(file)])
    const entry = l.doc.backups.find((b: { file: string }) => b.file === file)
    expect(entry).toMatchObject({ verified: null, verify_failed: { checks: ['chunks', 'checksum'] } })
    const text = await cli(['backup', 'list', '--dir', path.dirname(file)])
    expect(text.stdout).toMatch(new RegExp(`FAILED\\s+${path.basename(file).replace(/\./g, '\\.')}`))
  })

  it.each([
    ['inside a chunk', (f: string) => chunkRange(f, 3).start + 1000, /ends inside chunk 3 .*truncated/],
    [
      'exactly at a chunk boundary',
      (f: string) => chunkRange(f, 2).start,
      /ends after chunk 1 without its final chunk/,
    ],
  ])('a backup truncated %s: exit 4, truncated', async (_where, at, re) => {
    const file = copyBackup(bigFile)
    fs.truncateSync(file, at(file))
    const v = await json(['backup', 'verify', file])
    expect(v.code).toBe(4)
    expect(v.doc.ok).toBe(false)
    expect(v.doc.checks.find((c: { name: string }) => c.name === 'size')).toMatchObject({ ok: false })
    expect(v.doc.checks.map((c: { detail: string }) => c.detail).join('\n')).toMatch(re)
    expect(readManifest(file).verified).toBeUndefined()
  })

  it('a backup with a chunk appended after its final one: exit 4, something was appended', async () => {
    const file = copyBackup(smallFile)
    const bytes = fs.readFileSync(file)
    const { start } = chunkRange(file, 0)
    fs.appendFileSync(file, bytes.subarray(start)) // the final chunk's record once more
    const v = await json(['backup', 'verify', file])
    expect(v.code).toBe(4)
    expect(v.doc.checks.map((c: { detail: string }) => c.detail).join('\n')).toMatch(
      /continues after its final chunk .*something was appended/,
    )
    expect(readManifest(file).verified).toBeUndefined()
  })

  it('a backup without its manifest: verify exit 4 saying it is missing; restore exit 4 BACKUP_NO_MANIFEST', async () => {
    const dir = tmp('nomanifest')
    const file = path.join(dir, path.basename(smallFile))
    fs.copyFileSync(smallFile, file)
    const v = await json(['backup', 'verify', file])
    expect(v.code).toBe(4)
    expect(v.doc.checks).toEqual([
      { name: 'manifest', ok: false, detail: expect.stringMatching(/manifest .* is missing/) },
    ])
    const t = await createEmptyDatabase('nomanifest')
    const r = await json(['--yes', 'restore', file, '--target', t.url])
    expect(r.code).toBe(4)
    expect(r.doc.error.code).toBe('BACKUP_NO_MANIFEST')
    expectSentence(r, /is missing, so .* cannot be trusted or restored safely/)
    expect(await creditsTables(t.url)).toBe(0)
    const l = await json(['backup', 'list', '--dir', dir])
    expect(l.doc.backups[0]).toMatchObject({ database: null, problem: expect.stringMatching(/missing/) })
  })

  it('restoring a backup damaged in a later chunk is exit 4 and commits nothing: the target stays empty', async () => {
    const file = copyBackup(bigFile)
    const { start } = chunkRange(file, 3)
    flipByte(file, start + 700_000)
    const t = await createEmptyDatabase('damaged')
    const r = await json(['--yes', 'restore', file, '--target', t.url])
    expect(r.code).toBe(4)
    expect(r.doc.error).toMatchObject({ code: 'BACKUP_CORRUPT', chunk: 3 })
    expectSentence(r, /Chunk 3 .* failed authentication/)
    expect(await creditsTables(t.url)).toBe(0)
    const schema = await withClient(t.url, (c) =>
      c.query("select 1 from pg_namespace where nspname = 'credits'"),
    )
    expect(schema.rowCount).toBe(0)
  })

  it('restore --force of a damaged backup over a database that holds the schema: exit 4 BACKUP_CORRUPT, one JSON document, what was there untouched', async () => {
    const good = copyBackup(smallFile)
    const t = await createEmptyDatabase('damagedforce')
    expect((await json(['--yes', 'restore', good, '--target', t.url])).code).toBe(0)
    const before = await creditsTables(t.url)
    expect(before).toBeGreaterThan(0)
    const rows = async () =>
      Number(
        (
          await withClient(t.url, (c) =>
            c.query<{ n: string }>('select count(*) as n from credits.audit_logs'),
          )
        ).rows[0]!.n,
      )
    const n = await rows()
    const file = copyBackup(smallFile)
    flipByte(file, chunkRange(file, 0).start + 1000)
    // A process of its own: the stream error this was about crashed the process (exit 1, 'a bug').
    const r = await spawnCli(
      ['--no-color', '--json', '--yes', 'restore', file, '--target', t.url, '--force'],
      {
        env: env(),
      },
    )
    expect(r.stderr).not.toContain('This is a bug')
    expect(r.code).toBe(4)
    expect(JSON.parse(r.stdout).error).toMatchObject({ code: 'BACKUP_CORRUPT', chunk: 0 })
    expect(await creditsTables(t.url)).toBe(before)
    expect(await rows()).toBe(n)
  })

  it('restoring a file that does not match its manifest (every chunk intact, SHA-256 differs) commits nothing', async () => {
    const file = copyBackup(smallFile)
    const m = readManifest(file)
    fs.writeFileSync(manifestOf(file), JSON.stringify({ ...m, sha256: sha256(bigFile) }))
    const t = await createEmptyDatabase('shamismatch')
    const r = await json(['--yes', 'restore', file, '--target', t.url])
    expect(r.code).toBe(4)
    expect(r.doc.error.code).toBe('BACKUP_CHECKSUM')
    expect(await creditsTables(t.url)).toBe(0)
  })
})

const dumpOf = (url: string, level = 0) =>
  execFileSync('pg_dump', ['-Fc', `-Z${level}`, '--schema=credits', '--no-password', '-d', url], {
    maxBuffer: 1 << 28,
  })

/** What TableDataFinder finds in `dump` fed in pieces of the given sizes, in turn. */
function find(dump: Buffer, sizes: number[]) {
  let table: TableData | null = null
  let none: string | null = null
  let ended = false
  const block: Buffer[] = []
  const finder = new TableDataFinder('credits', 'audit_logs', {
    found: (t) => (table = t),
    bytes: (b) => block.push(Buffer.from(b)),
    end: () => (ended = true),
    none: (why) => (none = why),
  })
  for (let at = 0, i = 0; at < dump.length; at += sizes[i++ % sizes.length]!)
    finder.write(dump.subarray(at, at + sizes[i % sizes.length]!))
  finder.end()
  return {
    table: table as TableData | null,
    none: none as string | null,
    ended,
    block: Buffer.concat(block),
  }
}

describe("restore's chain check reads the audit table from the restore's own stream", () => {
  /** A pg_dump custom archive of `db` as `backup create` takes it (-Z0), or compressed. */
  it("finds the audit table's COPY in a real pg_dump archive, split anywhere: the text pg_restore prints for it", async () => {
    const dump = dumpOf(db.url)
    const printed = execFileSync(
      'pg_restore',
      ['--data-only', '--schema=credits', '--table=audit_logs', '--file=-'],
      { input: dump },
    ).toString('utf8')
    for (const sizes of [[dump.length], [1], [3, 1, 7, 2], [4096, 5, 6]]) {
      const { table, none, ended, block } = find(dump, sizes)
      expect(none).toBeNull()
      expect(ended).toBe(true)
      expect(table!.copyStmt).toMatch(/^COPY credits\.audit_logs \(id, tenant_id, seq, .*\) FROM stdin;\n$/)
      const rows: Buffer[] = []
      const reader = new ChunkReader(table!.intSize, (b) => rows.push(Buffer.from(b)))
      // The block ends with its 0 length, and nothing of the next block is in it.
      expect(reader.write(block)).toBe(true)
      const text = table!.copyStmt + Buffer.concat(rows).toString('utf8')
      expect(text.split('\n').filter((l) => /^\d+\t(acme|beta|gamma)\t/.test(l))).toHaveLength(5)
      expect(text).toMatch(/\n\\\.\n/)
      expect(printed).toContain(text)
    }
  })

  it('finds the audit table in a compressed archive too: its chunks are one zlib stream of the same COPY text', async () => {
    const plain = find(dumpOf(db.url), [4096])
    const text = (f: ReturnType<typeof find>, inflate: boolean) => {
      const parts: Buffer[] = []
      new ChunkReader(f.table!.intSize, (b) => parts.push(Buffer.from(b))).write(f.block)
      return (inflate ? inflateSync(Buffer.concat(parts)) : Buffer.concat(parts)).toString('utf8')
    }
    for (const sizes of [[8192], [1], [5, 3]]) {
      const zipped = find(dumpOf(db.url, 6), sizes)
      expect(zipped).toMatchObject({ none: null, ended: true, table: { zlib: true } })
      expect(text(zipped, true)).toBe(text(plain, false))
    }
    expect(plain.table!.zlib).toBe(false)
  })

  it('gives up, and says why, on an archive it does not read: cut short, not an archive', async () => {
    const dump = dumpOf(db.url)
    const { block } = find(dump, [dump.length])
    const cut = dump.indexOf(block) + Math.floor(block.length / 2)
    expect(find(dump.subarray(0, cut), [1000])).toMatchObject({
      none: 'the archive ends before the data of credits.audit_logs',
      ended: false,
    })
    expect(find(Buffer.from('-- PostgreSQL database dump\n'), [10]).none).toBe('not a custom-format archive')
  })

  /** What RowCounter counts in `dump` fed in pieces of the given sizes, in turn. */
  function countRows(dump: Buffer, sizes: number[]) {
    const counter = new RowCounter()
    for (let at = 0, i = 0; at < dump.length; at += sizes[i++ % sizes.length]!)
      counter.write(dump.subarray(at, at + sizes[i % sizes.length]!))
    return { rows: counter.rows(), why: counter.whyNot() }
  }

  it("counts every table's rows in a real archive, split anywhere, as count(*) does: line ends and `\\.` in the data included", async () => {
    const tricky = await createTestDatabase('backup_rows')
    try {
      await ledger(tricky.url, [['topup', 'acme', '100']])
      // Text that holds line ends, tabs, backslashes and a line that reads `\.`: COPY escapes them.
      await tricky.query(
        `insert into credits.credit_transactions (id, tenant_id, kind, amount, balance_after, description)
         select gen_random_uuid(), 'acme', 'topup', 1, 1, $1 || g from generate_series(1, 2500) g`,
        ['one\n\\.\n\tthree \\ '],
      )
      const expected: Record<string, number> = {}
      const { rows: tables } = await tricky.query<{ name: string }>(
        "select relname as name from pg_class where relnamespace = 'credits'::regnamespace and relkind = 'r'",
      )
      for (const { name } of tables) {
        const { rows } = await tricky.query<{ n: string }>(`select count(*) as n from credits."${name}"`)
        expected[`credits.${name}`] = Number(rows[0]!.n)
      }
      expect(expected['credits.credit_transactions']).toBe(2501)
      // Empty tables are in it too.
      expect(expected['credits.reservations']).toBe(0)
      const dump = dumpOf(tricky.url)
      for (const sizes of [[dump.length], [1], [3, 1, 7, 2], [4096, 5, 6]]) {
        expect(countRows(dump, sizes)).toEqual({ rows: expected, why: null })
      }
    } finally {
      await tricky.drop()
    }
  })

  it('counts nothing, and says why, in an archive it does not read or that ends early: restore then counts in the database', async () => {
    expect(countRows(dumpOf(db.url, 6), [8192])).toEqual({ rows: null, why: 'the table data is compressed' })
    const dump = dumpOf(db.url)
    const { block } = find(dump, [dump.length])
    const cut = dump.indexOf(block) + Math.floor(block.length / 2)
    expect(countRows(dump.subarray(0, cut), [1000]).rows).toBeNull()
    // Cut where a block ends: the tables after it were never seen, not empty.
    const end = dump.indexOf(block) + block.length
    expect(countRows(dump.subarray(0, end), [1000])).toEqual({
      rows: null,
      why: 'the archive ended before the data of credits.chain_verifications',
    })
    expect(countRows(dump.subarray(0, 20), [7])).toEqual({
      rows: null,
      why: 'the archive ended in its table of contents',
    })
    expect(countRows(Buffer.from('-- PostgreSQL database dump\n'), [10])).toEqual({
      rows: null,
      why: 'not a custom-format archive',
    })
  })

  const keyring = (text: string, name: string) =>
    parseKeyring(text, { envName: name, bytes: { min: 32 } }, 'test')

  /** The backup streamed as the restore streams it, into nothing, with `check` tapping it. */
  async function streamed(file: string, check: ReturnType<typeof startChainCheck>, onChunk = () => {}) {
    const sink = new Writable({ write: (_c, _e, cb) => cb() })
    await streamDump(file, readManifest(file), keyring(backupKey, 'BACKUP_KEY'), sink, {
      tap: (chunk) => {
        onChunk()
        check.tap(chunk)
      },
    })
    check.finish()
    return check.answer()
  }

  it('verifies the chains from the stream, and leaves no spill file behind, from the moment it starts', async () => {
    const dir = tmp('spill')
    const check = startChainCheck(keyring(auditKey, 'AUDIT_HMAC_KEY'), readManifest(smallFile), {
      ...process.env,
      TMPDIR: dir,
    })
    expect(fs.readdirSync(dir)).toEqual([])
    expect(await streamed(smallFile, check)).toEqual({ intact: true, why: null, rows: 5, tenants: 3 })
    expect(fs.readdirSync(dir)).toEqual([])
    // Against heads the rows do not end at (another backup's manifest): not vouched for.
    const other = { ...readManifest(smallFile), chains: { ...readManifest(smallFile).chains } }
    other.chains.acme = { ...other.chains.acme, seq: other.chains.acme.seq + 1 }
    const result = await streamed(
      smallFile,
      startChainCheck(keyring(auditKey, 'AUDIT_HMAC_KEY'), other, process.env),
    )
    expect(result).toMatchObject({ intact: false, why: 'acme: the chain does not verify' })
  })

  it('a checker killed mid-way makes the answer not intact, and the stream goes on to its end unharmed', async () => {
    const check = startChainCheck(keyring(auditKey, 'AUDIT_HMAC_KEY'), readManifest(smallFile), process.env)
    // The checker, waiting for the first bytes.
    process.kill(Number(await checkerPid()), 'SIGKILL')
    expect(await streamed(smallFile, check)).toMatchObject({
      intact: false,
      why: 'the chain check stopped (SIGKILL)',
    })
  })

  it('a checker that stands still once the restore has streamed everything is given up: not intact, and gone', async () => {
    const check = startChainCheck(keyring(auditKey, 'AUDIT_HMAC_KEY'), readManifest(smallFile), process.env, {
      stallMs: 300,
    })
    const pid = Number(await checkerPid())
    process.kill(pid, 'SIGSTOP')
    const started = Date.now()
    expect(await streamed(smallFile, check)).toMatchObject({
      intact: false,
      why: 'the chain check read nothing for 0.3 s',
    })
    expect(Date.now() - started).toBeLessThan(5000)
    expect(() => process.kill(pid, 0)).toThrow()
  })

  it('an edited audit row in a backup whose file is intact: the chain check cannot vouch, verify-chain names the row, exit 4, no spill file left', async () => {
    // A database with one audit amount changed behind the triggers' back, backed up as it is.
    const edited = urlFor(targetName('edited_row'))
    const first = await json(['--yes', 'restore', smallFile, '--target', edited, '--create'])
    expect(first.code, first.stderr).toBe(0)
    await withClient(edited, async (c) => {
      await c.query('set session_replication_role = replica')
      await c.query("update credits.audit_logs set amount = amount + 1 where tenant_id = 'acme' and seq = 2")
    })
    const b = await json(['backup', 'create', '--dir', tmp('edited'), '--label', 'edited'], { url: edited })
    expect(b.code, b.stderr).toBe(0)
    const dir = tmp('spill-edited')
    const r = await json(
      ['--yes', 'restore', b.doc.file, '--target', urlFor(targetName('edited_again')), '--create'],
      {
        env: { TMPDIR: dir },
      },
    )
    expect(r.code, r.stderr).toBe(4)
    const chain = r.doc.checks.find((c: { name: string }) => c.name === 'verify_chain')
    expect(chain).toMatchObject({ ok: false, detail: expect.stringMatching(/^broken: acme@2 /) })
    expect(fs.readdirSync(dir)).toEqual([])
  })

  it('interrupted mid-restore: exit 130, the checker stopped with it, no spill file left', async () => {
    const dir = tmp('spill-interrupted')
    const stop = new AbortController()
    const name = targetName('interrupted')
    const run = runCli(['--json', '--yes', 'restore', bigFile, '--target', urlFor(name), '--create'], {
      env: env({ TMPDIR: dir }, big.url),
      signal: stop.signal,
    })
    const children = () => execFileSync('ps', ['-o', 'args=', '--ppid', String(process.pid)]).toString()
    await until(() => children().includes('chain-check-process.js') || undefined)
    stop.abort()
    expect((await run).code).toBe(130)
    expect(children()).not.toContain('chain-check-process.js')
    expect(fs.readdirSync(dir)).toEqual([])
    // The database it created for the restore is gone with it.
    expect(await databaseExists(name)).toBe(false)
  })

  it('verify --restore-test interrupted at any point: exit 130, no scratch database left, the backup not marked failed', async () => {
    const before = await verifyDatabases()
    const file = copyBackup(bigFile)
    for (const afterMs of [50, 300, 800, 1500]) {
      const stop = new AbortController()
      const run = runCli(['--json', 'backup', 'verify', file, '--restore-test'], {
        env: env({}, big.url),
        signal: stop.signal,
      })
      setTimeout(() => stop.abort(), afterMs)
      const r = await run
      // Late enough, the verify may finish first: then it passed.
      expect([0, 130], `after ${afterMs} ms: ${r.stdout}`).toContain(r.code)
      expect(
        (await verifyDatabases()).filter((d) => !before.includes(d)),
        `after ${afterMs} ms`,
      ).toEqual([])
      // An interrupted verify has no verdict: the manifest is not marked failed.
      expect(readManifest(file).verify_failed, `after ${afterMs} ms`).toBeUndefined()
    }
  })
})

/** Our own child: the chain check under nice (the test process runs the restore in-process). */
function checkerPid(): Promise<string> {
  return until(
    () =>
      execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)])
        .toString()
        .split('\n')
        .find((l) => l.includes('chain-check-process.js'))
        ?.trim()
        .split(' ')[0],
  )
}

/** Polls `fn` every 10 ms until it returns something, for up to 10 s. */
async function until<T>(fn: () => T | undefined): Promise<T> {
  for (let i = 0; i < 1000; i++) {
    const v = fn()
    if (v !== undefined) return v
    await new Promise((r) => setTimeout(r, 10))
  }
  throw new Error('timed out waiting')
}

describe("the compression stage: pg_dump's archive with its table data compressed inside it", () => {
  /** The compressor's output for `input` fed in pieces of the given sizes, and its mode. */
  async function compressed(input: Buffer, sizes: number[]) {
    const pieces: Buffer[] = []
    for (let at = 0, i = 0; at < input.length; at += sizes[i++ % sizes.length]!)
      pieces.push(input.subarray(at, at + sizes[i % sizes.length]!))
    const c = archiveCompressor()
    const out: Buffer[] = []
    for await (const b of Readable.from(pieces).pipe(c.stream)) out.push(b as Buffer)
    return { bytes: Buffer.concat(out), mode: c.mode() }
  }
  // pg_restore's script, less the random key of its \restrict lines (new in every run).
  const sql = (archive: Buffer) =>
    execFileSync('pg_restore', ['--file=-'], { input: archive, maxBuffer: 1 << 30 })
      .toString('utf8')
      .replace(/^\\(un)?restrict \S+$/gm, '\\$1restrict')

  it('gives what pg_dump -Z0 gave, compressed as -Z6 compresses it, split anywhere: pg_restore reads it alike', async () => {
    const plain = dumpOf(big.url)
    const want = sql(plain)
    expect(want).toMatch(/COPY credits\.credit_transactions/)
    const pgDumpZ6 = dumpOf(big.url, 6).length
    for (const sizes of [[plain.length], [1 << 16], [1, 7, 4093], [3, 1, 7, 2]]) {
      const { bytes, mode } = await compressed(plain, sizes.length === 4 ? sizes.map((n) => n * 997) : sizes)
      expect(mode).toBe('zlib-in-archive')
      expect(readHead(bytes).compressed).toBe(true)
      expect(sql(bytes)).toBe(want)
      // Compressed about as well as pg_dump compresses its own.
      expect(bytes.length).toBeLessThan(pgDumpZ6 * 1.1)
      expect(bytes.length).toBeLessThan(plain.length / 2)
    }
  })

  it('gzips whole what it does not rewrite: a plain dump, an archive already compressed', async () => {
    const text = Buffer.from('-- PostgreSQL database dump\nSELECT 1;\n'.repeat(1000))
    const a = await compressed(text, [100])
    expect(a.mode).toBe('gzip')
    expect(gunzipSync(a.bytes).equals(text)).toBe(true)
    const z6 = dumpOf(db.url, 6)
    const b = await compressed(z6, [4096])
    expect(b.mode).toBe('gzip')
    expect(gunzipSync(b.bytes).equals(z6)).toBe(true)
  })

  it('fails, never ends quietly, on an archive cut short in its table data or its table of contents', async () => {
    const plain = dumpOf(db.url)
    const { block } = find(plain, [plain.length])
    const cut = plain.indexOf(block) + Math.floor(block.length / 2)
    await expect(compressed(plain.subarray(0, cut), [1000])).rejects.toThrow(/ended inside a table's data/)
    await expect(compressed(plain.subarray(0, 30), [7])).rejects.toThrow(/ended in its table of contents/)
  })

  it('decompresses the audit block in pieces, and fails (never hangs) on damaged data or bytes after its end', async () => {
    const text = Buffer.from(Array.from({ length: 200_000 }, (_, i) => `${i}\tacme\trow ${i}\n`).join(''))
    const z = deflateSync(text)
    const run = async (bytes: Buffer, pieces: number) => {
      const out: Buffer[] = []
      const inflater = new Inflater((b) => out.push(Buffer.from(b)))
      const size = Math.ceil(bytes.length / pieces)
      // In one buffer read into again after each flush, as the spill file's reader does.
      const read = Buffer.alloc(size)
      for (let at = 0; at < bytes.length; at += size) {
        const n = bytes.copy(read, 0, at, at + size)
        inflater.add(read.subarray(0, n))
        await inflater.flush(at + size >= bytes.length)
        read.fill(0x55)
      }
      return Buffer.concat(out)
    }
    for (const pieces of [1, 2, 7, 100]) expect((await run(z, pieces)).equals(text)).toBe(true)
    const damaged = Buffer.from(z)
    const mid = Math.floor(z.length / 2)
    damaged[mid] = damaged[mid]! ^ 0xff
    await expect(run(damaged, 5)).rejects.toThrow()
    await expect(run(z.subarray(0, z.length - 10), 3)).rejects.toThrow()
    await expect(run(Buffer.concat([z, Buffer.from('more')]), 1)).rejects.toThrow(/after the end/)
    await expect(run(Buffer.concat([z, Buffer.from('more')]), 4)).rejects.toThrow(/after the end/)
    // The checker throwing is a failure too, not a crash of the process.
    const throwing = new Inflater(() => {
      throw new Error('checker stopped')
    })
    throwing.add(z)
    await expect(throwing.flush(true)).rejects.toThrow('checker stopped')
  })

  it("verify decompresses every table's data and counts its rows: a damaged block or a wrong count is exit 4", async () => {
    const keys = parseKeyring(backupKey, { envName: 'BACKUP_KEY', bytes: { min: 32 } }, 'test')
    const ok = await json(['backup', 'verify', bigFile])
    expect(ok.code, ok.stderr).toBe(0)
    expect(ok.doc.checks.find((c: { name: string }) => c.name === 'table_data')).toEqual({
      name: 'table_data',
      ok: true,
      detail: "every table's data decompresses; the rows match the manifest",
    })

    // A manifest that says one row more: found without a test restore.
    const { copy: counted, manifest: m } = withRowCountOff(bigFile, 'credits.credit_accounts')
    const r1 = await json(['backup', 'verify', counted])
    expect(r1.code).toBe(4)
    expect(checksByName(r1.doc).table_data).toMatchObject({
      ok: false,
      detail: `credits.credit_accounts: ${m.row_counts['credits.credit_accounts'] - 1} rows, manifest ${m.row_counts['credits.credit_accounts']}`,
    })

    // A byte of a table's compressed data changed, then encrypted again under the same key with a
    // manifest to match: every chunk authenticates, but the data does not decompress.
    const dir = tmp('damaged-data')
    const archive: Buffer[] = []
    await pipeline(
      fs.createReadStream(bigFile),
      createDecryptStream(keys),
      new Writable({
        write(c: Buffer, _e, cb) {
          archive.push(c)
          cb()
        },
      }),
    )
    const plain = Buffer.concat(archive)
    const { block } = find(plain, [plain.length])
    const at = plain.indexOf(block) + Math.floor(block.length / 2)
    plain[at] = plain[at]! ^ 0x55
    const damaged = path.join(dir, path.basename(bigFile))
    await pipeline(Readable.from([plain]), createEncryptStream(keys), fs.createWriteStream(damaged))
    const bytes = fs.readFileSync(damaged)
    fs.writeFileSync(
      manifestOf(damaged),
      JSON.stringify({
        ...readManifest(bigFile),
        sha256: createHash('sha256').update(bytes).digest('hex'),
        sizes: { ...readManifest(bigFile).sizes, file_bytes: bytes.length },
      }),
    )
    const r2 = await json(['backup', 'verify', damaged])
    expect(r2.code).toBe(4)
    const byName = checksByName(r2.doc)
    expect(byName.checksum?.ok ?? true).toBe(true)
    expect(byName.table_data).toMatchObject({ ok: false })
    // zlib names what it tripped on, and that depends on the bytes around the change ("incorrect
    // data check", "invalid distance too far back", ...): the sentence and the dump id are ours.
    expect(byName.table_data.detail).toMatch(
      /^The backup's table data does not decompress: the data block of dump id \d+: [^:]+\.$/,
    )
  })

  it('refuses a manifest naming a compression it does not read, before reading the file', async () => {
    const dir = tmp('unknown-compression')
    const file = path.join(dir, path.basename(smallFile))
    fs.copyFileSync(smallFile, file)
    const m = readManifest(smallFile)
    fs.writeFileSync(manifestOf(file), JSON.stringify({ ...m, compression: 'zstd' }))
    const r = await cli(['backup', 'verify', file])
    expect(r.code).toBe(4)
    expect(r.stdout).toMatch(/FAIL\s+manifest\s+.* names a compression this shieldx does not read \(zstd\)\./)
    const restore = await cli(['--yes', 'restore', file, '--target', urlFor(targetName('zstd')), '--create'])
    expect(restore.code).toBe(4)
    expectSentence(restore, /names a compression this shieldx does not read \(zstd\)/)
  })

  it('restores a backup written before it (shieldx.backup.v1, the dump gzipped whole), chains verified on the way in', async () => {
    const dir = path.join(ROOT, 'test/fixtures/backup-v1')
    const keys = JSON.parse(fs.readFileSync(path.join(dir, 'keys.json'), 'utf8')) as Record<string, string>
    const file = path.join(
      dir,
      fs.readdirSync(dir).find((f) => f.endsWith('.shxb'))!,
    )
    expect(readManifest(file)).toMatchObject({ format: 'shieldx.backup.v1', compression: 'gzip' })
    const url = urlFor(targetName('v1'))
    const r = await json(['--yes', 'restore', file, '--target', url, '--create'], { env: keys })
    expect(r.code, r.stderr).toBe(0)
    const detail = (name: string) => r.doc.checks.find((c: { name: string }) => c.name === name).detail
    expect(detail('row_counts')).toBe('8 tables match (the rows pg_restore loaded, counted on the way in)')
    expect(detail('verify_chain')).toBe('4 rows across 3 tenants intact (verified as they were restored)')
    expect((await accounts(url)).map((a) => [a.tenant_id, a.balance])).toEqual([
      ['acme', '70'],
      ['beta', '50'],
      ['gamma', '7'],
    ])
  })
})

describe('a backup that cannot finish leaves nothing that looks complete', () => {
  it('a table held by another session for longer than --timeout: exit 124 at the timeout, nothing left', async () => {
    const dir = tmp('locked')
    const holder = new pg.Client({ connectionString: db.url })
    await holder.connect()
    try {
      await holder.query('begin')
      await holder.query('lock table credits.audit_logs in access exclusive mode')
      const started = Date.now()
      const r = await json(['--timeout', '2s', 'backup', 'create', '--dir', dir])
      const took = Date.now() - started
      expect(r.code, r.stderr).toBe(124)
      expect(r.doc.error.message).toMatch(/did not finish within 2s|waited longer than 2s for a lock/)
      expect(took).toBeLessThan(20_000)
      expect(fs.readdirSync(dir).filter((f) => f.endsWith('.shxb') || f.endsWith('.partial'))).toEqual([])
    } finally {
      await holder.query('rollback').catch(() => {})
      await holder.end()
    }
  })

  it('killed mid-backup (SIGKILL): only a .partial remains, list shows no backup, and the next create removes it', async () => {
    const dir = tmp('killed')
    const child: ChildProcess = spawn(process.execPath, [BIN, 'backup', 'create', '--dir', dir], {
      env: env({}, big.url),
      stdio: 'ignore',
    })
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on('exit', (code, signal) => resolve({ code, signal })),
    )
    let done = false
    void exited.then(() => (done = true))
    const deadline = Date.now() + 30_000
    while (!done && Date.now() < deadline) {
      if (fs.existsSync(dir) && fs.readdirSync(dir).some((f) => f.endsWith('.partial'))) {
        child.kill('SIGKILL')
        break
      }
      await new Promise((r) => setTimeout(r, 2))
    }
    const exit = await exited
    expect(exit.signal, 'the backup finished before it could be killed').toBe('SIGKILL')

    const left = fs.readdirSync(dir)
    expect(left).toHaveLength(1)
    expect(left[0]).toMatch(new RegExp(`\\.shxb\\.${child.pid}\\.partial$`))
    const l = await json(['backup', 'list', '--dir', dir])
    expect(l.code).toBe(0)
    expect(l.doc.backups).toEqual([])

    const next = await json(['backup', 'create', '--dir', dir])
    expect(next.code, next.stderr).toBe(0)
    expect(fs.readdirSync(dir).sort()).toEqual(
      [path.basename(next.doc.file), path.basename(manifestOf(next.doc.file))].sort(),
    )
  })

  it('pg_dump missing (SHIELDX_PG_BIN is an empty directory): exit 1 saying so and what to install', async () => {
    const bin = tmp('nobin')
    const dir = tmp('nobin-out')
    const r = await cli(['backup', 'create', '--dir', dir], { env: { SHIELDX_PG_BIN: bin } })
    expect(r.code).toBe(1)
    expectSentence(r, new RegExp(`pg_dump was not found in SHIELDX_PG_BIN \\(${bin}\\)`))
    expect(r.stderr).toContain('postgresql-client-15')
    expect(fs.readdirSync(dir)).toEqual([])
  })

  it("pg_dump failing mid-table: exit 1 with pg_dump's own error, not the cut archive's, and nothing left", async () => {
    // A pg_dump that stops 300 kB into its archive (inside a table's data) and says why.
    const bin = tmp('cutbin')
    const real = execFileSync('sh', ['-c', 'ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1'])
      .toString()
      .trim()
    fs.writeFileSync(
      path.join(bin, 'pg_dump'),
      `#!/bin/sh
if [ "$1" = "--version" ]; then exec ${real}/pg_dump --version; fi
${real}/pg_dump "$@" | head -c 300000
echo 'pg_dump: error: Dumping the contents of table "credit_transactions" failed: PQgetResult() failed.' >&2
exit 1
`,
      { mode: 0o755 },
    )
    const dir = tmp('cutbin-out')
    const r = await cli(['backup', 'create', '--dir', dir], { env: { SHIELDX_PG_BIN: bin }, url: big.url })
    expect(r.code).toBe(1)
    expectSentence(r, /pg_dump failed \(exit 1\): Dumping the contents of table "credit_transactions" failed/)
    expect(r.stderr).not.toMatch(/could not be compressed/)
    expect(fs.readdirSync(dir)).toEqual([])
  })

  it('pg_dump older than the server: exit 1 naming both versions and postgresql-client-15', async () => {
    const bin = tmp('oldbin')
    fs.writeFileSync(path.join(bin, 'pg_dump'), '#!/bin/sh\necho "pg_dump (PostgreSQL) 11.22"\n', {
      mode: 0o755,
    })
    const dir = tmp('oldbin-out')
    const r = await cli(['backup', 'create', '--dir', dir], { env: { SHIELDX_PG_BIN: bin } })
    expect(r.code).toBe(1)
    expectSentence(r, /pg_dump 11\.22 .* is older than the PostgreSQL 15 server/)
    expect(r.stderr).toContain('postgresql-client-15')
    expect(fs.readdirSync(dir)).toEqual([])
  })

  it.skipIf(cannotMount !== null)(
    cannotMount
      ? `disk full: SKIPPED because ${cannotMount}`
      : 'disk full (a 256 KiB tmpfs as --dir): exit 1 saying the disk is full, and no partial left',
    async () => {
      const dir = tmp('full')
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', dir])
      try {
        const r = await cli(['backup', 'create', '--dir', dir], { url: big.url })
        expect(r.code).toBe(1)
        expectSentence(r, /disk holding .* is full; the partial backup was removed/)
        expect(fs.readdirSync(dir)).toEqual([])
      } finally {
        execFileSync('umount', [dir])
      }
    },
  )
})

// --- 5. prune -----------------------------------------------------------------------------------------------

describe('backup prune', () => {
  const DAY = 86_400_000
  let dir: string
  /** name -> [age in days, label, verified] */
  const plan: Record<string, [number, string | null, boolean]> = {
    a: [100, 'pre-migrate-credits-0001', false],
    b: [90, 'pre-migrate-credits-0002', false], // newest pre-migration: kept though old
    c: [80, null, true], // verified, but an older one
    d: [70, null, true], // newest verified: kept though old
    e: [60, null, false],
    f: [50, null, false], // third newest: kept by --keep-last 3
    g: [2, null, false],
    h: [1, null, false],
  }
  const files: Record<string, string> = {}

  beforeAll(() => {
    dir = tmp('prune')
    for (const [key, [age, label, verified]] of Object.entries(plan)) {
      const created = new Date(Date.now() - age * DAY)
      const name = `shieldx-credits-${created
        .toISOString()
        .replace(/[-:]/g, '')
        .replace(/\.\d+Z$/, 'Z')}-${key}.shxb`
      const file = copyBackup(smallFile, dir, name)
      const m = readManifest(file)
      delete m.verified
      fs.writeFileSync(
        manifestOf(file),
        JSON.stringify({
          ...m,
          name,
          label,
          created_at: created.toISOString(),
          ...(verified ? { verified: { at: created.toISOString(), restore_test: true } } : {}),
        }),
      )
      fs.utimesSync(file, created, created)
      fs.utimesSync(manifestOf(file), created, created)
      files[key] = file
    }
  })

  const listing = () => fs.readdirSync(dir).sort()
  const filesOf = (...keys: string[]) =>
    keys.flatMap((k) => [files[k]!, manifestOf(files[k]!)].map((f) => path.basename(f)))

  it('--dry-run lists what the policy would delete and deletes nothing; the newest pre-migration and verified backups survive', async () => {
    const before = listing()
    const r = await json(['backup', 'prune', '--dir', dir, '--retention-days', '30', '--dry-run'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.doc.dry_run).toBe(true)
    expect(r.doc.deleted).toEqual([])
    expect(r.doc.would_delete.map((d: { file: string }) => d.file).sort()).toEqual(
      [files.a, files.c, files.e].sort(),
    )
    const kept = Object.fromEntries(
      r.doc.kept.map((k: { file: string; reason: string }) => [k.file, k.reason]),
    )
    expect(kept[files.b!]).toBe('newest pre-migration backup')
    expect(kept[files.d!]).toBe('newest verified backup')
    expect(kept[files.f!]).toBe('one of the newest 3')
    expect(listing()).toEqual(before)
  })

  it('--keep-last is respected: with 1, the third newest is no longer kept', async () => {
    const r = await json([
      'backup',
      'prune',
      '--dir',
      dir,
      '--retention-days',
      '30',
      '--keep-last',
      '1',
      '--dry-run',
    ])
    expect(r.code).toBe(0)
    expect(r.doc.would_delete.map((d: { file: string }) => d.file).sort()).toEqual(
      [files.a, files.c, files.e, files.f].sort(),
    )
    const kept = Object.fromEntries(
      r.doc.kept.map((k: { file: string; reason: string }) => [k.file, k.reason]),
    )
    expect(kept[files.h!]).toBe('one of the newest 1')
    expect(kept[files.g!]).toBe('younger than 30 days')
  })

  it('without --yes and without a terminal: exit 3 and nothing is deleted', async () => {
    const before = listing()
    const r = await cli(['backup', 'prune', '--dir', dir, '--retention-days', '30'])
    expect(r.code).toBe(3)
    expectSentence(r, /Refusing to prune backups without confirmation: pass --yes/)
    expect(listing()).toEqual(before)
  })

  it('with --yes deletes exactly the planned backups, data file and manifest, and nothing else', async () => {
    const before = listing()
    const r = await json(['--yes', 'backup', 'prune', '--dir', dir, '--retention-days', '30'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.doc.deleted.map((d: { file: string }) => d.file).sort()).toEqual(
      [files.a, files.c, files.e].sort(),
    )
    const gone = filesOf('a', 'c', 'e')
    expect(gone).toHaveLength(6)
    expect(listing()).toEqual(before.filter((f) => !gone.includes(f)))
    expect(listing()).toEqual(filesOf('b', 'd', 'f', 'g', 'h').sort())
  })
})

// --- 6. pre-migration backup and rollback --migration -------------------------------------------------------

describe('migrate up takes a pre-migration backup; rollback --migration restores it', () => {
  let mig: TestDatabase
  let backups: string
  let migrations: string
  const menv = () => ({ BACKUP_DIR: backups, SHIELDX_MIGRATIONS_DIR: migrations })

  function migrationsWith0003(up: string, down: string): string {
    const dir = tmp('migrations')
    fs.cpSync(path.join(ROOT, 'migrations'), dir, { recursive: true })
    fs.writeFileSync(path.join(dir, 'credits/0003_notes.up.sql'), up)
    fs.writeFileSync(path.join(dir, 'credits/0003_notes.down.sql'), down)
    return dir
  }

  beforeAll(async () => {
    mig = await createTestDatabase('backup_mig')
    backups = tmp('premigrate')
    const m = await cli(['migrate', 'up', '--no-backup'], { url: mig.url, env: { BACKUP_DIR: backups } })
    expect(m.code, m.stderr).toBe(0)
    const t = await cli(['credits', 'topup', 'acme', '100'], { url: mig.url })
    expect(t.code, t.stderr).toBe(0)
  })
  afterAll(async () => {
    await mig?.drop()
  })

  const version = async () =>
    Number(
      (await mig.query<{ v: number }>('select max(version) as v from credits.schema_migrations')).rows[0]!.v,
    )
  const balances = async () =>
    Object.fromEntries(
      (
        await mig.query<{ tenant_id: string; balance: string }>(
          'select tenant_id, balance from credits.credit_accounts',
        )
      ).rows.map((r) => [r.tenant_id, Number(r.balance)]),
    )

  it('migrate up --no-backup took none; migrate up against the server labels one pre-migrate-credits-0002; rollback returns to it', async () => {
    expect(fs.readdirSync(backups)).toEqual([])
    migrations = migrationsWith0003(
      'alter table credits.credit_accounts add column note text;\n',
      'alter table credits.credit_accounts drop column note;\n',
    )
    const up = await cli(['migrate', 'up', '--schema', 'credits'], { url: mig.url, env: menv() })
    expect(up.code, up.stderr).toBe(0)
    expect(up.stderr).toMatch(/pre-migration backup of credits: .*pre-migrate-credits-0002\.shxb/)
    expect(await version()).toBe(3)
    const l = await json(['backup', 'list'], { url: mig.url, env: menv() })
    expect(l.doc.backups).toHaveLength(1)
    expect(l.doc.backups[0]).toMatchObject({
      database: 'credits',
      label: 'pre-migrate-credits-0002',
      schema_version: 2,
    })

    // Written after the backup: lost by the rollback.
    for (const op of [
      ['topup', 'acme', '5'],
      ['topup', 'newbie', '7'],
    ]) {
      const r = await cli(['credits', ...op], { url: mig.url, env: menv() })
      expect(r.code, r.stderr).toBe(0)
    }
    expect(await balances()).toEqual({ acme: 105, newbie: 7 })

    // The test's own pool (mig.query) is another connection: without --force that is refused.
    const busy = await json(['--yes', 'rollback', '--migration', '--schema', 'credits'], {
      url: mig.url,
      env: menv(),
    })
    expect(busy.code).toBe(3)
    expect(busy.doc.error.code).toBe('TARGET_IN_USE')
    expect(await version()).toBe(3)
    const dry = await json(['--yes', 'rollback', '--migration', '--schema', 'credits', '--dry-run'], {
      url: mig.url,
      env: menv(),
    })
    expect(dry.code, dry.stderr).toBe(0)
    expect(dry.doc.plan).toEqual([
      expect.objectContaining({
        schema: 'credits',
        to_schema_version: 2,
        other_connections: expect.any(Number),
      }),
    ])
    expect(await version()).toBe(3)

    const rb = await cli(['--yes', 'rollback', '--migration', '--schema', 'credits', '--force'], {
      url: mig.url,
      env: menv(),
    })
    expect(rb.code, rb.stderr).toBe(0)
    expect(rb.stdout).toContain('Rolled back and verified.')
    expect(await version()).toBe(2)
    expect(await balances()).toEqual({ acme: 100 })

    // Run again (a retried Job): nothing to undo, and what was written since the first is kept.
    // (The shipped migrations: with 0003 on disk and not applied, the ledger would refuse to run.)
    const topup = await cli(['credits', 'topup', 'acme', '1'], { url: mig.url, env: { BACKUP_DIR: backups } })
    expect(topup.code, topup.stderr).toBe(0)
    const again = await cli(['--yes', 'rollback', '--migration', '--schema', 'credits', '--force'], {
      url: mig.url,
      env: menv(),
    })
    expect(again.code, again.stderr).toBe(0)
    expect(again.stdout).toMatch(
      /^Nothing to roll back: credits is at schema version 2, the version of its newest pre-migration backup \(shieldx-credits-\S+-pre-migrate-credits-0002\.shxb\)\. No migration has been applied since it was taken\.$/m,
    )
    expect(await balances()).toEqual({ acme: 101 })
    const note = await mig.query(
      "select 1 from information_schema.columns where table_schema = 'credits' and table_name = 'credit_accounts' and column_name = 'note'",
    )
    expect(note.rowCount).toBe(0)
  })

  // Was a bug, now fixed (psql drops the schema with CASCADE first) (src/core/backup/restore.ts restoreInto, clean restore of a custom dump): a migration that
  // CREATES a table cannot be rolled back. `pg_restore --clean --if-exists` drops only the objects
  // in the archive, then its `DROP SCHEMA IF EXISTS credits` fails because the table added by
  // 0003 still lives in it: "pg_restore failed (exit 1): ... cannot drop schema credits because
  // other objects depend on it", exit 1, database left at version 3. The same hits `restore
  // --force` into any target with extra tables in the schema. Likely fix: for a clean restore,
  // drop the schema with CASCADE in the same transaction as the restore, e.g. pipe
  // `pg_restore --file=-` (SQL) into `psql --single-transaction` after
  // `DROP SCHEMA IF EXISTS <schema> CASCADE;`, as restoreInto already does for plain dumps.
  it('rollback --migration also undoes a migration that created a table', async () => {
    migrations = migrationsWith0003(
      'create table credits.notes (id bigserial primary key, body text);\n',
      'drop table credits.notes;\n',
    )
    const up = await cli(['migrate', 'up', '--schema', 'credits'], { url: mig.url, env: menv() })
    expect(up.code, up.stderr).toBe(0)
    expect(await version()).toBe(3)
    const rb = await cli(['--yes', 'rollback', '--migration', '--schema', 'credits', '--force'], {
      url: mig.url,
      env: menv(),
    })
    expect(rb.code, rb.stderr).toBe(0)
    expect(await version()).toBe(2)
    expect((await mig.query("select to_regclass('credits.notes') as t")).rows[0]!.t).toBeNull()
  })

  it('with no pre-migration backup in the backup directory: exit 1 NO_PRE_MIGRATION_BACKUP', async () => {
    const empty = tmp('nopremigrate')
    const r = await json(['--yes', 'rollback', '--migration', '--schema', 'credits'], {
      url: mig.url,
      env: { BACKUP_DIR: empty },
    })
    expect(r.code).toBe(1)
    expect(r.doc.error.code).toBe('NO_PRE_MIGRATION_BACKUP')
    expectSentence(r, /No pre-migration backup of this database in /)
  })

  it('a newer pre-migration backup of another database in the same directory is never chosen, kept by prune, refused by --backup', async () => {
    migrations = migrationsWith0003(
      'alter table credits.credit_accounts add column memo text;\n',
      'alter table credits.credit_accounts drop column memo;\n',
    )
    const before = await balances()
    const up = await cli(['migrate', 'up', '--schema', 'credits'], { url: mig.url, env: menv() })
    expect(up.code, up.stderr).toBe(0)
    expect(await version()).toBe(3)
    // another database, migrated the same way a moment later: its backup is the newest in the directory
    const other = await createTestDatabase('backup_other')
    try {
      for (const args of [
        ['migrate', 'up', '--no-backup'],
        ['credits', 'topup', 'someone-else', '9'],
      ])
        expect((await cli(args, { url: other.url, env: { BACKUP_DIR: backups } })).code).toBe(0)
      const up2 = await cli(['migrate', 'up', '--schema', 'credits'], { url: other.url, env: menv() })
      expect(up2.code, up2.stderr).toBe(0)
      const listed = (await json(['backup', 'list'], { url: mig.url, env: menv() })).doc.backups as Array<{
        file: string
        source: string
        created_at: string
      }>
      const theirs = listed.find((b) => b.source.endsWith(`/${other.name}`))!
      const ours = listed.find((b) => b.source.endsWith(`/${mig.name}`))!
      expect(theirs.created_at > ours.created_at).toBe(true)
      // told apart by the databases' identities (system identifier and database oid)
      expect(readManifest(ours.file).source_identity).toMatch(/^\d+\.\d+$/)
      expect(readManifest(theirs.file).source_identity).not.toBe(readManifest(ours.file).source_identity)

      // prune keeps each database's newest pre-migration backup
      const prune = await json(
        ['backup', 'prune', '--keep-last', '0', '--retention-days', '1', '--dry-run'],
        {
          url: mig.url,
          env: menv(),
        },
      )
      const kept = prune.doc.kept.map((k: { file: string }) => k.file)
      expect(kept).toEqual(expect.arrayContaining([theirs.file, ours.file]))

      // named by hand: refused (exit 3), nothing restored
      const named = await json(['--yes', 'rollback', '--migration', '--backup', theirs.file], {
        url: mig.url,
        env: menv(),
      })
      expect(named.code).toBe(3)
      expect(named.doc.error.code).toBe('BACKUP_OF_ANOTHER_DATABASE')
      expect(await version()).toBe(3)

      // chosen: ours, though theirs is newer
      const rb = await cli(['--yes', 'rollback', '--migration', '--schema', 'credits', '--force'], {
        url: mig.url,
        env: menv(),
      })
      expect(rb.code, rb.stderr).toBe(0)
      expect(rb.stderr).toContain(path.basename(ours.file))
      expect(await version()).toBe(2)
      expect(await balances()).toEqual(before)
    } finally {
      await other.drop()
    }
  })

  it('a backup from before the chain format (credits schema 1) rolls back and test-restores, its chain check skipped with the reason', async () => {
    const old = await createTestDatabase('backup_v1')
    try {
      const shipped = { BACKUP_DIR: backups }
      const to1 = await cli(['migrate', 'up', '--no-backup', '--schema', 'credits', '--to', '1'], {
        url: old.url,
        env: shipped,
      })
      expect(to1.code, to1.stderr).toBe(0)
      const up = await cli(['migrate', 'up', '--schema', 'credits'], { url: old.url, env: shipped })
      expect(up.code, up.stderr).toBe(0)
      const listed = (await json(['backup', 'list'], { url: old.url, env: shipped })).doc.backups as Array<{
        file: string
        source: string
        label: string
      }>
      const file = listed.find(
        (b) => b.source.endsWith(`/${old.name}`) && b.label === 'pre-migrate-credits-0001',
      )!.file
      const skipped = {
        name: 'verify_chain',
        ok: true,
        skipped: true,
        detail: expect.stringMatching(/^skipped: the backup is at credits schema version 1, /),
      }
      const v = await json(['backup', 'verify', file, '--restore-test'], { url: old.url, env: shipped })
      expect(v.code, v.stderr).toBe(0)
      expect(v.doc.checks).toContainEqual(skipped)
      const rb = await json(['--yes', 'rollback', '--migration', '--schema', 'credits', '--force'], {
        url: old.url,
        env: shipped,
      })
      expect(rb.code, rb.stderr).toBe(0)
      expect(rb.doc.rollbacks[0].checks).toContainEqual(skipped)
      const { rows } = await old.query<{ v: number }>(
        'select max(version) as v from credits.schema_migrations',
      )
      expect(rows[0]!.v).toBe(1)
    } finally {
      await old.drop()
    }
  })
})
