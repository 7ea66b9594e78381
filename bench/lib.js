/**
 * Benchmark helpers: clean environments, scratch databases and directories, and the timing loop.
 *
 * The machine is shared and noisy, so no figure stands alone: every subject is timed in the same
 * run as its baseline, the two interleaved round by round, and the table compares them. Times are
 * wall clock from spawn to exit as the parent sees it, which is what a user waits for.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { execa } from 'execa'
import pg from 'pg'

export const ROOT = fileURLToPath(new URL('../', import.meta.url))
export const BIN = path.join(ROOT, 'bin', 'shieldx.js')
/** The node running the harness; children use the same binary, not whatever `node` PATH finds. */
export const NODE = process.execPath

export function adminUrl() {
  return (
    process.env.BENCH_DATABASE_URL ??
    process.env.TEST_DATABASE_URL ??
    'postgres://postgres@127.0.0.1:5432/postgres'
  )
}

/**
 * The parent's environment minus anything that would point shieldx (or psql) somewhere else:
 * database and Redis URLs, keys, SHIELDX_*, PG*. The same filter as test/helpers/env.ts.
 */
export function cleanEnv(extra = {}) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(CREDITS_|SHADOW_|REDIS_|AUDIT_|ENCRYPT_|BACKUP_|SHIELDX_|PG[A-Z]*$|NO_COLOR|FORCE_COLOR)/.test(k))
      continue
    if (k === 'TERM') continue
    env[k] = v
  }
  return { ...env, ...extra }
}

// --- scratch resources ----------------------------------------------------------------------------
// Everything made here is registered, so a failed or interrupted run still removes it.

const cleanups = new Set()

/** The child being timed, if any: stopped first on cleanup, so it cannot write into a removed directory. */
let running = null

/**
 * Children run in a process group of their own (detached) and are stopped by group: killing only
 * /usr/bin/time would leave the command it runs orphaned and still going.
 */
function stopGroup(sub) {
  try {
    process.kill(-sub.pid, 'SIGKILL')
  } catch {
    // already gone
  }
}

/** Children started with spawnTracked(): stopped by group on cleanup, like `running`. */
const children = new Set()

function track(fn) {
  const entry = async () => {
    cleanups.delete(entry)
    await fn()
  }
  cleanups.add(entry)
  return entry
}

/** Remove every scratch database and directory still alive. */
export async function cleanupAll() {
  if (running) {
    stopGroup(running)
    await running
  }
  for (const sub of children) stopGroup(sub)
  await Promise.allSettled([...children])
  await Promise.allSettled([...cleanups].map((fn) => fn()))
}

/**
 * Register any other clean-up (Redis keys, a pool to close): it runs on cleanupAll() unless the
 * returned function ran first. Returns that function; calling it twice runs `fn` once.
 */
export function onCleanup(fn) {
  return track(fn)
}

/**
 * Run a helper process (pgbench, psql, a load driver) that a group needs, not one that measure()
 * times: in a process group of its own, stopped on cleanup if the run is interrupted. Throws with
 * the tail of its output when it fails. `input` (a string or a readable) becomes its stdin.
 */
export async function spawnTracked(file, args, { env = cleanEnv(), input, timeoutMs = 300_000 } = {}) {
  const sub = execa(file, args, {
    env,
    extendEnv: false,
    cwd: ROOT,
    reject: false,
    detached: true,
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
    ...(input === undefined
      ? { stdin: 'ignore' }
      : typeof input === 'string'
        ? { input }
        : { stdin: 'pipe' }),
  })
  children.add(sub)
  try {
    if (input !== undefined && typeof input !== 'string') {
      input.pipe(sub.stdin)
      input.on('error', (err) => sub.stdin.destroy(err))
    }
    const r = await sub
    if (r.failed) {
      const why = r.timedOut ? `timed out after ${timeoutMs} ms` : `exit ${r.exitCode ?? r.signal}`
      throw new Error(
        `${path.basename(file)} ${args.join(' ')} failed (${why}):\n${`${r.stdout}\n${r.stderr}`.trim().slice(-2000)}`,
      )
    }
    return r
  } finally {
    children.delete(sub)
  }
}

/** An empty directory under the OS temp dir; `remove()` deletes it. */
export function scratchDir(label) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `shx-bench-${label}-`))
  return { dir, remove: track(() => fs.rmSync(dir, { recursive: true, force: true })) }
}

/** One statement on the admin database, in a connection of its own (CHECKPOINT, pg_database_size, ...). */
export async function admin(sql, params = []) {
  const client = new pg.Client({ connectionString: adminUrl() })
  await client.connect()
  try {
    return await client.query(sql, params)
  } finally {
    await client.end()
  }
}

