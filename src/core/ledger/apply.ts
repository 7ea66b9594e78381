/**
 * `credits apply`: many operations from JSON lines, one result each, in input order. Operations
 * run in chunks of one transaction each, set-based (applySet): the chunk's accounts are locked
 * and its keys read in one round trip, every operation is decided in order against the locked
 * rows here (a refused one writes nothing and fails alone), and all the chunk's rows are written
 * by one statement, so the round trips, the commit and its fsync are paid once per chunk.
 * Chunks run on several connections at once ("lanes"); a tenant always goes to the same lane, so
 * its operations apply in file order. Results are put back in input order before they are printed.
 *
 * A line without an idempotency key gets one derived from its line number and content: running
 * the same file again after a crash replays what was applied instead of applying it twice.
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
  type LedgerResult,
} from './operations.js'
import * as v from './validate.js'

export interface ApplyLineResult {
  line: number
  ok: boolean
  result?: Omit<LedgerResult, 'version'>
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

/** One JSON object per line: {"op":"consume","tenant":"acme","amount":5,"idempotency_key":"k1"} */
export function parseOperation(text: string, line: number): ParsedLine {
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
    let request: LedgerRequest
    switch (raw.op) {
      case 'topup':
      case 'consume':
      case 'reserve': {
        const common = {
          tenantId: v.tenantId(raw.tenant, at('tenant')),
          amount: v.amount(raw.amount, at('amount')),
          description: v.description(raw.description),
        }
        request =
          raw.op === 'reserve'
            ? { kind: 'reserve', ...common, ttlMs: v.ttl(raw.ttl ?? '15m') }
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
          `${at('op')} must be one of topup, consume, reserve, commit, cancel; got ${JSON.stringify(raw.op)}.`,
        )
    }
    const key =
      raw.idempotency_key === undefined
        ? `apply:${line}:${createHash('sha256').update(text).digest('hex').slice(0, 32)}`
        : v.idempotencyKey(raw.idempotency_key)
    return { line, request, key }
  } catch (err) {
    if (err instanceof UsageError) return { line, error: { code: 'USAGE', message: err.message } }
    throw err
  }
}

export async function applyLines(
  pool: pg.Pool,
  lines: AsyncIterable<string>,
  keys: LedgerKeys,
  options: {
    chunkSize?: number
    lanes?: number
    /** Called with the results that became printable, in input order (a batch per call). */
    onResults: (r: ApplyLineResult[]) => void
    signal?: AbortSignal
  },
): Promise<ApplySummary> {
  const chunkSize = options.chunkSize ?? 200
  const laneCount = Math.max(1, options.lanes ?? 1)
  /** Lines read and not yet printed, at most: then reading waits for the lanes to catch up. */
  const maxPending = 3 * chunkSize * laneCount
  const summary: ApplySummary = { lines: 0, applied: 0, replayed: 0, failed: 0 }

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
      summary.lines++
      if (!r.ok) summary.failed++
      else if (r.result?.replayed) summary.replayed++
      else summary.applied++
      batch.push(r)
    }
    if (batch.length > 0) options.onResults(batch)
    if (next > 4096 && next * 2 > order.length) {
      order.splice(0, next)
      next = 0
    }
  }

  // Each lane applies its chunks one after another (a tenant's operations stay in file order),
  // while the other lanes and the reading of the next lines go on: no lane waits for another.
  const state: { failure: { error: unknown } | null } = { failure: null }
  let wake: (() => void) | null = null
  const lanes = Array.from({ length: laneCount }, () => ({
    buffer: [] as ParsedLine[],
    tail: Promise.resolve(),
  }))
  const submit = (lane: (typeof lanes)[number]) => {
    const chunk = lane.buffer
    lane.buffer = []
    lane.tail = lane.tail.then(async () => {
      try {
        if (!state.failure) for (const r of await runChunk(pool, chunk, keys)) done.set(r.line, r)
        emitReady()
      } catch (err) {
        state.failure ??= { error: err }
      } finally {
        wake?.()
      }
    })
  }
  const submitAll = () => {
    for (const lane of lanes) if (lane.buffer.length > 0) submit(lane)
  }

  let n = 0
  let sinceSubmit = 0
  for await (const text of lines) {
    n++
    if (text.trim() === '') continue
    if (options.signal?.aborted || state.failure) break
    const p = parseOperation(text, n)
    order.push(n)
    if (!p.request) done.set(n, { line: n, ok: false, error: p.error! })
    else lanes[laneOf(p, laneCount)]!.buffer.push(p)
    // Every chunkSize x lanes lines, every lane's lines so far go (as the flush did): no line waits
    // long behind a lane that fills slowly.
    if (++sinceSubmit >= chunkSize * laneCount) {
      sinceSubmit = 0
      submitAll()
    }
    emitReady()
    while (order.length - next > maxPending && !state.failure) {
      await new Promise<void>((resolve) => (wake = resolve))
      wake = null
    }
  }
  submitAll()
  await Promise.all(lanes.map((l) => l.tail))
  if (state.failure) throw state.failure.error
  emitReady()
  return summary
}

/** The lane of a line: by tenant, so one tenant's operations stay in order on one connection. */
function laneOf(p: ParsedLine, lanes: number): number {
  if (lanes === 1 || !p.request) return 0
  const key = 'tenantId' in p.request ? p.request.tenantId : p.request.reservationId
  let h = 0
  for (let i = 0; i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) | 0
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
          const { version: _version, ...result } = o.result
          return { line: p.line, ok: true, result }
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
