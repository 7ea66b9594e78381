/**
 * The shadow evaluator's statistics against scipy (test/fixtures/stats/cases.json, written by
 * make_cases.py), plus properties: undefined metrics are null with a reason, the closed-form
 * P(B > A) agrees with numeric integration and with Thompson sampling, seeds reproduce.
 */
import fs from 'node:fs'
import path from 'node:path'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  type BetaPosterior,
  credibleInterval,
  posterior,
  posteriorMean,
  probBetterExact,
  thompson,
  thompsonDraw,
} from '../src/core/shadow/bayes.js'
import { aucRoc, ruleMetrics, ScoreHistogram, type ScoreEntry } from '../src/core/shadow/metrics.js'
import { seededRandom } from '../src/core/shadow/random.js'
import {
  betaInc,
  betaIncInv,
  binomialCdf,
  chiSquareGoodnessOfFit,
  chiSquareIndependence,
  chiSquareSf,
  gammaQ,
  logGamma,
  mcnemar,
} from '../src/core/shadow/stats.js'
import { ROOT } from './helpers/cli.js'

interface Cases {
  mcnemar: Array<{ b: number; c: number; statistic: number; p_value: number; method: string }>
  chi2_contingency: Array<{
    table: number[][]
    statistic: number | null
    p_value: number | null
    df: number
    dropped_columns: number[]
    dropped_rows: number[]
  }>
  chisquare: Array<{
    observed: number[]
    proportions: number[]
    statistic: number
    p_value: number
    df: number
  }>
  beta: Array<{
    alpha: number
    beta: number
    mean: number
    ppf: Record<string, number>
    cdf: Record<string, number>
  }>
  prob_better: Array<{ a: [number, number]; b: [number, number]; p: number }>
  prob_better_tail: Array<{ a: [number, number]; b: [number, number]; p: number }>
  auc: Array<{ name: string; entries: ScoreEntry[]; auc: number }>
  chi2_sf: Array<{ x: number; df: number; sf: number }>
  binom_cdf: Array<{ k: number; n: number; p: number; cdf: number }>
}

const cases = JSON.parse(fs.readFileSync(path.join(ROOT, 'test/fixtures/stats/cases.json'), 'utf8')) as Cases

/** Relative 1e-6 (so p-values of 1e-300 are compared on their own scale); exact zeros stay zero. */
function expectClose(actual: number | null, expected: number | null, what: string, rel = 1e-6): void {
  if (expected === null) return void expect(actual, what).toBeNull()
  expect(actual, what).not.toBeNull()
  if (expected === 0) return void expect(Math.abs(actual!), what).toBeLessThan(1e-300)
  const err = Math.abs(actual! - expected) / Math.abs(expected)
  expect(err, `${what}: got ${actual}, scipy ${expected}`).toBeLessThanOrEqual(rel)
}

const beta = (alpha: number, b: number): BetaPosterior => ({ alpha, beta: b })

describe('special functions vs scipy', () => {
  it('logGamma at integers and halves', () => {
    expect(logGamma(1)).toBeCloseTo(0, 14)
    expect(logGamma(2)).toBeCloseTo(0, 14)
    expect(logGamma(11)).toBeCloseTo(Math.log(3628800), 12)
    expect(logGamma(0.5)).toBeCloseTo(0.5 * Math.log(Math.PI), 14)
    // ln Γ(1e6) by Stirling with three correction terms.
    const x = 1e6
    const stirling = (x - 0.5) * Math.log(x) - x + 0.5 * Math.log(2 * Math.PI) + 1 / (12 * x)
    expect(Math.abs(logGamma(x) - stirling) / stirling).toBeLessThan(1e-14)
  })

  it.each(cases.chi2_sf)('chi2.sf($x, $df)', ({ x, df, sf }) => {
    expectClose(chiSquareSf(x, df), sf, `chi2.sf(${x}, ${df})`)
  })

  it('the extreme chi2.sf cases reach p ~ 1e-300 and p ~ 1', () => {
    expect(Math.min(...cases.chi2_sf.map((c) => c.sf))).toBeLessThan(1e-299)
    expect(Math.max(...cases.chi2_sf.map((c) => c.sf))).toBeGreaterThan(1 - 1e-4)
  })

  it.each(cases.binom_cdf)('binom.cdf($k; $n, $p)', ({ k, n, p, cdf }) => {
    expectClose(binomialCdf(k, n, p), cdf, `binom.cdf(${k}, ${n}, ${p})`)
  })

  it.each(cases.beta)('Beta($alpha, $beta): cdf and ppf', (c) => {
    for (const [x, v] of Object.entries(c.cdf)) {
      const got = betaInc(c.alpha, c.beta, Number(x))
      // Values below 1e-250 are compared as zero-ish (scipy's own accuracy ends there).
      if (v < 1e-250) expect(got).toBeLessThan(1e-250)
      else expectClose(got, v, `beta.cdf(${x}; ${c.alpha}, ${c.beta})`)
    }
    for (const [q, v] of Object.entries(c.ppf)) {
      expectClose(betaIncInv(c.alpha, c.beta, Number(q)), v, `beta.ppf(${q}; ${c.alpha}, ${c.beta})`)
    }
  })
})

