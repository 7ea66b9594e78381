import { createHash, randomUUID } from 'node:crypto'
import fs from 'node:fs'
import readline from 'node:readline'
import type { Readable } from 'node:stream'
import type { Context } from '../context.js'
import { cacheUrl } from '../core/config/settings.js'
import { EXIT, OperationError, UsageError } from '../core/errors.js'
import { validatePaymentToken } from '../core/crypto/payment.js'
import { openReadStream } from '../core/fs/read-stream.js'
import { applyLines } from '../core/ledger/apply.js'
import { type Ledger, openLedger } from '../core/ledger/ledger.js'
import {
  applyOperation,
  type LedgerRequest,
  type LedgerResult,
  printedResult,
} from '../core/ledger/operations.js'
import { collectGarbage, fromCache, parseSince, readBalance, readHistory } from '../core/ledger/queries.js'
import * as v from '../core/ledger/validate.js'
import { renderTable } from '../ui/table.js'

interface WriteOptions {
  idempotencyKey?: string
  description?: string
}

async function ledger(
  ctx: Context,
  options: { paymentKey?: boolean; cache?: boolean } = {},
): Promise<Ledger> {
  const settings = ctx.settings()
  // A malformed Redis URL is exit 2 before anything is opened (the embedded database included).
  if (options.cache !== false) cacheUrl(settings)
  const dbs = await ctx.databases(settings)
  const l = await openLedger(settings, dbs.credits, { ...options, notice: (m) => ctx.out.warn(m) })
  ctx.onCleanup(() => l.cache.close())
  return l
}

/** Apply one write, keep the cache right, and print the result. */
async function write(ctx: Context, l: Ledger, req: LedgerRequest, opts: WriteOptions): Promise<void> {
  const key = opts.idempotencyKey === undefined ? randomUUID() : v.idempotencyKey(opts.idempotencyKey)
  if (opts.idempotencyKey === undefined && !ctx.out.json) {
    ctx.out.info(
      `idempotency key: ${key}  (pass --idempotency-key ${key} to retry this exact request safely)`,
    )
  }
  const tenantBefore = 'tenantId' in req ? req.tenantId : null
  if (tenantBefore) await l.cache.invalidate(tenantBefore)
  const r = await applyOperation(l.db.pool, req, key, l.keys, { timeoutMs: l.db.timeoutMs })
  if (!r.replayed)
    await l.cache.set({
      tenant_id: r.tenant_id,
      balance: r.balance,
      reserved: r.reserved,
      version: r.version,
    })
  else await l.cache.invalidate(r.tenant_id)
  print(ctx, r)
}

function print(ctx: Context, r: LedgerResult): void {
  if (ctx.out.json) return ctx.out.document(printedResult(r))
  const sign = r.kind === 'topup' ? '+' : r.kind === 'consume' || r.kind === 'commit' ? '-' : ''
  const what =
    r.kind === 'reserve'
      ? `reserved ${r.amount}`
      : r.kind === 'cancel'
        ? `released ${r.amount}`
        : `${sign}${r.amount}`
  ctx.out.result(
    `${r.kind} ${r.tenant_id} ${what}: balance ${r.balance}, reserved ${r.reserved}, available ${r.available}` +
      (r.replayed ? ctx.out.style('yellow', '  (replayed: already applied, nothing changed)') : ''),
  )
  if (r.reservation_id && r.kind === 'reserve')
    ctx.out.result(`reservation ${r.reservation_id} expires ${r.expires_at}`)
  ctx.out.result(ctx.out.style('gray', `transaction ${r.transaction_id}`))
}

async function readToken(
  opts: { paymentTokenFile?: string; paymentTokenStdin?: boolean },
  ctx: Context,
): Promise<string | null> {
  if (opts.paymentTokenFile && opts.paymentTokenStdin) {
    throw new UsageError('Give --payment-token-file or --payment-token-stdin, not both.')
  }
  if (opts.paymentTokenFile) {
    try {
      return validatePaymentToken(fs.readFileSync(opts.paymentTokenFile, 'utf8'))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code) {
        throw new UsageError(
          `Cannot read --payment-token-file ${opts.paymentTokenFile}: ${(err as NodeJS.ErrnoException).code}.`,
        )
      }
      throw err
    }
  }
  if (opts.paymentTokenStdin) {
    let text = ''
    for await (const chunk of ctx.io.stdin) text += chunk
    return validatePaymentToken(text)
  }
  return null
}

export async function topup(
  ctx: Context,
  tenant: string,
  amount: string,
  opts: WriteOptions & { paymentMethod?: string; paymentTokenFile?: string; paymentTokenStdin?: boolean },
) {
  const token = await readToken(opts, ctx)
  const req: LedgerRequest = {
    kind: 'topup',
    tenantId: v.tenantId(tenant),
    amount: v.amount(amount),
    description: v.description(opts.description),
    paymentToken: token,
    paymentMethod: opts.paymentMethod ?? null,
  }
  await write(ctx, await ledger(ctx, { paymentKey: token !== null }), req, opts)
}

