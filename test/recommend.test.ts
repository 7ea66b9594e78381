/**
 * The verdict's rules, branch by branch: what each decision needs, and that every threshold is
 * reported whether it passed or failed.
 */
import { describe, expect, it } from 'vitest'
import { DEFAULT_THRESHOLDS, recommend, type RecommendationInput } from '../src/core/shadow/recommend.js'

const good: RecommendationInput = {
  sampleSize: 50_000,
  attacks: 10_000,
  benign: 40_000,
  candidate: { precision: 0.98, recall: 0.9, fpr: 0.004 },
  control: { fpr: 0.006 },
  probCandidateBetter: 0.999,
  probPrecisionOk: 1,
  probRecallOk: 1,
  mcnemarP: 1e-9,
  skippedLines: 0,
  lines: 50_000,
}

const decide = (over: Partial<RecommendationInput>, t = DEFAULT_THRESHOLDS) =>
  recommend({ ...good, ...over }, t)

describe('recommend', () => {
  it('approves a full deployment only when everything passes; risk low', () => {
    const r = decide({})
    expect(r.decision).toBe('APPROVE_FULL_DEPLOYMENT')
    expect(r.risk_level).toBe('low')
    expect(r.checks.every((c) => c.passed)).toBe(true)
    expect(r.reasons.every((x) => x.startsWith('PASS '))).toBe(true)
    expect(r.confidence_score).toBeCloseTo(0.999, 6)
  })

  it('approves a canary when better but not significant, blocking more benign, or costing more', () => {
    for (const over of [
      { mcnemarP: 0.2 },
      { candidate: { ...good.candidate, fpr: 0.01 } },
      { cost: { control: 10, candidate: 12 } },
    ]) {
      const r = decide(over)
      expect(r.decision, JSON.stringify(over)).toBe('APPROVE_CANARY')
      expect(r.risk_level).toBe('medium')
      expect(r.reasons.some((x) => x.startsWith('FAIL '))).toBe(true)
    }
  })

  it('rejects below the precision or recall bar, or when the control is better', () => {
    const precision = decide({ candidate: { ...good.candidate, precision: 0.8 }, probPrecisionOk: 0.01 })
    expect(precision.decision).toBe('REJECT')
    expect(precision.confidence_score).toBeCloseTo(0.99, 6)
    expect(precision.reasons.find((x) => x.includes('precision'))).toMatch(
      /^FAIL candidate precision 80\.00% < the minimum 90\.00%/,
    )
    expect(decide({ candidate: { ...good.candidate, recall: 0.3 }, probRecallOk: 0 }).decision).toBe('REJECT')
    const worse = decide({ probCandidateBetter: 0.01 })
    expect(worse.decision).toBe('REJECT')
    expect(worse.confidence_score).toBeCloseTo(0.99, 6)
    expect(decide({ candidate: { ...good.candidate, precision: null } }).decision).toBe('REJECT')
  })

  it('needs more data: small sample, no attacks (even with --min-attacks 0), many skipped lines, or no clear winner', () => {
    expect(decide({ sampleSize: 999 }).decision).toBe('NEED_MORE_DATA')
    const none = decide({ attacks: 0 }, { ...DEFAULT_THRESHOLDS, minAttacks: 0, minSampleSize: 0 })
    expect(none.decision).toBe('NEED_MORE_DATA')
    expect(decide({ benign: 0 }, { ...DEFAULT_THRESHOLDS, minAttacks: 0 }).decision).toBe('NEED_MORE_DATA')
    const skipped = decide({ skippedLines: 600, lines: 50_000 })
    expect(skipped.decision).toBe('NEED_MORE_DATA')
    expect(skipped.reasons.find((x) => x.includes('skipped'))).toMatch(/^FAIL 600 of 50,000 lines skipped/)
    expect(decide({ skippedLines: 400, lines: 50_000 }).decision).toBe('APPROVE_FULL_DEPLOYMENT')
    const unsure = decide({ probCandidateBetter: 0.7 })
    expect(unsure.decision).toBe('NEED_MORE_DATA')
    expect(unsure.confidence_score).toBeCloseTo(0.7, 6)
  })

  it('checks every threshold every time, in words', () => {
    const names = decide({ cost: { control: 1, candidate: 1 } }).checks.map((c) => c.name)
    expect(names).toEqual([
      'sample_size',
      'skipped_lines',
      'attacks',
      'benign',
      'precision',
      'recall',
      'confidence',
      'significance',
      'false_positives',
      'cost',
    ])
  })
})