describe('McNemar vs statsmodels definitions (computed with scipy)', () => {
  it('covers both regimes and the 24/25 boundary', () => {
    const sums = cases.mcnemar.map((c) => c.b + c.c)
    expect(sums).toContain(24)
    expect(sums).toContain(25)
    expect(sums).toContain(0)
    expect(cases.mcnemar.length).toBeGreaterThanOrEqual(12)
  })

  it.each(cases.mcnemar)('mcnemar($b, $c)', ({ b, c, statistic, p_value, method }) => {
    const r = mcnemar(b, c)
    expect(r.method).toBe(method)
    expect(r.discordant).toBe(b + c)
    expectClose(r.statistic, statistic, 'statistic')
    expectClose(r.p_value, p_value, 'p_value')
  })

  it('switches to the chi-square at exactly 25 discordant pairs', () => {
    expect(mcnemar(12, 12).method).toBe('exact_binomial')
    expect(mcnemar(12, 13).method).toBe('chi_square_cc')
  })

  it('refuses counts that are not whole numbers >= 0', () => {
    expect(() => mcnemar(-1, 3)).toThrow(RangeError)
    expect(() => mcnemar(1.5, 3)).toThrow(RangeError)
  })
})

describe('chi-square tests vs scipy', () => {
  it('has at least ten 2x4 tables, with huge counts, a near-zero and a zero column', () => {
    const t24 = cases.chi2_contingency.filter((c) => c.table.length === 2 && c.table[0]!.length === 4)
    expect(t24.length).toBeGreaterThanOrEqual(10)
    expect(t24.some((c) => c.table.flat().some((v) => v >= 1e6))).toBe(true)
    expect(t24.some((c) => c.dropped_columns.length === 1)).toBe(true)
  })

  it.each(cases.chi2_contingency)('chi2_contingency($table)', (c) => {
    const r = chiSquareIndependence(c.table, { columns: ['tp', 'fp', 'tn', 'fn'] })
    expect(r.df).toBe(c.df)
    expectClose(r.statistic, c.statistic, 'statistic')
    expectClose(r.p_value, c.p_value, 'p_value')
    expect(r.yates).toBe(c.df === 1 && c.statistic !== null)
    if (c.statistic === null) expect(r.reason).toMatch(/nothing to compare/)
    else expect(r.reason).toBeUndefined()
    if (c.dropped_columns.length > 0 || c.dropped_rows.length > 0) expect(r.note).toMatch(/dropped/)
    else expect(r.note).toBeUndefined()
  })

  it('names the dropped column', () => {
    const r = chiSquareIndependence(
      [
        [100, 5, 900, 0],
        [120, 3, 880, 0],
      ],
      { columns: ['tp', 'fp', 'tn', 'fn'] },
    )
    expect(r.note).toBe('dropped a column of zeros (fn): scipy would refuse a zero expected frequency.')
    expect(r.df).toBe(2)
  })

  it.each(cases.chisquare)('chisquare($observed, $proportions)', (c) => {
    const r = chiSquareGoodnessOfFit(c.observed, c.proportions)
    expect(r.df).toBe(c.df)
    expectClose(r.statistic, c.statistic, 'statistic')
    expectClose(r.p_value, c.p_value, 'p_value')
  })

  it('goodness of fit without observations is null with a reason', () => {
    const r = chiSquareGoodnessOfFit([0, 0], [0.5, 0.5])
    expect(r).toMatchObject({ statistic: null, p_value: null, reason: 'no observations in any category' })
  })
})

