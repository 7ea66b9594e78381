/**
 * The credits ledger on a PostgreSQL server, each figure against a baseline measured in the same
 * run: consume throughput against pgbench, one hot tenant against a bare one-statement debit,
 * `credits apply` against single operations, cached against uncached balance reads, and
 * verify-chain against the raw HMAC rate of this machine.
 *
 * The ledger runs from dist/ (the code the CLI runs): throughput through bench/ledger-load.js, a
 * process of its own as pgbench is; apply and verify-chain through the real CLI.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Readable } from 'node:stream'
import { Redis } from 'ioredis'
import {
  cleanEnv,
  command,
  compareFigures,
  goals,
  hmacRate,
  measure,
  NODE,
  onCleanup,
  ROOT,
  scratchDatabase,
  scratchDir,
  shieldx,
  spawnTracked,
} from './lib.js'

export const name = 'ledger'
export const title = 'Credits ledger on a server'

const SECONDS = 8 // per throughput point and run
const ROUNDS = 2 // throughput rounds; each runs every point, subject and baseline
const CLIENTS = [1, 4, 16]
const HOT_CLIENTS = 16
const TENANTS = 1000
const APPLY_OPS = 20_000
const APPLY_OPS_LARGE = 100_000
const APPLY_RUNS = 2
const READS = 2000
const CHAIN_TENANTS = 1000
const CHAIN_ROWS = 1000 // per tenant: 1,000,000 in all
const VERIFY_RUNS = 2
const VERIFY_WORKERS = 2
const HMAC_SECONDS = 3

export const about =
  `Every figure is measured against its baseline in the same run. Throughput: \`bench/ledger-load.js\` ` +
  `(a process of its own, like pgbench) runs \`applyOperation\` consume 1 from dist/ on N connections ` +
  `(one pool, max = N), each op on a random one of ${TENANTS.toLocaleString('en-US')} pre-funded tenants with a fresh ` +
  `idempotency key, for ${SECONDS} s, against \`pgbench -b tpcb-like -c N -j min(N,2) -T ${SECONDS}\` on a scale-10 ` +
  `scratch database; ${ROUNDS} rounds, subject and baseline alternating which goes first, each figure the median ` +
  `of the rounds' ops/s (pgbench: tps without connection time; the ledger opens its connections before the ` +
  `clock starts too). Hot tenant: the same at ${HOT_CLIENTS} clients on one tenant against pgbench -f running ` +
  `one CTE statement (conditional UPDATE of one row + INSERT of the debit) on tables of its own; the ledger's ` +
  `callers share one process and pool, so operations for the tenant that arrive while one of its transactions ` +
  `is in flight go together in the next one (group commit, each with its own key, chain row and result), where ` +
  `pgbench's clients each commit their own. Apply: ` +
  `\`shieldx credits apply --file\` with ${APPLY_OPS_LARGE.toLocaleString('en-US')} and with ${APPLY_OPS.toLocaleString('en-US')} consume lines over ${TENANTS.toLocaleString('en-US')} ` +
  `tenants (a new file with new keys each run, no Redis), ops / wall time from spawn to exit, ${APPLY_RUNS} runs each, ` +
  `against the 1-client consume rate above; the goal is on the larger file, where the CLI's start and the JIT's warm-up ` +
  `no longer weigh (on the smaller they are about a fifth of the time). Balance reads: ${READS.toLocaleString('en-US')} each, alternating, ` +
  `\`createBalanceCache\` get (hit) against \`readBalance\` on one connection. verify-chain: ` +
  `\`shieldx verify-chain --workers ${VERIFY_WORKERS} --json\` on ${(CHAIN_TENANTS * CHAIN_ROWS).toLocaleString('en-US')} audit rows ` +
  `(${CHAIN_TENANTS.toLocaleString('en-US')} tenants × ${CHAIN_ROWS.toLocaleString('en-US')}, written with COPY, valid chains), rows / wall ` +
  `time from spawn to exit, against HMAC-SHA256 (a new createHmac per row: the plain rate of this Node) of a canonical ` +
  `row like the verifier's plus a 32-byte previous hash, on one worker thread per core for ${HMAC_SECONDS} s (the ` +
  `whole machine's raw rate), ${VERIFY_RUNS} rounds alternating.`

/** Filled during run(): what the harness prints under the table (report.js). */
export const notes = []

