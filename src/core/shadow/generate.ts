/**
 * Synthetic labelled HTTP traffic for the shadow evaluator: realistic enough that no rule is
 * perfect, deterministic (the same events, attack rate and seed give the same bytes), and
 * streamed (memory does not grow with the number of events).
 *
 * The model. Every request belongs to a session of one population (ordinary users, a monitoring
 * client, a heavy API client; bursty bots, slow scanners, credential stuffers). Each population
 * has a target rate (its share of 200 requests/s: attacks get `attackRate` of it) and a spawner
 * that paces its sessions: a session of s requests takes s / rate seconds of the population's
 * budget and starts at a random point inside that slot. Pacing, rather than a Poisson process of
 * sessions, keeps the attack share of any long enough window close to `attackRate` even though a
 * single bot burst is dozens of lines. The live sessions sit in a binary heap keyed on the time of
 * their next request, so the output is the merge of all of them in time order. The simulation
 * starts 15 minutes before the first line (warm-up, discarded) so that long sessions are already
 * running at 00:00:00, as they would be in a real log.
 *
 * Out of order, on purpose: about 0.2 % of lines (LATE_SHARE) are held back and written after
 * lines up to 2 s newer (MAX_LATENESS_MS), as merged load-balancer logs are. Readers must accept
 * that. Everything else is in time order.
 *
 * Hand-written rather than taken from a library: no traffic generator we know of produces labelled
 * security traffic with these populations, and the randomness must come from the one seeded PRNG
 * (random.ts) to be reproducible.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Readable, Transform, type TransformCallback, type Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import { isAlive } from '../db/embedded.js'
import { InterruptedError, OperationError, SafetyError, UsageError } from '../errors.js'
import { type Random, sampleExponential, sampleNormal, seededRandom } from './random.js'

/** The first line's time: 2026-01-01T00:00:00.000Z. */
export const TRAFFIC_START_MS = Date.UTC(2026, 0, 1)
/** Requests per second, all populations together, on average. */
export const TRAFFIC_RATE_PER_S = 200
/** Share of lines written late (out of time order). */
export const LATE_SHARE = 0.002
/** A late line comes after lines at most this much newer than itself (exclusive). */
export const MAX_LATENESS_MS = 2000
/** Simulated before the first line and discarded, so that long sessions are under way at 00:00. */
const WARMUP_MS = 15 * 60_000
/** The controller starts once the populations have ramped up (long sessions take minutes). */
const CONTROL_FROM_MS = -WARMUP_MS + 5 * 60_000
/** Time constant of the attack-share controller. */
const CONTROL_TAU_MS = 5_000
/** The controller moves starts by at most this much. */
const MAX_SHIFT_MS = 60_000

export type TsFormat = 'iso' | 'epoch-ms'
export type TrafficLabel = 'attack' | 'benign'

export interface SyntheticEvent {
  /** Epoch milliseconds (written as ISO-8601 or as the number, see TsFormat). */
  ts: number
  ip: string
  tenant_id: string
  method: string
  path: string
  status: number
  latency_ms: number
  /** Response bytes. */
  bytes: number
  user_agent: string
  label: TrafficLabel
}

export interface GenerateOptions {
  /** How many lines; a positive whole number. */
  events: number
  /** Share of attack lines, in [0, 1]. */
  attackRate: number
  /** A whole number from 0 to 2^32 - 1 (or any string). */
  seed: number | string
  /** Default 'iso'. */
  tsFormat?: TsFormat
}

export interface TrafficSummary {
  events: number
  attacks: number
  benign: number
  /** The earliest and latest ts in the output, in its ts format; null for no events. */
  first_ts: string | number | null
  last_ts: string | number | null
}

// --- populations ----------------------------------------------------------------------------------

const USER = 0
const MONITOR = 1
const API_CLIENT = 2
const BOT = 3
const SCANNER = 4
const STUFFER = 5

/** Share of the benign or the attack rate that each population takes. */
const POPULATIONS: ReadonlyArray<{ kind: number; attack: boolean; share: number }> = [
  { kind: USER, attack: false, share: 0.88 },
  { kind: MONITOR, attack: false, share: 0.04 },
  { kind: API_CLIENT, attack: false, share: 0.08 },
  { kind: BOT, attack: true, share: 0.45 },
  { kind: SCANNER, attack: true, share: 0.15 },
  { kind: STUFFER, attack: true, share: 0.4 },
]

/** Mean requests per session, as init() draws them (the controller's pace depends on it). */
const MEAN_SIZE: Record<number, number> = { [BOT]: 40, [STUFFER]: 3.5 }
const STEERED = [BOT, STUFFER]

