/**
 * `credits apply`: many operations from JSON lines, one result each, in input order. Operations
 * run in chunks of one transaction each, set-based (applySet): the chunk's accounts are locked
 * and its keys read in one round trip, every operation is decided in order against the locked
 * rows here (a refused one writes nothing and fails alone), and all the chunk's rows are written
 * by one statement, so the round trips, the commit and its fsync are paid once per chunk.
 * Chunks run on several connections at once ("lanes"); a tenant always goes to the same lane (a
 * commit or cancel to its reservation's tenant's), so its operations apply in file order. Results
 * are put back in input order before they are printed.
 *
 * A line without an idempotency key gets one derived from its input's batch (the file's SHA-256,
 * or --batch), its line number and its content: running the same file again after a crash replays
 * what was applied instead of applying it twice, and another file is another batch, however alike
 * its lines (an hourly usage file's first line is often the last hour's). Standard input has no
 * identity of its own: there, such a line needs --batch.
 */
import { createHash } from 'node:crypto'
import type pg from 'pg'
import { isConnectionError } from '../db/pg-errors.js'
import { withRetry } from '../db/retry.js'
import { UsageError } from '../errors.js'
import {
  applySet,
  isRetryableSetError,
  type LedgerKeys,
  type LedgerRequest,
  type PrintedResult,
  printedResult,
} from './operations.js'
import * as v from './validate.js'

export interface ApplyLineResult {
  line: number
  ok: boolean
  result?: PrintedResult
  error?: { code: string; message: string }
}

export interface ApplySummary {
  lines: number
  applied: number
  replayed: number
  failed: number
}

interface ParsedLine {
  line: number
  request?: LedgerRequest
  key?: string
  error?: { code: string; message: string }
}

/** The fields each kind of line takes. */
const FIELDS: Record<string, readonly string[]> = {
  topup: ['op', 'tenant', 'amount', 'description', 'idempotency_key'],
  consume: ['op', 'tenant', 'amount', 'description', 'idempotency_key'],
  reserve: ['op', 'tenant', 'amount', 'description', 'ttl', 'idempotency_key'],
  commit: ['op', 'reservation', 'amount', 'idempotency_key'],
  cancel: ['op', 'reservation', 'idempotency_key'],
}

/**
 * The first field of a JSON object's top level that is named again, in `text` that JSON.parse has
 * accepted (so strings end and brackets match). `keys`: how many fields JSON.parse kept, when known:
 * as many names in the text means none is repeated, which a count finds without reading a name.
 */
export function repeatedField(text: string, keys?: number): string | undefined {
  if (keys !== undefined && topLevelNames(text, null) === keys) return undefined
  const seen = new Set<string>()
  let twice: string | undefined
  topLevelNames(text, (name) => {
    if (seen.has(name)) twice ??= name
    seen.add(name)
  })
  return twice
}

/** How many names the object in `text` gives at its top level; each, decoded, to `each`. */
function topLevelNames(text: string, each: ((name: string) => void) | null): number {
  let names = 0
  let depth = 0
  let nameNext = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c === 0x22) {
      const start = i
      for (i++; text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c) i++
      if (depth === 1 && nameNext) {
        names++
        each?.(JSON.parse(text.slice(start, i + 1)) as string)
        nameNext = false
      }
    } else if (c === 0x7b || c === 0x5b) {
      depth++
      nameNext = depth === 1
    } else if (c === 0x7d || c === 0x5d) depth--
    else if (c === 0x2c && depth === 1) nameNext = true
  }
  return names
}