const tenantIds = (prefix, n) => Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(4, '0')}`)
const redisUrl = () => process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
const fmt = (x) => Math.round(x).toLocaleString('en-US')

// --- dist/ ---------------------------------------------------------------------------------------
// Imported when run() starts, after run.js has built dist/.

async function dist() {
  const [secrets, pool, queries, cache, chain] = await Promise.all([
    import('../dist/core/config/secrets.js'),
    import('../dist/core/db/pool.js'),
    import('../dist/core/ledger/queries.js'),
    import('../dist/core/ledger/cache.js'),
    import('../dist/core/audit/chain.js'),
  ])
  return { ...secrets, ...pool, ...queries, ...cache, ...chain }
}

// --- databases -----------------------------------------------------------------------------------

/** A scratch database with the current schema, migrated through the CLI (migrateUp). */
async function ledgerDatabase(home) {
  const db = await scratchDatabase()
  const m = shieldx(['migrate', 'up', '--no-backup'], { CREDITS_DATABASE_URL: db.url, SHIELDX_HOME: home })
  await spawnTracked(m.file, m.args, { env: m.env })
  return db
}

/** SQL through psql's standard input (no argument-length limit). */
async function psql(url, sql) {
  return spawnTracked('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', url], { input: sql })
}

// --- throughput ----------------------------------------------------------------------------------

async function ledgerLoad(cfg) {
  const r = await spawnTracked(NODE, [path.join(ROOT, 'bench', 'ledger-load.js'), JSON.stringify(cfg)], {
    env: cleanEnv(),
  })
  const out = JSON.parse(r.stdout.trim().split('\n').at(-1))
  if (out.errors) throw new Error(`ledger-load: ${out.errors} operation(s) failed, e.g. ${out.lastError}`)
  return out
}

async function pgbench(url, args) {
  const r = await spawnTracked('pgbench', [...args, url])
  const out = `${r.stdout}\n${r.stderr}`
  const tps = out.match(/^tps = ([\d.]+) \(without initial connection time\)/m)
  const failed = out.match(/^number of failed transactions: (\d+)/m)
  if (!tps) throw new Error(`pgbench printed no tps:\n${out.slice(-2000)}`)
  if (failed && Number(failed[1]) > 0) throw new Error(`pgbench: ${failed[1]} transaction(s) failed`)
  return Number(tps[1])
}

const HOT_SQL =
  'with u as (update acct set balance = balance - 1 where id = 1 and balance >= 1 returning balance) ' +
  'insert into tx (acct_id, amount, balance_after) select 1, 1, balance from u;\n'

// --- verify-chain data ---------------------------------------------------------------------------

/**
 * Write tenants × rows audit rows with valid chains straight into credits.audit_logs (two COPY
 * streams, one per half of the tenants) and set each account's chain_seq / chain_head to match.
 * The hashes are computed here with the ledger's own chainHash, so verify-chain finds them intact.
 */
export async function seedChains(url, d, keyring, tenants, rowsPerTenant) {
  const key = keyring.current
  const base = Date.parse('2026-01-01T00:00:00.000Z')
  const heads = new Map()
  const START_BALANCE = 1_000_000_000
  const copySql =
    'copy credits.audit_logs (tenant_id, seq, transaction_id, action, amount, balance_after, reserved_after, key_id, prev_hash, hash, created_at) from stdin'

  function* lines(part) {
    for (const tenant of part) {
      let prev = d.GENESIS
      let chunk = ''
      for (let seq = 1; seq <= rowsPerTenant; seq++) {
        const row = {
          tenant_id: tenant,
          seq,
          transaction_id: randomUUID(),
          action: 'consume',
          amount: 1,
          balance_after: START_BALANCE - seq,
          reserved_after: 0,
          key_id: key.kid,
          created_at: new Date(base + seq * 1000),
        }
        const hash = d.chainHash(key, row, prev)
        chunk +=
          `${tenant}\t${seq}\t${row.transaction_id}\tconsume\t1\t${row.balance_after}\t0\t${key.kid}\t` +
          `\\\\x${prev.toString('hex')}\t\\\\x${hash.toString('hex')}\t${row.created_at.toISOString()}\n`
        prev = hash
      }
      heads.set(tenant, prev)
      yield chunk
    }
  }
  const half = Math.ceil(tenants.length / 2)
  await Promise.all(
    [tenants.slice(0, half), tenants.slice(half)].map((part) =>
      spawnTracked('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', copySql], {
        input: Readable.from(lines(part)),
      }),
    ),
  )
  const values = tenants
    .map(
      (t) =>
        `('${t}', ${START_BALANCE - rowsPerTenant}, ${rowsPerTenant}, ${rowsPerTenant}, '\\x${heads.get(t).toString('hex')}')`,
    )
    .join(',\n')
  await psql(
    url,
    `insert into credits.credit_accounts (tenant_id, balance, version, chain_seq, chain_head) values ${values}; analyze credits.audit_logs; analyze credits.credit_accounts`,
  )
}

// --- the group -----------------------------------------------------------------------------------

export async function run({ progress }) {
  notes.length = 0
  const d = await dist()
  const home = scratchDir('ledger-home')
  const auditKey = `bench:${randomBytes(32).toString('base64')}`
  const keyring = d.parseKeyring(auditKey, d.AUDIT_KEY_SPEC, 'bench')
  const cliEnv = (url) => ({ CREDITS_DATABASE_URL: url, AUDIT_HMAC_KEY: auditKey, SHIELDX_HOME: home.dir })
  const rows = []

  const totalSteps = 1 + ROUNDS * (CLIENTS.length + 1) + 2 * APPLY_RUNS + 1 + 1 + VERIFY_RUNS
  let step = 0
  const tick = () => progress(++step, totalSteps)

  try {
    // ---- set-up: the ledger database (funded), pgbench's database (initialised, hot tables) ----
    const [ledgerDb, benchDb] = await Promise.all([ledgerDatabase(home.dir), scratchDatabase()])
    const tenants = tenantIds('t', TENANTS)
    await ledgerLoad({
      mode: 'fund',
      url: ledgerDb.url,
      auditKey,
      clients: 8,
      tenants: [...tenants, 'hot'],
      amount: 1e12,
    })
    await spawnTracked('pgbench', ['-i', '-s', '10', '-q', benchDb.url])
    await psql(
      benchDb.url,
      'create table acct (id int primary key, balance bigint not null check (balance >= 0)); ' +
        'create table tx (id bigserial primary key, acct_id int not null, amount bigint not null, ' +
        'balance_after bigint not null, created_at timestamptz not null default now()); ' +
        'insert into acct values (1, 1000000000000); vacuum analyze acct',
    )
    const scripts = scratchDir('ledger-sql')
    const hotScript = path.join(scripts.dir, 'hot.sql')
    fs.writeFileSync(hotScript, HOT_SQL)

    // Warm-up, not counted: caches, the first autovacuum of the new tables, JIT of the driver.
    await ledgerLoad({ mode: 'consume', url: ledgerDb.url, auditKey, clients: 4, seconds: 2, tenants })
    await pgbench(benchDb.url, ['-b', 'tpcb-like', '-c', '4', '-j', '2', '-T', '2'])
    tick()

    // ---- 1 and 2: throughput, subject and baseline alternating which goes first ----
    const points = [
      ...CLIENTS.map((c) => ({
        key: `c${c}`,
        ledger: { mode: 'consume', url: ledgerDb.url, auditKey, clients: c, seconds: SECONDS, tenants },
        bench: ['-b', 'tpcb-like', '-c', String(c), '-j', String(Math.min(c, 2)), '-T', String(SECONDS)],
      })),
      {
        key: 'hot',
        ledger: {
          mode: 'consume',
          url: ledgerDb.url,
          auditKey,
          clients: HOT_CLIENTS,
          seconds: SECONDS,
          tenants: ['hot'],
        },
        bench: ['-n', '-f', hotScript, '-c', String(HOT_CLIENTS), '-j', '2', '-T', String(SECONDS)],
      },
    ]
    const samples = Object.fromEntries(points.map((p) => [p.key, { ledger: [], bench: [], cpu: [] }]))
    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, p] of points.entries()) {
        const runLedger = async () => {
          const r = await ledgerLoad(p.ledger)
          samples[p.key].ledger.push(r.rate)
          samples[p.key].cpu.push(r.cpuMsPerOp)
        }
        const runBench = async () => samples[p.key].bench.push(await pgbench(benchDb.url, p.bench))
        if ((round + i) % 2 === 0) {
          await runLedger()
          await runBench()
        } else {
          await runBench()
          await runLedger()
        }
        tick()
      }
    }
    for (const c of CLIENTS) {
      const s = samples[`c${c}`]
      rows.push(
        compareFigures(
          `consume, ${c} client${c > 1 ? 's' : ''}, ${fmt(TENANTS)} tenants`,
          { label: '`applyOperation` consume', samples: s.ledger },
          { label: `\`pgbench -b tpcb-like -c ${c} -j ${Math.min(c, 2)}\``, samples: s.bench },
          {
            unit: 'ops/s',
            baselineUnit: 'tps',
            goal: c === 16 ? goals.minRatio(1.0) : goals.report('ratio'),
          },
        ),
      )
    }
    rows.push(
      compareFigures(
        `consume, ${HOT_CLIENTS} clients, one hot tenant`,
        { label: '`applyOperation` consume', samples: samples.hot.ledger },
        { label: `\`pgbench -f\` one-statement CTE debit, -c ${HOT_CLIENTS}`, samples: samples.hot.bench },
        { unit: 'ops/s', baselineUnit: 'tps', goal: goals.minRatio(0.6) },
      ),
    )
    notes.push(
      `throughput rounds (ops/s or tps): ${points
        .map(
          (p) =>
            `${p.key}: ledger ${samples[p.key].ledger.map(fmt).join(' / ')}, baseline ${samples[p.key].bench.map(fmt).join(' / ')}`,
        )
        .join('; ')}`,
      `CPU of the ledger's client process per consume (user + system, ms): ${points
        .map((p) => `${p.key} ${samples[p.key].cpu.map((x) => x.toFixed(3)).join(' / ')}`)
        .join('; ')}`,
    )
    await benchDb.drop()
    scripts.remove()

    // ---- 3: credits apply through the CLI, against the 1-client rate ----
    // Two file sizes: the large one is the engine's throughput (the goal); on the small one the
    // CLI's start (~0.25 s) and the JIT's warm-up are a sizeable part, shown for what it is.
    const applyCommand = (ops) =>
      command(`shieldx credits apply, ${fmt(ops)}`, async () => {
        const nonce = randomBytes(6).toString('hex')
        const file = path.join(home.dir, `apply-${nonce}.jsonl`)
        let text = ''
        for (let i = 0; i < ops; i++) {
          const tenant = tenants[Math.floor(Math.random() * tenants.length)]
          text += `${JSON.stringify({ op: 'consume', tenant, amount: 1, idempotency_key: `apply:${nonce}:${i}` })}\n`
        }
        fs.writeFileSync(file, text)
        return {
          ...shieldx(['credits', 'apply', '--file', file], cliEnv(ledgerDb.url)),
          expect: new RegExp(`${ops} operation\\(s\\): ${ops} applied, 0 replayed, 0 failed`),
          cleanup: () => fs.rmSync(file, { force: true }),
        }
      })
    for (const [ops, goal] of [
      [APPLY_OPS_LARGE, goals.minRatio(10)],
      [APPLY_OPS, goals.report()],
    ]) {
      const apply = applyCommand(ops)
      const applied = await measure([apply], { runs: APPLY_RUNS, timeoutMs: 240_000, progress: () => tick() })
      rows.push(
        compareFigures(
          `\`credits apply\`, ${fmt(ops)} consumes`,
          {
            label: '`shieldx credits apply --file`',
            samples: applied[apply.label].ms.map((ms) => ops / (ms / 1000)),
          },
          { label: 'consume at 1 client (above)', samples: samples.c1.ledger },
          { unit: 'ops/s', goal },
        ),
      )
    }

    // ---- 4: balance reads, cached against uncached ----
    rows.push(...(await balanceReads(d, ledgerDb.url, tenants)))
    tick()
    await ledgerDb.drop()

    // ---- 5: verify-chain on a million rows, against the machine's raw HMAC rate ----
    const chainDb = await ledgerDatabase(home.dir)
    const chainTenants = tenantIds('v', CHAIN_TENANTS)
    const seedStart = performance.now()
    await seedChains(chainDb.url, d, keyring, chainTenants, CHAIN_ROWS)
    const total = CHAIN_TENANTS * CHAIN_ROWS
    notes.push(
      `writing the ${fmt(total)} audit rows took ${((performance.now() - seedStart) / 1000).toFixed(1)} s (not timed)`,
    )
    tick()
    const verify = command('shieldx verify-chain', async () => ({
      ...shieldx(['verify-chain', '--workers', String(VERIFY_WORKERS), '--json'], cliEnv(chainDb.url)),
      expect: new RegExp(`^(?=[\\s\\S]*"ok": ?true)(?=[\\s\\S]*"rows_checked": ?${total}\\b)`),
    }))
    const verifyRates = []
    const hmacRates = []
    let hmacInfo
    for (let round = 0; round < VERIFY_RUNS; round++) {
      const runVerify = async () => {
        const r = await measure([verify], { runs: 1, timeoutMs: 240_000 })
        verifyRates.push(total / (r[verify.label].ms[0] / 1000))
      }
      const runHmac = async () => {
        hmacInfo = await hmacRate(keyring.current.bytes, HMAC_SECONDS)
        hmacRates.push(hmacInfo.rate)
      }
      if (round % 2 === 0) {
        await runVerify()
        await runHmac()
      } else {
        await runHmac()
        await runVerify()
      }
      tick()
    }
    rows.push(
      compareFigures(
        `\`verify-chain --workers ${VERIFY_WORKERS}\`, ${fmt(total)} rows`,
        { label: '`shieldx verify-chain --json`', samples: verifyRates },
        { label: `HMAC-SHA256, ${hmacInfo.cores} worker threads`, samples: hmacRates },
        { unit: 'rows/s', baselineUnit: 'HMACs/s', goal: goals.minRatio(0.7) },
      ),
    )
    notes.push(
      `verify-chain rounds: ${verifyRates.map(fmt).join(' / ')} rows/s; HMAC: ${hmacRates.map(fmt).join(' / ')} /s ` +
        `(${hmacInfo.rowBytes}-byte row + 32-byte previous hash)`,
    )
    await chainDb.drop()
    return rows
  } finally {
    home.remove()
  }
}

