/**
 * `shieldx traffic generate`: deterministic, labelled, every population present, the attack share
 * and the out-of-order share as documented, gzip and stdout, safe writes (no overwrite without
 * --force, nothing left by bad flags or a killed run), and flat memory.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  LATE_SHARE,
  MAX_LATENESS_MS,
  type SyntheticEvent,
  TRAFFIC_START_MS,
  trafficEvents,
} from '../src/core/shadow/generate.js'
import { parseTrafficLine } from '../src/core/shadow/traffic.js'
import { BIN, ROOT, runCli } from './helpers/cli.js'
import { cleanEnv } from './helpers/env.js'

const made: string[] = []
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-traffic-'))
  made.push(d)
  return d
}
afterAll(() => {
  for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

const gen = (...args: string[]) => runCli(['traffic', 'generate', ...args])

/** An event as written (ts as ISO-8601, the default). */
type Line = Omit<SyntheticEvent, 'ts'> & { ts: string }

const lines = (text: string) => text.split('\n').filter((l) => l.length > 0)

describe('20,000 events, attack rate 0.2, seed 11', () => {
  let dir: string
  let file: string
  let text: string
  let events: Line[]

  beforeAll(async () => {
    dir = tempDir()
    file = path.join(dir, 't.jsonl')
    const r = await gen('--events', '20000', '--attack-rate', '0.2', '--seed', '11', '--out', file)
    expect(r.code, r.stderr).toBe(0)
    text = fs.readFileSync(file, 'utf8')
    events = lines(text).map((l) => JSON.parse(l) as Line)
  })

  it('is byte-identical for the same arguments and differs for another seed', async () => {
    const again = path.join(dir, 'again.jsonl')
    const other = path.join(dir, 'other.jsonl')
    expect(
      (await gen('--events', '20000', '--attack-rate', '0.2', '--seed', '11', '--out', again)).code,
    ).toBe(0)
    expect(
      (await gen('--events', '20000', '--attack-rate', '0.2', '--seed', '12', '--out', other)).code,
    ).toBe(0)
    expect(fs.readFileSync(again).equals(fs.readFileSync(file))).toBe(true)
    const otherText = fs.readFileSync(other, 'utf8')
    expect(otherText).not.toBe(text)
    // Not just shifted: the first lines differ too.
    expect(lines(otherText).slice(0, 10)).not.toEqual(lines(text).slice(0, 10))
  })

  it('writes exactly N lines, each valid for the evaluator, with the documented fields and types', () => {
    expect(text.endsWith('\n')).toBe(true)
    const raw = lines(text)
    expect(raw).toHaveLength(20_000)
    const methods = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE'])
    for (const [i, l] of raw.entries()) {
      const parsed = parseTrafficLine(l)
      expect(parsed.ok, `line ${i + 1}: ${l}`).toBe(true)
      const e = events[i]!
      expect(Object.keys(e)).toEqual([
        'ts',
        'ip',
        'tenant_id',
        'method',
        'path',
        'status',
        'latency_ms',
        'bytes',
        'user_agent',
        'label',
      ])
      expect(e.ts).toMatch(/^2026-01-01T\d{2}:\d{2}:\d{2}\.\d{3}Z$/)
      expect(new Date(e.ts).toISOString()).toBe(e.ts)
      expect(e.ip).toMatch(/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/)
      expect(e.ip.split('.').every((o) => Number(o) <= 255)).toBe(true)
      expect(e.tenant_id).toMatch(/^tenant-\d{2}$/)
      expect(methods.has(e.method)).toBe(true)
      expect(e.path.startsWith('/')).toBe(true)
      expect(Number.isInteger(e.status) && e.status >= 100 && e.status <= 599).toBe(true)
      expect(Number.isInteger(e.latency_ms) && e.latency_ms >= 1).toBe(true)
      expect(Number.isInteger(e.bytes) && e.bytes >= 0).toBe(true)
      expect(e.user_agent.length).toBeGreaterThan(0)
      expect(['attack', 'benign']).toContain(e.label)
    }
    expect(events[0]!.ts.startsWith('2026-01-01T00:00:00.')).toBe(true)
    expect(new Set(events.map((e) => e.tenant_id)).size).toBeGreaterThanOrEqual(45)
    // About 200 requests a second: 20,000 lines span about 100 s.
    const span = (Date.parse(events.at(-1)!.ts) - TRAFFIC_START_MS) / 1000
    expect(span).toBeGreaterThan(80)
    expect(span).toBeLessThan(125)
  })

  it('has the attack share asked for, within one percentage point', () => {
    const attacks = events.filter((e) => e.label === 'attack').length
    expect(Math.abs(attacks / events.length - 0.2)).toBeLessThan(0.01)
  })

  it('has bursty bots: an IP with at least 20 attack requests within 10 s', () => {
    expect(busiestWindow(events.filter((e) => e.label === 'attack')).count).toBeGreaterThanOrEqual(20)
  })

  it('has slow scanners probing sensitive paths with 404/403, each address at a low rate', () => {
    const probes = events.filter(
      (e) => e.label === 'attack' && /^\/(\.env|wp-login\.php|\.git\/config|admin)$/.test(e.path),
    )
    expect(new Set(probes.map((e) => e.path))).toEqual(
      new Set(['/.env', '/wp-login.php', '/.git/config', '/admin']),
    )
    expect(probes.every((e) => e.status === 404 || e.status === 403)).toBe(true)
    const scannerIps = new Set(probes.map((e) => e.ip))
    expect(scannerIps.size).toBeGreaterThanOrEqual(10)
    // Slow: no scanner address comes near a rate limit of 20 in 10 s.
    expect(busiestWindow(events.filter((e) => scannerIps.has(e.ip))).count).toBeLessThan(15)
  })

  it('has credential stuffing: POSTs to /login and /api/v1/auth from many addresses, mostly 401, some 200', () => {
    const stuffing = events.filter(
      (e) =>
        e.label === 'attack' && e.method === 'POST' && (e.path === '/login' || e.path === '/api/v1/auth'),
    )
    expect(stuffing.length).toBeGreaterThan(500)
    expect(new Set(stuffing.map((e) => e.path))).toEqual(new Set(['/login', '/api/v1/auth']))
    const s401 = stuffing.filter((e) => e.status === 401).length
    expect(s401 / stuffing.length).toBeGreaterThan(0.8)
    expect(stuffing.some((e) => e.status === 200)).toBe(true)
    // Rotating addresses, each at a modest rate.
    expect(new Set(stuffing.map((e) => e.ip)).size).toBeGreaterThan(stuffing.length / 6)
  })

  it('has benign look-alikes, so that no rule is perfect', () => {
    const benign = events.filter((e) => e.label === 'benign')
    // Fast pollers and busy API clients: what a rate limit on ip also catches.
    expect(busiestWindow(benign).count).toBeGreaterThan(20)
    // Mistyped URLs; the tenant's own /admin; failed logins; slow heavy API calls.
    expect(benign.filter((e) => e.status === 404).length).toBeGreaterThan(50)
    expect(benign.some((e) => e.path === '/admin')).toBe(true)
    expect(benign.some((e) => e.method === 'POST' && e.path === '/login' && e.status === 401)).toBe(true)
    expect(benign.filter((e) => e.latency_ms > 1000).length).toBeGreaterThan(100)
    // Ordinary users: mostly GET, mostly 2xx/3xx.
    const ok = benign.filter((e) => e.status < 400).length
    expect(ok / benign.length).toBeGreaterThan(0.9)
    expect(benign.filter((e) => e.method === 'GET').length / benign.length).toBeGreaterThan(0.8)
  })

  it('writes about 0.2% of lines late, by less than 2 s, and every other line in time order', () => {
    let newest = -Infinity
    let late = 0
    let worst = 0
    for (const e of events) {
      const t = Date.parse(e.ts)
      if (t < newest) {
        late++
        worst = Math.max(worst, newest - t)
      } else newest = t
    }
    expect(LATE_SHARE).toBe(0.002)
    expect(late / events.length).toBeGreaterThan(0.001)
    expect(late / events.length).toBeLessThan(0.0035)
    expect(worst).toBeLessThan(MAX_LATENESS_MS)
    expect(worst).toBeGreaterThan(500)
  })

  it('gzips FILE.gz to the same lines, and --out - writes the same lines to stdout', async () => {
    const gz = path.join(dir, 't.jsonl.gz')
    const r = await gen('--events', '20000', '--attack-rate', '0.2', '--seed', '11', '--out', gz, '--json')
    expect(r.code, r.stderr).toBe(0)
    const packed = fs.readFileSync(gz)
    expect(packed.subarray(0, 2).toString('hex')).toBe('1f8b')
    expect(zlib.gunzipSync(packed).toString('utf8')).toBe(text)
    const doc = JSON.parse(r.stdout)
    expect(doc).toEqual({
      out: gz,
      events: 20_000,
      attacks: events.filter((e) => e.label === 'attack').length,
      benign: events.filter((e) => e.label === 'benign').length,
      first_ts: events.map((e) => e.ts).sort()[0],
      last_ts: events
        .map((e) => e.ts)
        .sort()
        .at(-1),
      bytes: packed.length,
      sha256: createHash('sha256').update(packed).digest('hex'),
    })
    expect(r.stderr).toMatch(/generated 20,000 events in [\d.]+ s: [\d,]+ events\/s/)

    const out = await gen('--events', '20000', '--attack-rate', '0.2', '--seed', '11', '--out', '-')
    expect(out.code, out.stderr).toBe(0)
    expect(out.stdout).toBe(text)
    expect(out.stderr).toContain('Wrote 20,000 events')
  })

  it('--ts-format epoch-ms writes the same events with ts as epoch milliseconds', async () => {
    const f = path.join(dir, 'epoch.jsonl')
    const r = await gen(
      '--events',
      '20000',
      '--attack-rate',
      '0.2',
      '--seed',
      '11',
      '--ts-format',
      'epoch-ms',
      '--out',
      f,
    )
    expect(r.code, r.stderr).toBe(0)
    const epoch = lines(fs.readFileSync(f, 'utf8')).map(
      (l) => JSON.parse(l) as Omit<Line, 'ts'> & { ts: number },
    )
    expect(epoch).toHaveLength(events.length)
    for (const [i, e] of epoch.entries()) {
      expect(Number.isInteger(e.ts)).toBe(true)
      expect({ ...e, ts: new Date(e.ts).toISOString() }).toEqual(events[i])
    }
  })
})