/** One JSON object per line: {"op":"consume","tenant":"acme","amount":5,"idempotency_key":"k1"} */
export function parseOperation(text: string, line: number, batch: () => string | null): ParsedLine {
  try {
    let raw: Record<string, unknown>
    try {
      raw = JSON.parse(text) as Record<string, unknown>
    } catch {
      throw new UsageError(`line ${line} is not valid JSON.`)
    }
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
      throw new UsageError(`line ${line} must be a JSON object.`)
    const at = (field: string) => `line ${line}: ${field}`
    // JSON.parse keeps the last of two same-named fields: {"amount":5,...,"amount":500} would
    // charge 500 of a line that also says 5.
    const twice = repeatedField(text, Object.keys(raw).length)
    if (twice !== undefined)
      throw new UsageError(`${at(v.shown(twice))} is given twice; give each field once.`)
    const fields = typeof raw.op === 'string' && Object.hasOwn(FIELDS, raw.op) ? FIELDS[raw.op] : undefined
    if (fields) {
      // A misspelt field is not dropped: "idempotency_kye" would have been charged under a derived
      // key, and "descripton" lost from the audit trail.
      const unknown = Object.keys(raw).find((f) => !fields.includes(f))
      if (unknown !== undefined)
        throw new UsageError(
          `${at(v.shown(unknown))} is not a field of a ${raw.op as string} line; it takes ${fields.join(', ')}.`,
        )
      // A number as JSON has it: "7" is a string, where a whole number of credits is asked for.
      if (typeof raw.amount === 'string')
        throw new UsageError(
          `${at('amount')} must be a JSON number, not a string; got ${v.shown(raw.amount)}.`,
        )
    }
    let request: LedgerRequest
    switch (raw.op) {
      case 'topup':
      case 'consume':
      case 'reserve': {
        const common = {
          tenantId: v.tenantId(raw.tenant, at('tenant')),
          amount: v.amount(raw.amount, at('amount')),
          description: v.description(raw.description, at('description')),
        }
        request =
          raw.op === 'reserve'
            ? { kind: 'reserve', ...common, ttlMs: v.ttl(raw.ttl ?? '15m', at('ttl')) }
            : { kind: raw.op, ...common }
        break
      }
      case 'commit':
        request = {
          kind: 'commit',
          reservationId: v.reservationId(raw.reservation, at('reservation')),
          amount: raw.amount === undefined || raw.amount === null ? null : v.amount(raw.amount, at('amount')),
        }
        break
      case 'cancel':
        request = { kind: 'cancel', reservationId: v.reservationId(raw.reservation, at('reservation')) }
        break
      default:
        throw new UsageError(
          raw.op === undefined
            ? `line ${line} has no op; it must be one of topup, consume, reserve, commit, cancel.`
            : `${at('op')} must be one of topup, consume, reserve, commit, cancel; got ${JSON.stringify(raw.op)}.`,
        )
    }
    let key: string
    if (raw.idempotency_key === undefined) {
      const b = batch()
      if (b === null) {
        throw new UsageError(
          `line ${line} has no idempotency_key, and standard input has no name to derive one from: pass --batch ID (the same ID again replays the batch), or give each line its own key.`,
        )
      }
      key = `apply:${b}:${line}:${createHash('sha256').update(text).digest('hex').slice(0, 32)}`
    } else key = v.idempotencyKey(raw.idempotency_key, at('idempotency_key'))
    return { line, request, key }
  } catch (err) {
    if (err instanceof UsageError) return { line, error: { code: 'USAGE', message: err.message } }
    throw err
  }
}

/** Lines per lane handed out at a time (--chunk-size): see applyLines for what a transaction holds. */
export const DEFAULT_CHUNK_SIZE = 500
/** How long the input may be quiet before the lines read so far are applied. */
export const DEFAULT_IDLE_MS = 100
/**
 * How long a line may wait to be applied while input keeps coming: a steady trickle (100 lines a
 * second) is never quiet for 100 ms, and would otherwise wait for 2,000 lines.
 */
const MAX_WAIT_MS = 1000

