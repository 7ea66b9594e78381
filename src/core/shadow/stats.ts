/**
 * The significance tests the shadow evaluator and the A/B tests report, and the special functions
 * under them: log-gamma, the regularized incomplete gamma and beta functions (and the inverse of
 * the latter), the chi-square survival function and the binomial CDF.
 *
 * Hand-written on purpose (DESIGN.md: "write by hand only what no library does well, and say why"):
 * no maintained JavaScript library gives p-values that agree with scipy to 1e-6 down to 1e-300.
 * simple-statistics has no incomplete gamma or beta function (its chi-square test looks p up in a
 * table of a few significance levels), and jStat is unmaintained and loses relative accuracy in
 * the tails. The algorithms are the textbook ones (Lanczos; series and Lentz continued fractions
 * as in Numerical Recipes, 3rd ed., 6.1-6.4) and are checked against scipy in
 * test/shadow-stats.test.ts with cases from test/fixtures/stats/make_cases.py.
 */

/** A value that may be undefined, and then says why in words (never a silent 0 or NaN). */
export type Maybe = { value: number; reason: null } | { value: null; reason: string }

export const defined = (value: number): Maybe => ({ value, reason: null })
export const undefinedBecause = (reason: string): Maybe => ({ value: null, reason })

const EPS = 1e-15
const TINY = 1e-300
const MAX_ITERATIONS = 1_000_000

// Lanczos approximation, g = 7, n = 9 (relative error below 1e-15 for x > 0).
const LANCZOS_G = 7
const LANCZOS = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
  12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
]
const HALF_LOG_2PI = 0.5 * Math.log(2 * Math.PI)

/** ln Γ(x) for x > 0. */
export function logGamma(x: number): number {
  if (!(x > 0)) throw new RangeError(`logGamma needs x > 0, got ${x}`)
  if (x < 0.5) {
    // Reflection: Γ(x) Γ(1 - x) = π / sin(πx); keeps the small-x end accurate.
    return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x)
  }
  const z = x - 1
  let sum = LANCZOS[0]!
  for (let i = 1; i < LANCZOS.length; i++) sum += LANCZOS[i]! / (z + i)
  const t = z + LANCZOS_G + 0.5
  return HALF_LOG_2PI + (z + 0.5) * Math.log(t) - t + Math.log(sum)
}

/** ln B(a, b). */
export function logBeta(a: number, b: number): number {
  return logGamma(a) + logGamma(b) - logGamma(a + b)
}

function assertShape(name: string, a: number): void {
  if (!(a > 0) || !Number.isFinite(a)) throw new RangeError(`${name} needs a finite shape > 0, got ${a}`)
}

/** ln of x^a e^-x / Γ(a): the prefactor both incomplete-gamma expansions share. */
function gammaPrefactor(a: number, x: number): number {
  return -x + a * Math.log(x) - logGamma(a)
}

/** Series for P(a, x), converging fast for x < a + 1. */
function gammaSeries(a: number, x: number): number {
  let ap = a
  let term = 1 / a
  let sum = term
  for (let n = 0; n < MAX_ITERATIONS; n++) {
    ap += 1
    term *= x / ap
    sum += term
    if (Math.abs(term) < Math.abs(sum) * EPS) return sum * Math.exp(gammaPrefactor(a, x))
  }
  throw new RangeError(`incomplete gamma series did not converge (a=${a}, x=${x})`)
}

/** Continued fraction for Q(a, x) (modified Lentz), converging fast for x >= a + 1. */
function gammaContinuedFraction(a: number, x: number): number {
  let b = x + 1 - a
  let c = 1 / TINY
  let d = 1 / b
  let h = d
  for (let i = 1; i < MAX_ITERATIONS; i++) {
    const an = -i * (i - a)
    b += 2
    d = an * d + b
    if (Math.abs(d) < TINY) d = TINY
    c = b + an / c
    if (Math.abs(c) < TINY) c = TINY
    d = 1 / d
    const delta = d * c
    h *= delta
    if (Math.abs(delta - 1) < EPS) return Math.exp(gammaPrefactor(a, x)) * h
  }
  throw new RangeError(`incomplete gamma continued fraction did not converge (a=${a}, x=${x})`)
}