/** p50 and p99 of cache hits against database reads, the two interleaved read by read. */
async function balanceReads(d, url, tenants) {
  const db = await d.openServer(url, 'bench', { timeoutMs: 30_000, env: {}, max: 1 })
  const keyPrefix = `shx-bench:${randomBytes(6).toString('hex')}:`
  let warning = null
  const cache = d.createBalanceCache({
    url: redisUrl(),
    keyPrefix,
    commandTimeoutMs: 2000,
    onWarning: (m) => {
      warning = m
    },
  })
  // The keys this run can have written (the cache's own naming), deleted by name: no KEYS/SCAN
  // over a Redis that may be shared.
  const dropKeys = onCleanup(async () => {
    const redis = new Redis(redisUrl(), { lazyConnect: true, maxRetriesPerRequest: 1 })
    redis.on('error', () => {})
    try {
      await redis.connect()
      for (let i = 0; i < tenants.length; i += 500) {
        await redis.del(...tenants.slice(i, i + 500).map((t) => `${keyPrefix}balance:${t}`))
      }
    } finally {
      redis.disconnect()
    }
  })
  try {
    for (const t of tenants) {
      const b = await d.readBalance(db.pool, t)
      await cache.set({ tenant_id: t, balance: b.balance, reserved: b.reserved, version: b.version })
    }
    if (warning || cache.degraded) throw new Error(warning ?? `Redis at ${redisUrl()} is unavailable`)
    const cached = []
    const uncached = []
    const one = async (out, fn) => {
      const t = tenants[Math.floor(Math.random() * tenants.length)]
      const start = performance.now()
      const r = await fn(t)
      const ms = performance.now() - start
      if (!r || r.tenant_id !== t) throw new Error(`balance read for ${t} returned ${JSON.stringify(r)}`)
      out.push(ms)
    }
    const get = (t) => cache.get(t)
    const read = (t) => d.readBalance(db.pool, t)
    for (let i = 0; i < 200; i++) {
      await one([], get)
      await one([], read)
    }
    for (let i = 0; i < READS; i++) {
      // Alternate which goes first, so neither always follows the other.
      if (i % 2 === 0) {
        await one(cached, get)
        await one(uncached, read)
      } else {
        await one(uncached, read)
        await one(cached, get)
      }
    }
    const pct = (p) => (s) => {
      const sorted = [...s].sort((a, b) => a - b)
      return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)]
    }
    const label = { subject: '`createBalanceCache` get (hit)', baseline: '`readBalance` (database)' }
    return [
      ['p50', pct(0.5)],
      ['p99', pct(0.99)],
    ].map(([which, pick]) =>
      compareFigures(
        `balance read ${which}`,
        { label: label.subject, samples: cached },
        { label: label.baseline, samples: uncached },
        { unit: 'ms', goal: goals.report('ratio'), pick, digits: 3 },
      ),
    )
  } finally {
    await cache.close()
    await db.close()
    await dropKeys()
  }
}