export async function applyLines(
  pool: pg.Pool,
  lines: AsyncIterable<string>,
  keys: LedgerKeys,
  options: {
    chunkSize?: number
    lanes?: number
    /** Called with the results that became printable, in input order (a batch per call). */
    onResults: (r: ApplyLineResult[]) => void
    /**
     * Counted into as results go to onResults (a new one if not given): the caller has the counts
     * however the run ends, thrown errors included.
     */
    summary?: ApplySummary
    signal?: AbortSignal
    /** The input's name in the keys derived for lines without one (null: such lines are refused). */
    batch?: () => string | null
    /** Lines read are applied once the input has been quiet this long (DEFAULT_IDLE_MS; 0: never). */
    idleMs?: number
    /**
     * Called once a failure (a lost database) means no more lines will be applied: closes the
     * input, so that a quiet pipe does not hold the failure back until its next line.
     */
    stopReading?: () => void
  },
): Promise<ApplySummary> {
  // 500: 100,000 consumes over 1,000 tenants on four lanes ran at 14.8k-18.4k ops/s against
  // 11.8k-12.8k with 200, interleaved (1,000: 14.8k-17.9k). The lanes get chunkSize x lanes lines
  // at a time and each lane's share is one transaction: chunkSize on average, all of them when
  // one tenant has them (2,000, about half a second of its lock). A retry redoes a transaction
  // whole: no larger.
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE
  const batch = options.batch ?? (() => null)
  const laneCount = Math.max(1, options.lanes ?? 1)
  /** Lines read and not yet printed, at most: then reading waits for the lanes to catch up. */
  const maxPending = 3 * chunkSize * laneCount
  const summary: ApplySummary = options.summary ?? { lines: 0, applied: 0, replayed: 0, failed: 0 }
  /** Results go out through here, and only here: counted as they go. */
  const deliver = (results: ApplyLineResult[]) => {
    if (results.length === 0) return
    for (const r of results) {
      summary.lines++
      if (!r.ok) summary.failed++
      else if (r.result?.replayed) summary.replayed++
      else summary.applied++
    }
    options.onResults(results)
  }

  // Results wait here until every line before theirs has been printed.
  const done = new Map<number, ApplyLineResult>()
  const order: number[] = []
  let next = 0
  const emitReady = () => {
    const batch: ApplyLineResult[] = []
    while (next < order.length && done.has(order[next]!)) {
      const r = done.get(order[next]!)!
      done.delete(order[next]!)
      next++
      batch.push(r)
    }
    deliver(batch)
    if (next > 4096 && next * 2 > order.length) {
      order.splice(0, next)
      next = 0
    }
  }

  // Each lane applies its chunks one after another (a tenant's operations stay in file order),
  // while the other lanes and the reading of the next lines go on: no lane waits for another.
  const state: { failure: { error: unknown } | null } = { failure: null }
  let wake: (() => void) | null = null
  const fail = (err: unknown) => {
    if (state.failure) return
    state.failure = { error: err }
    options.stopReading?.()
    wake?.()
  }
  const lanes = Array.from({ length: laneCount }, () => ({
    buffer: [] as ParsedLine[],
    tail: Promise.resolve(),
  }))
  /** Chunks handed to the lanes and not yet finished. */
  let inFlight = 0
  const submit = (lane: (typeof lanes)[number]) => {
    const chunk = lane.buffer
    lane.buffer = []
    inFlight++
    lane.tail = lane.tail.then(async () => {
      try {
        // After Ctrl-C or a failure, chunks still queued behind a lane's transaction are not applied.
        if (!state.failure && !options.signal?.aborted)
          for (const r of await runChunk(pool, chunk, keys)) done.set(r.line, r)
        emitReady()
      } catch (err) {
        fail(err)
      } finally {
        inFlight--
        wake?.()
      }
    })
  }
  /** The lines read since the last hand-out, in file order. */
  let readAhead: ParsedLine[] = []
  /**
   * Every lane gets its lines read ahead, in file order. A commit or cancel names a
   * reservation, not a tenant: its tenant is looked up first, so that it goes to its tenant's lane
   * and keeps its place among that tenant's operations.
   */
  const handOut = async () => {
    // Taken first: lines read while the reservations are looked up wait for the next hand-out.
    const taken = readAhead
    readAhead = []
    const reservationIds = taken.flatMap((p) =>
      p.request && !('tenantId' in p.request) ? [p.request.reservationId] : [],
    )
    const tenantOf = reservationIds.length > 0 ? await reservationTenants(pool, reservationIds) : null
    if (state.failure || options.signal?.aborted) return
    for (const p of taken) {
      if (!p.request) continue
      const tenant =
        'tenantId' in p.request
          ? p.request.tenantId
          : (tenantOf?.get(p.request.reservationId) ?? p.request.reservationId)
      lanes[laneOf(tenant, laneCount)]!.buffer.push(p)
    }
    for (const lane of lanes) if (lane.buffer.length > 0) submit(lane)
  }
  /** Hand-outs one after another, whoever asks: the loop below, or the input going quiet. */
  let handing = Promise.resolve()
  const flush = () => (handing = handing.then(handOut))

  // A pipe that sends a few lines and then waits (a service streaming its usage) has them applied
  // once it has been quiet for idleMs, or a second after the first of them came, not when 2,000
  // lines have come or the pipe closes.
  const idleMs = options.idleMs ?? DEFAULT_IDLE_MS
  let lastRead = 0
  /** When the oldest line read ahead was read. */
  let firstReadAhead = 0
  /** The loop waits for the lanes, not for input: that is not the input going quiet. */
  let catchingUp = false
  let idleTimer: NodeJS.Timeout | null = null
  const onIdle = () => {
    idleTimer = null
    if (readAhead.length === 0 || state.failure || options.signal?.aborted) return
    const now = performance.now()
    // Waiting for the lanes is not the input going quiet, and they have work meanwhile.
    const quiet = catchingUp ? 0 : now - lastRead
    const waited = catchingUp ? 0 : now - firstReadAhead
    if (quiet < idleMs && waited < MAX_WAIT_MS) {
      idleTimer = setTimeout(onIdle, Math.min(idleMs - quiet, MAX_WAIT_MS - waited))
      return
    }
    flush().catch(fail)
  }

  const wakeOnAbort = () => wake?.()
  options.signal?.addEventListener('abort', wakeOnAbort, { once: true })
  let n = 0
  try {
    for await (const raw of lines) {
      n++
      // A byte-order mark (an editor on Windows) is not part of the first line's JSON.
      const text = n === 1 && raw.charCodeAt(0) === 0xfeff ? raw.slice(1) : raw
      if (text.trim() === '') continue
      if (options.signal?.aborted || state.failure) break
      const p = parseOperation(text, n, batch)
      order.push(n)
      if (!p.request) done.set(n, { line: n, ok: false, error: p.error! })
      else {
        lastRead = performance.now()
        if (readAhead.length === 0) firstReadAhead = lastRead
        readAhead.push(p)
        if (idleTimer === null && idleMs > 0) idleTimer = setTimeout(onIdle, idleMs)
      }
      // Every chunkSize x lanes lines, the lanes get theirs (as the flush did, without waiting).
      if (readAhead.length >= chunkSize * laneCount) await flush()
      emitReady()
      if (order.length - next > maxPending) {
        catchingUp = true
        while (order.length - next > maxPending && !state.failure && !options.signal?.aborted) {
          // Refused lines wait to be printed behind the valid ones before them: with no lane at
          // work, those are all still read ahead, and only a hand-out moves anything.
          if (inFlight === 0 && readAhead.length > 0) {
            await flush()
            continue
          }
          await new Promise<void>((resolve) => (wake = resolve))
          wake = null
        }
        catchingUp = false
        lastRead = performance.now()
      }
    }
  } catch (err) {
    // The input failed (a read error, a file gone): what was read ahead is not applied, and
    // nothing is left running when this returns.
    fail(err)
  } finally {
    // The reading is over (ended, failed or interrupted): the timer hands nothing out any more.
    if (idleTimer !== null) clearTimeout(idleTimer)
    options.signal?.removeEventListener('abort', wakeOnAbort)
  }
  // Interrupted: what was read and not yet handed out is not applied (nor printed).
  if (!state.failure && !options.signal?.aborted) await flush().catch(fail)
  await handing.catch(() => {})
  await Promise.all(lanes.map((l) => l.tail))
  emitReady()
  if (state.failure || options.signal?.aborted) {
    // Stopped: lanes run side by side, so an operation may have committed after an earlier line
    // that never will. Every result there is still goes out (in input order, with gaps): no
    // committed operation goes unreported.
    const rest = [...done.keys()].sort((a, b) => a - b).map((line) => done.get(line)!)
    done.clear()
    deliver(rest)
  }
  if (state.failure) throw state.failure.error
  return summary
}