describe('the attack share', () => {
  it('is within one percentage point for 10,000 and 20,000 events, across rates and seeds', () => {
    for (const [events, attackRate, seed] of [
      [10_000, 0.05, 1],
      [10_000, 0.5, 2],
      [10_000, 0.9, 3],
      [20_000, 0.01, 4],
      [20_000, 0.35, 5],
      [20_000, 0.7, 6],
    ] as const) {
      let attacks = 0
      let n = 0
      for (const e of trafficEvents({ events, attackRate, seed })) {
        n++
        if (e.label === 'attack') attacks++
      }
      expect(n).toBe(events)
      expect(Math.abs(attacks / n - attackRate), `${events} events, rate ${attackRate}`).toBeLessThan(0.01)
    }
  })

  it('is exactly 0 or 1 at the ends', () => {
    const labels = (attackRate: number) =>
      new Set([...trafficEvents({ events: 3000, attackRate, seed: 9 })].map((e) => e.label))
    expect(labels(0)).toEqual(new Set(['benign']))
    expect(labels(1)).toEqual(new Set(['attack']))
  })
})

describe('fixtures/traffic', () => {
  it('small.jsonl and small.jsonl.gz are what the README says regenerates them', async () => {
    const dir = tempDir()
    const plain = path.join(dir, 'small.jsonl')
    const gz = path.join(dir, 'small.jsonl.gz')
    for (const out of [plain, gz]) {
      const r = await gen('--events', '2000', '--attack-rate', '0.2', '--seed', '7', '--out', out)
      expect(r.code, r.stderr).toBe(0)
    }
    const fixture = fs.readFileSync(path.join(ROOT, 'fixtures/traffic/small.jsonl'))
    expect(fs.readFileSync(plain).equals(fixture)).toBe(true)
    // Compared unpacked: gzip's bytes may change with the zlib that Node bundles.
    const fixtureGz = fs.readFileSync(path.join(ROOT, 'fixtures/traffic/small.jsonl.gz'))
    expect(zlib.gunzipSync(fixtureGz).equals(fixture)).toBe(true)
    expect(zlib.gunzipSync(fs.readFileSync(gz)).equals(fixture)).toBe(true)
    expect(lines(fixture.toString('utf8'))).toHaveLength(2000)
  })
})

