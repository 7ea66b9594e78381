/**
 * `credits apply`: many operations from JSON lines, one result each, in input order. Operations
 * run in chunks of one transaction each, every operation inside its own savepoint, so each is
 * all-or-nothing on its own while the commit (and its fsync) is paid once per chunk. Chunks run
 * on several connections at once ("lanes"); a tenant always goes to the same lane, so its
 * operations apply in file order. Results are put back in input order before they are printed.
 *
 * A line without an idempotency key gets one derived from its line number and content: running
 * the same file again after a crash replays what was applied instead of applying it twice.
 */
import { createHash } from 'node:crypto'
import type pg from 'pg'
import { isConnectionError } from '../db/pg-errors.js'
import { withRetry } from '../db/retry.js'
import { isShieldxError, UsageError } from '../errors.js'
import {
  applyOn,
  isDuplicateKeyRace,
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
    onResult: (r: ApplyLineResult) => void
    signal?: AbortSignal
  },
): Promise<ApplySummary> {
  const chunkSize = options.chunkSize ?? 200
  const lanes = Math.max(1, options.lanes ?? 1)
  const summary: ApplySummary = { lines: 0, applied: 0, replayed: 0, failed: 0 }
  let chunk: ParsedLine[] = []
  const emit = (r: ApplyLineResult) => {
    summary.lines++
    if (!r.ok) summary.failed++
    else if (r.result?.replayed) summary.replayed++
    else summary.applied++
    options.onResult(r)
  }
  const flush = async () => {
    if (chunk.length === 0) return
    const byLane: ParsedLine[][] = Array.from({ length: lanes }, () => [])
    for (const p of chunk) byLane[laneOf(p, lanes)]!.push(p)
    const results = (
      await Promise.all(byLane.filter((l) => l.length > 0).map((l) => runChunk(pool, l, keys)))
    ).flat()
    for (const r of results.sort((a, b) => a.line - b.line)) emit(r)
    chunk = []
  }
  let n = 0
  for await (const text of lines) {
    n++
    if (text.trim() === '') continue
    if (options.signal?.aborted) break
    chunk.push(parseOperation(text, n))
    if (chunk.length >= chunkSize * lanes) await flush()
  }
  await flush()
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
  return withRetry(
    async () => {
      const client = await pool.connect()
      let failed: unknown
      try {
        await client.query('BEGIN')
        const out: ApplyLineResult[] = []
        for (const p of chunk) {
          if (p.error || !p.request) {
            out.push({ line: p.line, ok: false, error: p.error! })
            continue
          }
          try {
            const { version: _version, ...result } = await applyOn(client, p.request, p.key!, keys, {
              mode: 'savepoint',
            })
            out.push({ line: p.line, ok: true, result })
          } catch (err) {
            // Connection problems and races abort the whole chunk (retried); anything else is this line's.
            if (isConnectionError(err) || isDuplicateKeyRace(err) || !isShieldxError(err)) throw err
            out.push({ line: p.line, ok: false, error: { code: err.code, message: err.message } })
          }
        }
        await client.query('COMMIT')
        return out
      } catch (err) {
        failed = err
        if (!isConnectionError(err)) await client.query('ROLLBACK').catch(() => {})
        throw err
      } finally {
        client.release(isConnectionError(failed) ? (failed as Error) : undefined)
      }
    },
    { maxAttempts: 6, retryIf: isDuplicateKeyRace },
  )
}