/** How many distinct addresses each population draws from (bots: "a few IPs"). */
const POOL = { user: 60_000, monitor: 12, api: 24, bot: 10, scanner: 400, stuffer: 250_000 } as const

const TENANTS = Array.from({ length: 50 }, (_, i) => `tenant-${String(i + 1).padStart(2, '0')}`)

const BROWSERS = [
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
  'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0',
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0',
  'Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1',
  'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36',
]
const MONITOR_AGENTS = [
  'Datadog/Synthetics',
  'UptimeRobot/2.0',
  'kube-probe/1.31',
  'Pingdom.com_bot_version_1.4',
]
const API_AGENTS = ['python-requests/2.32.3', 'shieldx-sdk-go/1.4.2', 'okhttp/4.12.0', 'axios/1.7.7']
const BOT_AGENTS = [
  'python-requests/2.32.3',
  'Go-http-client/1.1',
  'curl/8.5.0',
  'Scrapy/2.11.2 (+https://scrapy.org)',
]
const SCANNER_AGENTS = [
  'Mozilla/5.0 zgrab/0.x',
  'Mozilla/5.0 (compatible; Nuclei - Open-source project (github.com/projectdiscovery/nuclei))',
  'masscan/1.3 (https://github.com/robertdavidgraham/masscan)',
  'Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)',
]

const PAGES = ['/', '/dashboard', '/account', '/settings', '/billing', '/reports', '/notifications', '/docs']
const ASSETS = [
  '/static/app.3f9c2e.js',
  '/static/vendor.b71d04.js',
  '/static/app.3f9c2e.css',
  '/images/logo.svg',
  '/fonts/inter.woff2',
  '/favicon.ico',
]
/** Mistyped URLs: benign 404s. */
const TYPOS = [
  '/dashbord',
  '/acount',
  '/setings',
  '/reprts',
  '/billling',
  '/loign',
  '/api/v1/itmes',
  '/docs/',
]
const WORDS = [
  'invoice',
  'firewall',
  'report',
  'export',
  'alerts',
  'tokens',
  'usage',
  'billing',
  'sso',
  'audit',
]
const MONITOR_PATHS = ['/health', '/healthz', '/api/v1/status']
/** What scanners probe; the status is the one a hardened site answers. */
const PROBES: ReadonlyArray<readonly [string, string, number]> = [
  ['GET', '/.env', 404],
  ['GET', '/.env.production', 404],
  ['GET', '/.git/config', 403],
  ['GET', '/.git/HEAD', 403],
  ['GET', '/wp-login.php', 404],
  ['GET', '/wp-admin/', 404],
  ['POST', '/xmlrpc.php', 404],
  ['GET', '/admin', 403],
  ['GET', '/administrator/', 404],
  ['GET', '/phpmyadmin/', 404],
  ['GET', '/config.php', 404],
  ['GET', '/config.json', 404],
  ['GET', '/server-status', 403],
  ['GET', '/.aws/credentials', 404],
  ['GET', '/.DS_Store', 404],
  ['GET', '/backup.zip', 404],
  ['GET', '/db.sql', 404],
  ['GET', '/actuator/env', 404],
  ['GET', '/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php', 404],
  ['GET', '/cgi-bin/luci/;stok=/locale', 404],
  ['GET', '/solr/admin/info/system', 404],
  ['GET', '/.svn/entries', 404],
  ['GET', '/phpinfo.php', 404],
  ['GET', '/owa/auth/logon.aspx', 404],
  ['HEAD', '/', 200],
  ['GET', '/robots.txt', 200],
  ['GET', '/login', 200],
]
/** First octets of the addresses we make up: public unicast, no private or reserved ranges. */
const FIRST_OCTETS = Array.from({ length: 223 }, (_, i) => i + 1).filter(
  (a) => ![10, 100, 127, 169, 172, 192, 198, 203].includes(a),
)

// Lines are built by concatenation without escaping: every string we write must be JSON-safe.
for (const s of [...TENANTS, ...BROWSERS, ...MONITOR_AGENTS, ...API_AGENTS, ...BOT_AGENTS, ...SCANNER_AGENTS])
  if (!/^[\x20-\x7e]*$/.test(s) || /["\\]/.test(s)) throw new Error(`not JSON-safe: ${s}`)

/** Tenants are Zipf-ish: a few big ones, a long tail. */
const TENANT_CUMULATIVE = (() => {
  const w = TENANTS.map((_, i) => 1 / Math.pow(i + 1, 0.8))
  const total = w.reduce((a, b) => a + b, 0)
  let acc = 0
  return w.map((x) => (acc += x / total))
})()

function tenantAt(u: number): string {
  let i = 0
  while (i < TENANT_CUMULATIVE.length - 1 && TENANT_CUMULATIVE[i]! <= u) i++
  return TENANTS[i]!
}

function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d)
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b)
  return (x ^ (x >>> 16)) >>> 0
}

