import fs from 'node:fs'
import os from 'node:os'
import type { Context } from '../context.js'
import { parseDuration } from '../core/config/duration.js'
import { EXIT, OperationError, SafetyError, UsageError } from '../core/errors.js'
import { evaluate, type EvaluationDoc } from '../core/shadow/evaluate.js'
import { getEvaluation, listEvaluations, storeEvaluation } from '../core/shadow/evaluations.js'
import { DEFAULT_THRESHOLDS, type Thresholds } from '../core/shadow/recommend.js'
import { activeVersion, getRule } from '../core/shadow/rule-store.js'
import { formatRef, mixedScales, parseRuleRef } from '../core/shadow/rules.js'
import { progressBar } from '../ui/progress.js'
import { renderTable } from '../ui/table.js'
import { thousands } from '../core/thousands.js'

export interface EvaluateFlags {
  candidate: string
  control?: string
  traffic: string
  sampleSize?: number
  minSampleSize?: number
  minAttacks?: number
  minPrecision?: string
  minRecall?: string
  confidence?: string
  fpCost?: string
  fnCost?: string
  workers?: number
  seed?: number
  draws?: number
  maxDisorder?: string
  skipInvalid?: boolean
  store?: boolean
  requireApproval?: boolean
}

function fraction(v: string | undefined, flag: string, def: number, open = false): number {
  if (v === undefined) return def
  const n = Number(v)
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1 || (open && (n === 0 || n === 1)))
    throw new UsageError(
      `${flag} must be a number ${open ? 'strictly between 0 and 1' : 'from 0 to 1'}, e.g. 0.95; got '${v}'.`,
    )
  return n
}

function cost(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined
  const n = Number(v)
  if (v.trim() === '' || !Number.isFinite(n) || n < 0)
    throw new UsageError(`${flag} must be a number ≥ 0 (the cost of one such error); got '${v}'.`)
  return n
}

const shadowDb = async (ctx: Context) => (await ctx.shadowDatabase()).pool

