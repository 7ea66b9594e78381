/**
 * Checkpoints: a signed record of every tenant's verified (seq, head). Kept in
 * credits.audit_checkpoints and, with --checkpoint-file, outside the database, so that a chain cut
 * short or a database rolled back to an older copy (checkpoints table included) is still caught.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import type pg from 'pg'
import type { Keyring } from '../config/secrets.js'
import { IntegrityError, OperationError, UsageError } from '../errors.js'
import { makeDir } from '../fs/make-dir.js'
import type { Head } from './checker.js'

export const CHECKPOINT_FORMAT = 'shieldx.checkpoint.v1'

export interface Checkpoint {
  format: typeof CHECKPOINT_FORMAT
  created_at: string
  key_id: string
  tenants: number
  rows_total: number
  heads: Record<string, Head>
  /** hex HMAC-SHA256 over the canonical body */
  signature: string
}

/** Sorted keys, so the signature does not depend on the order heads were collected in. */
function body(cp: Omit<Checkpoint, 'signature'>): string {
  const heads = Object.keys(cp.heads)
    .sort()
    .map((t) => [t, cp.heads[t]!.seq, cp.heads[t]!.head])
  return JSON.stringify([cp.format, cp.created_at, cp.key_id, cp.tenants, cp.rows_total, heads])
}

export function signCheckpoint(
  keys: Keyring,
  data: { created_at: string; tenants: number; rows_total: number; heads: Record<string, Head> },
): Checkpoint {
  const unsigned = { format: CHECKPOINT_FORMAT, key_id: keys.current.kid, ...data } as const
  const signature = createHmac('sha256', keys.current.bytes).update(body(unsigned)).digest('hex')
  return { ...unsigned, signature }
}

/** Throws an IntegrityError (exit 4) unless the checkpoint is signed by one of our keys. */
export function verifyCheckpoint(keys: Keyring, cp: Checkpoint, origin: string): void {
  const key = keys.byId.get(cp.key_id)
  if (!key) {
    throw new IntegrityError(
      `The checkpoint in ${origin} is signed with key '${cp.key_id}', which AUDIT_HMAC_KEY does not hold.`,
      {
        code: 'CHECKPOINT_UNKNOWN_KEY',
      },
    )
  }
  const expected = createHmac('sha256', key.bytes).update(body(cp)).digest()
  const given = Buffer.from(cp.signature, 'hex')
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new IntegrityError(
      `The checkpoint in ${origin} has an invalid signature under key '${cp.key_id}': it was altered, or AUDIT_HMAC_KEY holds other bytes under that key id.`,
      {
        code: 'CHECKPOINT_FORGED',
        hint: 'Check AUDIT_HMAC_KEY first (a rotation that changed the bytes but kept the id); if it is right, treat this as tampering.',
      },
    )
  }
}

export async function loadNewestCheckpoint(
  pool: pg.Pool,
  keys: Keyring,
): Promise<{ id: number; checkpoint: Checkpoint } | null> {
  const { rows } = await pool.query<{
    id: string
    created_at: Date
    key_id: string
    tenants: number
    rows_total: string
    heads: Record<string, Head>
    signature: Buffer
    signed_at: string
  }>(
    `select id, created_at, key_id, tenants, rows_total, heads, signature, heads->>'' as signed_at
       from credits.audit_checkpoints order by id desc limit 1`,
  )
  const r = rows[0]
  if (!r) return null
  // created_at as signed is kept in the heads document's metadata key: see storeCheckpoint.
  const { ['']: meta, ...heads } = r.heads as Record<string, Head> & { ''?: unknown }
  const cp: Checkpoint = {
    format: CHECKPOINT_FORMAT,
    created_at: String((meta as unknown as { created_at?: string } | undefined)?.created_at ?? ''),
    key_id: r.key_id,
    tenants: r.tenants,
    rows_total: Number(r.rows_total),
    heads,
    signature: r.signature.toString('hex'),
  }
  verifyCheckpoint(keys, cp, 'credits.audit_checkpoints')
  return { id: Number(r.id), checkpoint: cp }
}

export async function storeCheckpoint(pool: pg.Pool, cp: Checkpoint): Promise<number> {
  // The signed created_at travels inside the heads document under the empty key (no tenant can be
  // named ''), because the table's own created_at is the database's clock, not the signed value.
  const heads = { '': { created_at: cp.created_at }, ...cp.heads }
  const { rows } = await pool.query<{ id: string }>(
    `insert into credits.audit_checkpoints (key_id, tenants, rows_total, heads, signature)
     values ($1, $2, $3, $4, $5) returning id`,
    [cp.key_id, cp.tenants, cp.rows_total, JSON.stringify(heads), Buffer.from(cp.signature, 'hex')],
  )
  return Number(rows[0]!.id)
}

export function readCheckpointFile(file: string, keys: Keyring): Checkpoint {
  let cp: Checkpoint
  try {
    cp = JSON.parse(fs.readFileSync(file, 'utf8')) as Checkpoint
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new UsageError(`Checkpoint file ${file} does not exist.`, {
        hint: 'Write one with verify-chain --checkpoint --checkpoint-file FILE.',
      })
    }
    throw new IntegrityError(
      `Checkpoint file ${file} is not a shieldx checkpoint (${(err as Error).message}).`,
      {
        code: 'CHECKPOINT_FORGED',
      },
    )
  }
  if (cp?.format !== CHECKPOINT_FORMAT || typeof cp.heads !== 'object' || typeof cp.signature !== 'string') {
    throw new IntegrityError(`Checkpoint file ${file} is not a ${CHECKPOINT_FORMAT} document.`, {
      code: 'CHECKPOINT_FORGED',
    })
  }
  verifyCheckpoint(keys, cp, file)
  return cp
}

/** Written to FILE.partial, fsynced, renamed: a crash never leaves half a checkpoint. */
export function writeCheckpointFile(file: string, cp: Checkpoint): void {
  const partial = `${file}.partial`
  // Its directory made as --dir's are (a recursive mkdir spins for ever under /proc).
  makeDir(path.dirname(path.resolve(file)), '--checkpoint-file')
  try {
    const fd = fs.openSync(partial, 'w', 0o600)
    try {
      fs.writeSync(fd, JSON.stringify(cp, null, 2) + '\n')
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
    fs.renameSync(partial, file)
  } catch (err) {
    fs.rmSync(partial, { force: true })
    throw new OperationError(`Cannot write checkpoint file ${file}: ${(err as Error).message}.`)
  }
}