/** A stable address for member `index` of a pool: the same user comes back from the same IP. */
function addressOf(salt: number, pool: number, index: number): string {
  const h1 = mix32((salt ^ Math.imul(pool + 1, 0x9e3779b9)) + index)
  const h2 = mix32(h1 ^ 0x5bd1e995)
  return `${FIRST_OCTETS[h1 % FIRST_OCTETS.length]}.${(h1 >>> 8) & 255}.${(h1 >>> 16) & 255}.${1 + (h2 % 254)}`
}

const lognormal = (rng: Random, median: number, sigma: number) => median * Math.exp(sigma * sampleNormal(rng))
const intBetween = (rng: Random, lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1))
const pick = <T>(rng: Random, items: readonly T[]): T => items[Math.floor(rng() * items.length)]!
const ms = (x: number) => Math.max(1, Math.round(x))

/** One session: one client, one population, a fixed number of requests. */
class Session {
  /** Time of the next request, ms since TRAFFIC_START_MS (negative during warm-up). */
  t = 0
  ip = ''
  tenant = ''
  agent = ''
  /** users: assets still to load for this page; monitor: poll period; bot: next item id. */
  n = 0
  /** monitor: the polled path; stuffer: the login endpoint. */
  path = ''
  constructor(
    readonly kind: number,
    /** Requests still to make. */
    public remaining: number,
  ) {}
}

interface Spawner {
  kind: number
  /** Requests per ms. */
  rate: number
  /** Requests committed so far (sum of the sizes of the sessions it made). */
  budget: number
  /** The next session, not started yet: its t is its start. */
  next: Session
  /** Its starts follow the attack-share controller (short attack sessions only). */
  steered: boolean
}

/**
 * The generator itself: next() returns the lines' events in output order. The event it returns is
 * reused by the following call; copy it to keep it.
 */
export class TrafficModel {
  readonly summary: TrafficSummary & { first: number; last: number }
  private readonly rng: Random
  private readonly salt: number
  private readonly heap: Session[] = []
  private readonly spawners: Spawner[] = []
  /** The spawner whose next session starts first. */
  private due: Spawner | undefined
  /** Late lines, sorted by the time they are released. */
  private readonly held: Array<{ release: number; event: SyntheticEvent }> = []
  private readonly ev: SyntheticEvent = {
    ts: 0,
    ip: '',
    tenant_id: '',
    method: '',
    path: '',
    status: 0,
    latency_ms: 0,
    bytes: 0,
    user_agent: '',
    label: 'benign',
  }
  private produced = 0
  /** Requests made since CONTROL_FROM_MS, and how many of them were attacks: the controller's input. */
  private made = 0
  private madeAttacks = 0
  /** The controller's shift of the steered spawners' starts (ms), and when it last moved. */
  private shift = 0
  private shiftAt = CONTROL_FROM_MS
  /** ms * excess attack lines per ms of shift: sets the controller's time constant. */
  private readonly gain: number

  constructor(readonly options: GenerateOptions) {
    assertOptions(options)
    this.rng = seededRandom(options.seed)
    this.salt = Math.floor(this.rng() * 0x100000000)
    this.summary = { events: 0, attacks: 0, benign: 0, first_ts: null, last_ts: null, first: 0, last: 0 }
    const total = TRAFFIC_RATE_PER_S / 1000
    const r = options.attackRate
    let steeredRate = 0
    let tau = CONTROL_TAU_MS
    for (const p of POPULATIONS) {
      const rate = total * p.share * (p.attack ? r : 1 - r)
      if (rate <= 0) continue
      const steered = r < 1 && STEERED.includes(p.kind)
      if (steered) {
        steeredRate += rate
        tau = Math.max(tau, 2 * (MEAN_SIZE[p.kind]! / rate))
      }
      this.spawners.push({ kind: p.kind, rate, budget: 0, next: new Session(p.kind, 0), steered })
    }
    // One ms of shift moves the attack excess by about (1 - r) * steeredRate lines: correct an
    // excess over tau, longer than the steered sessions last and than the gaps between them
    // (rare at a low attack rate), so that the correction does not overshoot and ring.
    this.gain = tau * (1 - r) * steeredRate
    for (const s of this.spawners) {
      this.schedule(s)
      if (!this.due || s.next.t < this.due.next.t) this.due = s
    }
    while (this.nextTime() < 0) this.step()
  }