describe('metrics', () => {
  it.each(cases.auc)('AUC: $name', ({ entries, auc }) => {
    expectClose(aucRoc(ScoreHistogram.fromEntries(entries)).value, auc, 'auc', 1e-12)
  })

  it('a histogram crosses a thread boundary as plain arrays, and merges', () => {
    const a = new ScoreHistogram().add(0.1, false).add(0.9, true).add(0.9, false)
    const b = new ScoreHistogram().add(0.9, true, 3).add(0.2, false, 2)
    const copy = ScoreHistogram.fromEntries(structuredClone(a.entries()))
    copy.merge(b)
    expect(copy.distinctScores).toBe(3)
    expect(copy.positives).toBe(4)
    expect(copy.negatives).toBe(4)
    expect(new Map(copy.entries().map(([s, p, n]) => [s, [p, n]]))).toEqual(
      new Map([
        [0.1, [0, 1]],
        [0.2, [0, 2]],
        [0.9, [4, 1]],
      ]),
    )
  })

  it('a typical rule: every metric defined and right', () => {
    const m = ruleMetrics(
      { tp: 90, fp: 10, tn: 880, fn: 20 },
      ScoreHistogram.fromEntries([
        [1, 1, 0],
        [0, 0, 1],
      ]),
    )
    expect(m.precision).toBeCloseTo(0.9, 12)
    expect(m.recall).toBeCloseTo(90 / 110, 12)
    expect(m.f1).toBeCloseTo(180 / 210, 12)
    expect(m.accuracy).toBeCloseTo(0.97, 12)
    expect(m.fpr).toBeCloseTo(10 / 890, 12)
    // MCC by its definition.
    expect(m.mcc).toBeCloseTo((90 * 880 - 10 * 20) / Math.sqrt(100 * 110 * 890 * 900), 12)
    expect(m.auc_roc).toBe(1)
    expect(m.undefined).toEqual({})
  })

  it('MCC stays exact past 2^53 in tp*tn', () => {
    const m = ruleMetrics({ tp: 1e8, fp: 3, tn: 1e8 + 1, fn: 5 })
    const exact = (1e8 * (1e8 + 1) - 15) / Math.sqrt((1e8 + 3) * (1e8 + 5) * (1e8 + 4) * (1e8 + 6))
    expect(Math.abs(m.mcc! - exact)).toBeLessThan(1e-15)
  })

  it('every undefined metric is null with a reason, never a silent 0', () => {
    const none = ruleMetrics({ tp: 0, fp: 0, tn: 0, fn: 0 }, new ScoreHistogram())
    for (const k of ['precision', 'recall', 'f1', 'accuracy', 'fpr', 'mcc', 'auc_roc'] as const) {
      expect(none[k], k).toBeNull()
      expect(none.undefined[k], k).toMatch(/\w+/)
    }
    expect(none.undefined.accuracy).toBe('no events')
    expect(none.undefined.auc_roc).toBe('no scored events')

    // Blocks nothing: precision undefined; MCC has a zero margin; recall and F1 are 0 (defined).
    const blind = ruleMetrics({ tp: 0, fp: 0, tn: 900, fn: 100 })
    expect(blind.precision).toBeNull()
    expect(blind.undefined.precision).toBe('no predicted positives: the rule blocked nothing')
    expect(blind.recall).toBe(0)
    expect(blind.f1).toBe(0)
    expect(blind.mcc).toBeNull()
    expect(blind.undefined.mcc).toBe('a zero margin (no predicted positives): the correlation is 0/0')
    expect(blind.undefined.auc_roc).toBe('no scores were recorded')

    // No attacks in the traffic: recall, MCC and AUC undefined.
    const benign = ruleMetrics({ tp: 0, fp: 5, tn: 995, fn: 0 }, ScoreHistogram.fromEntries([[0.3, 0, 1000]]))
    expect(benign.recall).toBeNull()
    expect(benign.undefined.recall).toBe('no positives: the traffic has no attacks')
    expect(benign.fpr).toBeCloseTo(0.005, 12)
    expect(benign.mcc).toBeNull()
    expect(benign.undefined.mcc).toMatch(/no positives/)
    expect(benign.auc_roc).toBeNull()
    expect(benign.undefined.auc_roc).toBe('no positives (attacks) among the scored events')

    // Only attacks: fpr undefined.
    const attacks = ruleMetrics({ tp: 50, fp: 0, tn: 0, fn: 50 })
    expect(attacks.fpr).toBeNull()
    expect(attacks.undefined.fpr).toBe('no negatives: the traffic has no benign events')
    expect(attacks.undefined.mcc).toBe('a zero margin (no negatives): the correlation is 0/0')
    expect(Object.keys(attacks.undefined).sort()).toEqual(['auc_roc', 'fpr', 'mcc'])
  })
})

