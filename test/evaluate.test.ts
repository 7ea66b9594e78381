/**
 * Rules and the shadow evaluator against a real PostgreSQL: rule validation and immutability,
 * exact rate-limit windows (checked against a brute-force reference, in and out of time order),
 * identical results for any --workers, .gz input, bad lines, the verdicts, and the stored record.
 */
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { gzipSync } from 'node:zlib'
import { execa } from 'execa'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { replay, workerQueueCap } from '../src/core/shadow/replay.js'
import type { RulePart } from '../src/core/shadow/rules.js'
import { seededRandom } from '../src/core/shadow/random.js'
import { BIN, ROOT, runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

let db: TestDatabase
let home: string
let dir: string

const env = () => cleanEnv({ CREDITS_DATABASE_URL: db.url, SHIELDX_HOME: home })
const cli = (args: string[]) => runCli(['--no-color', ...args], { env: env() })
async function json(args: string[]) {
  const r = await cli(['--json', ...args])
  return { ...r, doc: r.stdout ? JSON.parse(r.stdout) : null }
}

interface Ev {
  ts: number
  ip: string
  path: string
  status: number
  label: 'attack' | 'benign'
}

/** A rule definition written to a file in the scratch directory, for `rules add`. */
function ruleFile(name: string, def: object): string {
  const file = path.join(dir, name)
  fs.writeFileSync(file, JSON.stringify(def))
  return file
}

/** A match rule whose pattern backtracks exponentially on a run of a's that does not match. */
const NESTED_PATTERN = { version: 1, name: 'nested', type: 'match', field: 'path', pattern: '^(a+)+$' }

function writeTraffic(name: string, events: readonly object[], gzip = false): string {
  const file = path.join(dir, name)
  const text = events.map((e) => JSON.stringify(e)).join('\n') + '\n'
  fs.writeFileSync(file, gzip ? gzipSync(text) : text)
  return file
}

/** Deterministic traffic: a few noisy IPs (attacks, in bursts) among many quiet ones. */
function synthetic(n: number, seed: number, disorderMs = 0): Ev[] {
  const rng = seededRandom(seed)
  const out: Ev[] = []
  let t = Date.UTC(2026, 0, 1)
  for (let i = 0; i < n; i++) {
    t += Math.floor(rng() * 40)
    const attack = rng() < 0.25
    const ip = attack
      ? `10.0.0.${Math.floor(rng() * 6)}`
      : `192.168.${Math.floor(rng() * 4)}.${Math.floor(rng() * 60)}`
    const late = disorderMs > 0 && rng() < 0.05 ? Math.floor(rng() * disorderMs) : 0
    out.push({
      ts: t - late,
      ip,
      path: attack && rng() < 0.3 ? '/wp-login.php' : '/api/items',
      status: attack ? (rng() < 0.7 ? 401 : 200) : rng() < 0.05 ? 404 : 200,
      label: attack ? 'attack' : 'benign',
    })
  }
  return out
}

/** The brute-force reference: for each event, count same-key events in (ts - w, ts]. */
function reference(events: Ev[], windowMs: number, threshold: number, statusCut: number) {
  const c = { tp: 0, fp: 0, tn: 0, fn: 0 }
  const k = { tp: 0, fp: 0, tn: 0, fn: 0 }
  const add = (x: typeof c, attack: boolean, blocks: boolean) => {
    if (attack) x[blocks ? 'tp' : 'fn']++
    else x[blocks ? 'fp' : 'tn']++
  }
  for (const e of events) {
    const count = events.filter((o) => o.ip === e.ip && o.ts <= e.ts && o.ts > e.ts - windowMs).length
    add(c, e.label === 'attack', e.status >= statusCut)
    add(k, e.label === 'attack', count > threshold)
  }
  return { control: c, candidate: k }
}

const confusion = (x: { tp: number; fp: number; tn: number; fn: number }) => ({
  tp: x.tp,
  fp: x.fp,
  tn: x.tn,
  fn: x.fn,
})

/** The evaluation most tests run: the ip-burst fixture against the status-errors one. */
const BURST_VS_STATUS = ['evaluate', '--candidate', 'ip-burst@1', '--control', 'status-errors@1']

const RATE: RulePart = { type: 'rate_limit', key: 'ip', window_s: 2, threshold: 5 }
const STATUS: RulePart = { type: 'threshold', field: 'status', op: '>=', value: 401 }

beforeAll(async () => {
  db = await createTestDatabase('evaluate')
  home = tempHome('evaluate')
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-evaluate-'))
  const r = await cli(['migrate', 'up', '--no-backup'])
  expect(r.code, r.stderr).toBe(0)
  const add = await cli([
    'rules',
    'add',
    ...fs.readdirSync(path.join(ROOT, 'fixtures/rules')).map((f) => path.join(ROOT, 'fixtures/rules', f)),
  ])
  expect(add.code, add.stderr).toBe(0)
})
afterAll(async () => {
  await db.drop()
  fs.rmSync(dir, { recursive: true, force: true })
})

describe('rules', () => {
  it('rejects a malformed rule with exit 2 and the JSON path of the problem, storing nothing', async () => {
    const cases: Array<[unknown, string]> = [
      [
        { id: 'x', version: 1, name: 'x', type: 'rate_limit', key: 'cookie', window_s: 10, threshold: 5 },
        '$.key',
      ],
      [
        { id: 'x', version: 1, name: 'x', type: 'rate_limit', key: 'ip', window_s: -1, threshold: 5 },
        '$.window_s',
      ],
      [{ id: 'x', version: 0, name: 'x', type: 'match', field: 'path', values: ['a'] }, '$.version'],
      [{ id: 'x', version: 1, name: 'x', type: 'match', field: 'path', pattern: '([' }, '$.pattern'],
      [
        {
          id: 'x',
          version: 1,
          name: 'x',
          type: 'any',
          rules: [{ type: 'threshold', field: 'status', op: '=>', value: 1 }],
        },
        '$.rules[0].op',
      ],
      [
        {
          id: 'x',
          version: 1,
          name: 'x',
          type: 'all',
          rules: [STATUS, { type: 'any', rules: [{ type: 'match', field: 'path' }] }],
        },
        '$.rules[1].rules[0]',
      ],
      [{ id: 'Bad Id', version: 1, name: 'x', type: 'match', field: 'path', values: ['a'] }, '$.id'],
      [
        {
          id: 'x',
          version: 1,
          name: 'x',
          type: 'threshold',
          field: 'status',
          op: '>=',
          value: 1,
          extra: true,
        },
        '$.extra',
      ],
    ]
    for (const [doc, where] of cases) {
      const file = path.join(dir, 'bad-rule.json')
      fs.writeFileSync(file, JSON.stringify(doc))
      const r = await json(['rules', 'add', file])
      expect(r.code, JSON.stringify(doc)).toBe(2)
      expect(r.doc.error.path).toBe(where)
      expect(r.doc.error.message).toContain(where)
    }
    const { rows } = await db.query(`select 1 from shadow.rules where id = 'x'`)
    expect(rows).toHaveLength(0)
    fs.writeFileSync(path.join(dir, 'not-json.json'), '{ "id": ')
    const r = await cli(['rules', 'add', path.join(dir, 'not-json.json')])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('not valid JSON')
  })

  it('stores versions immutably: the same again is a no-op, a changed one is exit 5, SQL cannot edit', async () => {
    const file = path.join(dir, 'imm.json')
    const def = { id: 'imm', version: 1, name: 'immutable', ...STATUS }
    fs.writeFileSync(file, JSON.stringify(def))
    expect((await cli(['rules', 'add', file])).code).toBe(0)
    const again = await cli(['rules', 'add', file])
    expect(again.code).toBe(0)
    expect(again.stdout).toContain('already stored')
    fs.writeFileSync(file, JSON.stringify({ ...def, value: 500 }))
    const changed = await json(['rules', 'add', file])
    expect(changed.code).toBe(5)
    expect(changed.doc.error.hint).toContain('"version": 2')
    await expect(db.query(`update shadow.rules set definition = '{}' where id = 'imm'`)).rejects.toThrow(
      /append-only/,
    )
    await expect(db.query(`delete from shadow.rules where id = 'imm'`)).rejects.toThrow(/append-only/)
    // Several files are stored all or none: the conflict in the second keeps the first out too.
    const fresh = path.join(dir, 'fresh.json')
    fs.writeFileSync(fresh, JSON.stringify({ ...def, id: 'fresh' }))
    expect((await cli(['rules', 'add', fresh, file])).code).toBe(5)
    expect((await db.query(`select 1 from shadow.rules where id = 'fresh'`)).rows).toHaveLength(0)
    const show = await json(['rules', 'show', 'imm@1'])
    expect(show.doc.definition.value).toBe(401)
    expect((await cli(['rules', 'show', 'imm@9'])).code).toBe(1)
  })

  it('warns of a pattern that nests one unbounded repetition in another, and stores the rule', async () => {
    const file = ruleFile('nested.json', { id: 'nested-re', ...NESTED_PATTERN })
    const r = await cli(['rules', 'add', file])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toContain('warning: nested-re@1 $.pattern nests one unbounded repetition in another')
    const again = await json(['rules', 'add', file])
    expect(again.doc[0]).toMatchObject({ id: 'nested-re', risky_patterns: ['$.pattern'] })
    const plain = await json(['rules', 'add', path.join(ROOT, 'fixtures/rules/status-errors.json')])
    expect(plain.doc[0].risky_patterns).toBeUndefined()
    expect(plain.stderr).toBe('')
  })

  it('lists every rule with its newest version', async () => {
    const r = await json(['rules', 'list'])
    expect(r.code).toBe(0)
    const ids = r.doc.map((x: { id: string }) => x.id)
    expect(ids).toEqual(expect.arrayContaining(['ip-burst', 'status-errors', 'scanner-paths', 'layered']))
  })
})

describe('replay', () => {
  it('counts rate-limit windows as (ts - window, ts], ties together, keys apart', async () => {
    const t0 = Date.UTC(2026, 0, 1)
    const ev = (ms: number, ip: string, label: 'attack' | 'benign') => ({
      ts: t0 + ms,
      ip,
      status: 200,
      label,
    })
    // window 1 s, threshold 2: a request is blocked when 3+ requests of its IP fall in (ts-1s, ts].
    const file = writeTraffic('window.jsonl', [
      ev(0, 'a', 'benign'), // count 1
      ev(500, 'a', 'benign'), // 2
      ev(1000, 'a', 'attack'), // (0, 1000]: 500, 1000, 1000 → 3: blocked (TP)
      ev(1000, 'a', 'attack'), // the same instant counts together: 3, blocked (TP)
      ev(1000, 'b', 'benign'), // another key: 1
      ev(2001, 'a', 'benign'), // (1001, 2001]: only itself
    ])
    const r = await replay({
      file,
      control: STATUS,
      candidate: { type: 'rate_limit', key: 'ip', window_s: 1, threshold: 2 },
      workers: 1,
      skipInvalid: false,
      maxDisorderMs: 0,
    })
    expect(confusion(r.tally.candidate)).toEqual({ tp: 2, fp: 0, tn: 4, fn: 0 })
    // The score of the blocked ones is 3/2, of the others their count / 2.
    expect([...r.tally.candidate.scores.keys()].sort()).toEqual([0.5, 1, 1.5])
  })

  it('scores a match rule 1 or 0 only: a request without the field does not match (0), and a threshold puts it lowest', async () => {
    const t0 = Date.UTC(2026, 0, 1)
    const file = writeTraffic('match-missing.jsonl', [
      { ts: t0, ip: 'a', status: 500, label: 'attack', headers: { ua: 'curl/8' } },
      { ts: t0 + 1, ip: 'b', status: 200, label: 'benign', headers: { ua: 'Mozilla/5.0' } },
      { ts: t0 + 2, ip: 'c', label: 'attack' },
      { ts: t0 + 3, ip: 'd', status: 200, label: 'benign', headers: {} },
    ])
    for (const candidate of [
      { type: 'match', field: 'headers.ua', pattern: 'curl' },
      { type: 'match', field: 'headers.ua', values: ['curl/8'] },
    ] as RulePart[]) {
      const r = await replay({
        file,
        control: STATUS,
        candidate,
        workers: 1,
        skipInvalid: false,
        maxDisorderMs: 0,
      })
      expect(confusion(r.tally.candidate)).toEqual({ tp: 1, fp: 0, tn: 2, fn: 1 })
      expect([...r.tally.candidate.scores.keys()].sort()).toEqual([0, 1])
      // Counted, so that a log which drops a field does not make a rule look harmless unnoticed.
      expect(r.missing_fields).toEqual({ status: 1, 'headers.ua': 2 })
      // The control reads status, which the third request lacks: below every status.
      expect([...r.tally.control.scores.keys()].sort((a, b) => a - b)).toEqual([-Infinity, 200, 500])
    }
  })

  it('counts the lines without a rate-limit key or a field a rule reads, the same for any --workers', async () => {
    const events = synthetic(30_000, 41).map((e, i) => {
      const { ip: _ip, status: _status, ...rest } = e as unknown as Record<string, unknown>
      return i % 7 === 0 ? { ...rest, status: e.status } : i % 11 === 0 ? { ...rest, ip: e.ip } : e
    })
    const noIp = events.filter((e) => !('ip' in e)).length
    const noStatus = events.filter((e) => !('status' in e)).length
    expect(noIp).toBeGreaterThan(1000)
    const file = writeTraffic('missing-fields.jsonl', events)
    for (const workers of [1, 2, 3]) {
      const r = await replay({
        file,
        control: STATUS,
        candidate: RATE,
        workers,
        skipInvalid: false,
        maxDisorderMs: 0,
        blockBytes: 64 * 1024,
        awaitWorkers: true,
      })
      expect(r.missing_fields, `--workers ${workers}`).toEqual({ status: noStatus, ip: noIp })
    }
  })

  it('matches the brute-force reference in and out of time order, for any number of workers', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: 0, max: 3000 }),
        async (seed, disorder) => {
          const events = synthetic(600, seed, disorder)
          const file = writeTraffic(`prop-${seed}.jsonl`, events)
          const want = reference(events, 2000, 5, 401)
          const r = await replay({
            file,
            control: STATUS,
            candidate: RATE,
            workers: 1,
            skipInvalid: false,
            maxDisorderMs: disorder,
          })
          expect(confusion(r.tally.candidate)).toEqual(want.candidate)
          expect(confusion(r.tally.control)).toEqual(want.control)
          fs.rmSync(file)
        },
      ),
      { numRuns: 15 },
    )
  })

  it('matches the reference across many small blocks: nested rules, two keys, ties, late lines skipped', async () => {
    const layered: RulePart = {
      type: 'any',
      rules: [
        { type: 'rate_limit', key: 'ip', window_s: 1, threshold: 3 },
        {
          type: 'all',
          rules: [
            { type: 'match', field: 'status', values: [401] },
            { type: 'rate_limit', key: 'path', window_s: 0.5, threshold: 2 },
          ],
        },
      ],
    }
    const count = (events: Ev[], e: Ev, key: 'ip' | 'path', w: number) =>
      events.filter((o) => o[key] === e[key] && o.ts <= e.ts && o.ts > e.ts - w).length
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 100_000 }),
        fc.integer({ min: 0, max: 2000 }),
        fc.integer({ min: 150, max: 3000 }),
        async (seed, disorder, blockBytes) => {
          const events = synthetic(500, seed, disorder)
          // Same-instant neighbours, to exercise ties across blocks.
          for (let i = 1; i < events.length; i += 7) events[i]!.ts = events[i - 1]!.ts
          // A line far too late: skipped and counted with skipInvalid, never counted in a window.
          const late = { ...events[250]!, ts: events[250]!.ts - disorder - 10_000 }
          const lines = [...events.slice(0, 300), late, ...events.slice(300)]
          const file = writeTraffic(`blocks-${seed}.jsonl`, lines)
          const want = { tp: 0, fp: 0, tn: 0, fn: 0 }
          for (const e of events) {
            const blocks =
              count(events, e, 'ip', 1000) > 3 || (e.status === 401 && count(events, e, 'path', 500) > 2)
            want[e.label === 'attack' ? (blocks ? 'tp' : 'fn') : blocks ? 'fp' : 'tn']++
          }
          const r = await replay({
            file,
            control: STATUS,
            candidate: layered,
            workers: 1,
            skipInvalid: true,
            maxDisorderMs: disorder,
            blockBytes,
          })
          expect(r.skipped.out_of_order).toBe(1)
          expect(confusion(r.tally.candidate)).toEqual(want)
          fs.rmSync(file)
        },
      ),
      { numRuns: 12 },
    )
  })

  it('keeps counting right when thousands of keys go quiet, are swept, and come back', async () => {
    // 5,000 keys, each seen twice in a row (the second of a pair is blocked: 2 > 1 in 1 s), then
    // quiet for 100 s (its list is swept), then back: every parser must find a live list again.
    const t0 = Date.UTC(2026, 0, 1)
    const events: Ev[] = Array.from({ length: 30_000 }, (_, i) => ({
      ts: t0 + i * 10,
      ip: `k${Math.floor(i / 2) % 5000}`,
      path: '/',
      status: 200,
      label: i % 2 === 1 ? 'attack' : 'benign',
    }))
    const file = writeTraffic('sweep.jsonl', events)
    for (const workers of [1, 2]) {
      const r = await replay({
        file,
        control: STATUS,
        candidate: { type: 'rate_limit', key: 'ip', window_s: 1, threshold: 1 },
        workers,
        skipInvalid: false,
        maxDisorderMs: 0,
        blockBytes: 20_000,
        awaitWorkers: true,
      })
      if (workers > 1) expect(r.worker_blocks, 'blocks parsed by the worker').toBeGreaterThan(0)
      expect(confusion(r.tally.candidate), `workers ${workers}`).toEqual({
        tp: 15_000,
        fp: 0,
        tn: 15_000,
        fn: 0,
      })
    }
  })

  it('keeps busy keys exact: thousands of timestamps per key, out of order, thousands of events waiting', async () => {
    // Three keys share 40,000 events 2 ms apart, a tenth of them up to 20 s late: each key's list
    // holds thousands of timestamps (late ones inserted mid-list, the front moved down as windows
    // pass), and the 20 s of lines still to be decided are more than the queue starts with.
    const rng = seededRandom(7)
    const t0 = Date.UTC(2026, 0, 1)
    const events: Ev[] = Array.from({ length: 40_000 }, (_, i) => ({
      ts: t0 + i * 2 - (rng() < 0.1 ? Math.floor(rng() * 20_000) : 0),
      ip: `10.0.0.${Math.floor(rng() * 3)}`,
      path: '/',
      status: 200,
      label: rng() < 0.5 ? 'attack' : 'benign',
    }))
    // The reference by sorted timestamps per key: the brute force is quadratic at this size.
    const byKey = new Map<string, number[]>()
    for (const e of events) byKey.set(e.ip, [...(byKey.get(e.ip) ?? []), e.ts])
    for (const list of byKey.values()) list.sort((a, b) => a - b)
    const upper = (a: number[], x: number) => {
      let lo = 0
      let hi = a.length
      while (lo < hi) {
        const mid = (lo + hi) >>> 1
        if (a[mid]! <= x) lo = mid + 1
        else hi = mid
      }
      return lo
    }
    const countOf = (e: Ev) => {
      const list = byKey.get(e.ip)!
      return upper(list, e.ts) - upper(list, e.ts - 5000)
    }
    const counts = events.map(countOf)
    // about 830 per key in 5 s: the median splits the events in two
    const threshold = [...counts].sort((a, b) => a - b)[counts.length >> 1]!
    const want = { tp: 0, fp: 0, tn: 0, fn: 0 }
    events.forEach((e, i) => {
      const blocks = counts[i]! > threshold
      want[e.label === 'attack' ? (blocks ? 'tp' : 'fn') : blocks ? 'fp' : 'tn']++
    })
    expect(want.tp + want.fp, 'the threshold splits the events').toBeGreaterThan(1000)
    expect(want.tn + want.fn).toBeGreaterThan(1000)
    const file = writeTraffic('busy.jsonl', events)
    for (const workers of [1, 2]) {
      const r = await replay({
        file,
        control: STATUS,
        candidate: { type: 'rate_limit', key: 'ip', window_s: 5, threshold },
        workers,
        skipInvalid: false,
        maxDisorderMs: 20_000,
        blockBytes: 50_000,
        awaitWorkers: true,
      })
      if (workers > 1) expect(r.worker_blocks, 'blocks parsed by the worker').toBeGreaterThan(0)
      expect(confusion(r.tally.candidate), `workers ${workers}`).toEqual(want)
      // every distinct count is a distinct score (count / threshold), each counted once per event
      const scores = [...r.tally.candidate.scores]
      expect(scores.map(([s]) => Math.round(s * threshold)).sort((a, b) => a - b)).toEqual(
        [...new Set(counts)].sort((a, b) => a - b),
      )
      expect(scores.reduce((n, [, [p, q]]) => n + p + q, 0)).toBe(events.length)
    }
  })

  it('decodes UTF-8 split across blocks: a match on non-ASCII text counts every line', async () => {
    const events = synthetic(3000, 41).map((e, i) => ({
      ...e,
      path: i % 3 === 0 ? '/café/ünï/日本' : e.path,
    }))
    const file = writeTraffic('utf8.jsonl', events)
    const want = events.filter((e, i) => i % 3 === 0 && e.label === 'attack').length
    for (const blockBytes of [97, 1000, 1 << 20]) {
      const r = await replay({
        file,
        control: STATUS,
        candidate: { type: 'match', field: 'path', pattern: '日本$' },
        workers: 1,
        skipInvalid: false,
        maxDisorderMs: 0,
        sampleSize: 3000,
        blockBytes,
      })
      expect(r.tally.candidate.tp, String(blockBytes)).toBe(want)
      expect(r.skipped.invalid).toBe(0)
    }
  })

  it('names both lines when one line is far ahead of the rest', async () => {
    const events = synthetic(3000, 21)
    events[99] = { ...events[99]!, ts: events[99]!.ts + 365 * 86_400_000 }
    const file = writeTraffic('ahead.jsonl', events)
    const err = await replay({
      file,
      control: STATUS,
      candidate: RATE,
      workers: 1,
      skipInvalid: false,
      maxDisorderMs: 60_000,
    }).then(
      () => null,
      (e: Error) => e,
    )
    expect(err?.message).toContain('line 101')
    expect(err?.message).toContain('before line 100')
  })

  it('refuses timestamps without a zone, in epoch seconds, or out of range, naming the line', async () => {
    for (const [ts, words] of [
      ['2026-01-01 00:00:00', 'no time zone'],
      [1767225600, 'looks like epoch seconds'],
      [1e20, 'must be ISO-8601'],
    ] as const) {
      const file = writeTraffic('ts.jsonl', [
        { ts: Date.UTC(2026, 0, 1), label: 'benign' },
        { ts, label: 'attack' },
      ])
      const r = await json([...BURST_VS_STATUS, '--traffic', file])
      expect(r.code, String(ts)).toBe(2)
      expect(r.doc.error.message).toContain('line 2')
      expect(r.doc.error.message).toContain(words)
    }
  })

  it('a producer that stalls on standard input: exit 124 once nothing has come for --timeout, never a hang', async () => {
    const lines =
      synthetic(500, 32)
        .map((e) => JSON.stringify(e))
        .join('\n') + '\n'
    const started = Date.now()
    const child = execa(
      process.execPath,
      [BIN, '--json', '--timeout', '1s', ...BURST_VS_STATUS, '--no-store', '--traffic', '-'],
      { env: env(), extendEnv: false, reject: false, timeout: 30_000 },
    )
    // Some lines, then nothing more, the pipe left open.
    child.stdin!.write(lines)
    const r = await child
    expect(r.exitCode, String(r.stderr)).toBe(124)
    expect(JSON.parse(String(r.stdout)).error.message).toBe(
      '--traffic -: nothing came for 1s; is the producer stalled?',
    )
    expect(Date.now() - started).toBeLessThan(15_000)
  })

  it('reads traffic from standard input (--traffic -), and refuses a directory in one sentence', async () => {
    const events = synthetic(3000, 31)
    const file = writeTraffic('piped.jsonl', events)
    const text = fs.readFileSync(file, 'utf8')
    const args = ['--json', ...BURST_VS_STATUS, '--no-store']
    const piped = await execa(process.execPath, [BIN, ...args, '--traffic', '-'], {
      env: env(),
      extendEnv: false,
      reject: false,
      input: text,
    })
    expect(piped.exitCode, String(piped.stderr)).toBe(0)
    const fromFile = await json([...args.slice(1), '--traffic', file])
    expect(JSON.parse(String(piped.stdout)).candidate_metrics).toEqual(fromFile.doc.candidate_metrics)
    expect(JSON.parse(String(piped.stdout)).traffic.sha256).toBe(fromFile.doc.traffic.sha256)
    // A path that is a pipe, not a file (/dev/stdin, a FIFO): read as a stream, the same result.
    // (through sh: a child's stdin from Node is a socket, which /dev/stdin cannot open)
    const devStdin = await execa(
      'sh',
      [
        '-c',
        'f=$0 n=$1 b=$2; shift 2; cat "$f" | "$n" "$b" "$@" --traffic /dev/stdin',
        file,
        process.execPath,
        BIN,
        ...args,
      ],
      { env: { ...env(), PATH: process.env.PATH ?? '/usr/bin:/bin' }, extendEnv: false, reject: false },
    )
    expect(devStdin.exitCode, String(devStdin.stderr)).toBe(0)
    expect(JSON.parse(String(devStdin.stdout)).candidate_metrics).toEqual(fromFile.doc.candidate_metrics)
    const fifo = path.join(dir, 'traffic.fifo')
    execFileSync('mkfifo', [fifo])
    const writer = execa('sh', ['-c', `cat "${file}" > "${fifo}"`])
    const viaFifo = await json([...args.slice(1), '--traffic', fifo])
    await writer
    expect(viaFifo.code, JSON.stringify(viaFifo.doc)).toBe(0)
    expect(viaFifo.doc.traffic.sha256).toBe(fromFile.doc.traffic.sha256)
    // A byte-order mark at the start of the file is not part of its first line.
    const bom = path.join(dir, 'bom.jsonl')
    fs.writeFileSync(bom, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), fs.readFileSync(file)]))
    const withBom = await json([...args.slice(1), '--traffic', bom])
    expect(withBom.code, JSON.stringify(withBom.doc)).toBe(0)
    expect(withBom.doc.candidate_metrics).toEqual(fromFile.doc.candidate_metrics)
    const r = await json([...args.slice(1), '--traffic', dir])
    expect(r.code).toBe(2)
    expect(r.doc.error.message).toContain('is a directory')
  })

  it('gives the identical tally with 1, 2 and 3 workers on a file of many blocks, and for its .gz', async () => {
    const events = synthetic(40_000, 99, 1500)
    const plain = writeTraffic('many.jsonl', events)
    const gz = writeTraffic('many.jsonl.gz', events, true)
    const run = (file: string, workers: number, candidate: RulePart) =>
      replay({
        file,
        control: STATUS,
        candidate,
        workers,
        skipInvalid: false,
        maxDisorderMs: 2000,
        awaitWorkers: true,
      })
    const stateless: RulePart = { type: 'match', field: 'path', pattern: 'wp-login' }
    for (const candidate of [RATE, stateless]) {
      const one = await run(plain, 1, candidate)
      expect(one.tally.events).toBe(40_000)
      for (const [file, workers] of [
        [plain, 2],
        [plain, 3],
        [gz, 2],
      ] as const) {
        const other = await run(file, workers, candidate)
        expect(other.worker_blocks, `${file} with ${workers} workers`).toBeGreaterThan(0)
        expect(other.missing_fields).toEqual(one.missing_fields)
        expect(confusion(other.tally.candidate)).toEqual(confusion(one.tally.candidate))
        expect(confusion(other.tally.control)).toEqual(confusion(one.tally.control))
        expect([...other.tally.candidate.scores].sort()).toEqual([...one.tally.candidate.scores].sort())
        expect(other.tally.control_only_right).toBe(one.tally.control_only_right)
      }
    }
    // Several 1 MiB reads: the pooled buffers go round the workers and back, and are hashed as
    // read: on this thread with --workers 1 or 2, by the first worker (shared memory) with 3.
    expect(fs.statSync(plain).size).toBeGreaterThan(3 * 2 ** 20)
    for (const workers of [1, 2, 3]) {
      const p = await run(plain, workers, RATE)
      expect(p.compressed).toBe(false)
      expect(p.traffic_sha256).toBe(createHash('sha256').update(fs.readFileSync(plain)).digest('hex'))
      expect(p.bytes).toBe(fs.statSync(plain).size)
    }
    const r = await run(gz, 2, RATE)
    expect(r.compressed).toBe(true)
    expect(r.traffic_sha256).toBe(createHash('sha256').update(fs.readFileSync(gz)).digest('hex'))
    expect(r.bytes).toBe(fs.statSync(gz).size)
  })

  it('hashes and parses a file of many reads alike with 1, 2 and 3 workers: shared buffers are reused only when both are done', async () => {
    // 24 MiB in 1 MiB reads: the pool's buffers go round the parsers and the hashing worker many
    // times. A buffer reused before either is done shows as a broken line or another tally.
    const one = fs.readFileSync(writeTraffic('reuse.jsonl', synthetic(40_000, 5)))
    const file = path.join(dir, 'reuse-many.jsonl')
    fs.writeFileSync(file, Buffer.concat(Array.from({ length: 7 }, () => one)))
    expect(fs.statSync(file).size).toBeGreaterThan(24 * 2 ** 20)
    const stateless: RulePart = { type: 'match', field: 'path', pattern: 'wp-login' }
    const results = []
    for (const workers of [1, 2, 3]) {
      results.push(
        await replay({
          file,
          control: STATUS,
          candidate: stateless,
          workers,
          skipInvalid: false,
          maxDisorderMs: 0,
          awaitWorkers: true,
        }),
      )
    }
    const want = createHash('sha256').update(fs.readFileSync(file)).digest('hex')
    for (const r of results) {
      if (r.workers > 1) expect(r.worker_blocks, `${r.workers} workers`).toBeGreaterThan(0)
      expect(r.tally.events).toBe(280_000)
      expect(r.traffic_sha256).toBe(want)
      expect(confusion(r.tally.candidate)).toEqual(confusion(results[0]!.tally.candidate))
      expect(confusion(r.tally.control)).toEqual(confusion(results[0]!.tally.control))
    }
  })

  it('scores only the first N events in time order with a sample size, windows still fed by all', async () => {
    const events = synthetic(5000, 5)
    const file = writeTraffic('sample.jsonl', events)
    const r = await replay({
      file,
      control: STATUS,
      candidate: RATE,
      workers: 2,
      skipInvalid: false,
      maxDisorderMs: 0,
      sampleSize: 1000,
      awaitWorkers: true,
    })
    expect(r.tally.events).toBe(1000)
    const want = reference(events, 2000, 5, 401)
    const prefix = reference(events.slice(0, 1000), 2000, 5, 401)
    // The first 1000 events' windows only reach back, so the prefix reference is exact here.
    expect(confusion(r.tally.candidate)).toEqual(prefix.candidate)
    expect(want.candidate.tp).toBeGreaterThan(prefix.candidate.tp)
  })
})

