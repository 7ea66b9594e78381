import type { Context } from '../context.js'
import { UsageError } from '../core/errors.js'
import * as ab from '../core/shadow/ab.js'
import { evaluationId } from '../core/shadow/evaluations.js'
import { renderTable } from '../ui/table.js'
import { thousands } from '../core/thousands.js'

async function shadow(ctx: Context) {
  const db = await ctx.shadowDatabase()
  return { pool: db.pool, options: { timeoutMs: db.timeoutMs } }
}

const prob = (p: number) => (p === 0 || p === 1 ? String(p) : p < 1e-4 ? p.toExponential(1) : p.toFixed(4))

export async function create(
  ctx: Context,
  opts: { name?: string; control?: string; test?: string; confidence?: string; minSampleSize?: string },
) {
  const input: ab.CreateInput = {
    name: ab.testName(opts.name),
    control: ab.armLabel(opts.control, '--control'),
    test: ab.armLabel(opts.test, '--test'),
    confidence: ab.confidence(opts.confidence ?? ab.AB_DEFAULTS.confidence),
    minSampleSize: ab.minSampleSize(opts.minSampleSize ?? ab.AB_DEFAULTS.minSampleSize),
  }
  const { pool, options } = await shadow(ctx)
  const t = await ab.createAbTest(pool, input, options)
  if (ctx.out.json) return ctx.out.document(t)
  ctx.out.result(
    `Created A/B test ${t.name}: control ${t.control_label}, test ${t.test_label}; conclusive at ${t.confidence_level} with ${thousands(t.min_sample_size)} trials per arm.`,
  )
  ctx.out.result(ctx.out.style('gray', `id ${t.id}`))
}

export async function record(
  ctx: Context,
  test: string,
  opts: { variant?: string; successes?: string; trials?: string; fromEvaluation?: string },
) {
  const manual = opts.variant !== undefined || opts.successes !== undefined || opts.trials !== undefined
  if (opts.fromEvaluation !== undefined && manual) {
    throw new UsageError('Give either --from-evaluation or --variant, --successes and --trials, not both.')
  }
  if (opts.fromEvaluation === undefined && !manual) {
    throw new UsageError("'ab record' needs --variant, --successes and --trials, or --from-evaluation.")
  }
  let run: (pool: import('pg').Pool, options: ab.StoreOptions) => Promise<ab.RecordResult>
  if (opts.fromEvaluation !== undefined) {
    const evaluation = evaluationId(opts.fromEvaluation, '--from-evaluation')
    run = (pool, options) => ab.recordEvaluation(pool, test, evaluation, options)
  } else {
    const variant = ab.variant(opts.variant)
    if (opts.successes === undefined) throw new UsageError('--successes is required with --variant.')
    if (opts.trials === undefined) throw new UsageError('--trials is required with --variant.')
    const c = ab.counts(opts.successes, opts.trials)
    run = (pool, options) => ab.recordObservation(pool, test, { variant, ...c }, options)
  }
  const { pool, options } = await shadow(ctx)
  const r = await run(pool, options)
  for (const w of r.warnings) ctx.out.warn(w)
  if (ctx.out.json) return ctx.out.document(r)
  const what = r.recorded
    .map((x) => `${x.variant} ${thousands(x.successes)}/${thousands(x.trials)}`)
    .join(', ')
  ctx.out.result(
    `Recorded ${what} in ${r.test}${r.evaluation_id ? ` from evaluation ${r.evaluation_id}` : ''}.`,
  )
  ctx.out.result(
    `Totals: control ${thousands(r.totals.control.successes)}/${thousands(r.totals.control.trials)}, test ${thousands(r.totals.test.successes)}/${thousands(r.totals.test.trials)}.`,
  )
}

export async function results(ctx: Context, test: string, opts: { seed?: string }) {
  const seed = opts.seed === undefined ? undefined : ab.seed(opts.seed)
  const { pool, options } = await shadow(ctx)
  const r = await ab.abResults(pool, test, { ...options, ...(seed === undefined ? {} : { seed }) })
  for (const w of r.warnings) ctx.out.warn(w)
  if (ctx.out.json) return ctx.out.document(r)
  const o = ctx.out
  o.result(o.style(r.status === 'conclusive' ? 'green' : 'yellow', r.verdict))
  o.result('')
  o.result(
    renderTable(
      ['arm', 'label', 'successes', 'trials', 'mean', '95% interval', 'P(best)', 'exp. loss'],
      r.arms.map((a) => [
        a.variant,
        a.label,
        thousands(a.successes),
        thousands(a.trials),
        a.mean.toFixed(4),
        `${a.credible_interval.lower.toFixed(4)} - ${a.credible_interval.upper.toFixed(4)}`,
        prob(a.prob_best),
        prob(a.expected_loss),
      ]),
    ),
  )
  o.result('')
  const p = r.prob_test_beats_control
  o.result(
    `P(test beats control): ${p.exact === null ? `exact n/a (${p.exact_reason})` : `${prob(p.exact)} exact`}, ${prob(p.thompson)} Thompson (${thousands(r.thompson.draws)} draws, seed ${r.thompson.seed})`,
  )
  const s = r.sample_ratio
  o.result(sampleRatioLine(s, (text) => o.style('red', text)))
  for (const c of r.checks) o.result(`${c.passed ? o.style('green', '✔') : o.style('red', '✘')} ${c.detail}`)
  if (r.stored.status !== 'running') {
    o.result(
      o.style(
        'gray',
        `stored: ${r.stored.status}, winner ${r.stored.winner ?? 'none'}, at ${r.stored.concluded_at}`,
      ),
    )
  }
}

export async function assign(ctx: Context, test: string, opts: { seed?: string; dryRun?: boolean }) {
  const seed = opts.seed === undefined ? undefined : ab.seed(opts.seed)
  const { pool, options } = await shadow(ctx)
  const a = await ab.assignVariant(pool, test, {
    ...options,
    ...(seed === undefined ? {} : { seed }),
    dryRun: opts.dryRun === true,
  })
  if (ctx.out.json) return ctx.out.document(a)
  ctx.out.result(a.variant)
}

/** The sample-ratio check in one line of the results. */
function sampleRatioLine(s: ab.SampleRatio, red: (text: string) => string): string {
  if (s.expected_from === 'assignments') {
    const units = `control ${thousands(s.assigned.control)}, test ${thousands(s.assigned.test)}`
    return `Sample ratio: trials against the units ab assign gave (${units}): ${s.flagged ? `${red('MISMATCH')}, an arm has more trials than units` : 'ok'}`
  }
  if (s.p_value === null) return `Sample ratio: not checked (${s.reason})`
  return `Sample ratio: p = ${ab.pValue(s.p_value, 3)} against 50/50${s.flagged ? ` ${red('MISMATCH')}` : ', ok'}`
}