  next(): SyntheticEvent | null {
    for (;;) {
      const h = this.held[0]
      if (h && (this.produced >= this.options.events || h.release <= TRAFFIC_START_MS + this.nextTime())) {
        this.held.shift()
        return this.count(h.event)
      }
      if (this.produced >= this.options.events) return null
      const e = this.step()
      this.produced++
      if (this.rng() < LATE_SHARE) {
        const release = e.ts + 1 + Math.floor(this.rng() * MAX_LATENESS_MS)
        let i = this.held.length
        while (i > 0 && this.held[i - 1]!.release > release) i--
        this.held.splice(i, 0, { release, event: { ...e } })
        continue
      }
      return this.count(e)
    }
  }

  private count(e: SyntheticEvent): SyntheticEvent {
    const s = this.summary
    if (s.events === 0 || e.ts < s.first) s.first = e.ts
    if (s.events === 0 || e.ts > s.last) s.last = e.ts
    s.events++
    if (e.label === 'attack') s.attacks++
    else s.benign++
    return e
  }

  /** When the next request happens (ms since the start). */
  private nextTime(): number {
    const top = this.heap[0]
    return top && top.t < this.due!.next.t ? top.t : this.due!.next.t
  }

  /** Start due sessions, then make the earliest request. */
  private step(): SyntheticEvent {
    let due = this.due!
    while (this.heap.length === 0 || due.next.t <= this.heap[0]!.t) {
      this.push(due.next)
      due.next = new Session(due.kind, 0)
      this.schedule(due)
      for (const sp of this.spawners) if (sp.next.t < due.next.t) due = sp
      this.due = due
    }
    const s = this.heap[0]!
    const delay = this.request(s, this.ev)
    if (s.t >= CONTROL_FROM_MS) {
      this.made++
      if (this.ev.label === 'attack') this.madeAttacks++
    }
    if (--s.remaining > 0) {
      s.t += delay
      this.siftDown(0)
    } else {
      const last = this.heap.pop()!
      if (this.heap.length > 0) {
        this.heap[0] = last
        this.siftDown(0)
      }
    }
    return this.ev
  }

  /**
   * Draw the spawner's next session and its start, at a random point of its slot of the budget.
   * Pacing alone leaves the attack share of a 10,000-line window a point or so off (a session that
   * straddles the window's edge counts in part); so the starts of the short attack sessions (bot
   * bursts, credential stuffing) also follow a slow integral controller on the attack excess of
   * everything made so far. It only moves them in time: sizes and behaviour are untouched.
   */
  private schedule(sp: Spawner): void {
    const s = sp.next
    this.init(s)
    const slotStart = sp.budget / sp.rate
    sp.budget += s.remaining
    s.t = -WARMUP_MS + slotStart + this.rng() * (s.remaining / sp.rate)
    const now = this.heap.length > 0 ? this.heap[0]!.t : -WARMUP_MS
    if (sp.steered && now >= CONTROL_FROM_MS) {
      const excess = this.madeAttacks - this.options.attackRate * this.made
      this.shift += (excess * Math.max(0, now - this.shiftAt)) / this.gain
      this.shift = Math.max(-MAX_SHIFT_MS, Math.min(MAX_SHIFT_MS, this.shift))
      this.shiftAt = Math.max(this.shiftAt, now)
      s.t = Math.max(now, s.t + this.shift)
    }
  }

  // --- the populations ------------------------------------------------------------------------

