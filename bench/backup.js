/**
 * Backups on a PostgreSQL server, each figure against the bare PostgreSQL tool doing the same
 * job in the same run: `backup create` against `pg_dump -Fc`, `restore` against `pg_restore`, and
 * `backup verify` against `gzip -t` of the same dump. Peak RSS of create and restore at two
 * database sizes shows whether memory stays flat as the database grows (it should: everything
 * streams, about one 1 MiB chunk in flight).
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import pg from 'pg'
import { seedChains } from './ledger.js'
import {
  admin,
  adminUrl,
  cleanEnv,
  command,
  compare,
  compareFigures,
  fixed,
  goals,
  measure,
  onCleanup,
  scratchDatabase,
  scratchDir,
  shieldx,
  spawnTracked,
  stats,
} from './lib.js'

export const name = 'backup'
export const title = 'Backup and restore on a server'

/** The two databases: a chain of `chainRows` audit rows per tenant, plus transactions and accounts. */
const BIG = {
  label: 'large',
  prefix: 'b',
  tenants: 1000,
  chainRows: 500,
  transactions: 450_000,
  accounts: 50_000,
}
const SMALL = {
  label: 'small',
  prefix: 's',
  tenants: 250,
  chainRows: 500,
  transactions: 80_000,
  accounts: 10_000,
}
const MIN_BIG_BYTES = 200 * 2 ** 20
/**
 * Rounds of each comparison; a round runs every command of it once. Restore has the most: on this
 * host one bare pg_restore varies by ±10% from round to round, and its goal is a ratio of two medians.
 */
const ROUNDS = { create: 5, restore: 9, verify: 5 }

export const about =
  `Two scratch databases migrated with the CLI and filled in seconds (valid audit chains written with ` +
  `COPY by bench/ledger.js's seedChains, then accounts and transactions from generate_series with md5 text, ` +
  `vacuumed; sizes below): large, ${BIG.tenants.toLocaleString('en-US')} tenants × ${BIG.chainRows} audit rows and ` +
  `${BIG.transactions.toLocaleString('en-US')} transactions, and small, about a fifth of it. ${ROUNDS.create} rounds of create, ${ROUNDS.restore} of restore and ` +
  `${ROUNDS.verify} of verify, subject and baseline interleaved with the order rotating, no warmup (the vacuum leaves the ` +
  `data in the page cache). Create: \`shieldx backup create --dir D --json\` (pg_dump -Fc -Z0 in an exported ` +
  `snapshot → each table's data zlib-compressed at level 6 inside the archive, as pg_dump -Z6 does → chunked AES-256-GCM → fsync → rename, manifest) against \`pg_dump -Fc --schema=credits -f FILE\`, ` +
  `each writing a new file every run. Restore: \`shieldx restore FILE --target URL --yes --json\` (it also ` +
  `checks the manifest and verifies the audit chains, from the audit table's COPY block taken off its own stream to ` +
  `pg_restore by a low-priority process beside it) against \`pg_restore --single-transaction --no-owner -d DB FILE\` ` +
  `of the bare dump, and, to show what streaming alone costs, \`cat DUMP | pg_restore ...\` of that same bare dump ` +
  `(what a backup holds, decrypted: a compressed pg_dump archive), each into a new empty database created before the clock starts; a CHECKPOINT before every run, the ` +
  `database dropped after it, neither timed. The restore is split into phases by polling pg_stat_activity ` +
  `every 50 ms for pg_restore's session on the target, and that session's server backend read from /proc/PID/schedstat: ` +
  `its time on a CPU, and its time runnable but waiting for one (what the restore's own processes take from it). Verify: \`shieldx backup verify FILE --json\` ` +
  `(checksum, every chunk, the table of contents, every table's data decompressed and its rows counted) in MB/s of the backup file, against \`gzip -t\` of ` +
  `\`pg_dump -Fc -Z0 | gzip -6\` of the same database. Peak RSS (GNU time %M: the largest process of the tree, ` +
  `node or the pg tool it runs) of create and restore on the large database against the small one: flat ` +
  `means within +25%.`