/** Regularized lower incomplete gamma P(a, x) = γ(a, x) / Γ(a). */
export function gammaP(a: number, x: number): number {
  assertShape('gammaP', a)
  if (!(x >= 0)) throw new RangeError(`gammaP needs x >= 0, got ${x}`)
  if (x === 0) return 0
  if (x === Infinity) return 1
  return x < a + 1 ? gammaSeries(a, x) : 1 - gammaContinuedFraction(a, x)
}

/** Regularized upper incomplete gamma Q(a, x) = 1 - P(a, x), accurate in the far tail. */
export function gammaQ(a: number, x: number): number {
  assertShape('gammaQ', a)
  if (!(x >= 0)) throw new RangeError(`gammaQ needs x >= 0, got ${x}`)
  if (x === 0) return 1
  if (x === Infinity) return 0
  return x < a + 1 ? 1 - gammaSeries(a, x) : gammaContinuedFraction(a, x)
}

/** Continued fraction for I_x(a, b) (modified Lentz); fast for x < (a + 1) / (a + b + 2). */
function betaContinuedFraction(a: number, b: number, x: number): number {
  const qab = a + b
  const qap = a + 1
  const qam = a - 1
  let c = 1
  let d = 1 - (qab * x) / qap
  if (Math.abs(d) < TINY) d = TINY
  d = 1 / d
  let h = d
  for (let m = 1; m < MAX_ITERATIONS; m++) {
    const m2 = 2 * m
    let aa = (m * (b - m) * x) / ((qam + m2) * (a + m2))
    d = 1 + aa * d
    if (Math.abs(d) < TINY) d = TINY
    c = 1 + aa / c
    if (Math.abs(c) < TINY) c = TINY
    d = 1 / d
    h *= d * c
    aa = (-(a + m) * (qab + m) * x) / ((a + m2) * (qap + m2))
    d = 1 + aa * d
    if (Math.abs(d) < TINY) d = TINY
    c = 1 + aa / c
    if (Math.abs(c) < TINY) c = TINY
    d = 1 / d
    const delta = d * c
    h *= delta
    if (Math.abs(delta - 1) < EPS) return h
  }
  throw new RangeError(`incomplete beta continued fraction did not converge (a=${a}, b=${b}, x=${x})`)
}

/** ln of x^a (1-x)^b / B(a, b). */
function betaPrefactor(a: number, b: number, x: number): number {
  return a * Math.log(x) + b * Math.log1p(-x) - logBeta(a, b)
}

/** Regularized incomplete beta I_x(a, b) = P(X <= x) for X ~ Beta(a, b). */
export function betaInc(a: number, b: number, x: number): number {
  assertShape('betaInc', a)
  assertShape('betaInc', b)
  if (!(x >= 0 && x <= 1)) throw new RangeError(`betaInc needs 0 <= x <= 1, got ${x}`)
  if (x === 0) return 0
  if (x === 1) return 1
  if (x < (a + 1) / (a + b + 2))
    return (Math.exp(betaPrefactor(a, b, x)) * betaContinuedFraction(a, b, x)) / a
  return 1 - (Math.exp(betaPrefactor(a, b, x)) * betaContinuedFraction(b, a, 1 - x)) / b
}

/**
 * The p-quantile of Beta(a, b): the x with I_x(a, b) = p. Starts from the approximations of
 * Numerical Recipes (invbetai) and refines by Halley steps kept inside a bisection bracket, so it
 * cannot wander off for extreme shapes. For p > 1/2 it solves I_{1-x}(b, a) = 1 - p instead (1 - p
 * is exact there), so upper quantiles keep their accuracy in the far tail too.
 */