export async function consume(ctx: Context, tenant: string, amount: string, opts: WriteOptions) {
  const req: LedgerRequest = {
    kind: 'consume',
    tenantId: v.tenantId(tenant),
    amount: v.amount(amount),
    description: v.description(opts.description),
  }
  await write(ctx, await ledger(ctx), req, opts)
}

export async function reserve(
  ctx: Context,
  tenant: string,
  amount: string,
  opts: WriteOptions & { ttl: string },
) {
  const req: LedgerRequest = {
    kind: 'reserve',
    tenantId: v.tenantId(tenant),
    amount: v.amount(amount),
    ttlMs: v.ttl(opts.ttl),
    description: v.description(opts.description),
  }
  await write(ctx, await ledger(ctx), req, opts)
}

export async function commit(ctx: Context, reservation: string, opts: WriteOptions & { amount?: string }) {
  const req: LedgerRequest = {
    kind: 'commit',
    reservationId: v.reservationId(reservation),
    amount: opts.amount === undefined ? null : v.amount(opts.amount, '--amount'),
  }
  await write(ctx, await ledger(ctx), req, opts)
}

export async function cancel(ctx: Context, reservation: string, opts: WriteOptions) {
  const req: LedgerRequest = { kind: 'cancel', reservationId: v.reservationId(reservation) }
  await write(ctx, await ledger(ctx), req, opts)
}

export async function balance(ctx: Context, tenant: string, opts: { fresh?: boolean }) {
  const tenantId = v.tenantId(tenant)
  const l = await ledger(ctx)
  const cached = opts.fresh ? null : await l.cache.get(tenantId)
  let b
  let source: 'cache' | 'db'
  if (cached) {
    b = fromCache(cached)
    source = 'cache'
  } else {
    b = await readBalance(l.db.pool, tenantId)
    source = 'db'
    await l.cache.set({
      tenant_id: b.tenant_id,
      balance: b.balance,
      reserved: b.reserved,
      version: b.version,
    })
  }
  if (ctx.out.json) {
    return ctx.out.document({
      tenant_id: b.tenant_id,
      balance: b.balance,
      reserved: b.reserved,
      available: b.available,
      source,
    })
  }
  ctx.out.result(`${b.tenant_id}: balance ${b.balance}, reserved ${b.reserved}, available ${b.available}`)
  ctx.out.info(
    ctx.out.styleErr(
      'gray',
      `from the ${source === 'cache' ? 'cache (--fresh reads the database)' : 'database'}`,
    ),
  )
}

export async function history(ctx: Context, tenant: string, opts: { limit: number; since?: string }) {
  const tenantId = v.tenantId(tenant)
  const since = opts.since === undefined ? undefined : parseSince(opts.since)
  const l = await ledger(ctx, { cache: false })
  const entries = await readHistory(l.db.pool, tenantId, { limit: opts.limit, ...(since ? { since } : {}) })
  if (ctx.out.json) return ctx.out.document({ tenant_id: tenantId, transactions: entries })
  if (entries.length === 0) return ctx.out.result(`No transactions for ${tenantId}.`)
  ctx.out.result(
    renderTable(
      ['when', 'kind', 'amount', 'balance after', 'payment', 'description', 'transaction'],
      entries.map((e) => [
        e.created_at.replace('T', ' ').slice(0, 19),
        e.kind,
        String(e.amount),
        String(e.balance_after),
        e.payment ?? '',
        e.description ?? '',
        e.transaction_id,
      ]),
    ),
  )
}

