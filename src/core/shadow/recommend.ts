/**
 * The verdict on a candidate rule, from the numbers an evaluation computed. Every threshold is
 * checked and reported, passed or failed, in words; the decision follows from them.
 *
 * "Better with the required confidence" is judged on the paired decisions: both rules decide the
 * same events, so what tells them apart is the events where they disagree. With c events only the
 * candidate got right and b only the control, P(candidate better) = P(theta > 1/2) for theta ~
 * Beta(c + 1, b + 1). Two independent Betas on each rule's accuracy (also reported) ignore the
 * pairing and would hold back a candidate that is right on every disagreement until the traffic
 * is huge.
 *
 *
 * - NEED_MORE_DATA: below the minimum sample size, too few attacks or benign requests to judge
 *   (none at all is always too few), more than 1% of the lines skipped, or the evidence points
 *   neither way (neither rule better with the required confidence).
 * - REJECT: the candidate misses the minimum precision or recall, or the control is better with
 *   the required confidence.
 * - APPROVE_FULL_DEPLOYMENT: every threshold passes, the candidate is better with the required
 *   confidence, McNemar's test says the difference is real, it blocks no more benign traffic
 *   than the control, and (with costs) it costs no more.
 * - APPROVE_CANARY: every threshold passes and the candidate is better with the required
 *   confidence, but the difference is not significant, or it blocks more benign traffic or costs
 *   more than the control: ship it to a slice of traffic first.
 */
import { thousands } from '../thousands.js'

export type Decision = 'APPROVE_FULL_DEPLOYMENT' | 'APPROVE_CANARY' | 'REJECT' | 'NEED_MORE_DATA'
export type RiskLevel = 'low' | 'medium' | 'high'

export interface Thresholds {
  minSampleSize: number
  /** attacks and benign requests each, so that recall and the false-positive rate mean something */
  minAttacks: number
  minPrecision: number
  minRecall: number
  confidence: number
}

export const DEFAULT_THRESHOLDS: Thresholds = {
  minSampleSize: 1000,
  minAttacks: 30,
  minPrecision: 0.9,
  minRecall: 0.5,
  confidence: 0.95,
}

export interface RecommendationInput {
  sampleSize: number
  attacks: number
  benign: number
  candidate: { precision: number | null; recall: number | null; fpr: number | null }
  control: { fpr: number | null }
  /** P(candidate better) on the paired decisions (see above) */
  probCandidateBetter: number
  /** lines skipped (invalid or too far out of order) and lines read */
  skippedLines: number
  lines: number
  /** posterior P(candidate precision >= minPrecision), P(recall >= minRecall) */
  probPrecisionOk: number
  probRecallOk: number
  mcnemarP: number
  cost?: { control: number; candidate: number }
}

export interface Check {
  name: string
  passed: boolean
  detail: string
}

export interface Recommendation {
  decision: Decision
  confidence_score: number
  risk_level: RiskLevel
  reasons: string[]
  checks: Check[]
}

const pct = (x: number | null) => (x === null ? 'undefined' : `${(x * 100).toFixed(2)}%`)

/** More skipped lines than this share makes the sample untrustworthy: what was skipped may differ. */
export const MAX_SKIPPED_SHARE = 0.01