  private init(s: Session): void {
    const rng = this.rng
    const salt = this.salt
    switch (s.kind) {
      case USER: {
        // A returning user: the same address, tenant and browser each time.
        const who = Math.floor(rng() * POOL.user)
        const h = mix32(salt ^ Math.imul(who, 0x27d4eb2d))
        s.ip = addressOf(salt, USER, who)
        s.tenant = tenantAt((h & 0xffff) / 0x10000)
        s.agent = BROWSERS[(h >>> 16) % BROWSERS.length]!
        s.remaining = Math.min(300, Math.max(1, Math.round(lognormal(rng, 10, 0.8))))
        s.n = -1 // first request: maybe a login, then the first page with all its assets
        break
      }
      case MONITOR: {
        const who = Math.floor(rng() * POOL.monitor)
        s.ip = addressOf(salt, MONITOR, who)
        s.tenant = tenantAt(mix32(salt + who) / 0x100000000)
        s.agent = MONITOR_AGENTS[who % MONITOR_AGENTS.length]!
        s.path = pick(rng, MONITOR_PATHS)
        s.n = pick(rng, [250, 1000, 2000, 5000])
        s.remaining = intBetween(rng, 20, 120)
        break
      }
      case API_CLIENT: {
        const who = Math.floor(rng() * POOL.api)
        s.ip = addressOf(salt, API_CLIENT, who)
        s.tenant = tenantAt(mix32(salt + 7 * who) / 0x100000000)
        s.agent = API_AGENTS[who % API_AGENTS.length]!
        s.remaining = intBetween(rng, 20, 120)
        break
      }
      case BOT: {
        // A burst: dozens of requests within a few seconds from one of a few addresses.
        const who = Math.floor(rng() * POOL.bot)
        s.ip = addressOf(salt, BOT, who)
        s.tenant = tenantAt(rng())
        s.agent = who % 4 === 3 ? BROWSERS[who % BROWSERS.length]! : BOT_AGENTS[who % BOT_AGENTS.length]!
        s.remaining = intBetween(rng, 20, 60)
        s.n = intBetween(rng, 1, 40_000)
        break
      }
      case SCANNER: {
        const who = Math.floor(rng() * POOL.scanner)
        s.ip = addressOf(salt, SCANNER, who)
        s.tenant = TENANTS[Math.floor(rng() * TENANTS.length)]!
        s.agent =
          who % 5 === 4 ? BROWSERS[who % BROWSERS.length]! : SCANNER_AGENTS[who % SCANNER_AGENTS.length]!
        s.remaining = intBetween(rng, 8, 40)
        break
      }
      default: {
        // Credential stuffing: a fresh residential proxy per session, a browser's user agent.
        s.ip = addressOf(salt, STUFFER, Math.floor(rng() * POOL.stuffer))
        s.tenant = tenantAt(rng() * 0.5)
        s.agent = pick(rng, BROWSERS)
        s.path = rng() < 0.6 ? '/login' : '/api/v1/auth'
        s.remaining = intBetween(rng, 1, 6)
      }
    }
  }

  /** Fill `e` with the session's next request; returns the delay to the one after it (ms). */
  private request(s: Session, e: SyntheticEvent): number {
    const rng = this.rng
    e.ts = TRAFFIC_START_MS + Math.floor(s.t)
    e.ip = s.ip
    e.tenant_id = s.tenant
    e.user_agent = s.agent
    switch (s.kind) {
      case USER:
        e.label = 'benign'
        return this.user(s, e, rng)
      case MONITOR:
        e.label = 'benign'
        e.method = 'GET'
        e.path = s.path
        e.status = rng() < 0.995 ? 200 : 503
        e.latency_ms = ms(lognormal(rng, 8, 0.3))
        e.bytes = e.status === 200 ? 64 : 19
        return s.n * (0.95 + 0.1 * rng())
      case API_CLIENT: {
        // A batch client: heavy, slow requests, several in flight, a few per second.
        e.label = 'benign'
        const r = rng()
        if (r < 0.5) {
          e.method = 'GET'
          e.path = `/api/v1/export?from=2025-12-01&page=${intBetween(rng, 1, 400)}`
        } else if (r < 0.8) {
          e.method = 'GET'
          e.path = `/api/v1/reports/${intBetween(rng, 1000, 9999)}`
        } else {
          e.method = 'POST'
          e.path = '/api/v1/batch'
        }
        const x = rng()
        e.status = x < 0.97 ? (e.method === 'POST' ? 202 : 200) : x < 0.99 ? 429 : 504
        e.latency_ms = ms(lognormal(rng, 1500, 0.6))
        e.bytes = e.status < 300 ? ms(lognormal(rng, 250_000, 1)) : 120
        return lognormal(rng, 700, 0.6)
      }
      case BOT: {
        e.label = 'attack'
        const r = rng()
        if (r < 0.6) {
          e.method = 'GET'
          e.path = `/api/v1/items/${s.n++}`
        } else if (r < 0.85) {
          e.method = 'GET'
          e.path = `/products/${intBetween(rng, 1, 40_000)}`
        } else {
          e.method = 'GET'
          e.path = `/search?q=${pick(rng, WORDS)}&page=${intBetween(rng, 1, 50)}`
        }
        const x = rng()
        e.status = x < 0.8 ? 200 : x < 0.9 ? 404 : 429
        e.latency_ms = ms(lognormal(rng, e.status === 200 ? 35 : 6, 0.5))
        e.bytes = e.status === 200 ? ms(lognormal(rng, 3000, 0.8)) : 150
        return sampleExponential(rng, 80)
      }
      case SCANNER: {
        // Slow: one probe every few seconds, mostly paths no real user asks for.
        e.label = 'attack'
        const [method, p, status] = pick(rng, PROBES)
        e.method = method
        e.path = p
        e.status = status
        e.latency_ms = ms(lognormal(rng, status === 200 ? 40 : 9, 0.5))
        e.bytes = status === 200 ? ms(lognormal(rng, 4000, 0.5)) : status === 403 ? 162 : 153
        return lognormal(rng, 6000, 0.8)
      }
      default: {
        e.label = 'attack'
        e.method = 'POST'
        e.path = s.path
        const x = rng()
        e.status = x < 0.9 ? 401 : x < 0.96 ? 200 : 429
        e.latency_ms = ms(lognormal(rng, 180, 0.3))
        e.bytes = e.status === 200 ? 412 : 87
        return lognormal(rng, 3000, 0.6)
      }
    }
  }