export async function run(ctx: Context, f: EvaluateFlags) {
  // Every flag is checked before the database or the file is touched.
  const candidateRef = parseRuleRef(f.candidate, '--candidate')
  const controlText = f.control ?? 'active'
  const controlRef = controlText === 'active' ? null : parseRuleRef(controlText, '--control')
  if (controlRef && controlRef.version === null)
    throw new UsageError(
      `--control needs a version (e.g. ${controlRef.id}@1), or 'active' for the deployed one.`,
    )
  const thresholds: Thresholds = {
    minSampleSize: f.minSampleSize ?? DEFAULT_THRESHOLDS.minSampleSize,
    minAttacks: f.minAttacks ?? DEFAULT_THRESHOLDS.minAttacks,
    minPrecision: fraction(f.minPrecision, '--min-precision', DEFAULT_THRESHOLDS.minPrecision),
    minRecall: fraction(f.minRecall, '--min-recall', DEFAULT_THRESHOLDS.minRecall),
    confidence: fraction(f.confidence, '--confidence', DEFAULT_THRESHOLDS.confidence, true),
  }
  if (thresholds.confidence <= 0.5)
    throw new UsageError(`--confidence must be above 0.5; got '${f.confidence}'.`)
  if (f.sampleSize !== undefined && f.sampleSize < 1)
    throw new UsageError('--sample-size must be at least 1.')
  const fpCost = cost(f.fpCost, '--fp-cost')
  const fnCost = cost(f.fnCost, '--fn-cost')
  // --workers itself is bounded by its parser (1 to 64); a machine with more cores gets 64.
  const workers = f.workers ?? Math.min(os.availableParallelism(), 64)
  const maxDisorderMs =
    f.maxDisorder === undefined
      ? 60_000
      : /^0(ms|s|m|h)?$/.test(f.maxDisorder.trim())
        ? 0
        : parseDuration(f.maxDisorder, '--max-disorder')
  if (f.draws !== undefined && f.draws < 100_000) throw new UsageError('--draws must be at least 100000.')
  const fromStdin = f.traffic === '-'
  // Stat once, before the database: a missing file is exit 2 at once, and a pipe or /dev/stdin
  // has no size (the bar then shows the count only).
  const stat = fromStdin ? null : fs.statSync(f.traffic, { throwIfNoEntry: false })
  if (!fromStdin && !stat) throw new UsageError(`--traffic: there is no file ${f.traffic}.`)

  const db = await shadowDb(ctx)
  const candidate = await getRule(db, candidateRef)
  let control
  if (controlRef) control = await getRule(db, controlRef)
  else {
    const active = await activeVersion(db, candidate.id)
    if (active === null) {
      throw new OperationError(
        `${candidate.id} has no active version (it was never deployed), so there is no control to compare with.`,
        {
          code: 'NO_ACTIVE_VERSION',
          hint: `Name one: --control ${candidate.id}@1, or another rule such as --control waf-threshold@1.`,
        },
      )
    }
    control = await getRule(db, { id: candidate.id, version: active })
  }
  if (control.id === candidate.id && control.version === candidate.version)
    throw new UsageError(
      `The candidate and the control are both ${formatRef(candidate)}: compare two different rules or versions.`,
    )

  const bar = progressBar(ctx.out, 'replaying', stat?.isFile() ? stat.size : 0, 'lines')
  let doc: EvaluationDoc
  try {
    doc = await evaluate({
      candidate,
      control,
      traffic: f.traffic,
      ...(fromStdin ? { stdin: ctx.io.stdin } : {}),
      workers,
      ...(f.sampleSize === undefined ? {} : { sampleSize: f.sampleSize }),
      skipInvalid: f.skipInvalid === true,
      maxDisorderMs,
      seed: f.seed ?? 1,
      ...(f.draws === undefined ? {} : { draws: f.draws }),
      thresholds,
      ...(fpCost === undefined ? {} : { fpCost }),
      ...(fnCost === undefined ? {} : { fnCost }),
      signal: ctx.signal,
      idleTimeoutMs: ctx.settings().timeoutMs.value,
      onProgress: (lines, bytes) => bar.update(bytes, lines),
    })
  } finally {
    bar.done()
  }
  if (ctx.signal.aborted) return

  const stored = f.store !== false
  if (stored) doc.created_at = await storeEvaluation(db, doc)
  for (const [field, n] of Object.entries(doc.traffic.missing_fields ?? {})) {
    if (n === 0) continue
    ctx.out.warn(
      `${thousands(n)} of ${thousands(doc.traffic.lines)} lines (${pct(n / doc.traffic.lines)}) have no ${field}: no rule part that reads it blocks them. Is the traffic export dropping it?`,
    )
  }
  for (const [role, rule] of [
    ['candidate', candidate],
    ['control', control],
  ] as const) {
    const scales = mixedScales(rule.definition)
    if (scales && doc[`${role}_metrics`].auc_roc !== null)
      ctx.out.warn(
        `${formatRef(rule)} (${role}) scores as the ${rule.definition.type === 'all' ? 'min' : 'max'} of parts on different scales (${scales.join(', ')}): its AUC-ROC ranks events by raw scores in different units, not by what the rule decides; precision, recall and MCC do not depend on it.`,
      )
  }
  if (doc.traffic.skipped_invalid + doc.traffic.skipped_out_of_order > 0) {
    ctx.out.warn(
      `skipped ${doc.traffic.skipped_invalid} invalid and ${doc.traffic.skipped_out_of_order} out-of-order line(s) (--skip-invalid).`,
    )
  }
  const refused = f.requireApproval === true && !doc.recommendation.decision.startsWith('APPROVE')
  if (ctx.out.json) {
    // The evaluation is the one document, with the gate's answer in it; the refusal is the exit code.
    ctx.out.document({ ...doc, stored, ...(f.requireApproval ? { approved: !refused } : {}) })
    if (refused) {
      ctx.out.error(notApproved(doc))
      ctx.exitCode = EXIT.refused
    }
    return
  }
  render(ctx, doc, stored ? 'now' : 'no')
  if (refused) throw new SafetyError(notApproved(doc), { code: 'NOT_APPROVED' })
}

const notApproved = (doc: EvaluationDoc) =>
  `The candidate was not approved (${doc.recommendation.decision}); --require-approval fails the run.`

const pct = (x: number | null) => (x === null ? 'n/a' : `${(x * 100).toFixed(2)}%`)
const fix = (x: number | null, d = 4) => (x === null ? 'n/a' : x.toFixed(d))
/** p-values: tiny ones in scientific notation, never a misleading "0.00". */
const pv = (p: number) => (p === 0 ? '< 1e-300' : p < 0.001 ? p.toExponential(2) : p.toFixed(3))