describe('Bayesian comparison', () => {
  it.each(cases.prob_better)('P(B > A) exact vs scipy quad: A=$a B=$b', ({ a, b, p }) => {
    const r = probBetterExact(beta(...a), beta(...b))
    expect(r.reason).toBeNull()
    expect(Math.abs(r.value! - p), `got ${r.value}, quad ${p}`).toBeLessThan(1e-9)
  })

  it.each(cases.prob_better_tail)(
    'a tail probability keeps its relative precision (60-digit closed form): A=$a B=$b',
    ({ a, b, p }) => {
      const r = probBetterExact(beta(...a), beta(...b))
      expect(Math.abs(r.value! - p) / p, `got ${r.value}, 60 digits ${p}`).toBeLessThan(1e-8)
    },
  )

  /** P(X_b > X_a) = ∫ pdf_a(x) (1 - I_x(b)) dx by Simpson's rule on a fine grid. */
  function integrate(a: BetaPosterior, b: BetaPosterior, n = 20_000): number {
    const lo = Math.max(0, Math.min(betaIncInv(a.alpha, a.beta, 1e-12), betaIncInv(b.alpha, b.beta, 1e-12)))
    const hi = Math.min(
      1,
      Math.max(betaIncInv(a.alpha, a.beta, 1 - 1e-12), betaIncInv(b.alpha, b.beta, 1 - 1e-12)),
    )
    const lb = logGamma(a.alpha) + logGamma(a.beta) - logGamma(a.alpha + a.beta)
    const f = (x: number) =>
      x <= 0 || x >= 1
        ? 0
        : Math.exp((a.alpha - 1) * Math.log(x) + (a.beta - 1) * Math.log1p(-x) - lb) *
          (1 - betaInc(b.alpha, b.beta, x))
    const h = (hi - lo) / n
    let s = f(lo) + f(hi)
    for (let i = 1; i < n; i++) s += f(lo + i * h) * (i % 2 ? 4 : 2)
    return (s * h) / 3
  }

  it('agrees with brute-force numeric integration, whichever parameter the sum runs over', () => {
    const pairs: Array<[BetaPosterior, BetaPosterior]> = [
      [beta(20, 30), beta(25, 28)], // smallest: a.alpha
      [beta(300, 12), beta(280, 25)], // smallest: a.beta
      [beta(40, 900), beta(9, 1000)], // smallest: b.alpha
      [beta(700, 40), beta(800, 7)], // smallest: b.beta
      [posterior(990_000, 1_000_000), posterior(990_400, 1_000_000)], // ~10,000 terms
    ]
    for (const [a, b] of pairs) {
      const exact = probBetterExact(a, b).value!
      expect(Math.abs(exact - integrate(a, b)), JSON.stringify([a, b])).toBeLessThan(1e-7)
    }
  })

  it('satisfies P(B > A) + P(A > B) = 1', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 400 }),
        fc.integer({ min: 1, max: 400 }),
        fc.integer({ min: 1, max: 400 }),
        fc.integer({ min: 1, max: 400 }),
        (a1, b1, a2, b2) => {
          const x = probBetterExact(beta(a1, b1), beta(a2, b2)).value!
          const y = probBetterExact(beta(a2, b2), beta(a1, b1)).value!
          return x >= 0 && x <= 1 && Math.abs(x + y - 1) < 1e-9
        },
      ),
      { numRuns: 200 },
    )
  })

  it('sums only the terms that matter above 5,000,000 terms: the value of the full sum, deterministic, symmetric', () => {
    // the windowed sum forced on cases the full sum can take
    const pairs: Array<[BetaPosterior, BetaPosterior]> = [
      [posterior(20, 45), posterior(24, 50)],
      [posterior(990_000, 1_000_000), posterior(990_400, 1_000_000)],
      [posterior(400_000, 1_000_000), posterior(401_000, 1_000_000)],
      [posterior(3_000_000, 5_000_000), posterior(2_998_000, 5_000_000)],
      [posterior(0, 1000), posterior(1000, 1000)],
    ]
    for (const [a, b] of pairs) {
      const full = probBetterExact(a, b).value!
      const windowed = probBetterExact(a, b, { maxFullTerms: 0 }).value!
      expect(Math.abs(full - windowed), JSON.stringify([a, b])).toBeLessThan(1e-8)
    }
    // A billion trials per arm, at the edge of 0.95: the two posteriors are symmetric about 1/2 and
    // the normal approximation of their difference is good to ~1e-9 there: z = 1.6449.
    const control = posterior(500_000_000, 1_000_000_000)
    const test = posterior(500_036_780, 1_000_000_000)
    const p = probBetterExact(control, test)
    expect(p.reason).toBeNull()
    const mean = (x: BetaPosterior) => x.alpha / (x.alpha + x.beta)
    const variance = (x: BetaPosterior) => (mean(x) * (1 - mean(x))) / (x.alpha + x.beta + 1)
    const z = (mean(test) - mean(control)) / Math.sqrt(variance(control) + variance(test))
    expect(Math.abs(p.value! - (1 - normalTail(z)))).toBeLessThan(1e-6)
    expect(probBetterExact(control, test)).toEqual(p)
    expect(Math.abs(p.value! + probBetterExact(test, control).value! - 1)).toBeLessThan(1e-9)
    const frac = probBetterExact(beta(0.5, 0.5), beta(1.5, 2.5))
    expect(frac).toEqual({ value: null, reason: expect.stringMatching(/whole number/) })
    // One whole-number parameter is enough.
    expect(probBetterExact(beta(0.5, 0.5), beta(1.5, 2)).value).toBeGreaterThan(0)
  })

  it('1,000,000 trials at 99% cost ~10,000 terms: fast', () => {
    const t0 = performance.now()
    const r = probBetterExact(posterior(990_000, 1_000_000), posterior(990_100, 1_000_000))
    expect(performance.now() - t0).toBeLessThan(200)
    expect(r.value).toBeGreaterThan(0.5)
  })

  it('Thompson agrees with the closed form within Monte-Carlo error', () => {
    const pairs: Array<[BetaPosterior, BetaPosterior]> = [
      [posterior(480, 1000), posterior(540, 1000)],
      [posterior(50, 100), posterior(52, 100)],
      [posterior(9_900, 10_000), posterior(9_880, 10_000)],
      [posterior(3, 10), posterior(4, 9)],
    ]
    for (const [a, b] of pairs) {
      const exact = probBetterExact(a, b).value!
      const t = thompson([a, b], { draws: 100_000, seed: 7 })
      const tol = 4 * Math.sqrt((exact * (1 - exact)) / t.draws) + 1e-3
      expect(Math.abs(t.prob_best[1]! - exact), JSON.stringify([a, b])).toBeLessThan(tol)
      expect(t.prob_best[0]! + t.prob_best[1]!).toBeCloseTo(1, 12)
      // The expected loss of the better arm is the smaller one; both are >= 0.
      expect(Math.min(...t.expected_loss)).toBeGreaterThanOrEqual(0)
      expect(t.expected_loss[exact > 0.5 ? 1 : 0]).toBeLessThanOrEqual(t.expected_loss[exact > 0.5 ? 0 : 1]!)
    }
  })

  it('the expected loss of two arms matches E[max(X, Y)] - E[X] in closed form for Beta(1,1) vs Beta(1,1)', () => {
    // Two uniforms: E[max] = 2/3, so each arm's expected loss is 2/3 - 1/2 = 1/6.
    const t = thompson([beta(1, 1), beta(1, 1)], { seed: 3 })
    for (const l of t.expected_loss) expect(Math.abs(l - 1 / 6)).toBeLessThan(4 * Math.sqrt(1 / 18 / t.draws))
  })

  it('is deterministic for a seed and differs across seeds', () => {
    const arms = [posterior(120, 1000), posterior(131, 1000), posterior(118, 1000)]
    const a = thompson(arms, { seed: 42 })
    expect(thompson(arms, { seed: 42 })).toEqual(a)
    expect(thompson(arms, { seed: 43 }).prob_best).not.toEqual(a.prob_best)
    expect(a.prob_best.reduce((s, p) => s + p, 0)).toBeCloseTo(1, 12)
    const d1 = thompsonDraw(arms, seededRandom('x'))
    expect(thompsonDraw(arms, seededRandom('x'))).toEqual(d1)
  })

  it('refuses fewer than 100,000 draws', () => {
    expect(() => thompson([beta(1, 1)], { draws: 1000, seed: 1 })).toThrow(/100000/)
  })

  it('posterior, mean and 95% interval match scipy', () => {
    const p = posterior(10, 100)
    expect(p).toEqual({ alpha: 11, beta: 91 })
    const c = cases.beta.find((x) => x.alpha === 11 && x.beta === 91)!
    expect(posteriorMean(p)).toBeCloseTo(c.mean, 15)
    const ci = credibleInterval(p, 0.95)
    expectClose(ci.lower, c.ppf['0.025']!, 'lower')
    expectClose(ci.upper, c.ppf['0.975']!, 'upper')
    expect(() => posterior(11, 10)).toThrow(RangeError)
  })
})