describe('writing safely', () => {
  it('refuses to replace an existing file (exit 3) and replaces it with --force', async () => {
    const dir = tempDir()
    const file = path.join(dir, 'existing.jsonl')
    fs.writeFileSync(file, 'precious\n')
    const r = await gen('--events', '100', '--out', file)
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/already exists; pass --force/)
    expect(fs.readFileSync(file, 'utf8')).toBe('precious\n')
    expect(fs.readdirSync(dir)).toEqual(['existing.jsonl'])

    const forced = await gen('--events', '100', '--out', file, '--force')
    expect(forced.code, forced.stderr).toBe(0)
    expect(lines(fs.readFileSync(file, 'utf8'))).toHaveLength(100)
    expect(fs.readdirSync(dir)).toEqual(['existing.jsonl'])
  })

  it.each([
    [['--events', '0'], /--events must be a positive whole number; got "0"/],
    [['--events', '-5'], /--events/],
    [['--events', '1.5'], /--events must be a positive whole number; got "1.5"/],
    [['--events', 'lots'], /--events must be a positive whole number/],
    [
      ['--events', '10', '--attack-rate', '1.5'],
      /--attack-rate must be a number from 0 to 1 \(e.g. 0.2\); got "1.5"/,
    ],
    [['--events', '10', '--attack-rate', '-0.1'], /--attack-rate/],
    [['--events', '10', '--attack-rate', 'half'], /--attack-rate must be a number from 0 to 1/],
    [['--events', '10', '--seed', '-1'], /--seed/],
    [['--events', '10', '--seed', 'x'], /--seed must be a whole number from 0 to 4294967295; got "x"/],
    [['--events', '10', '--seed', '4294967296'], /--seed must be a whole number from 0 to 4294967295/],
    [['--events', '10', '--ts-format', 'unix'], /--ts-format/],
    [['--attack-rate', '0.2'], /--events/],
  ])('%j is exit 2 naming the flag, and writes nothing', async (args, message) => {
    const dir = tempDir()
    const r = await gen(...args, '--out', path.join(dir, 'bad.jsonl'))
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(message)
    expect(r.stderr).not.toMatch(/\n\s+at /) // no stack trace
    expect(fs.readdirSync(dir)).toEqual([])
  })

  it('an unwritable --out is exit 2 naming --out, and writes nothing', async () => {
    const dir = tempDir()
    const missing = await gen('--events', '10', '--out', path.join(dir, 'no/such/dir/t.jsonl'))
    expect(missing.code).toBe(2)
    expect(missing.stderr).toMatch(/--out: the directory .* does not exist/)
    fs.writeFileSync(path.join(dir, 'a-file'), '')
    const underFile = await gen('--events', '10', '--out', path.join(dir, 'a-file', 't.jsonl'))
    expect(underFile.code).toBe(2)
    expect(underFile.stderr).toMatch(/--out: .* is not a directory/)
    const isDir = await gen('--events', '10', '--out', dir)
    expect(isDir.code).toBe(2)
    expect(isDir.stderr).toMatch(/--out must name a file/)
    const noOut = await gen('--events', '10')
    expect(noOut.code).toBe(2)
    expect(noOut.stderr).toMatch(/--out/)
    const both = await gen('--events', '10', '--out', '-', '--json')
    expect(both.code).toBe(2)
    expect(JSON.parse(both.stdout)).toMatchObject({ ok: false, error: { code: 'USAGE', exit_code: 2 } })
    expect(fs.readdirSync(dir)).toEqual(['a-file'])
  })

  it('a run killed with SIGTERM exits 130 and leaves neither FILE nor its temp file', async () => {
    const dir = tempDir()
    const file = path.join(dir, 'big.jsonl')
    const child = execa(
      process.execPath,
      [BIN, 'traffic', 'generate', '--events', '2000000', '--out', file],
      {
        env: cleanEnv({ SHIELDX_HOME: dir }),
        extendEnv: false,
        reject: false,
      },
    )
    // Wait until it is writing its temp file, then stop it.
    const deadline = Date.now() + 20_000
    let partial: string | undefined
    while (!partial && Date.now() < deadline) {
      partial = fs
        .readdirSync(dir)
        .find((f) => f.endsWith('.partial') && fs.statSync(path.join(dir, f)).size > 0)
      if (!partial) await new Promise((r) => setTimeout(r, 20))
    }
    expect(partial, 'the temp file beside FILE').toMatch(/^big\.jsonl\.\d+\.partial$/)
    child.kill('SIGTERM')
    const r = await child
    expect(r.exitCode, String(r.stderr)).toBe(130)
    expect(String(r.stderr)).toContain('Interrupted')
    expect(fs.readdirSync(dir).filter((f) => f.startsWith('big.jsonl'))).toEqual([])
  })

  it('a temp file left by a run that was killed outright (SIGKILL) is removed by the next run', async () => {
    const dir = tempDir()
    const file = path.join(dir, 't.jsonl')
    // A pid that is not alive: the largest a Linux pid can be, plus one.
    fs.writeFileSync(`${file}.4194305.partial`, 'half a line')
    const r = await gen('--events', '10', '--out', file)
    expect(r.code, r.stderr).toBe(0)
    expect(fs.readdirSync(dir)).toEqual(['t.jsonl'])
  })
})