/** `stored`: 'now' (just stored), 'before' (evaluate show), or 'no' (--no-store). */
function render(ctx: Context, doc: EvaluationDoc, stored: 'now' | 'before' | 'no') {
  const out = ctx.out
  const r = doc.recommendation
  const colour = r.decision.startsWith('APPROVE') ? 'green' : r.decision === 'REJECT' ? 'red' : 'yellow'
  out.result(
    `${out.style('bold', out.style(colour, r.decision))}  confidence ${fix(r.confidence_score, 3)}, risk ${r.risk_level}`,
  )
  out.result(
    `candidate ${formatRef(doc.candidate)} vs control ${formatRef(doc.control)} on ${thousands(doc.sample_size)} events (${thousands(doc.attacks)} attacks)`,
  )
  out.result()
  const c = doc.control_metrics
  const k = doc.candidate_metrics
  const rows: Array<[string, string, string]> = [
    ['blocked attacks (TP)', thousands(c.tp), thousands(k.tp)],
    ['blocked benign (FP)', thousands(c.fp), thousands(k.fp)],
    ['passed benign (TN)', thousands(c.tn), thousands(k.tn)],
    ['missed attacks (FN)', thousands(c.fn), thousands(k.fn)],
    ['precision', pct(c.precision), pct(k.precision)],
    ['recall', pct(c.recall), pct(k.recall)],
    ['F1', fix(c.f1), fix(k.f1)],
    ['accuracy', pct(c.accuracy), pct(k.accuracy)],
    ['false-positive rate', pct(c.fpr), pct(k.fpr)],
    ['MCC', fix(c.mcc), fix(k.mcc)],
    ['AUC-ROC', fix(c.auc_roc), fix(k.auc_roc)],
  ]
  const cost = doc.bayes.expected_cost_per_10k
  if (cost) rows.push(['cost per 10,000 requests', cost.control.toFixed(2), cost.candidate.toFixed(2)])
  out.result(
    renderTable(['', `control ${formatRef(doc.control)}`, `candidate ${formatRef(doc.candidate)}`], rows),
  )
  for (const [who, m] of [
    ['control', c],
    ['candidate', k],
  ] as const) {
    for (const [metric, why] of Object.entries(m.undefined_reasons))
      out.result(out.style('gray', `${who} ${metric} n/a: ${why}`))
  }
  out.result()
  const s = doc.significance
  out.result(
    `McNemar (${s.mcnemar.method === 'exact_binomial' ? 'exact binomial' : 'chi-square, continuity-corrected'}): statistic ${fix(s.mcnemar.statistic)}, p ${pv(s.mcnemar.p_value)}; ${thousands(s.mcnemar.c)} events only the candidate got right, ${thousands(s.mcnemar.b)} only the control`,
  )
  out.result(
    s.chi_square.statistic === null
      ? `chi-square (2x4): not computed: ${s.chi_square.reason}`
      : `chi-square (2x4, df ${s.chi_square.df}): statistic ${fix(s.chi_square.statistic)}, p ${pv(s.chi_square.p_value!)}${s.chi_square.note ? ` (${s.chi_square.note})` : ''}`,
  )
  const b = doc.bayes
  out.result(
    `P(candidate better): ${fix(b.prob_candidate_better_paired, 4)} on the ${thousands(s.mcnemar.discordant)} events where they disagree (the verdict's); ${fix(b.prob_candidate_better, 4)} from each rule's accuracy (exact ${fix(b.prob_candidate_better_exact, 4)}, Thompson ${fix(b.prob_candidate_better_thompson, 4)} over ${thousands(b.draws)} draws); expected loss: candidate ${b.expected_loss_candidate.toExponential(2)}, control ${b.expected_loss_control.toExponential(2)}`,
  )
  out.result()
  for (const line of r.reasons) {
    out.result(
      `  ${line.startsWith('PASS') ? out.style('green', 'PASS') : out.style('red', 'FAIL')}${line.slice(4)}`,
    )
  }
  out.result()
  const conclusive = doc.conclusive ? 'conclusive' : 'not conclusive'
  const sha = `traffic sha256 ${doc.traffic.sha256.slice(0, 16)}…`
  out.info(
    stored === 'now'
      ? `stored as evaluation ${doc.id} (${conclusive}); ${sha}`
      : stored === 'before'
        ? `evaluation ${doc.id} (${conclusive}), stored ${doc.created_at}; ${sha}`
        : 'not stored (--no-store)',
  )
}

export async function list(ctx: Context, opts: { rule?: string; limit?: number }) {
  const rule = opts.rule === undefined ? undefined : parseRuleRef(opts.rule, '--rule').id
  const rows = await listEvaluations(await shadowDb(ctx), {
    ...(rule ? { rule } : {}),
    limit: opts.limit ?? 20,
  })
  if (ctx.out.json) return ctx.out.document(rows)
  if (rows.length === 0)
    return ctx.out.info(
      rule
        ? `No evaluations of rule ${rule} are stored (as candidate or control).`
        : "No evaluations stored yet; run 'shieldx evaluate --candidate RULE --traffic FILE'.",
    )
  ctx.out.result(
    renderTable(
      ['id', 'created', 'candidate', 'control', 'decision', 'conclusive', 'events'],
      rows.map((r) => [
        r.id,
        r.created_at.slice(0, 19).replace('T', ' '),
        r.candidate,
        r.control,
        r.decision,
        r.conclusive ? 'yes' : 'no',
        thousands(r.sample_size),
      ]),
    ),
  )
}

export async function show(ctx: Context, id: string) {
  const doc = await getEvaluation(await shadowDb(ctx), id)
  if (ctx.out.json) return ctx.out.document(doc)
  render(ctx, doc, 'before')
  ctx.out.info(`evaluated on ${doc.traffic.file}`)
}