describe('properties', () => {
  it('mcnemar: p in [0, 1] and symmetric in b and c', () => {
    fc.assert(
      fc.property(fc.nat(5000), fc.nat(5000), (b, c) => {
        const x = mcnemar(b, c)
        const y = mcnemar(c, b)
        return x.p_value >= 0 && x.p_value <= 1 && x.p_value === y.p_value && x.statistic === y.statistic
      }),
      { numRuns: 300 },
    )
  })

  it('chi-square independence: p in [0, 1] for any 2x4 table of counts', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(2_000_000), { minLength: 8, maxLength: 8 }), (v) => {
        const r = chiSquareIndependence([v.slice(0, 4), v.slice(4)])
        return r.p_value === null ? r.reason !== undefined : r.p_value >= 0 && r.p_value <= 1
      }),
      { numRuns: 300 },
    )
  })

  it('AUC of a perfect separator is 1, of a reversed one 0, and always in [0, 1]', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { minLength: 1, maxLength: 50 }),
        fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { minLength: 1, maxLength: 50 }),
        (xs, ys) => {
          const cut = Math.max(...ys) + 1
          const perfect = new ScoreHistogram()
          const reversed = new ScoreHistogram()
          const mixed = new ScoreHistogram()
          for (const y of ys) {
            perfect.add(y, false)
            reversed.add(y, true)
            mixed.add(y, false)
          }
          for (const x of xs) {
            perfect.add(cut + Math.abs(x), true)
            reversed.add(cut + Math.abs(x), false)
            mixed.add(x, true)
          }
          const m = aucRoc(mixed).value!
          return aucRoc(perfect).value === 1 && aucRoc(reversed).value === 0 && m >= 0 && m <= 1
        },
      ),
      { numRuns: 200 },
    )
  })

  it('the Beta quantile inverts the CDF', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2_000_000 }),
        fc.integer({ min: 1, max: 2_000_000 }),
        fc.double({ min: 1e-6, max: 1 - 1e-6, noNaN: true }),
        (a, b, q) => {
          const x = betaIncInv(a, b, q)
          return x > 0 && x < 1 && Math.abs(betaInc(a, b, x) - q) < 1e-9
        },
      ),
      { numRuns: 200 },
    )
  })
})

/** P(Z > z) for a standard normal, from the regularized incomplete gamma: erfc(x) = Q(1/2, x^2). */
function normalTail(z: number): number {
  const q = gammaQ(0.5, (z * z) / 2) / 2
  return z >= 0 ? q : 1 - q
}