  /** A person in a browser: pages with their assets, think time between pages, some mistakes. */
  private user(s: Session, e: SyntheticEvent, rng: Random): number {
    if (s.n === -1 && rng() < 0.3) {
      // Logging in; now and then with a mistyped password (a benign 401 on /login).
      s.n = 4
      e.method = 'POST'
      e.path = '/login'
      e.status = rng() < 0.92 ? 200 : 401
      e.latency_ms = ms(lognormal(rng, 180, 0.3))
      e.bytes = e.status === 200 ? 412 : 87
      return e.status === 200 ? lognormal(rng, 300, 0.5) : lognormal(rng, 4000, 0.5)
    }
    if (s.n > 0) {
      s.n--
      e.method = 'GET'
      e.path = ASSETS[s.n % ASSETS.length]!
      const cached = rng() < 0.5
      e.status = cached ? 304 : 200
      e.latency_ms = ms(lognormal(rng, cached ? 4 : 12, 0.5))
      e.bytes = cached ? 0 : ms(lognormal(rng, 40_000, 0.8))
      return s.n > 0 ? lognormal(rng, 30, 0.6) : lognormal(rng, 5000, 1)
    }
    const first = s.n === -1
    s.n = first ? intBetween(rng, 3, 5) : rng() < 0.35 ? intBetween(rng, 1, 3) : 0
    const r = rng()
    e.method = 'GET'
    e.status = 200
    if (r < 0.025) {
      e.path = pick(rng, TYPOS)
      e.status = 404
      s.n = 0
    } else if (r < 0.03) {
      // The tenant's own admin page: benign, and exactly what a scanner rule on /admin matches.
      e.path = '/admin'
      e.status = rng() < 0.7 ? 200 : 403
    } else if (r < 0.45) {
      e.path = first ? '/' : pick(rng, PAGES)
      if (e.path === '/') e.status = 302
    } else if (r < 0.6) {
      e.path = `/search?q=${pick(rng, WORDS)}`
    } else if (r < 0.85) {
      e.path = `/api/v1/items/${intBetween(rng, 1, 40_000)}`
      s.n = 0
    } else if (r < 0.92) {
      e.path = '/api/v1/items'
      s.n = 0
    } else if (r < 0.96) {
      e.method = 'POST'
      e.path = '/api/v1/items'
      e.status = 201
      s.n = 0
    } else {
      e.method = 'PUT'
      e.path = `/api/v1/items/${intBetween(rng, 1, 40_000)}`
      s.n = 0
    }
    if (e.status < 400 && rng() < 0.003) e.status = 500
    const api = e.path.startsWith('/api/')
    e.latency_ms = ms(
      e.status === 404
        ? lognormal(rng, 8, 0.5)
        : e.status === 500
          ? lognormal(rng, 900, 0.8)
          : lognormal(rng, api ? 60 : 90, 0.6),
    )
    e.bytes = e.status === 302 ? 0 : e.status >= 400 ? 150 : ms(lognormal(rng, api ? 2500 : 14_000, 0.7))
    return s.n > 0 ? lognormal(rng, 40, 0.6) : lognormal(rng, 5000, 1)
  }

  // --- the heap (by next-request time) ----------------------------------------------------------

  private push(s: Session): void {
    const h = this.heap
    let i = h.length
    h.push(s)
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (h[parent]!.t <= s.t) break
      h[i] = h[parent]!
      i = parent
    }
    h[i] = s
  }

  private siftDown(i: number): void {
    const h = this.heap
    const n = h.length
    const s = h[i]!
    for (;;) {
      let c = 2 * i + 1
      if (c >= n) break
      if (c + 1 < n && h[c + 1]!.t < h[c]!.t) c++
      if (h[c]!.t >= s.t) break
      h[i] = h[c]!
      i = c
    }
    h[i] = s
  }
}

function assertOptions(o: GenerateOptions): void {
  if (!Number.isSafeInteger(o.events) || o.events < 1)
    throw new UsageError(`events must be a positive whole number; got ${o.events}.`)
  if (!(o.attackRate >= 0 && o.attackRate <= 1))
    throw new UsageError(`attack rate must be between 0 and 1; got ${o.attackRate}.`)
  if (typeof o.seed === 'number' && !(Number.isInteger(o.seed) && o.seed >= 0 && o.seed <= 0xffffffff))
    throw new UsageError(`seed must be a whole number from 0 to 4294967295; got ${o.seed}.`)
}