/**
 * A new empty database shx_bench_<random> on the server; `drop()` removes it. With
 * `{ create: false }` only the name is chosen (and its drop registered): for a subject that
 * creates the database itself (`restore --create`).
 */
export async function scratchDatabase({ create = true } = {}) {
  const name = `shx_bench_${randomBytes(4).toString('hex')}`
  if (create) await admin(`create database ${name}`)
  const u = new URL(adminUrl())
  u.pathname = `/${name}`
  return { name, url: u.toString(), drop: track(() => admin(`drop database if exists ${name} with (force)`)) }
}

export async function serverVersion() {
  try {
    return (await admin('show server_version')).rows[0].server_version
  } catch (err) {
    return `unavailable (${err.message})`
  }
}

// --- commands -------------------------------------------------------------------------------------

/**
 * A command to time. `prepare()` runs before each timed run and is not timed: it returns what to
 * spawn ({ file, args, env }) and optionally `cleanup()` (not timed either) and `expect`, a
 * RegExp the output must match, so that a benchmark of a command that quietly did nothing fails.
 */
export function command(label, prepare) {
  return { label, prepare }
}

/** A command with nothing to prepare: the same spec every run. */
export function fixed(label, spec) {
  return command(label, async () => spec)
}

/** The baseline for anything that starts node: node itself, doing nothing. */
export function bareNode() {
  return fixed('node -e 0', { file: NODE, args: ['-e', '0'], env: cleanEnv() })
}

/** `node bin/shieldx.js ...` with a clean environment plus `env`. */
export function shieldx(args, env = {}) {
  return { file: NODE, args: [BIN, ...args], env: cleanEnv(env) }
}

// GNU time gives each child's peak RSS for the price of one extra exec, which the subject and the
// baseline both pay, so the comparison stays fair. Without it we just report no RSS.
const TIME = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : null

async function runOnce(cmd, timeoutMs) {
  const spec = await cmd.prepare()
  const rssFile = TIME ? path.join(os.tmpdir(), `shx-bench-rss-${randomBytes(4).toString('hex')}`) : null
  const [file, args] = TIME
    ? [TIME, ['-f', '%M', '-o', rssFile, spec.file, ...spec.args]]
    : [spec.file, spec.args]
  try {
    const start = performance.now()
    const sub = execa(file, args, {
      env: spec.env,
      extendEnv: false,
      cwd: ROOT,
      stdin: 'ignore',
      reject: false,
      detached: true,
    })
    running = sub
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      stopGroup(sub)
    }, timeoutMs)
    const r = await sub
    const ms = performance.now() - start
    clearTimeout(timer)
    running = null
    const output = `${r.stdout}\n${r.stderr}`
    if (r.failed) {
      throw new Error(
        `${cmd.label} failed (${timedOut ? `timed out after ${timeoutMs} ms` : `exit ${r.exitCode ?? r.signal}`}):\n${output.trim().slice(-2000)}`,
      )
    }
    if (spec.expect && !spec.expect.test(output)) {
      throw new Error(`${cmd.label}: output does not match ${spec.expect}:\n${output.trim().slice(-2000)}`)
    }
    // -o gets "Command exited with ..." lines too on failure; the figure is the last line.
    const rssKb = rssFile ? Number(fs.readFileSync(rssFile, 'utf8').trim().split('\n').at(-1)) : Number.NaN
    return { ms, rssMb: rssKb / 1024 }
  } finally {
    if (rssFile) fs.rmSync(rssFile, { force: true })
    await spec.cleanup?.()
  }
}

/**
 * Time several commands round-robin: each round runs every command once, and the order rotates
 * from round to round (AB, BA, ... or ABC, BCA, CAB, ...), so a burst of noise or a warming cache
 * lands on all of them alike instead of on whichever happened to run in that stretch.
 * The first `warmup` rounds are not counted. Returns { label: { ms: [...], rssMb: [...] } }.
 */
export async function measure(commands, { runs, warmup = 0, timeoutMs = 120_000, progress = () => {} }) {
  const out = Object.fromEntries(commands.map((c) => [c.label, { ms: [], rssMb: [] }]))
  for (let round = 0; round < warmup + runs; round++) {
    const order = commands.map((_, i) => commands[(i + round) % commands.length])
    for (const cmd of order) {
      const r = await runOnce(cmd, timeoutMs)
      if (round < warmup) continue
      out[cmd.label].ms.push(r.ms)
      out[cmd.label].rssMb.push(r.rssMb)
    }
    progress(round + 1, warmup + runs)
  }
  return out
}

