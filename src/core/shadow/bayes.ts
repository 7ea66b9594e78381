/**
 * Beta-Binomial comparison of success rates: Beta(1, 1) priors, posteriors, equal-tailed credible
 * intervals, P(one rate > another) in closed form, and Thompson sampling (probability of being
 * best, expected loss) with the seeded generator of random.ts, so the same seed gives the same
 * numbers.
 */
import { type Random, sampleBeta, seededRandom } from './random.js'
import { betaIncInv, defined, logBeta, type Maybe, undefinedBecause } from './stats.js'

export interface BetaPosterior {
  alpha: number
  beta: number
}

/** The prior: Beta(1, 1), uniform on [0, 1]. */
export const PRIOR: BetaPosterior = { alpha: 1, beta: 1 }

/** Beta(successes + 1, failures + 1). */
export function posterior(successes: number, trials: number): BetaPosterior {
  if (!Number.isSafeInteger(trials) || trials < 0) throw new RangeError(`trials must be a whole number >= 0`)
  if (!Number.isSafeInteger(successes) || successes < 0 || successes > trials) {
    throw new RangeError(`successes must be a whole number from 0 to trials (${trials}), got ${successes}`)
  }
  return { alpha: successes + PRIOR.alpha, beta: trials - successes + PRIOR.beta }
}

export function posteriorMean(p: BetaPosterior): number {
  return p.alpha / (p.alpha + p.beta)
}

export interface CredibleInterval {
  level: number
  lower: number
  upper: number
}

/** Equal-tailed interval: the (1 - level)/2 and (1 + level)/2 quantiles of the posterior. */
export function credibleInterval(p: BetaPosterior, level = 0.95): CredibleInterval {
  if (!(level > 0 && level < 1)) throw new RangeError(`level must be in (0, 1), got ${level}`)
  const tail = (1 - level) / 2
  return { level, lower: betaIncInv(p.alpha, p.beta, tail), upper: betaIncInv(p.alpha, p.beta, 1 - tail) }
}

/** Beyond this many terms the closed form sums only the terms that matter (windowedSum). */
export const MAX_EXACT_TERMS = 5_000_000

/**
 * P(X_b > X_a) for X_a ~ Beta(a.alpha, a.beta), X_b ~ Beta(b.alpha, b.beta), by the closed form
 * (Evan Miller, "Formulas for Bayesian A/B Testing"):
 *
 *   P(X_b > X_a) = sum_{i=0}^{b.alpha-1} B(a.alpha+i, a.beta+b.beta) / ((b.beta+i) B(1+i, b.beta) B(a.alpha, a.beta))
 *
 * summed in log space with the ratio of consecutive terms. The sum runs over one parameter, which
 * must be a whole number; the symmetries P(X_b > X_a) = 1 - P(X_a > X_b) and X -> 1 - X (which
 * swaps alpha and beta) let it run over the smallest of the four, so 1,000,000 trials with 99%
 * successes cost ~10,000 terms. Above `maxFullTerms` (5,000,000) terms it sums outward from the
 * largest term until the terms are e^-60 of it: the same value, deterministic, where Thompson's
 * estimate would move with the seed. Null, with the reason, when no parameter is a whole number.
 */
export function probBetterExact(
  a: BetaPosterior,
  b: BetaPosterior,
  options: { maxFullTerms?: number } = {},
): Maybe {
  for (const p of [a, b]) {
    if (!(p.alpha > 0 && p.beta > 0) || !Number.isFinite(p.alpha) || !Number.isFinite(p.beta)) {
      throw new RangeError(`Beta parameters must be finite and > 0, got (${p.alpha}, ${p.beta})`)
    }
  }
  const max = options.maxFullTerms ?? MAX_EXACT_TERMS
  const sum = (x: BetaPosterior, y: BetaPosterior) => (y.alpha > max ? windowedSum(x, y) : millerSum(x, y))
  const flip = (p: BetaPosterior): BetaPosterior => ({ alpha: p.beta, beta: p.alpha })
  // Each option: the parameter the sum runs over, and how the answer follows from the sum: as the
  // sum itself, or as 1 - the sum of the other way round.
  const ways: Array<{ terms: number; complement: boolean; value: () => number }> = [
    { terms: b.alpha, complement: false, value: () => sum(a, b) },
    { terms: a.alpha, complement: true, value: () => 1 - sum(b, a) },
    // X_b > X_a  <=>  1 - X_a > 1 - X_b
    { terms: a.beta, complement: false, value: () => sum(flip(b), flip(a)) },
    { terms: b.beta, complement: true, value: () => 1 - sum(flip(a), flip(b)) },
  ]
  const usable = ways.filter((o) => Number.isInteger(o.terms)).sort((x, y) => x.terms - y.terms)
  const best = usable[0]
  if (!best) return undefinedBecause('no Beta parameter is a whole number, so the closed form does not apply')
  let p = best.value()
  // 1 - a sum near 1 keeps only its absolute precision (~1e-16): a tail probability of 1e-23 came
  // out as 1e-9 or 0. Summed directly, it keeps its relative precision.
  if (best.complement && p < TAIL) {
    const direct = usable.find((o) => !o.complement)
    if (direct) p = direct.value()
  }
  return defined(Math.min(1, Math.max(0, p)))
}

/** Below this, a probability got as 1 - a sum is summed again directly (see probBetterExact). */
const TAIL = 1e-6