describe('workerQueueCap', () => {
  const MiB = 2 ** 20
  it('keeps full queues until the end of the file is near, then no more than the blocks left plus the one dealt', () => {
    // Far from the end, or the size unknown (a pipe, a .gz), or the file grown: the full queue.
    expect(workerQueueCap(8, 1, 200 * MiB, MiB)).toBe(8)
    expect(workerQueueCap(8, 1, null, MiB)).toBe(8)
    expect(workerQueueCap(8, 1, -5, MiB)).toBe(8)
    // One worker: no more than the blocks still to come after this one, plus this one.
    expect(workerQueueCap(8, 1, 3 * MiB, MiB)).toBe(4)
    expect(workerQueueCap(8, 1, 3 * MiB - 1, MiB)).toBe(4)
    expect(workerQueueCap(8, 1, 0, MiB)).toBe(1)
    // Two workers share what is left.
    expect(workerQueueCap(8, 2, 5 * MiB, MiB)).toBe(3)
    expect(workerQueueCap(8, 2, 0, MiB)).toBe(1)
  })
})

describe('evaluate', () => {
  let traffic: string

  beforeAll(() => {
    traffic = writeTraffic('eval.jsonl', synthetic(20_000, 3))
  })

  it('prints the documented JSON and stores the evaluation with the traffic hash', async () => {
    const r = await json([...BURST_VS_STATUS, '--traffic', traffic, '--workers', '2'])
    expect(r.code, r.stderr).toBe(0)
    const d = r.doc
    for (const k of [
      'id',
      'candidate',
      'control',
      'sample_size',
      'control_metrics',
      'candidate_metrics',
      'significance',
      'bayes',
      'recommendation',
      'conclusive',
    ])
      expect(d).toHaveProperty(k)
    for (const k of [
      'tp',
      'fp',
      'tn',
      'fn',
      'precision',
      'recall',
      'f1',
      'accuracy',
      'fpr',
      'mcc',
      'auc_roc',
    ])
      expect(d.candidate_metrics).toHaveProperty(k)
    expect(d.sample_size).toBe(20_000)
    expect(d.significance.chi_square.df).toBeGreaterThanOrEqual(1)
    expect(
      Math.abs(d.bayes.prob_candidate_better_exact - d.bayes.prob_candidate_better_thompson),
    ).toBeLessThan(0.01)
    expect(d.bayes.draws).toBeGreaterThanOrEqual(100_000)
    expect(['APPROVE_FULL_DEPLOYMENT', 'APPROVE_CANARY', 'REJECT', 'NEED_MORE_DATA']).toContain(
      d.recommendation.decision,
    )
    expect(d.recommendation.reasons.length).toBeGreaterThanOrEqual(7)
    const { rows } = await db.query(
      'select recommendation, conclusive, traffic_sha256, samples, metrics from shadow.evaluations where id = $1',
      [d.id],
    )
    expect(rows[0]!.traffic_sha256).toBe(createHash('sha256').update(fs.readFileSync(traffic)).digest('hex'))
    expect(rows[0]!.recommendation).toBe(d.recommendation.decision)
    expect(Number(rows[0]!.samples)).toBe(20_000)
    const show = await json(['evaluate', 'show', d.id])
    expect(show.doc.candidate_metrics).toEqual(d.candidate_metrics)
    const list = await json(['evaluate', 'list', '--rule', 'ip-burst'])
    expect(list.doc.map((x: { id: string }) => x.id)).toContain(d.id)
    // a rule without evaluations, while others have some: said so, not "none stored yet"
    const none = await cli(['evaluate', 'list', '--rule', 'never-evaluated'])
    expect(none.code).toBe(0)
    expect(none.stderr).toBe('No evaluations of rule never-evaluated are stored (as candidate or control).\n')
    const shown = await cli(['evaluate', 'show', d.id])
    expect(shown.stderr).toContain(`evaluation ${d.id} (`)
    expect(shown.stderr).not.toContain('stored as evaluation')
    await expect(db.query(`delete from shadow.evaluations where id = $1`, [d.id])).rejects.toThrow(
      /append-only/,
    )
  })

  it('is the same for any --workers, and --no-store records nothing', async () => {
    const before = await db.query('select count(*)::int as n from shadow.evaluations')
    const docs = []
    for (const w of ['1', '3']) {
      const r = await json([
        'evaluate',
        '--candidate',
        'layered@1',
        '--control',
        'ip-burst@1',
        '--traffic',
        traffic,
        '--workers',
        w,
        '--no-store',
      ])
      expect(r.code, r.stderr).toBe(0)
      docs.push(r.doc)
    }
    for (const k of [
      'control_metrics',
      'candidate_metrics',
      'significance',
      'bayes',
      'recommendation',
    ] as const)
      expect(docs[1][k]).toEqual(docs[0][k])
    const after = await db.query('select count(*)::int as n from shadow.evaluations')
    expect(after.rows[0]!.n).toBe(before.rows[0]!.n)
  })

  it('NEED_MORE_DATA below the minimum sample size; REJECT for a rule that misses the precision bar', async () => {
    const small = await json([...BURST_VS_STATUS, '--traffic', traffic, '--sample-size', '500', '--no-store'])
    expect(small.doc.recommendation.decision).toBe('NEED_MORE_DATA')
    expect(small.doc.conclusive).toBe(false)
    expect(small.doc.recommendation.reasons[0]).toMatch(/^FAIL sample size 500 < the minimum 1,000/)
    // status >= 401 as the candidate, judged against the rate limit: it blocks benign 404s.
    const r = await json([
      'evaluate',
      '--candidate',
      'status-errors@1',
      '--control',
      'ip-burst@1',
      '--traffic',
      traffic,
      '--min-precision',
      '0.99',
      '--no-store',
    ])
    expect(r.doc.candidate_metrics.precision).toBeLessThan(0.99)
    expect(r.doc.recommendation.decision).toBe('REJECT')
    expect(r.doc.recommendation.risk_level).toBe('high')
  })

  it('--require-approval exits 3 on a verdict short of approval: --json still prints the one document, the refusal on stderr', async () => {
    const gate = [
      ...BURST_VS_STATUS,
      '--traffic',
      traffic,
      '--sample-size',
      '500',
      '--no-store',
      '--require-approval',
    ]
    const j = await cli(['--json', ...gate])
    expect(j.code).toBe(3)
    // Exactly one document on stdout (JSON.parse fails on a second one), with the gate's answer.
    const doc = JSON.parse(j.stdout)
    expect(doc.recommendation.decision).toBe('NEED_MORE_DATA')
    expect(doc.approved).toBe(false)
    expect(j.stderr).toMatch(/not approved \(NEED_MORE_DATA\); --require-approval fails the run/)
    const t = await cli(gate)
    expect(t.code).toBe(3)
    expect(t.stdout).toMatch(/NEED_MORE_DATA/)
    expect(t.stderr).toMatch(/not approved \(NEED_MORE_DATA\)/)
  })

  it('reports an undefined metric as null with a reason, never 0', async () => {
    const file = path.join(dir, 'never.json')
    fs.writeFileSync(
      file,
      JSON.stringify({
        id: 'never',
        version: 1,
        name: 'never blocks',
        type: 'threshold',
        field: 'status',
        op: '>',
        value: 999,
      }),
    )
    expect((await cli(['rules', 'add', file])).code).toBe(0)
    const r = await json([
      'evaluate',
      '--candidate',
      'never',
      '--control',
      'status-errors@1',
      '--traffic',
      traffic,
      '--no-store',
    ])
    expect(r.doc.candidate_metrics.precision).toBeNull()
    expect(r.doc.candidate_metrics.undefined_reasons.precision).toMatch(/\w/)
    expect(r.doc.candidate_metrics.recall).toBe(0)
    expect(r.doc.recommendation.decision).toBe('REJECT')
  })

  it('warns when lines lack a field the rules read, and records how many; says nothing when none do', async () => {
    const events = synthetic(3000, 42).map((e, i) => {
      const { ip: _ip, ...rest } = e as unknown as Record<string, unknown>
      return i % 4 === 0 ? rest : e
    })
    const file = writeTraffic('no-ip.jsonl', events)
    const r = await json([...BURST_VS_STATUS, '--traffic', file, '--no-store'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.doc.traffic.missing_fields).toEqual({ status: 0, ip: 750 })
    expect(r.stderr).toContain(
      'warning: 750 of 3,000 lines (25.00%) have no ip: no rule part that reads it blocks them. Is the traffic export dropping it?',
    )
    const whole = await json([...BURST_VS_STATUS, '--traffic', traffic, '--no-store'])
    expect(whole.doc.traffic.missing_fields).toEqual({ status: 0, ip: 0 })
    expect(whole.stderr).not.toContain('have no')
  })

  it('stops at a bad line with exit 2 naming it; --skip-invalid skips and counts', async () => {
    const lines = synthetic(3000, 8).map((e) => JSON.stringify(e))
    lines[1233] = '{"ts": "yesterday", "label": "attack"}'
    lines[2000] = 'not json'
    const file = path.join(dir, 'bad-lines.jsonl')
    fs.writeFileSync(file, lines.join('\n') + '\n')
    const r = await json([...BURST_VS_STATUS, '--traffic', file])
    expect(r.code).toBe(2)
    expect(r.doc.error.message).toContain('line 1234')
    expect(r.doc.error.message).toContain('"ts"')
    const skipped = await json([...BURST_VS_STATUS, '--traffic', file, '--skip-invalid', '--no-store'])
    expect(skipped.code).toBe(0)
    expect(skipped.doc.traffic.skipped_invalid).toBe(2)
    expect(skipped.doc.sample_size).toBe(2998)
  })

  it('a cut or damaged .gz is bad input (exit 2, the file named), with any --workers, and nothing is stored', async () => {
    const whole = fs.readFileSync(writeTraffic('whole.jsonl.gz', synthetic(20_000, 12), true))
    const cut = path.join(dir, 'cut.jsonl.gz')
    fs.writeFileSync(cut, whole.subarray(0, Math.floor(whole.length / 2)))
    const damaged = path.join(dir, 'damaged.jsonl.gz')
    fs.writeFileSync(damaged, Buffer.concat([whole.subarray(0, 10), Buffer.alloc(4000, 0xa5)]))
    const before = await db.query('select count(*)::int as n from shadow.evaluations')
    for (const file of [cut, damaged]) {
      for (const workers of ['1', '2']) {
        const r = await json([...BURST_VS_STATUS, '--traffic', file, '--workers', workers])
        expect(r.code, `${file} --workers ${workers}: ${r.stdout}`).toBe(2)
        expect(r.doc.error.message).toMatch(/^--traffic: .*\.jsonl\.gz is not a valid gzip file \(/)
      }
    }
    const after = await db.query('select count(*)::int as n from shadow.evaluations')
    expect(after.rows[0]!.n).toBe(before.rows[0]!.n)
  })

  it('refuses a line older than --max-disorder allows, naming it', async () => {
    const events = synthetic(2000, 4)
    events[1500] = { ...events[1500]!, ts: events[1500]!.ts - 120_000 }
    const file = writeTraffic('late.jsonl', events)
    const r = await json([...BURST_VS_STATUS, '--traffic', file])
    expect(r.code).toBe(2)
    expect(r.doc.error.message).toContain('line 1501')
    expect(r.doc.error.message).toContain('--max-disorder')
    const wide = await json([...BURST_VS_STATUS, '--traffic', file, '--max-disorder', '5m', '--no-store'])
    expect(wide.code).toBe(0)
    expect(wide.doc.sample_size).toBe(2000)
  })

  it('--control active uses the deployed version, and says so when there is none', async () => {
    const none = await json(['evaluate', '--candidate', 'ip-burst', '--traffic', traffic])
    expect(none.code).toBe(1)
    expect(none.doc.error.message).toContain('no active version')
    const v2 = path.join(dir, 'ip-burst-2.json')
    fs.writeFileSync(
      v2,
      JSON.stringify({
        id: 'ip-burst',
        version: 2,
        name: 'tighter',
        type: 'rate_limit',
        key: 'ip',
        window_s: 10,
        threshold: 10,
      }),
    )
    expect((await cli(['rules', 'add', v2])).code).toBe(0)
    await db.query(`insert into shadow.rule_deployments (rule_id, active_version) values ('ip-burst', 1)`)
    const r = await json(['evaluate', '--candidate', 'ip-burst', '--traffic', traffic, '--no-store'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.doc.control).toMatchObject({ id: 'ip-burst', version: 1 })
    expect(r.doc.candidate).toMatchObject({ id: 'ip-burst', version: 2 })
    // ip-burst@2 goes to canary, and no stored evaluation approved it (the one above was --no-store):
    // status counts it among the unguarded deployments and fails (exit 4).
    await db.query(
      `update shadow.rule_deployments set canary_version = 2, canary_percent = 5 where rule_id = 'ip-burst'`,
    )
    const status = await json(['status'])
    expect(status.code).toBe(4)
    const check = status.doc.checks.find((c: { name: string }) => c.name === 'unguarded_deployments')
    expect(check.ok).toBe(false)
    expect(check.value).toBeGreaterThanOrEqual(1)
    expect(check.note).toContain('ip-burst@2 (canary)')
  })

  it('bad flags are exit 2 before anything runs', async () => {
    const cases: string[][] = [
      [
        '--candidate',
        'ip-burst',
        '--control',
        'status-errors@1',
        '--traffic',
        path.join(dir, 'missing.jsonl'),
      ],
      ['--candidate', 'ip-burst', '--control', 'status-errors', '--traffic', traffic],
      [
        '--candidate',
        'ip-burst',
        '--control',
        'status-errors@1',
        '--traffic',
        traffic,
        '--confidence',
        '1.5',
      ],
      ['--candidate', 'ip-burst', '--control', 'status-errors@1', '--traffic', traffic, '--fp-cost', '-1'],
      ['--candidate', 'ip-burst@1', '--control', 'ip-burst@1', '--traffic', traffic],
      ['--control', 'status-errors@1', '--traffic', traffic],
    ]
    for (const args of cases) {
      const r = await cli(['evaluate', ...args])
      expect(r.code, args.join(' ')).toBe(2)
      expect(r.stderr).not.toMatch(/\n\s+at /)
    }
    // A list of none is refused, not answered with 'no evaluations stored yet'.
    const none = await cli(['evaluate', 'list', '--limit', '0'])
    expect(none.code).toBe(2)
    expect(none.stderr).toContain('--limit must be a whole number of 1 or more')
    for (const n of ['0', '65']) {
      const r = await cli([...BURST_VS_STATUS, '--traffic', traffic, '--workers', n, '--no-store'])
      expect(r.code, n).toBe(2)
      expect(r.stderr).toContain(`--workers must be from 1 to 64; got ${n}.`)
    }
  })

  it('adds the expected cost per 10,000 requests with --fp-cost/--fn-cost', async () => {
    const r = await json([
      ...BURST_VS_STATUS,
      '--traffic',
      traffic,
      '--fp-cost',
      '5',
      '--fn-cost',
      '50',
      '--no-store',
    ])
    const cost = r.doc.bayes.expected_cost_per_10k
    const m = r.doc.candidate_metrics
    const n = r.doc.sample_size
    expect(cost.candidate).toBeCloseTo((10_000 * (5 * (m.fp + 1) + 50 * (m.fn + 1))) / (n + 4), 3)
    expect(r.doc.recommendation.reasons.some((x: string) => x.includes('expected cost per 10,000'))).toBe(
      true,
    )
  })

  it('shows a readable report with the verdict first', async () => {
    const r = await cli([
      'evaluate',
      '--candidate',
      'layered@1',
      '--control',
      'status-errors@1',
      '--traffic',
      traffic,
      '--no-store',
    ])
    expect(r.code, r.stderr).toBe(0)
    const first = r.stdout.split('\n')[0]!
    expect(first).toMatch(/^(APPROVE_FULL_DEPLOYMENT|APPROVE_CANARY|REJECT|NEED_MORE_DATA) {2}confidence/)
    expect(r.stdout).toContain('precision')
    expect(r.stdout).toContain('McNemar')
    expect(r.stdout).toMatch(/PASS|FAIL/)
  })

  it('draws a progress bar on a terminal', async () => {
    const r = await runCli([...BURST_VS_STATUS, '--traffic', traffic, '--no-store'], {
      env: env(),
      tty: true,
    })
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toMatch(/replaying \[#+\] 100%/)
  })

  it('one Ctrl-C stops a replay waiting on a pipe that sends nothing: exit 130 at once', async () => {
    const fifo = path.join(dir, 'quiet.fifo')
    execFileSync('mkfifo', [fifo])
    const child = execa(process.execPath, [BIN, ...BURST_VS_STATUS, '--traffic', fifo], {
      env: env(),
      extendEnv: false,
      reject: false,
      timeout: 15_000,
    })
    // A writer that sends nothing, like `tail -f` on a quiet log. Its open returns only once a
    // reader has the pipe open: then the command is past its start and waiting for bytes.
    const writer = execa('sh', ['-c', `exec 3>"${fifo}"; echo open; exec sleep 30`], { reject: false })
    await new Promise<void>((resolve) => writer.stdout!.once('data', () => resolve()))
    await new Promise((r) => setTimeout(r, 200))
    const sent = Date.now()
    child.kill('SIGINT')
    const r = await child
    writer.kill()
    expect(r.timedOut).toBe(false)
    expect(r.exitCode).toBe(130)
    expect(Date.now() - sent).toBeLessThan(5000)
  })

  it('one Ctrl-C stops a replay stuck in one line (a pattern backtracking for minutes): exit 130 within seconds', async () => {
    const file = ruleFile('stuck.json', { id: 'stuck-re', ...NESTED_PATTERN })
    expect((await cli(['rules', 'add', file])).code).toBe(0)
    const LINE = { ip: '10.0.0.1', tenant_id: 't', method: 'GET', status: 200, latency_ms: 5 }
    // 34 a's and a mismatch: 2^34 ways to split them, each tried
    const traffic = writeTraffic('stuck.jsonl', [
      { ...LINE, ts: 1_700_000_000_000, path: `${'a'.repeat(34)}!`, label: 'attack' },
      { ...LINE, ts: 1_700_000_000_001, path: '/', label: 'benign' },
    ])
    const child = execa(
      process.execPath,
      [BIN, 'evaluate', '--candidate', 'stuck-re@1', '--control', 'status-errors@1', '--traffic', traffic],
      { env: env(), extendEnv: false, reject: false, timeout: 60_000 },
    )
    let stderr = ''
    child.stderr!.on('data', (d) => {
      stderr += d
    })
    // Past the start and into the line: it holds the replay for minutes, reporting nothing.
    await new Promise((r) => setTimeout(r, 3000))
    const sent = Date.now()
    child.kill('SIGINT')
    const r = await child
    expect(r.timedOut).toBe(false)
    expect(r.exitCode, stderr).toBe(130)
    expect(Date.now() - sent).toBeLessThan(5000)
  })

  it('Ctrl-C mid-replay exits 130, stores nothing and prints no verdict', async () => {
    const big = writeTraffic('big.jsonl', synthetic(400_000, 11))
    const before = (await db.query('select count(*)::int as n from shadow.evaluations')).rows[0]!.n
    const child = execa(process.execPath, [BIN, ...BURST_VS_STATUS, '--traffic', big, '--workers', '2'], {
      env: env(),
      extendEnv: false,
      reject: false,
    })
    let stderr = ''
    child.stderr!.on('data', (d) => {
      stderr += d
    })
    const deadline = Date.now() + 20_000
    while (!stderr.includes('replaying.progress') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20))
    child.kill('SIGINT')
    const r = await child
    expect(r.exitCode).toBe(130)
    expect(String(r.stdout)).not.toMatch(/APPROVE|REJECT|NEED_MORE_DATA/)
    const after = (await db.query('select count(*)::int as n from shadow.evaluations')).rows[0]!.n
    expect(after).toBe(before)
  })
})
