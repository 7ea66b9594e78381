/**
 * verify-chain: recompute every tenant's audit chain, in parallel across worker threads (each
 * streams its own partition of tenants on its own connection), compare with the account heads
 * and the newest checkpoint, record the run, and optionally write a new checkpoint.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Worker } from 'node:worker_threads'
import type pg from 'pg'
import { PACKAGE_ROOT } from '../config/paths.js'
import { type Keyring, keysToWire } from '../config/secrets.js'
import type { Database } from '../db/pool.js'
import { errorFromData, OperationError } from '../errors.js'
import type { Broken, Head } from './checker.js'
import {
  type Checkpoint,
  loadNewestCheckpoint,
  readCheckpointFile,
  signCheckpoint,
  storeCheckpoint,
  writeCheckpointFile,
} from './checkpoint.js'
import {
  assertEveryRowHasTenant,
  type PartitionResult,
  type PartitionSpec,
  verifyPartition,
} from './partition.js'
import type { WorkerInput, WorkerMessage, WorkerTask } from './verify-worker.js'

export interface VerifyOptions {
  tenant?: string
  workers?: number
  /** Write a new checkpoint after a clean run. */
  checkpoint?: boolean
  /** Also check against, and with `checkpoint` write to, this file outside the database. */
  checkpointFile?: string
  onProgress?: (rows: number) => void
  /** Record the run in credits.chain_verifications (for `status`). Default true. */
  record?: boolean
  /**
   * Threads from startVerifyThreads, started before the database was opened; null: verify in
   * this thread. Left out, verifyChain starts its own.
   */
  threads?: VerifyThreads | null
}

export interface VerifyResult {
  ok: boolean
  tenants_checked: number
  rows_checked: number
  broken: Broken[]
  checkpoint: null | {
    /** What this run compared against. */
    checked_against: Array<{ source: string; created_at: string; tenants: number }>
    /** What this run wrote, when asked to. */
    written: null | { id: number; file: string | null; tenants: number; created_at: string }
  }
}

/** Where the compiled worker is: dist/, also when the caller runs from source (tests). */
const WORKER_FILE = path.join(PACKAGE_ROOT, 'dist/core/audit/verify-worker.js')

export async function verifyChain(
  db: Database,
  keys: Keyring,
  options: VerifyOptions,
): Promise<VerifyResult> {
  const startedAt = new Date()
  // Threads start first: loading pg and connecting takes them a while, which the checkpoint
  // reads and the partitioning below overlap.
  const threads =
    options.threads !== undefined ? options.threads : startVerifyThreads(db.connectionString, options)
  let parts: PartitionResult[]
  const against: Array<{ source: string; checkpoint: Checkpoint }> = []
  let promised: Record<string, Head>
  try {
    const stored = await loadNewestCheckpoint(db.pool, keys)
    if (stored)
      against.push({ source: `credits.audit_checkpoints #${stored.id}`, checkpoint: stored.checkpoint })
    // A file that does not exist yet is fine when this run is about to write it.
    if (options.checkpointFile && (!options.checkpoint || fs.existsSync(options.checkpointFile))) {
      against.push({
        source: options.checkpointFile,
        checkpoint: readCheckpointFile(options.checkpointFile, keys),
      })
    }
    // Per tenant, the furthest head any checkpoint promises; heads that disagree at the same seq
    // are caught when that seq is verified against the first one.
    promised = mergeHeads(against.map((a) => a.checkpoint))

    parts = threads
      ? await threads.run(await partitionsOfEveryRow(db.pool, threads.count * PARTITIONS_PER_THREAD), {
          checkpoint: promised,
          keys,
          pool: db.pool,
          cancel: () => db.cancelActive(),
          ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        })
      : [
          await inProcess(db.pool, (client) =>
            verifyPartition(
              client,
              options.tenant ? { tenant: options.tenant } : {},
              keys.byId,
              promised,
              options.onProgress,
            ),
          ),
        ]
  } catch (err) {
    threads?.stop()
    throw err
  }

  const broken = parts.flatMap((p) => p.broken)
  const heads: Record<string, Head> = Object.assign({}, ...parts.map((p) => p.heads))
  const rows = parts.reduce((n, p) => n + p.rows, 0)

  // Tenants a checkpoint vouches for that have neither rows nor an account any more: cut off whole.
  const seen = new Set([...Object.keys(heads), ...broken.map((b) => b.tenant_id)])
  const vanished = Object.keys(promised).filter(
    (t) => !seen.has(t) && (!options.tenant || t === options.tenant),
  )
  for (const t of vanished) broken.push({ tenant_id: t, seq: 1, reason: 'truncated' })
  // The chain is the history, the account row the state it led to: a balance changed with an
  // UPDATE (no row written) leaves every chain intact, so each account is held to its head row.
  const chainBroken = new Set(broken.map((b) => b.tenant_id))
  for (const d of await accountsOffTheirHead(db.pool, options.tenant)) {
    if (!chainBroken.has(d.tenant_id))
      broken.push({ tenant_id: d.tenant_id, seq: d.seq, reason: 'balance_mismatch' })
  }
  const tenants = parts.reduce((n, p) => n + p.tenants, 0) + vanished.length
  broken.sort((a, b) => (a.tenant_id < b.tenant_id ? -1 : a.tenant_id > b.tenant_id ? 1 : 0))

  let written: NonNullable<VerifyResult['checkpoint']>['written'] = null
  let checkpointId: number | null = null
  if (options.checkpoint && broken.length === 0 && !options.tenant) {
    const cp = signCheckpoint(keys, {
      created_at: new Date().toISOString(),
      tenants: Object.keys(heads).length,
      rows_total: rows,
      heads,
    })
    // The file first: if it cannot be written, nothing is recorded; a file written before the
    // database refused its copy still holds a true checkpoint of a clean chain.
    if (options.checkpointFile) writeCheckpointFile(options.checkpointFile, cp)
    checkpointId = await storeCheckpoint(db.pool, cp)
    written = {
      id: checkpointId,
      file: options.checkpointFile ?? null,
      tenants: cp.tenants,
      created_at: cp.created_at,
    }
  }

  const result: VerifyResult = {
    ok: broken.length === 0,
    tenants_checked: tenants,
    rows_checked: rows,
    broken,
    checkpoint:
      against.length === 0 && !written
        ? null
        : {
            checked_against: against.map((a) => ({
              source: a.source,
              created_at: a.checkpoint.created_at,
              tenants: a.checkpoint.tenants,
            })),
            written,
          },
  }
  if (!options.tenant && options.record !== false) await recordRun(db.pool, startedAt, result, checkpointId)
  return result
}