/** Evan Miller's sum for P(X_b > X_a), over i < b.alpha (a whole number). */
function millerSum(a: BetaPosterior, b: BetaPosterior): number {
  // term_0 = B(a.alpha, a.beta + b.beta) / (b.beta * B(1, b.beta) * B(a.alpha, a.beta)), and B(1, y) = 1/y.
  let logTerm = logBeta(a.alpha, a.beta + b.beta) - logBeta(a.alpha, a.beta)
  let logSum = logTerm
  const total = a.alpha + a.beta + b.beta
  for (let i = 0; i < b.alpha - 1; i++) {
    logTerm += Math.log(termRatio(a, b, total, i))
    logSum = logAddExp(logSum, logTerm)
  }
  return Math.exp(logSum)
}

/** term_{i+1} / term_i = (a.alpha + i)(b.beta + i) / ((a.alpha + a.beta + b.beta + i)(1 + i)) */
function termRatio(a: BetaPosterior, b: BetaPosterior, total: number, i: number): number {
  return ((a.alpha + i) / (total + i)) * ((b.beta + i) / (1 + i))
}

/**
 * millerSum over the terms that matter. The ratio of consecutive terms only falls as i grows, so
 * the terms rise to one peak, where the ratio crosses 1 (i* = (a.alpha b.beta - total) /
 * (a.beta + 1)), and fall away on both sides; summing outward from it until a term is e^-60 of the
 * peak leaves out less than e^-60 times the number of terms, relative to the sum (1e-17 at a
 * billion terms, 1e-10 at 2^53). A billion trials per arm take ~10^5-10^6 terms.
 */
function windowedSum(a: BetaPosterior, b: BetaPosterior): number {
  const total = a.alpha + a.beta + b.beta
  const last = b.alpha - 1
  const peak = Math.min(last, Math.max(0, Math.floor((a.alpha * b.beta - total) / (a.beta + 1))))
  const logPeak =
    logBeta(a.alpha + peak, a.beta + b.beta) -
    logBeta(a.alpha, a.beta) -
    Math.log(b.beta + peak) -
    logBeta(1 + peak, b.beta)
  const floor = logPeak - 60
  let logSum = logPeak
  let logTerm = logPeak
  for (let i = peak; i < last && logTerm > floor; i++) {
    logTerm += Math.log(termRatio(a, b, total, i))
    logSum = logAddExp(logSum, logTerm)
  }
  logTerm = logPeak
  for (let i = peak - 1; i >= 0 && logTerm > floor; i--) {
    logTerm -= Math.log(termRatio(a, b, total, i))
    logSum = logAddExp(logSum, logTerm)
  }
  return Math.exp(logSum)
}

function logAddExp(x: number, y: number): number {
  if (x === -Infinity) return y
  if (y === -Infinity) return x
  return x > y ? x + Math.log1p(Math.exp(y - x)) : y + Math.log1p(Math.exp(x - y))
}

export interface ThompsonOptions {
  /** Monte-Carlo draws; at least 100,000 (the default), so the estimates are good to ~0.3%. */
  draws?: number
  seed: number | string
}

export interface ThompsonResult {
  /** P(arm i has the highest rate), estimated. */
  prob_best: number[]
  /** E[max_j p_j - p_i]: what choosing arm i costs, in rate, on average. */
  expected_loss: number[]
  draws: number
  seed: number | string
}

export const MIN_THOMPSON_DRAWS = 100_000

/**
 * Monte-Carlo over the posteriors: each draw samples every arm's rate; the arm with the highest
 * rate wins the draw. The expected loss is estimated in the same draws (a closed form exists for
 * two arms, but the Monte-Carlo error at 100,000 draws is far below what matters for a decision).
 * Deterministic for a seed.
 */
export function thompson(posteriors: BetaPosterior[], options: ThompsonOptions): ThompsonResult {
  const draws = options.draws ?? MIN_THOMPSON_DRAWS
  if (!Number.isSafeInteger(draws) || draws < MIN_THOMPSON_DRAWS) {
    throw new RangeError(`Thompson sampling needs at least ${MIN_THOMPSON_DRAWS} draws, got ${draws}`)
  }
  if (posteriors.length < 1) throw new RangeError('Thompson sampling needs at least one arm')
  const rng = seededRandom(options.seed)
  const k = posteriors.length
  const wins = new Array<number>(k).fill(0)
  const loss = new Array<number>(k).fill(0)
  const x = new Array<number>(k).fill(0)
  for (let d = 0; d < draws; d++) {
    let best = 0
    for (let i = 0; i < k; i++) {
      x[i] = sampleBeta(rng, posteriors[i]!.alpha, posteriors[i]!.beta)
      if (x[i]! > x[best]!) best = i
    }
    wins[best]! += 1
    const max = x[best]!
    for (let i = 0; i < k; i++) loss[i]! += max - x[i]!
  }
  return {
    prob_best: wins.map((w) => w / draws),
    expected_loss: loss.map((l) => l / draws),
    draws,
    seed: options.seed,
  }
}

/** One Thompson draw per arm: the arm to show the next unit, and the rates drawn. */
export function thompsonDraw(posteriors: BetaPosterior[], rng: Random): { index: number; draws: number[] } {
  if (posteriors.length < 1) throw new RangeError('Thompson sampling needs at least one arm')
  const draws = posteriors.map((p) => sampleBeta(rng, p.alpha, p.beta))
  let index = 0
  for (let i = 1; i < draws.length; i++) if (draws[i]! > draws[index]!) index = i
  return { index, draws }
}
