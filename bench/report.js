/** Rendering results: the machine facts and one markdown table per group, for stdout and BENCHMARKS.md. */
import os from 'node:os'
import { execa } from 'execa'
import { randomBytes } from 'node:crypto'
import { hmacRate, ROOT, serverVersion } from './lib.js'

async function git(args) {
  const r = await execa('git', args, { cwd: ROOT, reject: false })
  return r.failed ? null : r.stdout.trim()
}

/** What the figures depend on; the load average says how noisy the machine was. */
export async function machineFacts() {
  const commit = await git(['rev-parse', '--short', 'HEAD'])
  const dirty = await git(['status', '--porcelain', '--untracked-files=no'])
  const psql = await execa('psql', ['--version'], { reject: false })
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    node: process.version,
    cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}`,
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    os: `${os.type()} ${os.release()}`,
    'PostgreSQL server': await serverVersion(),
    psql: psql.failed ? 'not found' : psql.stdout.trim(),
    commit: commit ? `${commit}${dirty ? ' + uncommitted changes' : ''}` : 'unknown',
    'load average at start (1 / 5 / 15 min)': loadavg(),
    'parallel capacity at start': await parallelCapacity(),
  }
}

/**
 * HMAC-SHA256 for a second on one thread, then on one per core: how much the other cores add
 * right now. The host shares its cores, and when it gives less than a core each, every figure that
 * runs on two threads (verify-chain, evaluate's speed-up, a restore beside its checks) drops.
 */
export async function parallelCapacity() {
  const key = randomBytes(32)
  const one = await hmacRate(key, 1, 1)
  const all = await hmacRate(key, 1)
  const fmt = (x) => Math.round(x).toLocaleString('en-US')
  return `${all.cores} threads give ×${(all.rate / one.rate).toFixed(2)} of 1 (HMAC-SHA256: ${fmt(one.rate)} /s on 1, ${fmt(all.rate)} /s on ${all.cores})`
}

export function loadavg() {
  return os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' / ')
}

const ms = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1))

function vsBaseline(row) {
  return row.goal.by === 'diff'
    ? `${row.diffMs >= 0 ? '+' : '−'}${ms(Math.abs(row.diffMs))} ms`
    : `×${row.ratio.toFixed(2)}`
}

const HEAD = [
  'benchmark',
  'baseline',
  'runs',
  'median ms',
  'p90 ms',
  'min ms',
  'baseline median ms',
  'vs baseline',
  'goal',
  'result',
  'peak RSS MB',
]

function cells(row) {
  return [
    row.name,
    `\`${row.baseline}\``,
    String(row.n),
    ms(row.median),
    ms(row.p90),
    ms(row.min),
    ms(row.baselineMedian),
    vsBaseline(row),
    row.goal.text,
    row.pass === null ? '—' : row.pass ? 'pass' : '**FAIL**',
    row.rssMb === null ? 'n/a' : row.rssMb.toFixed(0),
  ]
}

/** A markdown table padded into columns, so that it reads as well in a terminal as rendered. */
export function table(head, rows) {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (r) => `| ${r.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n')
}

// Rows made by compareFigures() (they carry a unit): rates and latencies rather than wall times.
const FIGURE_HEAD = [
  'benchmark',
  'subject',
  'baseline',
  'n',
  'subject figure',
  'baseline figure',
  'vs baseline',
  'goal',
  'result',
]

function figure(x, unit, digits) {
  const text = x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
  return `${text} ${unit}`
}

function figureCells(row) {
  return [
    row.name,
    row.subject,
    row.baseline,
    row.n === row.baselineN ? String(row.n) : `${row.n} / ${row.baselineN}`,
    figure(row.value, row.unit, row.digits),
    figure(row.baselineValue, row.baselineUnit, row.digits),
    `×${row.ratio.toFixed(2)}`,
    row.goal.text,
    row.pass === null ? '—' : row.pass ? 'pass' : '**FAIL**',
  ]
}

export function groupSection(group, rows) {
  const timed = rows.filter((r) => r.unit === undefined)
  const figures = rows.filter((r) => r.unit !== undefined)
  const tables = [
    ...(timed.length ? [table(HEAD, timed.map(cells))] : []),
    ...(figures.length ? [table(FIGURE_HEAD, figures.map(figureCells))] : []),
  ]
  const notes = group.notes?.length ? `\n${group.notes.map((n) => `- ${n}`).join('\n')}\n` : ''
  return `## ${group.name}: ${group.title}\n\n${group.about}\n\n${tables.join('\n\n')}\n${notes}`
}

export function document(facts, sections) {
  return `# Benchmarks

Written by \`npm run bench\` (bench/run.js); run it again rather than editing this file.

The machine is shared and noisy, so no figure stands on its own: each subject is timed in the same
run as its baseline, the runs interleaved round by round with the order rotating, and the table
compares the two medians. Times are wall clock from spawn to exit as the parent process sees it (the
same small overhead of spawning, and of \`/usr/bin/time\` for the peak RSS, is in both). p90 is the
nearest rank, so with few runs it is one of the slowest. Peak RSS is the subject process's median.
Tables with a "subject figure" column compare rates or latencies instead (more ops/s is better,
fewer ms is better); n is the number of rounds (or reads) behind each median, subject / baseline
when they differ, and the text above each table says how the figures were taken. The host shares
its cores: "parallel capacity" is a second of HMAC on one thread against one on every core, at the
start and at the end, and says how much the second core gave (×2.00 would be all of it); the
figures that run on two threads (verify-chain, evaluate's speed-up, a restore beside its checks)
move with it.

${table(
  ['machine', ''],
  Object.entries(facts).map(([k, v]) => [k, String(v)]),
)}

${sections.join('\n')}`
}