/** The events in output order (copies: safe to keep). For tests and in-process consumers. */
export function* trafficEvents(options: GenerateOptions): Generator<SyntheticEvent> {
  const model = new TrafficModel(options)
  for (let e = model.next(); e; e = model.next()) yield { ...e }
}

// --- serialisation ----------------------------------------------------------------------------------

/** ISO-8601 with milliseconds; the date part is cached per second (lines come in time order). */
function isoFormatter(): (ms: number) => string {
  let second = NaN
  let prefix = ''
  return (t) => {
    const s = Math.floor(t / 1000)
    if (s !== second) {
      second = s
      prefix = new Date(s * 1000).toISOString().slice(0, 20)
    }
    const r = t - s * 1000
    return prefix + (r < 10 ? '00' : r < 100 ? '0' : '') + r + 'Z'
  }
}

const CHUNK_BYTES = 1 << 16
/** Far more than the longest line (about 400 bytes). */
const MAX_LINE_BYTES = 2048

/** JSON lines of the generated traffic; `summary` is complete once the stream has ended. */
export class TrafficStream extends Readable {
  private readonly model: TrafficModel
  private readonly iso: ((ms: number) => string) | null

  constructor(options: GenerateOptions) {
    super()
    this.model = new TrafficModel(options)
    this.iso = (options.tsFormat ?? 'iso') === 'iso' ? isoFormatter() : null
  }

  /** Lines generated so far. */
  get events(): number {
    return this.model.summary.events
  }

  get summary(): TrafficSummary {
    const { first, last, ...s } = this.model.summary
    const fmt = (t: number) => (this.iso ? new Date(t).toISOString() : t)
    return s.events === 0 ? s : { ...s, first_ts: fmt(first), last_ts: fmt(last) }
  }

  override _read(): void {
    const model = this.model
    const iso = this.iso
    // About 64 KiB per push: large enough to be cheap, small enough to stop promptly on abort.
    // Lines are ASCII, written one by one into the buffer as latin1 (cheaper than a long string).
    const chunk = Buffer.allocUnsafe(CHUNK_BYTES + MAX_LINE_BYTES)
    let used = 0
    while (used < CHUNK_BYTES) {
      const e = model.next()
      if (!e) {
        if (used > 0) this.push(chunk.subarray(0, used))
        this.push(null)
        return
      }
      const ts = iso ? `"${iso(e.ts)}"` : e.ts
      used += chunk.write(
        `{"ts":${ts},"ip":"${e.ip}","tenant_id":"${e.tenant_id}","method":"${e.method}","path":"${e.path}","status":${e.status},"latency_ms":${e.latency_ms},"bytes":${e.bytes},"user_agent":"${e.user_agent}","label":"${e.label}"}\n`,
        used,
        'latin1',
      )
    }
    this.push(chunk.subarray(0, used))
  }
}

/** A Readable of the traffic as JSON lines (uncompressed). */
export function generateTraffic(options: GenerateOptions): TrafficStream {
  return new TrafficStream(options)
}

// --- writing ----------------------------------------------------------------------------------------

export interface WriteTrafficOptions extends GenerateOptions {
  /** A file path (written to a temp file beside it, then renamed) or a stream (not ended). */
  out: string | Writable
  /** Gzip the output. Default: when `out` is a path ending in .gz. */
  gzip?: boolean
  /** Replace an existing file. */
  force?: boolean
  signal?: AbortSignal
  /** Called now and then with the number of events written so far. */
  onProgress?: (events: number) => void
}

export interface WriteTrafficResult extends TrafficSummary {
  /** The absolute path written, or '-' for a stream. */
  out: string
  gzip: boolean
  /** Bytes written (compressed when gzip). */
  bytes: number
  /** SHA-256 of the bytes written. */
  sha256: string
  duration_ms: number
  /** False when the reader of a stream went away first (`--out - | head`): the counts are of what was generated. */
  complete: boolean
}

/**
 * Check that `out` can be written (a regular file in an existing, writable directory, absent unless
 * `force`), before anything is generated. Devices and FIFOs (/dev/null) are written in place.
 */
