import type { Context } from '../context.js'
import { UsageError } from '../core/errors.js'
import { type TsFormat, writeTraffic } from '../core/shadow/generate.js'
import { progress } from '../ui/progress.js'
import { thousands } from '../core/thousands.js'

export interface GenerateFlags {
  events: string
  attackRate: string
  seed: string
  out: string
  tsFormat: TsFormat
  force?: boolean
}

export async function generate(ctx: Context, opts: GenerateFlags) {
  const events = wholeNumber(opts.events, '--events', 1, Number.MAX_SAFE_INTEGER, 'a positive whole number')
  const attackRate = share(opts.attackRate, '--attack-rate')
  const seed = wholeNumber(opts.seed, '--seed', 0, 0xffffffff, 'a whole number from 0 to 4294967295')
  const toStdout = opts.out === '-'
  if (toStdout && ctx.out.json)
    throw new UsageError(
      '--out - writes the traffic to stdout, where --json would print its document: drop one.',
    )

  const shown = progress(ctx.out, 'generating', 'rows')
  const r = await writeTraffic({
    events,
    attackRate,
    seed,
    tsFormat: opts.tsFormat,
    out: toStdout ? ctx.io.stdout : opts.out,
    force: opts.force === true,
    signal: ctx.signal,
    onProgress: (n) => shown.set(n),
  })
  shown.done()

  const seconds = Math.max(0.001, r.duration_ms / 1000)
  ctx.out.info(
    `generated ${thousands(r.events)} events in ${seconds.toFixed(1)} s: ${thousands(Math.round(r.events / seconds))} events/s`,
  )
  if (ctx.out.json) {
    const { out, attacks, benign, first_ts, last_ts, bytes, sha256 } = r
    return ctx.out.document({ out, events: r.events, attacks, benign, first_ts, last_ts, bytes, sha256 })
  }
  const summary =
    `${toStdout ? 'Wrote' : `Wrote ${r.out}:`} ${thousands(r.events)} events (${thousands(r.attacks)} attack, ${thousands(r.benign)} benign), ` +
    `${r.first_ts} to ${r.last_ts}, ${(r.bytes / 1_048_576).toFixed(1)} MB${r.gzip ? ' gzipped' : ''}, sha256 ${r.sha256}.`
  // With --out -, stdout is the traffic itself: the summary goes with the messages.
  if (!r.complete) ctx.out.info(`Stopped: the reader closed stdout after ${thousands(r.events)} events.`)
  else if (toStdout) ctx.out.info(summary)
  else ctx.out.result(summary)
}

function wholeNumber(value: string, flag: string, min: number, max: number, expected: string): number {
  const n = /^\d+$/.test(value) ? Number(value) : NaN
  if (!(n >= min && n <= max))
    throw new UsageError(`${flag} must be ${expected}; got ${JSON.stringify(value)}.`)
  return n
}

function share(value: string, flag: string): number {
  const n = /^(\d+(\.\d*)?|\.\d+)$/.test(value) ? Number(value) : NaN
  if (!(n >= 0 && n <= 1))
    throw new UsageError(`${flag} must be a number from 0 to 1 (e.g. 0.2); got ${JSON.stringify(value)}.`)
  return n
}