export async function apply(ctx: Context, opts: { file?: string; chunkSize?: number; batch?: string }) {
  if (opts.batch !== undefined && !/^[A-Za-z0-9._:-]{1,100}$/.test(opts.batch)) {
    throw new UsageError(`--batch must be 1-100 letters, digits, '.', '_', ':' or '-'; got '${opts.batch}'.`)
  }
  const l = await ledger(ctx)
  // Every write invalidates its tenant's cached balance: here at most a second after it, once per
  // tenant, so that a long stream does not leave `credits balance` reading the cache from before.
  const touched = new Set<string>()
  let invalidated = Promise.resolve()
  const invalidateTouched = () => {
    if (touched.size === 0) return invalidated
    const tenants = [...touched]
    touched.clear()
    invalidated = invalidated.then(async () => {
      await Promise.all(tenants.map((t) => l.cache.invalidate(t)))
    })
    return invalidated
  }
  const stdin = !opts.file || opts.file === '-'
  const input = stdin ? ctx.io.stdin : openInput(opts.file!)
  const lines = readline.createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY })
  // Ctrl-C stops the reading too: a pipe that sends nothing more must not hold the command open.
  const stopReading = () => {
    lines.close()
    input.destroy()
  }
  ctx.signal.addEventListener('abort', stopReading, { once: true })
  ctx.onCleanup(async () => ctx.signal.removeEventListener('abort', stopReading))
  // Each line's result is what this command is for: once the reader of standard output has gone
  // (the service reading it died, `| head`), nothing more is applied that nobody would be told of.
  const outputClosed = new AbortController()
  const onOutputError = (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') return
    outputClosed.abort()
    stopReading()
  }
  ctx.io.stdout.on('error', onOutputError)
  ctx.onCleanup(async () => void ctx.io.stdout.off('error', onOutputError))
  // Only when a line without a key needs it: a file is named by its contents, read once more.
  let batch: string | null | undefined = opts.batch
  const batchName = () =>
    (batch ??= stdin || !fs.statSync(opts.file!).isFile() ? null : fileDigest(opts.file!))
  const invalidating = setInterval(() => void invalidateTouched(), 1000)
  invalidating.unref()
  // Counted by applyLines as results go out, so the summary is written however the run ends.
  const summary = { lines: 0, applied: 0, replayed: 0, failed: 0 }
  let error: unknown = null
  try {
    await applyLines(l.db.pool, lines, l.keys, {
      batch: batchName,
      ...(opts.chunkSize ? { chunkSize: opts.chunkSize } : {}),
      // One lane per pooled connection (the embedded database has one).
      lanes: l.db.kind === 'embedded' ? 1 : 4,
      signal: AbortSignal.any([ctx.signal, outputClosed.signal]),
      stopReading,
      summary,
      // One JSON line per operation on stdout, in input order, whatever the output mode.
      onResults: (rs) => {
        for (const r of rs) if (r.result) touched.add(r.result.tenant_id)
        ctx.out.jsonLines(rs)
      },
    })
  } catch (err) {
    error = err
  } finally {
    // Failed or interrupted too: what was written before is invalidated (the cache never throws).
    clearInterval(invalidating)
    await invalidateTouched()
  }
  // Stopped (Ctrl-C, a lost database, no one reading): every operation that committed has its line
  // above; running the same input again replays those and applies the rest.
  const stopped = ctx.signal.aborted
    ? 'interrupted'
    : error !== null
      ? 'stopped by the error below'
      : outputClosed.signal.aborted
        ? 'standard output was closed'
        : null
  ctx.out.info(
    `${summary.lines} operation(s): ${summary.applied} applied, ${summary.replayed} replayed, ${summary.failed} failed${stopped ? `, then ${stopped}; a line without a result line was not applied` : ''}.`,
  )
  if (error !== null) throw error
  if (ctx.signal.aborted) return
  if (outputClosed.signal.aborted) {
    throw new OperationError(
      'Standard output was closed, so applying stopped: the results of further lines could not be delivered.',
      {
        code: 'OUTPUT_CLOSED',
        hint: 'Run the same input again with its reader in place: what was applied replays.',
      },
    )
  }
  if (summary.failed > 0) ctx.exitCode = EXIT.failed
}

/** A file's SHA-256 (hex, first 32), read in pieces: the batch name of its lines' derived keys. */
function fileDigest(file: string): string {
  const hash = createHash('sha256')
  const buf = Buffer.allocUnsafe(1 << 20)
  const fd = fs.openSync(file, 'r')
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;) hash.update(buf.subarray(0, n))
  } finally {
    fs.closeSync(fd)
  }
  return hash.digest('hex').slice(0, 32)
}

function openInput(file: string): Readable {
  const unreadable = (err: unknown) =>
    new UsageError(
      `--file ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}).`,
    )
  let stat: fs.Stats
  try {
    stat = fs.statSync(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new UsageError(`--file ${file} does not exist.`)
    throw unreadable(err)
  }
  if (stat.isDirectory()) throw new UsageError(`--file ${file} is a directory, not a file.`)
  try {
    fs.accessSync(file, fs.constants.R_OK)
    // (a named pipe too: see openReadStream)
    return openReadStream(file, stat).setEncoding('utf8')
  } catch (err) {
    throw unreadable(err)
  }
}

export async function gc(ctx: Context) {
  const l = await ledger(ctx)
  const touched = new Set<string>()
  const r = await collectGarbage(l.db.pool, l.keys, l.db.timeoutMs, (t) => touched.add(t))
  // Released reservations change what is available: drop those cached balances.
  await Promise.all([...touched].map((t) => l.cache.invalidate(t)))
  if (ctx.out.json) return ctx.out.document(r)
  ctx.out.result(
    `Purged ${r.idempotency_keys_purged} expired idempotency key(s); expired ${r.reservations_expired} reservation(s), releasing ${r.credits_released} credit(s).`,
  )
}
