/**
 * Session advisory locks taken by polling pg_try_advisory_lock. A blocking pg_advisory_lock
 * waiter holds a snapshot that CREATE INDEX CONCURRENTLY waits for, so two runners would
 * deadlock; polling holds nothing while it waits.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import { ConflictError, InterruptedError } from '../errors.js'

/** The two-int key space shieldx uses: classid 0x73686c78 ('shlx'). */
export const LOCK_CLASS = 0x73686c78

export const LOCKS = {
  /** Held by `migrate up/down` for the whole run, per database. */
  migrations: 1,
} as const

export interface LockOptions {
  timeoutMs: number
  /** "migrations": used in the message when we give up. */
  name: string
  pollMs?: number
  /** Called once when the lock is found held, so the CLI can say it is waiting. */
  onWait?: () => void
  /** Ctrl-C: stop waiting. */
  signal?: AbortSignal
}

export async function withAdvisoryLock<T>(
  client: pg.ClientBase,
  objid: number,
  options: LockOptions,
  fn: () => Promise<T>,
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs
  let told = false
  for (;;) {
    const { rows } = await client.query<{ ok: boolean }>('select pg_try_advisory_lock($1, $2) as ok', [
      LOCK_CLASS,
      objid,
    ])
    if (rows[0]!.ok) break
    if (options.signal?.aborted) throw new InterruptedError()
    if (!told) {
      options.onWait?.()
      told = true
    }
    if (Date.now() >= deadline) {
      const holder = await lockHolder(client, objid).catch(() => null)
      throw new ConflictError(
        `Another shieldx is holding the ${options.name} lock${holder ? ` (pid ${holder} on the server)` : ''}; gave up after ${options.timeoutMs / 1000}s.`,
        { code: 'LOCK_HELD', hint: 'Wait for it to finish and run again, or raise --timeout.' },
      )
    }
    await sleep(Math.min(options.pollMs ?? 200, Math.max(0, deadline - Date.now())))
  }
  try {
    return await fn()
  } finally {
    await client.query('select pg_advisory_unlock($1, $2)', [LOCK_CLASS, objid]).catch(() => {})
  }
}

async function lockHolder(client: pg.ClientBase, objid: number): Promise<number | null> {
  const { rows } = await client.query<{ pid: number }>(
    `select pid from pg_locks
      where locktype = 'advisory' and classid = $1::int::oid and objid = $2::int::oid and objsubid = 2
        and granted and database = (select oid from pg_database where datname = current_database())
      limit 1`,
    [LOCK_CLASS, objid],
  )
  return rows[0]?.pid ?? null
}