/** The tenants of existing reservations (a plain read: a reservation never changes tenant). */
async function reservationTenants(pool: pg.Pool, ids: string[]): Promise<Map<string, string>> {
  const { rows } = await pool.query<{ id: string; tenant_id: string }>(
    'select id::text as id, tenant_id from credits.reservations where id = any($1::uuid[])',
    [ids],
  )
  return new Map(rows.map((r) => [r.id, r.tenant_id]))
}

/** The lane of a tenant: one tenant's operations stay in order on one connection. */
function laneOf(tenant: string, lanes: number): number {
  if (lanes === 1) return 0
  let h = 0
  for (let i = 0; i < tenant.length; i++) h = (h * 31 + tenant.charCodeAt(i)) | 0
  return Math.abs(h) % lanes
}

/** One transaction for the chunk; retried whole if the connection drops (keys make that a replay). */
async function runChunk(pool: pg.Pool, chunk: ParsedLine[], keys: LedgerKeys): Promise<ApplyLineResult[]> {
  const valid = chunk.filter((p) => p.request)
  return withRetry(
    async () => {
      const client = await pool.connect()
      let failed: unknown
      try {
        const outcomes =
          valid.length > 0
            ? await applySet(
                client,
                valid.map((p) => ({ req: p.request!, key: p.key! })),
                keys,
                { transaction: 'open' },
              )
            : []
        if (valid.length > 0) await client.query('COMMIT')
        let next = 0
        return chunk.map((p): ApplyLineResult => {
          if (!p.request) return { line: p.line, ok: false, error: p.error! }
          const o = outcomes[next++]!
          if (!o.ok)
            return { line: p.line, ok: false, error: { code: o.error.code, message: o.error.message } }
          return { line: p.line, ok: true, result: printedResult(o.result) }
        })
      } catch (err) {
        failed = err
        if (!isConnectionError(err)) await client.query('ROLLBACK').catch(() => {})
        throw err
      } finally {
        client.release(isConnectionError(failed) ? (failed as Error) : undefined)
      }
    },
    { maxAttempts: 6, retryIf: isRetryableSetError },
  )
}