// --- statistics and goals -------------------------------------------------------------------------

export function stats(samples) {
  const s = [...samples].sort((a, b) => a - b)
  const n = s.length
  const median = n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
  // Nearest rank: with few samples p90 is simply one of the slowest runs, never an interpolation.
  const p90 = s[Math.max(0, Math.ceil(0.9 * n) - 1)]
  return { n, median, p90, min: s[0] }
}

/** How a row is judged. `by` picks what the table shows against the baseline: a difference or a ratio. */
export const goals = {
  /** No target yet: the figure is recorded so that a change shows up. */
  report: (by = 'ratio') => ({ by, text: 'report', pass: () => null }),
  maxDiffMs: (ms) => ({ by: 'diff', text: `≤ +${ms} ms`, pass: (row) => row.diffMs <= ms }),
  maxRatio: (x) => ({ by: 'ratio', text: `≤ ×${x}`, pass: (row) => row.ratio <= x }),
  /** For rates (more is better): the subject must reach x times the baseline. */
  minRatio: (x) => ({ by: 'ratio', text: `≥ ×${x.toFixed(1)}`, pass: (row) => row.ratio >= x }),
}

/**
 * A row for a figure other than a command's wall time (a rate, a latency), against a baseline
 * figure measured in the same run. `subject` and `baseline` are { label, samples } with one
 * sample per round (or per read); `pick` reduces samples to the figure shown (default: median).
 * The row is rendered by report.js's figure table (it has a `unit`).
 */
export function compareFigures(
  name,
  subject,
  baseline,
  { unit, baselineUnit = unit, goal, pick, digits = 0 },
) {
  const reduce = pick ?? ((s) => stats(s).median)
  const value = reduce(subject.samples)
  const baselineValue = reduce(baseline.samples)
  const row = {
    name,
    subject: subject.label,
    baseline: baseline.label,
    n: subject.samples.length,
    baselineN: baseline.samples.length,
    value,
    baselineValue,
    unit,
    baselineUnit,
    digits,
    ratio: value / baselineValue,
    goal,
  }
  row.pass = goal.pass(row)
  return row
}

/** One table row: a subject's samples against its baseline's, from the same measure() call. */
export function compare(name, samples, subject, baseline, goal) {
  const s = stats(samples[subject.label].ms)
  const b = stats(samples[baseline.label].ms)
  const rss = samples[subject.label].rssMb.filter(Number.isFinite)
  const row = {
    name,
    subject: subject.label,
    baseline: baseline.label,
    ...s,
    baselineMedian: b.median,
    diffMs: s.median - b.median,
    ratio: s.median / b.median,
    rssMb: rss.length ? stats(rss).median : null,
    goal,
  }
  row.pass = goal.pass(row)
  return row
}

/**
 * HMAC-SHA256 of a ~120-byte row plus a 32-byte previous hash, chained, on `threads` worker
 * threads (one per core by default): verify-chain's baseline, and, one thread against all, how
 * much of a second core the machine gives right now (report.js).
 */
export async function hmacRate(keyBytes, seconds, threads = os.availableParallelism()) {
  const code = `
    const { parentPort, workerData } = require('node:worker_threads')
    const { createHmac } = require('node:crypto')
    const key = Buffer.from(workerData.key, 'base64')
    const row = workerData.row
    let prev = Buffer.alloc(32)
    let n = 0
    const start = performance.now()
    const end = start + workerData.seconds * 1000
    for (;;) {
      for (let i = 0; i < 1000; i++) prev = createHmac('sha256', key).update(row).update(prev).digest()
      n += 1000
      if (performance.now() >= end) break
    }
    parentPort.postMessage({ n, seconds: (performance.now() - start) / 1000 })
  `
  const row = JSON.stringify([
    'shieldx.audit.v1',
    'v0123',
    517,
    randomUUID(),
    'consume',
    1,
    999999483,
    0,
    'bench',
    new Date().toISOString(),
  ])
  const results = await Promise.all(
    Array.from(
      { length: threads },
      () =>
        new Promise((resolve, reject) => {
          const w = new Worker(code, {
            eval: true,
            workerData: { key: keyBytes.toString('base64'), row, seconds },
          })
          w.once('message', resolve)
          w.once('error', reject)
        }),
    ),
  )
  return {
    rate: results.reduce((s, r) => s + r.n / r.seconds, 0),
    cores: threads,
    rowBytes: Buffer.byteLength(row),
  }
}