export function checkTrafficTarget(out: string, force = false): { file: string; direct: boolean } {
  const file = path.resolve(out)
  const dir = path.dirname(file)
  let st: fs.Stats | undefined
  try {
    st = fs.statSync(file)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOTDIR') throw new UsageError(`--out: ${dir} is not a directory.`)
    if (code !== 'ENOENT') throw new UsageError(`--out: cannot use ${file} (${code}).`)
  }
  if (st?.isDirectory()) throw new UsageError(`--out must name a file, and ${file} is a directory.`)
  if (st && !st.isFile()) return { file, direct: true }
  if (st && !force)
    throw new SafetyError(`${file} already exists; pass --force to replace it.`, { code: 'EXISTS' })
  let dst: fs.Stats
  try {
    dst = fs.statSync(dir)
  } catch {
    throw new UsageError(`--out: the directory ${dir} does not exist.`)
  }
  if (!dst.isDirectory()) throw new UsageError(`--out: ${dir} is not a directory.`)
  try {
    fs.accessSync(dir, fs.constants.W_OK)
  } catch {
    throw new UsageError(`--out: the directory ${dir} is not writable.`)
  }
  return { file, direct: false }
}

/** Generate and write: to a temp file renamed at the end (so a killed run leaves no half file). */
export async function writeTraffic(options: WriteTrafficOptions): Promise<WriteTrafficResult> {
  const started = Date.now()
  const toFile = typeof options.out === 'string'
  const target = typeof options.out === 'string' ? checkTrafficTarget(options.out, options.force) : null
  const gzip = options.gzip ?? (typeof options.out === 'string' && options.out.endsWith('.gz'))
  const source = generateTraffic(options)
  const partial = target && !target.direct ? `${target.file}.${process.pid}.partial` : null
  if (target && partial) removeAbandonedPartials(target.file)

  const hash = createHash('sha256')
  let bytes = 0
  let complete = true
  let reported = 0
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      hash.update(chunk)
      bytes += chunk.length
      if (source.events - reported >= 50_000) {
        reported = source.events
        options.onProgress?.(reported)
      }
      cb(null, chunk)
    },
  })
  const stages: Array<NodeJS.ReadableStream | NodeJS.WritableStream | NodeJS.ReadWriteStream> = [source]
  // Level 1: per million events 1.6 s and 30 MB, where zlib's default (6) takes 6 s for 22.5 MB and
  // would be the bottleneck. Runs on libuv's thread pool, beside the generator.
  if (gzip) stages.push(zlib.createGzip({ level: 1, chunkSize: 1 << 16 }))
  stages.push(tap)
  try {
    if (toFile) {
      const dest = fs.createWriteStream(partial ?? target!.file, partial ? { flags: 'wx' } : { flags: 'w' })
      await pipeline([...stages, dest], options.signal ? { signal: options.signal } : {})
      if (partial) fs.renameSync(partial, target!.file)
    } else {
      await pipeline([...stages, options.out as Writable], {
        end: false,
        ...(options.signal ? { signal: options.signal } : {}),
      })
    }
  } catch (err) {
    if (partial) fs.rmSync(partial, { force: true })
    // A reader that went away (`--out - | head`) just ends the run, as with any Unix filter.
    const code = (err as NodeJS.ErrnoException).code
    if (toFile || options.signal?.aborted || (code !== 'EPIPE' && code !== 'ERR_STREAM_DESTROYED'))
      throw describeWriteError(err, options, target?.file ?? '-')
    complete = false
  }
  options.onProgress?.(source.summary.events)
  return {
    out: target ? target.file : '-',
    ...source.summary,
    gzip,
    bytes,
    sha256: hash.digest('hex'),
    duration_ms: Date.now() - started,
    complete,
  }
}

/** `FILE.<pid>.partial` left by a run that was killed outright (SIGKILL): its pid is dead. */
function removeAbandonedPartials(file: string): void {
  const dir = path.dirname(file)
  const prefix = path.basename(file) + '.'
  for (const f of fs.readdirSync(dir)) {
    if (!f.startsWith(prefix)) continue
    const m = /^(\d+)\.partial$/.exec(f.slice(prefix.length))
    if (m && !isAlive(Number(m[1]))) fs.rmSync(path.join(dir, f), { force: true })
  }
}

function describeWriteError(err: unknown, options: WriteTrafficOptions, file: string): unknown {
  const code = (err as NodeJS.ErrnoException).code
  if (options.signal?.aborted || code === 'ABORT_ERR')
    return new InterruptedError('Interrupted; the partial traffic file was removed.')
  if (code === 'ENOSPC')
    return new OperationError(`The disk holding ${file} is full; the partial file was removed.`, {
      code: 'DISK_FULL',
    })
  if (code === 'EACCES' || code === 'EROFS' || code === 'EPERM')
    return new OperationError(
      `Cannot write ${file}: ${code === 'EROFS' ? 'read-only filesystem' : 'permission denied'}.`,
    )
  return err
}