/**
 * Accounts whose balance or reservation differs from the balance_after / reserved_after of the
 * row at their chain's head (an account without rows must hold nothing): one index lookup each.
 */
async function accountsOffTheirHead(
  pool: Database['pool'],
  tenant: string | undefined,
): Promise<Array<{ tenant_id: string; seq: number }>> {
  const { rows } = await pool.query<{ tenant_id: string; seq: string }>(
    `select a.tenant_id, greatest(a.chain_seq, 1) as seq
       from credits.credit_accounts a
       left join credits.audit_logs l on l.tenant_id = a.tenant_id and l.seq = a.chain_seq
      where ($1::text is null or a.tenant_id = $1)
        and case when a.chain_seq = 0 then a.balance <> 0 or a.reserved <> 0
                 else l.id is null or l.balance_after <> a.balance or l.reserved_after <> a.reserved end
      order by a.tenant_id`,
    [tenant ?? null],
  )
  return rows.map((r) => ({ tenant_id: r.tenant_id, seq: Number(r.seq) }))
}

function mergeHeads(checkpoints: Checkpoint[]): Record<string, Head> {
  const out: Record<string, Head> = {}
  for (const cp of checkpoints) {
    for (const [tenant, head] of Object.entries(cp.heads)) {
      const have = out[tenant]
      if (!have || head.seq > have.seq) out[tenant] = head
    }
  }
  return out
}

/** `fn` on one connection of the pool, in a repeatable-read snapshot: the accounts and the rows, chunk after chunk. */
async function inProcess<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect()
  try {
    await client.query('begin isolation level repeatable read read only')
    const result = await fn(client)
    await client.query('commit')
    return result
  } catch (err) {
    await client.query('rollback').catch(() => {})
    throw err
  } finally {
    client.release()
  }
}

/** The ranges, once it is known that every row falls in one (no null tenant_id). */
async function partitionsOfEveryRow(pool: pg.Pool, count: number): Promise<PartitionSpec[]> {
  const [specs] = await Promise.all([partitions(pool, count), assertEveryRowHasTenant(pool)])
  return specs
}

/**
 * Up to `count` ranges of tenant_id covering every possible id (the first open below, the last
 * open above, so rows of tenants without an account are read too), cut where the accounts'
 * chain_seq (a row count) reaches each share: about equal work, each an index range scan.
 */
async function partitions(pool: pg.Pool, count: number): Promise<PartitionSpec[]> {
  const { rows } = await pool.query<{ up_to: string }>(
    `select max(tenant_id) as up_to
       from (select tenant_id,
                    floor((sum(w) over (order by tenant_id rows unbounded preceding) - w) * $1 / sum(w) over ()) as part
               from (select tenant_id, greatest(chain_seq, 1) as w from credits.credit_accounts) a) p
      group by part
      order by part`,
    [count],
  )
  const bounds = rows.slice(0, -1).map((r) => r.up_to)
  return Array.from({ length: bounds.length + 1 }, (_, i) => ({
    ...(i > 0 ? { after: bounds[i - 1]! } : {}),
    ...(i < bounds.length ? { upTo: bounds[i]! } : {}),
  }))
}

/**
 * Partitions per thread. They are handed out in runs of adjacent ones, long runs first and single
 * ones at the end (guided scheduling), so that threads finish together after few round trips.
 */
const PARTITIONS_PER_THREAD = 16

