/**
 * `evaluate`: replay labelled traffic through the control and the candidate, then say — with the
 * metrics, the significance tests and the Bayesian comparison — whether the candidate is better,
 * how sure we are, and what it would cost. The document returned is what `--json` prints and
 * what shadow.evaluations keeps.
 */
import { randomUUID } from 'node:crypto'
import path from 'node:path'
import { MIN_THOMPSON_DRAWS, posterior, probBetterExact, thompson } from './bayes.js'
import { type RuleMetrics, ruleMetrics, ScoreHistogram } from './metrics.js'
import { recommend, type Recommendation, type Thresholds } from './recommend.js'
import { replay } from './replay.js'
import type { StoredRule } from './rule-store.js'
import { ruleBody } from './rules.js'
import { betaInc, chiSquareIndependence, mcnemar } from './stats.js'
import type { RuleTally } from './tally.js'

export interface EvaluateOptions {
  candidate: StoredRule
  control: StoredRule
  /** a path, or '-' for `stdin` */
  traffic: string
  stdin?: import('node:stream').Readable
  workers: number
  sampleSize?: number
  skipInvalid: boolean
  maxDisorderMs: number
  seed: number
  draws?: number
  thresholds: Thresholds
  fpCost?: number
  fnCost?: number
  signal?: AbortSignal
  onProgress?: (events: number, bytesRead: number) => void
  /** A pipe or standard input that sends nothing for this long fails the run (--timeout). */
  idleTimeoutMs?: number
}

type Metrics = Omit<RuleMetrics, 'undefined'> & { undefined_reasons: RuleMetrics['undefined'] }

export interface EvaluationDoc {
  id: string
  candidate: { id: string; version: number; name: string }
  control: { id: string; version: number; name: string }
  traffic: {
    file: string
    sha256: string
    bytes: number
    compressed: boolean
    lines: number
    skipped_invalid: number
    skipped_out_of_order: number
    /**
     * Per field the rules read: the valid lines without it. A rule part reading a field never
     * blocks a request without it, so a log that dropped a field makes that rule look harmless.
     */
    missing_fields: Record<string, number>
    first_ts: string | null
    last_ts: string | null
  }
  sample_size: number
  attacks: number
  benign: number
  control_metrics: Metrics
  candidate_metrics: Metrics
  significance: {
    mcnemar: { statistic: number; p_value: number; method: string; discordant: number; b: number; c: number }
    chi_square: {
      statistic: number | null
      df: number
      p_value: number | null
      note?: string
      reason?: string
    }
    significant: boolean
  }
  bayes: {
    prior: 'Beta(1,1)'
    /** Beta(1,1) on each rule's rate of correct decisions: P(candidate's > control's) */
    prob_candidate_better: number
    prob_candidate_better_exact: number | null
    prob_candidate_better_thompson: number
    draws: number
    seed: number
    expected_loss_candidate: number
    expected_loss_control: number
    /** Beta(1,1) on P(candidate right | the two disagree): what the verdict is judged on */
    prob_candidate_better_paired: number
    expected_cost_per_10k?: { control: number; candidate: number; fp_cost: number; fn_cost: number }
  }
  recommendation: Recommendation
  conclusive: boolean
  thresholds: Thresholds
  workers: number
  elapsed_ms: number
  created_at?: string
}

function metricsOf(t: RuleTally): Metrics {
  // A request without the field a rule reads scores -Infinity: still the lowest for the AUC.
  const hist = ScoreHistogram.fromEntries(
    [...t.scores].map(([s, [pos, neg]]) => [
      Number.isFinite(s) ? s : s > 0 ? Number.MAX_VALUE : -Number.MAX_VALUE,
      pos,
      neg,
    ]),
  )
  const { undefined: reasons, ...m } = ruleMetrics({ tp: t.tp, fp: t.fp, tn: t.tn, fn: t.fn }, hist)
  return { ...m, undefined_reasons: reasons }
}

const right = (t: RuleTally) => t.tp + t.tn