export function betaIncInv(a: number, b: number, p: number): number {
  assertShape('betaIncInv', a)
  assertShape('betaIncInv', b)
  if (!(p >= 0 && p <= 1)) throw new RangeError(`betaIncInv needs 0 <= p <= 1, got ${p}`)
  if (p === 0) return 0
  if (p === 1) return 1
  const x = betaQuantileGuess(a, b, p)
  return p > 0.5 ? 1 - refineBetaQuantile(b, a, 1 - p, 1 - x) : refineBetaQuantile(a, b, p, x)
}

function betaQuantileGuess(a: number, b: number, p: number): number {
  let x: number
  if (a >= 1 && b >= 1) {
    const pp = p < 0.5 ? p : 1 - p
    const t = Math.sqrt(-2 * Math.log(pp))
    let z = (2.30753 + t * 0.27061) / (1 + t * (0.99229 + t * 0.04481)) - t
    if (p < 0.5) z = -z
    const al = (z * z - 3) / 6
    const h = 2 / (1 / (2 * a - 1) + 1 / (2 * b - 1))
    const w = (z * Math.sqrt(al + h)) / h - (1 / (2 * b - 1) - 1 / (2 * a - 1)) * (al + 5 / 6 - 2 / (3 * h))
    x = a / (a + b * Math.exp(2 * w))
  } else {
    const lna = Math.log(a / (a + b))
    const lnb = Math.log(b / (a + b))
    const t = Math.exp(a * lna) / a
    const u = Math.exp(b * lnb) / b
    const w = t + u
    x = p < t / w ? Math.pow(a * w * p, 1 / a) : 1 - Math.pow(b * w * (1 - p), 1 / b)
  }
  return x > 0 && x < 1 ? x : 0.5
}

function refineBetaQuantile(a: number, b: number, p: number, start: number): number {
  let x = start > 0 && start < 1 ? start : 0.5
  let lo = 0
  let hi = 1
  const logNorm = -logBeta(a, b)
  let lastStep = 1
  for (let i = 0; i < 400; i++) {
    const err = betaInc(a, b, x) - p
    if (err === 0) return x
    if (err < 0) lo = x
    else hi = x
    const pdf = Math.exp((a - 1) * Math.log(x) + (b - 1) * Math.log1p(-x) + logNorm)
    let next = NaN
    if (pdf > 0 && Number.isFinite(pdf)) {
      const u = err / pdf
      // Halley's correction, damped as in Numerical Recipes.
      const step = u / (1 - 0.5 * Math.min(1, u * ((a - 1) / x - (b - 1) / (1 - x))))
      // Converged once the Newton step is below 1e-10 of x (and of 1 - x, near 1): the Halley step
      // then leaves an error far below that, or betaInc's own rounding (~1e-14) is what is left.
      if (Math.abs(u) <= 1e-10 * Math.min(x, 1 - x) && Number.isFinite(step)) return x - step
      if (Number.isFinite(step)) next = x - step
    }
    // Bisect when the step leaves the bracket or does not shrink fast (as rtsafe): in a flat tail
    // of the CDF Newton would crawl.
    if (!(next > lo && next < hi) || Math.abs(next - x) > Math.abs(lastStep) / 2) next = lo + (hi - lo) / 2
    lastStep = next - x
    if (next === x || hi - lo <= 4e-16 * x) return x
    x = next
  }
  return x
}

/** P(X > x) for X ~ chi-square(df): scipy.stats.chi2.sf. */
export function chiSquareSf(x: number, df: number): number {
  if (!(df > 0)) throw new RangeError(`chi-square needs df > 0, got ${df}`)
  if (Number.isNaN(x)) throw new RangeError('chi-square statistic is NaN')
  if (x <= 0) return 1
  return gammaQ(df / 2, x / 2)
}