export interface VerifyThreads {
  /** Threads verifying, this one included. */
  count: number
  run(specs: PartitionSpec[], work: Work): Promise<PartitionResult[]>
  /** On failure, or when the run never comes: the threads still reading or waiting are stopped. */
  stop(): void
}

interface Work {
  checkpoint: Record<string, Head>
  keys: Keyring
  /** This thread's connections: it verifies partitions too. */
  pool: pg.Pool
  /** Cancel this thread's statement: a thread failed, the run is over. */
  cancel(): Promise<void>
  onProgress?: (rows: number) => void
}

/**
 * verify-chain's worker threads, started ahead of the work: booting a thread, loading pg and
 * connecting take about 0.1 s, which the caller's own start (opening and checking the database,
 * reading the checkpoints) can overlap. `workers` counts this thread, which takes partitions too
 * and so starts on the rows at once. Null when the run is in this thread alone: one worker, one
 * tenant, or the embedded database (no URL to connect to).
 */
export function startVerifyThreads(
  connectionString: string | null,
  options: Pick<VerifyOptions, 'workers' | 'tenant'>,
): VerifyThreads | null {
  const count = Math.max(1, Math.min(options.workers ?? os.availableParallelism(), 16))
  if (!connectionString || count === 1 || options.tenant) return null
  return startWorkers({ connectionString }, count - 1)
}

/**
 * `count` worker threads, started (loading pg, connecting) before there is work for them. run()
 * hands out the partitions, a run of them at a time to whichever thread is free (this one
 * included), collects a result per run, and tells each thread to finish when none are left.
 */
function startWorkers(input: WorkerInput, count: number): VerifyThreads {
  let queue: PartitionSpec[] = []
  const results: PartitionResult[] = []
  let failure: Error | null = null
  let settle: { resolve(): void; reject(err: Error): void } | null = null
  let onProgress: ((rows: number) => void) | undefined
  const fail = (err: Error) => {
    failure ??= err
    settle?.reject(failure)
  }
  /** A share of what is left, as one range: from the first partition's start to the last one's end. */
  const take = (): PartitionSpec | null => {
    const run = failure ? [] : queue.splice(0, Math.ceil(queue.length / (2 * (count + 1))))
    if (run.length === 0) return null
    return {
      ...(run[0]!.after !== undefined ? { after: run[0]!.after } : {}),
      ...(run.at(-1)!.upTo !== undefined ? { upTo: run.at(-1)!.upTo } : {}),
    }
  }
  const busy = new Set<Worker>()
  const give = (worker: Worker, first?: Pick<WorkerTask, 'checkpoint' | 'keys'>) => {
    const partition = take()
    if (partition) busy.add(worker)
    worker.postMessage({ partition, ...first } satisfies WorkerTask)
  }
  const threads: Worker[] = []
  for (let i = 0; i < count; i++) {
    const worker = new Worker(WORKER_FILE, { workerData: input })
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'progress') onProgress?.(m.rows)
      else if (m.type === 'done') {
        busy.delete(worker)
        results.push(m.result)
        give(worker)
        if (busy.size === 0) settle?.resolve()
      } else fail(errorFromData(m.error))
    })
    worker.on('error', fail)
    worker.on('exit', (code) => {
      if (code !== 0 || busy.has(worker)) {
        fail(new OperationError(`A verify-chain worker stopped with exit code ${code}.`))
      }
    })
    threads.push(worker)
  }
  return {
    count: count + 1,
    async run(specs, work) {
      onProgress = work.onProgress
      queue = [...specs]
      const wire = keysToWire(work.keys)
      const others = new Promise<void>((resolve, reject) => {
        settle = { resolve, reject }
        if (failure) return reject(failure)
        for (const worker of threads) give(worker, { checkpoint: work.checkpoint, keys: wire })
        if (busy.size === 0) resolve()
      })
      // This thread's share, on a connection of the pool. Either side failing stops the other: the
      // threads take no more work, and this thread's statement is cancelled.
      const here = inProcess(work.pool, async (client) => {
        for (let spec = take(); spec; spec = take()) {
          results.push(await verifyPartition(client, spec, work.keys.byId, work.checkpoint, onProgress))
        }
      }).catch((err: Error) => {
        fail(err)
        throw err
      })
      others.catch(() => work.cancel())
      await Promise.allSettled([others, here])
      // The first failure, whichever side it came from (a cancelled statement is its echo).
      if (failure) throw failure
      return results
    },
    stop() {
      for (const worker of threads) void worker.terminate()
    },
  }
}

/** A run in credits.chain_verifications, for `status`. */
export async function recordRun(
  pool: pg.Pool,
  startedAt: Date,
  r: VerifyResult,
  checkpointId: number | null,
): Promise<void> {
  await pool.query(
    `insert into credits.chain_verifications (started_at, ok, tenants_checked, rows_checked, broken_count, broken, checkpoint_id)
     values ($1, $2, $3, $4, $5, $6, $7)`,
    [
      startedAt,
      r.ok,
      r.tenants_checked,
      r.rows_checked,
      r.broken.length,
      JSON.stringify(r.broken.slice(0, 1000)),
      checkpointId,
    ],
  )
}