export function recommend(input: RecommendationInput, t: Thresholds): Recommendation {
  const checks: Check[] = []
  const check = (name: string, passed: boolean, detail: string) => {
    checks.push({ name, passed, detail })
    return passed
  }
  const enoughSample = check(
    'sample_size',
    input.sampleSize >= t.minSampleSize,
    `sample size ${thousands(input.sampleSize)} ${input.sampleSize >= t.minSampleSize ? '≥' : '<'} the minimum ${thousands(t.minSampleSize)}`,
  )
  const skippedShare = input.lines > 0 ? input.skippedLines / input.lines : 0
  const fewSkipped = check(
    'skipped_lines',
    skippedShare <= MAX_SKIPPED_SHARE,
    `${thousands(input.skippedLines)} of ${thousands(input.lines)} lines skipped (${pct(skippedShare)}) ${skippedShare <= MAX_SKIPPED_SHARE ? '≤' : '>'} ${pct(MAX_SKIPPED_SHARE)}`,
  )
  // At least one of each, whatever --min-attacks says: without it recall (or the false-positive
  // rate) is undefined, and nothing can be judged.
  const least = Math.max(1, t.minAttacks)
  const minimum = t.minAttacks >= 1 ? `the minimum ${thousands(least)}` : 'the 1 needed to judge at all'
  const enoughAttacks = check(
    'attacks',
    input.attacks >= least,
    `${thousands(input.attacks)} attacks in the sample ${input.attacks >= least ? '≥' : '<'} ${minimum}`,
  )
  const enoughBenign = check(
    'benign',
    input.benign >= least,
    `${thousands(input.benign)} benign requests in the sample ${input.benign >= least ? '≥' : '<'} ${minimum}`,
  )
  const c = input.candidate
  const precisionOk = check(
    'precision',
    c.precision !== null && c.precision >= t.minPrecision,
    c.precision === null
      ? `candidate precision is undefined (it blocked nothing), the minimum is ${pct(t.minPrecision)}`
      : `candidate precision ${pct(c.precision)} ${c.precision >= t.minPrecision ? '≥' : '<'} the minimum ${pct(t.minPrecision)}`,
  )
  const recallOk = check(
    'recall',
    c.recall !== null && c.recall >= t.minRecall,
    c.recall === null
      ? `candidate recall is undefined (no attacks in the sample), the minimum is ${pct(t.minRecall)}`
      : `candidate recall ${pct(c.recall)} ${c.recall >= t.minRecall ? '≥' : '<'} the minimum ${pct(t.minRecall)}`,
  )
  const p = input.probCandidateBetter
  const better = check(
    'confidence',
    p >= t.confidence,
    `probability the candidate decides better than the control (on the events where they disagree) ${pct(p)} ${p >= t.confidence ? '≥' : '<'} the confidence level ${pct(t.confidence)}`,
  )
  const alpha = 1 - t.confidence
  const significant = check(
    'significance',
    input.mcnemarP < alpha,
    `McNemar's test on the paired decisions: p = ${input.mcnemarP === 0 ? '< 1e-300' : input.mcnemarP.toPrecision(3)} ${input.mcnemarP < alpha ? '<' : '≥'} ${alpha.toPrecision(2)}`,
  )
  const fprOk =
    c.fpr === null || input.control.fpr === null
      ? check('false_positives', true, 'false-positive rates undefined (no benign requests): not compared')
      : check(
          'false_positives',
          c.fpr <= input.control.fpr,
          `candidate blocks ${pct(c.fpr)} of benign requests, the control ${pct(input.control.fpr)}`,
        )
  const costOk = input.cost
    ? check(
        'cost',
        input.cost.candidate <= input.cost.control,
        `expected cost per 10,000 requests: candidate ${input.cost.candidate.toFixed(2)}, control ${input.cost.control.toFixed(2)}`,
      )
    : true

  const reasons = checks.map((x) => `${x.passed ? 'PASS' : 'FAIL'} ${x.detail}`)
  const decided = (decision: Decision, confidence_score: number, risk_level: RiskLevel): Recommendation => ({
    decision,
    confidence_score: round(confidence_score),
    risk_level,
    reasons,
    checks,
  })

  if (!enoughSample || !enoughAttacks || !enoughBenign || !fewSkipped)
    return decided('NEED_MORE_DATA', Math.max(p, 1 - p), 'high')
  if (!precisionOk || !recallOk) {
    // How sure we are the candidate misses the bar: the posterior mass below it.
    const sure = Math.max(precisionOk ? 0 : 1 - input.probPrecisionOk, recallOk ? 0 : 1 - input.probRecallOk)
    return decided('REJECT', sure, 'high')
  }
  if (p <= 1 - t.confidence) return decided('REJECT', 1 - p, 'high')
  if (!better) return decided('NEED_MORE_DATA', Math.max(p, 1 - p), 'high')
  const sure = Math.min(p, input.probPrecisionOk, input.probRecallOk)
  if (significant && fprOk && costOk) return decided('APPROVE_FULL_DEPLOYMENT', sure, 'low')
  return decided('APPROVE_CANARY', sure, 'medium')
}

function round(x: number): number {
  return Math.round(x * 1e6) / 1e6
}