/** P(X <= k) for X ~ Binomial(n, p): scipy.stats.binom.cdf. */
export function binomialCdf(k: number, n: number, p: number): number {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`binomial n must be a whole number >= 0, got ${n}`)
  if (!(p >= 0 && p <= 1)) throw new RangeError(`binomial p must be in [0, 1], got ${p}`)
  const kk = Math.floor(k)
  if (kk < 0) return 0
  if (kk >= n) return 1
  if (p === 0) return 1
  if (p === 1) return 0
  return betaInc(n - kk, kk + 1, 1 - p)
}

function assertCount(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${name} must be a whole number >= 0, got ${v}`)
}

export interface McNemarResult {
  statistic: number
  p_value: number
  method: 'exact_binomial' | 'chi_square_cc'
  /** b + c: the pairs on which the two rules disagree. */
  discordant: number
}

/** Below this many discordant pairs the exact binomial test is used, from it on the chi-square. */
export const MCNEMAR_EXACT_BELOW = 25

/**
 * McNemar's test on paired decisions. b = events the control got right and the candidate got
 * wrong; c = events the control got wrong and the candidate got right (the test is symmetric in
 * b and c, so only the report of which rule gained depends on the order).
 *
 * b + c < 25: exact two-sided binomial test, statistic = min(b, c),
 * p = min(1, 2 * BinomCDF(min(b, c); b + c, 1/2)), as statsmodels `mcnemar(exact=True)`.
 * Otherwise: chi-square with continuity correction, statistic = (|b - c| - 1)^2 / (b + c), df 1,
 * as statsmodels `mcnemar(exact=False, correction=True)` (which, like it, gives 1/(b+c), not 0,
 * when b = c). b + c = 0: statistic 0, p 1.
 */
export function mcnemar(b: number, c: number): McNemarResult {
  assertCount('mcnemar b', b)
  assertCount('mcnemar c', c)
  const n = b + c
  if (n === 0) return { statistic: 0, p_value: 1, method: 'exact_binomial', discordant: 0 }
  if (n < MCNEMAR_EXACT_BELOW) {
    const k = Math.min(b, c)
    return {
      statistic: k,
      p_value: Math.min(1, 2 * binomialCdf(k, n, 0.5)),
      method: 'exact_binomial',
      discordant: n,
    }
  }
  const statistic = (Math.abs(b - c) - 1) ** 2 / n
  return { statistic, p_value: chiSquareSf(statistic, 1), method: 'chi_square_cc', discordant: n }
}

export interface ChiSquareResult {
  /** null when there is nothing left to compare (see reason). */
  statistic: number | null
  df: number
  p_value: number | null
  /** Yates' continuity correction applied (only when df = 1, as scipy). */
  yates: boolean
  /** Set when the statistic and p are null. */
  reason?: string
  /** Set when all-zero rows or columns were dropped before testing. */
  note?: string
}

/**
 * Pearson's chi-square test of independence, exactly as scipy.stats.chi2_contingency (Yates'
 * correction only when df = 1). scipy refuses a table with an expected frequency of zero (a row
 * or column of zeros, e.g. neither rule has any FN); here such rows and columns are dropped, df
 * shrinks accordingly, and `note` says so. Fewer than two rows or columns left: statistic and
 * p_value are null with a reason.
 */
export function chiSquareIndependence(
  table: number[][],
  labels: { columns?: string[] } = {},
): ChiSquareResult {
  if (table.length === 0 || table.some((r) => r.length !== table[0]!.length) || table[0]!.length === 0) {
    throw new RangeError('chi-square independence needs a non-empty rectangular table')
  }
  for (const row of table) {
    for (const v of row) {
      if (!(v >= 0) || !Number.isFinite(v)) throw new RangeError(`contingency counts must be >= 0, got ${v}`)
    }
  }
  const columnName = (j: number) => labels.columns?.[j] ?? `column ${j + 1}`
  const keepRows = table.map((r, i) => (r.some((v) => v > 0) ? i : -1)).filter((i) => i >= 0)
  const keepCols = table[0]!.map((_, j) => (table.some((r) => r[j]! > 0) ? j : -1)).filter((j) => j >= 0)
  const droppedRows = table.length - keepRows.length
  const droppedCols = table[0]!.map((_, j) => j).filter((j) => !keepCols.includes(j))
  const notes: string[] = []
  if (droppedCols.length > 0) {
    notes.push(
      `dropped ${droppedCols.length === 1 ? 'a column' : `${droppedCols.length} columns`} of zeros (${droppedCols.map(columnName).join(', ')}): scipy would refuse a zero expected frequency`,
    )
  }
  if (droppedRows > 0) notes.push(`dropped ${droppedRows} row(s) of zeros`)
  const note = notes.length > 0 ? `${notes.join('; ')}.` : undefined
  const df = Math.max(0, (keepRows.length - 1) * (keepCols.length - 1))
  if (keepRows.length < 2 || keepCols.length < 2) {
    const reason =
      keepCols.length < 2
        ? `fewer than two columns with any counts (${keepCols.length}): nothing to compare`
        : `fewer than two rows with any counts (${keepRows.length}): nothing to compare`
    return { statistic: null, df, p_value: null, yates: false, reason, ...(note ? { note } : {}) }
  }
  const observed = keepRows.map((i) => keepCols.map((j) => table[i]![j]!))
  const rowSums = observed.map((r) => r.reduce((s, v) => s + v, 0))
  const colSums = keepCols.map((_, j) => observed.reduce((s, r) => s + r[j]!, 0))
  const total = rowSums.reduce((s, v) => s + v, 0)
  const yates = df === 1
  let statistic = 0
  for (let i = 0; i < observed.length; i++) {
    for (let j = 0; j < keepCols.length; j++) {
      const expected = (rowSums[i]! * colSums[j]!) / total
      let o = observed[i]![j]!
      if (yates) {
        // scipy: move each observed count toward its expected value by at most 0.5.
        const diff = expected - o
        o += Math.sign(diff) * Math.min(0.5, Math.abs(diff))
      }
      statistic += (o - expected) ** 2 / expected
    }
  }
  return { statistic, df, p_value: chiSquareSf(statistic, df), yates, ...(note ? { note } : {}) }
}

export interface GoodnessOfFitResult {
  statistic: number | null
  df: number
  p_value: number | null
  /** Expected counts under the given proportions. */
  expected: number[]
  reason?: string
}

/**
 * Pearson's chi-square goodness of fit, as scipy.stats.chisquare(observed, f_exp) with f_exp the
 * proportions scaled to the observed total (the proportions need not sum to 1). Used for the
 * sample-ratio-mismatch check of the A/B tests. No observations: statistic and p are null.
 */
export function chiSquareGoodnessOfFit(
  observed: number[],
  expectedProportions: number[],
): GoodnessOfFitResult {
  if (observed.length < 2 || observed.length !== expectedProportions.length) {
    throw new RangeError('goodness of fit needs at least two categories and one proportion per category')
  }
  for (const v of observed) {
    if (!(v >= 0) || !Number.isFinite(v)) throw new RangeError(`observed counts must be >= 0, got ${v}`)
  }
  for (const p of expectedProportions) {
    if (!(p > 0) || !Number.isFinite(p)) throw new RangeError(`expected proportions must be > 0, got ${p}`)
  }
  const df = observed.length - 1
  const total = observed.reduce((s, v) => s + v, 0)
  const scale = expectedProportions.reduce((s, v) => s + v, 0)
  const expected = expectedProportions.map((p) => (total * p) / scale)
  if (total === 0) {
    return { statistic: null, df, p_value: null, expected, reason: 'no observations in any category' }
  }
  const statistic = observed.reduce((s, o, i) => s + (o - expected[i]!) ** 2 / expected[i]!, 0)
  return { statistic, df, p_value: chiSquareSf(statistic, df), expected }
}
