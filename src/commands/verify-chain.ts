import fs from 'node:fs'
import path from 'node:path'
import type { Context } from '../context.js'
import { startVerifyThreads, verifyChain } from '../core/audit/verify.js'
import { EXIT, OperationError, UsageError } from '../core/errors.js'
import { serverUrl } from '../core/db/pool.js'
import { openLedger } from '../core/ledger/ledger.js'
import * as v from '../core/ledger/validate.js'
import { progress } from '../ui/progress.js'
import { renderTable } from '../ui/table.js'

export async function verify(
  ctx: Context,
  opts: { tenant?: string; workers?: number; checkpoint?: boolean; checkpointFile?: string },
) {
  const tenant = opts.tenant === undefined ? undefined : v.tenantId(opts.tenant, '--tenant')
  if (opts.checkpoint && tenant) throw new UsageError('--checkpoint records every tenant: drop --tenant.')
  if (opts.checkpoint && opts.checkpointFile) checkpointDir(opts.checkpointFile)
  const settings = ctx.settings()
  // The worker threads boot and connect while this thread opens and checks the database.
  const threads = startVerifyThreads(serverUrl(settings, 'credits'), {
    ...(tenant ? { tenant } : {}),
    ...(opts.workers ? { workers: opts.workers } : {}),
  })
  if (threads) {
    ctx.onCleanup(async () => threads.stop())
    // Ctrl-C: the threads' own connections are not in the pool whose statements are cancelled.
    ctx.signal.addEventListener('abort', () => threads.stop(), { once: true })
  }
  const dbs = await ctx.databases(settings)
  const l = await openLedger(settings, dbs.credits, { cache: false, notice: (m) => ctx.out.warn(m) })

  const shown = progress(ctx.out, 'verifying', 'rows')
  const result = await verifyChain(l.db, l.keys.audit, {
    ...(tenant ? { tenant } : {}),
    threads,
    ...(opts.checkpoint ? { checkpoint: true } : {}),
    ...(opts.checkpointFile ? { checkpointFile: opts.checkpointFile } : {}),
    onProgress: shown.add,
  })
  shown.done()

  if (tenant && result.tenants_checked === 0 && result.ok) {
    // A typo must not read as a clean check.
    throw new OperationError(`There is no tenant '${tenant}': no account and no audit rows.`, {
      code: 'ACCOUNT_NOT_FOUND',
    })
  }
  if (!result.ok) ctx.exitCode = EXIT.integrity
  // Every chain broken at its first row is what a wrong key looks like, more often than tampering.
  const atFirstRow = result.broken.filter((b) => b.seq === 1 && b.reason === 'hash_mismatch').length
  if (result.tenants_checked > 0 && atFirstRow === result.tenants_checked) {
    ctx.out.warn(
      'every chain breaks at its first row: check that AUDIT_HMAC_KEY holds the key these rows were signed with before treating this as tampering.',
    )
  }
  if (ctx.out.json) return ctx.out.document(result)
  if (result.ok) {
    ctx.out.result(
      `Chain intact: ${result.tenants_checked} tenant(s), ${result.rows_checked} row(s) verified.`,
    )
  } else {
    ctx.out.result(
      `Chain BROKEN for ${result.broken.length} tenant(s) (of ${result.tenants_checked}); first broken link of each:`,
    )
    ctx.out.result(
      renderTable(
        ['tenant', 'seq', 'reason'],
        result.broken.map((b) => [b.tenant_id, String(b.seq), ctx.out.style('red', b.reason)]),
      ),
    )
  }
  for (const c of result.checkpoint?.checked_against ?? []) {
    ctx.out.info(`checked against the checkpoint in ${c.source} (${c.created_at}, ${c.tenants} tenant(s))`)
  }
  const w = result.checkpoint?.written
  if (w) ctx.out.info(`wrote checkpoint #${w.id}${w.file ? ` and ${w.file}` : ''} (${w.tenants} tenant(s))`)
  else if (opts.checkpoint && !result.ok) ctx.out.warn('no checkpoint written: the chain is broken.')
}

/**
 * The directory a checkpoint file is to be written in must exist: a missing one is most likely a
 * mistyped path, not a request to make directories (exit 2 before anything runs). Worded as
 * makeDir's refusals.
 */
function checkpointDir(file: string): void {
  const dir = path.dirname(path.resolve(file))
  const refuse = (why: string, hint?: string) =>
    new UsageError(`--checkpoint-file: cannot use ${dir} as a directory (${why}).`, {
      code: 'BAD_DIRECTORY',
      ...(hint ? { hint } : {}),
    })
  let st: fs.Stats
  try {
    st = fs.statSync(dir)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') {
      throw refuse(
        'it does not exist',
        'Check the path; the directory of a checkpoint file is not created for you.',
      )
    }
    if (code === 'ENOTDIR') throw refuse('a part of the path is a file, not a directory')
    return // permission problems and the like: the write reports them
  }
  if (!st.isDirectory()) throw refuse('it is a file, not a directory')
}