export async function evaluate(options: EvaluateOptions): Promise<EvaluationDoc> {
  const started = Date.now()
  const r = await replay({
    file: options.traffic,
    ...(options.stdin ? { stdin: options.stdin } : {}),
    control: ruleBody(options.control.definition),
    candidate: ruleBody(options.candidate.definition),
    workers: options.workers,
    ...(options.sampleSize === undefined ? {} : { sampleSize: options.sampleSize }),
    skipInvalid: options.skipInvalid,
    maxDisorderMs: options.maxDisorderMs,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(options.idleTimeoutMs === undefined ? {} : { idleTimeoutMs: options.idleTimeoutMs }),
  })
  const t = r.tally
  const n = t.events
  const controlMetrics = metricsOf(t.control)
  const candidateMetrics = metricsOf(t.candidate)

  const b = t.control_only_right
  const c = t.candidate_only_right
  const mc = mcnemar(b, c)
  const chi = chiSquareIndependence(
    [
      [t.control.tp, t.control.fp, t.control.tn, t.control.fn],
      [t.candidate.tp, t.candidate.fp, t.candidate.tn, t.candidate.fn],
    ],
    { columns: ['TP', 'FP', 'TN', 'FN'] },
  )
  const alpha = 1 - options.thresholds.confidence

  // Bayes: Beta(1,1) priors on each rule's rate of correct decisions.
  const postControl = posterior(right(t.control), n)
  const postCandidate = posterior(right(t.candidate), n)
  const draws = Math.max(options.draws ?? MIN_THOMPSON_DRAWS, MIN_THOMPSON_DRAWS)
  const ts = thompson([postControl, postCandidate], { draws, seed: options.seed })
  const exact = probBetterExact(postControl, postCandidate)
  const probBetter = exact.value ?? ts.prob_best[1]!
  // The verdict's probability: on the paired decisions (recommend.ts says why).
  const probPaired = 1 - betaInc(c + 1, b + 1, 0.5)

  let cost: EvaluationDoc['bayes']['expected_cost_per_10k']
  if (options.fpCost !== undefined || options.fnCost !== undefined) {
    const fpCost = options.fpCost ?? 0
    const fnCost = options.fnCost ?? 0
    // Posterior means of the FP and FN shares under a Dirichlet(1,1,1,1) prior on the four outcomes.
    const perTenK = (x: RuleTally) => (10_000 * (fpCost * (x.fp + 1) + fnCost * (x.fn + 1))) / (n + 4)
    cost = {
      control: round(perTenK(t.control), 4),
      candidate: round(perTenK(t.candidate), 4),
      fp_cost: fpCost,
      fn_cost: fnCost,
    }
  }

  const th = options.thresholds
  const k = t.candidate
  const recommendation = recommend(
    {
      sampleSize: n,
      attacks: t.attacks,
      benign: n - t.attacks,
      candidate: {
        precision: candidateMetrics.precision,
        recall: candidateMetrics.recall,
        fpr: candidateMetrics.fpr,
      },
      control: { fpr: controlMetrics.fpr },
      probCandidateBetter: probPaired,
      skippedLines: r.skipped.invalid + r.skipped.out_of_order,
      lines: r.lines,
      // P(precision >= min) under Beta(tp+1, fp+1); the same for recall with Beta(tp+1, fn+1).
      probPrecisionOk: 1 - betaInc(k.tp + 1, k.fp + 1, th.minPrecision),
      probRecallOk: 1 - betaInc(k.tp + 1, k.fn + 1, th.minRecall),
      mcnemarP: mc.p_value,
      ...(cost ? { cost } : {}),
    },
    th,
  )

  const iso = (ms: number) => (Number.isFinite(ms) ? new Date(ms).toISOString() : null)
  const def = (s: StoredRule) => ({ id: s.id, version: s.version, name: s.definition.name })
  return {
    id: randomUUID(),
    candidate: def(options.candidate),
    control: def(options.control),
    traffic: {
      file: options.traffic === '-' ? '(standard input)' : path.resolve(options.traffic),
      sha256: r.traffic_sha256,
      bytes: r.bytes,
      compressed: r.compressed,
      lines: r.lines,
      skipped_invalid: r.skipped.invalid,
      skipped_out_of_order: r.skipped.out_of_order,
      missing_fields: r.missing_fields,
      first_ts: iso(t.first_ts),
      last_ts: iso(t.last_ts),
    },
    sample_size: n,
    attacks: t.attacks,
    benign: n - t.attacks,
    control_metrics: controlMetrics,
    candidate_metrics: candidateMetrics,
    significance: {
      mcnemar: { ...mc, b, c },
      chi_square: {
        statistic: chi.statistic,
        df: chi.df,
        p_value: chi.p_value,
        ...(chi.note ? { note: chi.note } : {}),
        ...(chi.reason ? { reason: chi.reason } : {}),
      },
      significant: mc.p_value < alpha,
    },
    bayes: {
      prior: 'Beta(1,1)',
      prob_candidate_better: round(probBetter, 9),
      prob_candidate_better_exact: exact.value === null ? null : round(exact.value, 9),
      prob_candidate_better_thompson: ts.prob_best[1]!,
      draws,
      seed: options.seed,
      expected_loss_candidate: ts.expected_loss[1]!,
      expected_loss_control: ts.expected_loss[0]!,
      prob_candidate_better_paired: round(probPaired, 9),
      ...(cost ? { expected_cost_per_10k: cost } : {}),
    },
    recommendation,
    conclusive: recommendation.decision !== 'NEED_MORE_DATA',
    thresholds: th,
    workers: r.workers,
    elapsed_ms: Date.now() - started,
  }
}

function round(x: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(x * f) / f
}