/** Filled during run(): what the harness prints under the table (report.js). */
export const notes = []

const tenantIds = (prefix, n) => Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(4, '0')}`)

async function dist() {
  const [secrets, chain] = await Promise.all([
    import('../dist/core/config/secrets.js'),
    import('../dist/core/audit/chain.js'),
  ])
  return { ...secrets, ...chain }
}

async function psql(url, sql) {
  return spawnTracked('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', url], { input: sql })
}

/**
 * A migrated scratch database filled fast: valid audit chains written with COPY (seedChains), then
 * accounts without chains and transactions from generate_series, with md5 text in the
 * descriptions so that the data does not compress to nothing. Vacuumed, so that no timed run pays
 * for setting hint bits. Returns the database and its size in bytes.
 */
export async function ledgerData(spec, { d, keyring, home }) {
  const db = await scratchDatabase()
  const m = shieldx(['migrate', 'up', '--no-backup'], { CREDITS_DATABASE_URL: db.url, SHIELDX_HOME: home })
  await spawnTracked(m.file, m.args, { env: m.env })
  const tenants = tenantIds(spec.prefix, spec.tenants)
  await seedChains(db.url, d, keyring, tenants, spec.chainRows)
  const p = spec.prefix
  await psql(
    db.url,
    `insert into credits.credit_accounts (tenant_id, balance, version)
       select '${p}x' || lpad(i::text, 6, '0'), 1000000 + i, 1 from generate_series(1, ${spec.accounts}) i;
     insert into credits.credit_transactions
         (id, tenant_id, kind, amount, balance_after, idempotency_key_hash, description, payment_masked, created_at)
       select gen_random_uuid(),
              case when i % 2 = 0 then '${p}' || lpad((i % ${spec.tenants})::text, 4, '0')
                   else '${p}x' || lpad((1 + i % ${spec.accounts})::text, 6, '0') end,
              (array['topup', 'consume', 'reserve', 'commit', 'cancel', 'expire'])[1 + i % 6],
              1 + i % 997,
              1000000 - i % 100000,
              sha256(int8send(i)),
              'order ' || md5(random()::text) || ' ' || substr(md5(i::text), 1, 1 + i % 32),
              case when i % 3 = 0 then '**** ' || lpad((i % 10000)::text, 4, '0') end,
              timestamptz '2026-01-01' + i * interval '1 second'
         from generate_series(1, ${spec.transactions}) i;
     vacuum analyze credits.credit_transactions;
     vacuum analyze credits.credit_accounts;
     vacuum analyze credits.audit_logs;`,
  )
  const bytes = Number((await admin('select pg_database_size($1) as n', [db.name])).rows[0].n)
  return { ...db, bytes }
}

// --- watching pg_restore's session -----------------------------------------------------------------

/**
 * Polls pg_stat_activity (from the admin database, so the target sees no extra connection) every
 * 50 ms while a restore runs and notes when a session of application_name 'pg_restore' on the
 * target was first and last seen. That splits `shieldx restore` into what comes before pg_restore
 * connects (node start, manifest, target checks), the pg_restore session itself, and the checks
 * after it (row counts, chain heads, verify-chain), within ±50 ms. The server is on this machine,
 * so the session's backend can be watched too: /proc/PID/schedstat gives its time on a CPU and
 * its time runnable but waiting for one, which is what the restore's own processes take from it.
 */
function watchRestore(database) {
  const client = new pg.Client({ connectionString: adminUrl(), application_name: 'shx-bench watch' })
  const seen = { first: null, last: null, backend: null }
  let stopped = false
  let polled
  let pid = null
  let atFirst = null
  const firstPoll = new Promise((resolve) => (polled = resolve))
  const started = client.connect().then(async () => {
    while (!stopped) {
      const { rows } = await client.query(
        "select pid from pg_stat_activity where datname = $1 and application_name = 'pg_restore'",
        [database],
      )
      const now = performance.now()
      if (rows.length > 0) {
        seen.first ??= now
        seen.last = now
        pid ??= rows[0].pid
        const s = schedstat(pid)
        if (s) {
          atFirst ??= s
          seen.backend = { cpuMs: s.cpuMs - atFirst.cpuMs, waitMs: s.waitMs - atFirst.waitMs }
        }
      }
      polled()
      await new Promise((r) => setTimeout(r, 50))
    }
  })
  started.catch(() => {}).finally(() => polled())
  const stop = onCleanup(async () => {
    stopped = true
    await started.catch(() => {})
    await client.end().catch(() => {})
  })
  /** `ready()` resolves once the first poll is done: the watch is on before the run starts. */
  return { seen, stop, ready: () => firstPoll }
}

/** A process's time on a CPU and runnable waiting for one, in ms; null if it cannot be read. */
function schedstat(pid) {
  try {
    const [run, wait] = fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ').map(Number)
    return { cpuMs: run / 1e6, waitMs: wait / 1e6 }
  } catch {
    return null
  }
}

// --- the group -------------------------------------------------------------------------------------

const mb = (bytes) => bytes / 2 ** 20
const fmtMb = (bytes) => `${mb(bytes).toFixed(1)} MB`
const fmtS = (ms) => `${(ms / 1000).toFixed(1)} s`
const sizeOf = (file) => fs.statSync(file).size
const onlyFile = (dir, ext) => {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(ext))
  if (files.length !== 1) throw new Error(`expected one *${ext} in ${dir}, found ${files.length}`)
  return path.join(dir, files[0])
}
const emptyDir = (dir) => {
  fs.rmSync(dir, { recursive: true, force: true })
  fs.mkdirSync(dir, { recursive: true })
}

export async function run({ progress }) {
  notes.length = 0
  const d = await dist()
  const work = scratchDir('backup')
  const home = path.join(work.dir, 'home')
  fs.mkdirSync(home)
  const auditKey = `bench:${randomBytes(32).toString('base64')}`
  const backupKey = `bench:${randomBytes(32).toString('base64')}`
  const keyring = d.parseKeyring(auditKey, d.AUDIT_KEY_SPEC, 'bench')
  const env = (url) => ({
    ...(url ? { CREDITS_DATABASE_URL: url } : {}),
    AUDIT_HMAC_KEY: auditKey,
    BACKUP_KEY: backupKey,
    SHIELDX_HOME: home,
  })
  const totalSteps = 1 + ROUNDS.create + ROUNDS.restore + ROUNDS.verify
  let step = 0
  const tick = () => progress(++step, totalSteps)
  const rows = []
  const dbs = []

  try {
    // ---- set-up: the two databases, one after the other (the machine has two cores) ----
    const genStart = performance.now()
    for (const spec of [SMALL, BIG]) dbs.push({ spec, db: await ledgerData(spec, { d, keyring, home }) })
    const [small, big] = dbs.map((x) => x.db)
    if (big.bytes < MIN_BIG_BYTES)
      throw new Error(`the large database is ${fmtMb(big.bytes)}, under ${fmtMb(MIN_BIG_BYTES)}`)
    notes.push(
      `databases (pg_database_size): large ${fmtMb(big.bytes)} (${BIG.tenants} tenants × ${BIG.chainRows} audit rows, ` +
        `${BIG.transactions.toLocaleString('en-US')} transactions, ${(BIG.tenants + BIG.accounts).toLocaleString('en-US')} accounts), ` +
        `small ${fmtMb(small.bytes)} (${SMALL.tenants} × ${SMALL.chainRows}, ${SMALL.transactions.toLocaleString('en-US')}, ` +
        `${(SMALL.tenants + SMALL.accounts).toLocaleString('en-US')}); generating both took ${fmtS(performance.now() - genStart)} (not timed)`,
    )
    tick()

    // ---- 1: backup create against pg_dump -Fc, on both databases ----
    const dirs = {}
    const createCmds = []
    for (const { spec, db } of dbs) {
      const sx = path.join(work.dir, `sx-${spec.label}`)
      const bare = path.join(work.dir, `bare-${spec.label}.fc`)
      dirs[spec.label] = { sx, bare }
      // The previous run's output is removed before each run (not timed): every run writes a new file.
      createCmds.push(
        command(`shieldx backup create, ${spec.label}`, async () => {
          emptyDir(sx)
          return {
            ...shieldx(['backup', 'create', '--dir', sx, '--json'], env(db.url)),
            expect: /"file": "[^"]+\.shxb"/,
          }
        }),
        command(`pg_dump -Fc, ${spec.label}`, async () => {
          fs.rmSync(bare, { force: true })
          return {
            file: 'pg_dump',
            args: ['-Fc', '--schema=credits', '--no-password', '-f', bare, '-d', db.url],
            env: cleanEnv(),
          }
        }),
      )
    }
    const created = await measure(createCmds, {
      runs: ROUNDS.create,
      timeoutMs: 300_000,
      progress: () => tick(),
    })
    const byLabel = (cmds) => Object.fromEntries(cmds.map((c) => [c.label, c]))
    const cc = byLabel(createCmds)
    rows.push(
      compare(
        `\`backup create\`, large (${fmtMb(big.bytes)})`,
        created,
        cc['shieldx backup create, large'],
        cc['pg_dump -Fc, large'],
        goals.maxRatio(1.15),
      ),
      compare(
        `\`backup create\`, small (${fmtMb(small.bytes)})`,
        created,
        cc['shieldx backup create, small'],
        cc['pg_dump -Fc, small'],
        goals.report('ratio'),
      ),
    )
    const files = {}
    for (const { spec } of dbs) {
      const backup = onlyFile(dirs[spec.label].sx, '.shxb')
      const manifest = JSON.parse(fs.readFileSync(backup.replace(/\.shxb$/, '.manifest.json'), 'utf8'))
      files[spec.label] = { backup, bare: dirs[spec.label].bare, manifest }
      notes.push(
        `${spec.label}: backup file ${fmtMb(sizeOf(backup))} (dump ${fmtMb(manifest.sizes.dump_bytes)} before gzip), ` +
          `\`pg_dump -Fc\` file ${fmtMb(sizeOf(dirs[spec.label].bare))}; create rounds ` +
          `${created[`shieldx backup create, ${spec.label}`].ms.map(fmtS).join(' / ')}, pg_dump ` +
          `${created[`pg_dump -Fc, ${spec.label}`].ms.map(fmtS).join(' / ')}`,
      )
    }

    // ---- 2: restore against pg_restore, each into a new database ----
    const phases = { large: [], small: [] }
    const bareSession = { large: [], small: [] }
    const bareBackend = { large: [], small: [] }
    const restoreCmds = []
    for (const { spec } of dbs) {
      const f = files[spec.label]
      restoreCmds.push(
        command(`shieldx restore, ${spec.label}`, async () => {
          // Into a new empty database created before the clock starts, as for pg_restore: the
          // same job. A checkpoint after it, so no run starts with dirty buffers still to write.
          const target = await scratchDatabase()
          await admin('checkpoint')
          const watch = watchRestore(target.name)
          await watch.ready()
          const t0 = performance.now()
          return {
            ...shieldx(['restore', f.backup, '--target', target.url, '--yes', '--json'], env()),
            expect: /^\{\s*"ok": true,\s*"target"[\s\S]*"verify_chain"/m,
            // Runs after a failed run too: it must not throw, or it would hide the run's own error.
            cleanup: async () => {
              const end = performance.now()
              await watch.stop()
              await target.drop()
              const { first, last, backend } = watch.seen
              if (first !== null)
                phases[spec.label].push({
                  before: first - t0,
                  session: last - first,
                  after: end - last,
                  total: end - t0,
                  backend,
                })
            },
          }
        }),
        command(`pg_restore, ${spec.label}`, async () => {
          const target = await scratchDatabase()
          await admin('checkpoint')
          const watch = watchRestore(target.name)
          await watch.ready()
          return {
            file: 'pg_restore',
            args: ['--single-transaction', '--no-owner', '--no-password', '-d', target.url, f.bare],
            env: cleanEnv(),
            cleanup: async () => {
              await watch.stop()
              await target.drop()
              const { first, last, backend } = watch.seen
              if (first !== null) bareSession[spec.label].push(last - first)
              if (backend) bareBackend[spec.label].push(backend)
            },
          }
        }),
      )
    }
    // The least any streaming restore adds: the bare dump (what a backup holds, decrypted), fed
    // to pg_restore through a pipe by cat, which does nothing else.
    const piped = files.large.bare
    restoreCmds.push(
      command('cat | pg_restore, large', async () => {
        const target = await scratchDatabase()
        await admin('checkpoint')
        return {
          file: 'sh',
          args: [
            '-c',
            'cat "$1" | pg_restore --single-transaction --no-owner --no-password -d "$2"',
            'sh',
            piped,
            target.url,
          ],
          env: cleanEnv(),
          cleanup: () => target.drop(),
        }
      }),
    )
    const restored = await measure(restoreCmds, {
      runs: ROUNDS.restore,
      timeoutMs: 300_000,
      progress: () => tick(),
    })
    for (const label of ['large', 'small']) {
      if (phases[label].length !== ROUNDS.restore || bareSession[label].length !== ROUNDS.restore)
        throw new Error(`restore, ${label}: pg_restore's session was not seen on the target in every run`)
    }
    const rc = byLabel(restoreCmds)
    rows.push(
      compare(
        '`restore`, large',
        restored,
        rc['shieldx restore, large'],
        rc['pg_restore, large'],
        goals.maxRatio(1.15),
      ),
      compare(
        'restore, large: bare `pg_restore` fed through a pipe (the least a streaming restore adds)',
        restored,
        rc['cat | pg_restore, large'],
        rc['pg_restore, large'],
        goals.report('ratio'),
      ),
      compare(
        '`restore`, small',
        restored,
        rc['shieldx restore, small'],
        rc['pg_restore, small'],
        goals.report('ratio'),
      ),
    )
    const median = (xs) => stats(xs).median
    for (const label of ['large', 'small']) {
      const p = phases[label]
      rows.push(
        compareFigures(
          `restore, ${label}: until pg_restore is done`,
          {
            label: '`shieldx restore`, spawn → pg_restore disconnects',
            samples: p.map((x) => x.before + x.session),
          },
          { label: '`pg_restore` (whole command)', samples: restored[`pg_restore, ${label}`].ms },
          { unit: 'ms', goal: goals.report('ratio') },
        ),
        compareFigures(
          `restore, ${label}: the pg_restore session`,
          { label: 'pg_restore fed by `shieldx restore`', samples: p.map((x) => x.session) },
          { label: 'bare `pg_restore FILE`', samples: bareSession[label] },
          { unit: 'ms', goal: goals.report('ratio') },
        ),
      )
      // Where the session's extra time goes: the backend waiting for a CPU that the restore's
      // own processes hold, or the backend itself working slower beside them.
      const ours = p.map((x) => x.backend).filter(Boolean)
      if (ours.length > 0 && bareBackend[label].length > 0) {
        rows.push(
          compareFigures(
            `restore, ${label}: the server backend's time on a CPU in the session`,
            { label: 'fed by `shieldx restore`', samples: ours.map((b) => b.cpuMs) },
            { label: 'bare `pg_restore FILE`', samples: bareBackend[label].map((b) => b.cpuMs) },
            { unit: 'ms', goal: goals.report('ratio') },
          ),
          compareFigures(
            `restore, ${label}: the server backend's time runnable but waiting for a CPU`,
            { label: 'fed by `shieldx restore`', samples: ours.map((b) => b.waitMs) },
            { label: 'bare `pg_restore FILE`', samples: bareBackend[label].map((b) => b.waitMs) },
            { unit: 'ms', goal: goals.report('ratio') },
          ),
        )
      }
      notes.push(
        `restore, ${label}: before pg_restore connects (node, manifest, target checks) ${fmtS(median(p.map((x) => x.before)))}, ` +
          `pg_restore session ${fmtS(median(p.map((x) => x.session)))}, after it (row counts, chain heads, the checkpoint; the ` +
          `${(files[label].manifest.row_counts['credits.audit_logs'] ?? 0).toLocaleString('en-US')} audit rows were verified during the session) ` +
          `${fmtS(median(p.map((x) => x.after)))} of ${fmtS(median(p.map((x) => x.total)))} (medians; ` +
          `rounds: ${p.map((x) => `${fmtS(x.before)} + ${fmtS(x.session)} + ${fmtS(x.after)}`).join(', ')}); ` +
          `bare pg_restore session ${bareSession[label].map(fmtS).join(' / ')}`,
      )
    }

    // ---- 3: backup verify throughput, against gzip -t of the same dump gzipped alike ----
    const plainDump = path.join(work.dir, 'plain-large.fc')
    await spawnTracked(
      'pg_dump',
      ['-Fc', '-Z0', '--schema=credits', '--no-password', '-f', plainDump, '-d', big.url],
      { env: cleanEnv() },
    )
    const gz = path.join(work.dir, 'plain-large.fc.gz')
    const gzStart = performance.now()
    await spawnTracked('sh', ['-c', 'gzip -6 -c "$1" > "$2"', 'sh', plainDump, gz])
    notes.push(
      `\`gzip -6\` of the large database's \`pg_dump -Fc -Z0\` dump (one run, not interleaved): ${fmtS(performance.now() - gzStart)}, ` +
        `${fmtMb(sizeOf(gz))}`,
    )
    const verify = command('shieldx backup verify', async () => ({
      ...shieldx(['backup', 'verify', files.large.backup, '--json'], env()),
      expect: /^\{\s*"ok": true/m,
    }))
    const gzipT = fixed('gzip -t', { file: 'gzip', args: ['-t', gz], env: cleanEnv() })
    const verified = await measure([verify, gzipT], {
      runs: ROUNDS.verify,
      timeoutMs: 300_000,
      progress: () => tick(),
    })
    const fileMb = mb(sizeOf(files.large.backup))
    const gzMb = mb(sizeOf(gz))
    rows.push(
      compareFigures(
        `\`backup verify\`, large (${fileMb.toFixed(0)} MB file)`,
        {
          label: '`shieldx backup verify --json`',
          samples: verified[verify.label].ms.map((ms) => fileMb / (ms / 1000)),
        },
        {
          label: `\`gzip -t\` of \`pg_dump -Z0 | gzip -6\` (${gzMb.toFixed(0)} MB)`,
          samples: verified[gzipT.label].ms.map((ms) => gzMb / (ms / 1000)),
        },
        { unit: 'MB/s', goal: goals.report('ratio'), digits: 1 },
      ),
    )

    // ---- 4: peak RSS, large against small: flat in the size of the database ----
    for (const [what, data, labelOf] of [
      ['backup create', created, (s) => `shieldx backup create, ${s}`],
      ['restore', restored, (s) => `shieldx restore, ${s}`],
    ]) {
      rows.push(
        compareFigures(
          `peak RSS of \`${what}\`, large against small`,
          { label: `large (${fmtMb(big.bytes)})`, samples: data[labelOf('large')].rssMb },
          { label: `small (${fmtMb(small.bytes)})`, samples: data[labelOf('small')].rssMb },
          { unit: 'MB', goal: goals.maxRatio(1.25) },
        ),
      )
    }
    return rows
  } finally {
    for (const { db } of dbs) await db.drop()
    work.remove()
  }
}
