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
import type { Keyring } from '../config/secrets.js'
import type { Database } from '../db/pool.js'
import { OperationError } from '../errors.js'
import type { Broken, Head } from './checker.js'
import {
  type Checkpoint,
  loadNewestCheckpoint,
  readCheckpointFile,
  signCheckpoint,
  storeCheckpoint,
  writeCheckpointFile,
} from './checkpoint.js'
import { type PartitionResult, verifyPartition } from './partition.js'
import type { WorkerInput, WorkerMessage } from './verify-worker.js'

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
  const against: Array<{ source: string; checkpoint: Checkpoint }> = []
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
  const promised = mergeHeads(against.map((a) => a.checkpoint))

  const workers = Math.max(1, Math.min(options.workers ?? os.availableParallelism(), 16))
  const parts =
    db.kind === 'embedded' || workers === 1 || options.tenant
      ? [await inProcess(db.pool, keys, promised, options)]
      : await inWorkers(db, keys, promised, workers, options)

  const broken = parts.flatMap((p) => p.broken)
  const heads: Record<string, Head> = Object.assign({}, ...parts.map((p) => p.heads))
  const rows = parts.reduce((n, p) => n + p.rows, 0)

  // Tenants a checkpoint vouches for that have neither rows nor an account any more: cut off whole.
  const seen = new Set([...Object.keys(heads), ...broken.map((b) => b.tenant_id)])
  const vanished = Object.keys(promised).filter(
    (t) => !seen.has(t) && (!options.tenant || t === options.tenant),
  )
  for (const t of vanished) broken.push({ tenant_id: t, seq: 1, reason: 'truncated' })
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
    checkpointId = await storeCheckpoint(db.pool, cp)
    if (options.checkpointFile) writeCheckpointFile(options.checkpointFile, cp)
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

async function inProcess(
  pool: pg.Pool,
  keys: Keyring,
  promised: Record<string, Head>,
  options: VerifyOptions,
): Promise<PartitionResult> {
  const client = await pool.connect()
  try {
    return await verifyPartition(
      client,
      { index: 0, count: 1, ...(options.tenant ? { tenant: options.tenant } : {}) },
      keys.byId,
      promised,
      options.onProgress,
    )
  } finally {
    client.release()
  }
}

async function inWorkers(
  db: Database,
  keys: Keyring,
  promised: Record<string, Head>,
  count: number,
  options: VerifyOptions,
): Promise<PartitionResult[]> {
  const connection = db.connectionString
  if (!connection) throw new OperationError('verify-chain workers need a database URL.')
  const keyList = [...keys.byId.values()].map((k) => ({ kid: k.kid, key: k.bytes.toString('base64') }))
  const started = Array.from({ length: count }, (_, index) => {
    const input: WorkerInput = {
      connectionString: connection,
      statementTimeoutMs: db.timeoutMs,
      partition: { index, count },
      keys: keyList,
      checkpoint: promised,
    }
    return new Promise<PartitionResult>((resolve, reject) => {
      const worker = new Worker(WORKER_FILE, { workerData: input })
      worker.on('message', (m: WorkerMessage) => {
        if (m.type === 'progress') options.onProgress?.(m.rows)
        else if (m.type === 'done') resolve(m.result)
        else reject(Object.assign(new Error(m.message), { code: m.code }))
      })
      worker.on('error', reject)
      worker.on('exit', (code) => {
        if (code !== 0) reject(new OperationError(`A verify-chain worker stopped with exit code ${code}.`))
      })
    })
  })
  return Promise.all(started)
}

async function recordRun(
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