describe('memory', () => {
  it('stays flat: 1,000,000 events to /dev/null under 150 MB of peak RSS', async () => {
    // Peak RSS of the CLI process itself, printed as it exits.
    const report = `data:text/javascript,process.on('exit',()=>process.stderr.write('maxrss_kb='+process.resourceUsage().maxRSS+'\\n'))`
    const r = await execa(
      process.execPath,
      ['--import', report, BIN, 'traffic', 'generate', '--events', '1000000', '--out', '/dev/null'],
      { env: cleanEnv({ SHIELDX_HOME: tempDir() }), extendEnv: false, reject: false, timeout: 120_000 },
    )
    expect(r.exitCode, String(r.stderr)).toBe(0)
    const kb = Number(/maxrss_kb=(\d+)/.exec(String(r.stderr))?.[1])
    expect(kb).toBeGreaterThan(10_000) // measured at all
    expect(kb / 1024).toBeLessThan(150)
    expect(String(r.stderr)).toMatch(/generated 1,000,000 events/)
  }, 120_000)
})

/** The most requests one IP makes within any 10 s, over the given events. */
function busiestWindow(events: Line[]): { ip: string; count: number } {
  const byIp = new Map<string, number[]>()
  for (const e of events) {
    const list = byIp.get(e.ip) ?? []
    list.push(Date.parse(e.ts))
    byIp.set(e.ip, list)
  }
  let best = { ip: '', count: 0 }
  for (const [ip, ts] of byIp) {
    ts.sort((a, b) => a - b)
    let from = 0
    for (let i = 0; i < ts.length; i++) {
      while (ts[i]! - ts[from]! >= 10_000) from++
      if (i - from + 1 > best.count) best = { ip, count: i - from + 1 }
    }
  }
  return best
}
