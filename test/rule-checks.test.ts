/** What rules add and evaluate warn of in a rule: catastrophic patterns, and parts scored on different scales. */
import { describe, expect, it } from 'vitest'
import { nestsRepetitions } from '../src/core/shadow/regex-safety.js'
import { mixedScales, riskyPatterns } from '../src/core/shadow/rules.js'

describe('nestsRepetitions', () => {
  it.each([
    ['^(a+)+$', true],
    ['(\\w+\\s?)*$', true],
    ['((ab)*)+', true],
    ['(a|b+)*', true],
    // a wide bounded repetition backtracks like an unbounded one
    ['(a{1,100})+', true],
    // narrow bounds do not: the dotted-quad pattern is safe
    ['(\\d{1,3}\\.){3}\\d{1,3}', false],
    ['^/admin', false],
    ['(union|select)\\s+', false],
    ['(?:a|b)*c+', false],
    ['(?<n>a+)\\p{L}+', false],
  ])('%s -> %s', (pattern, nested) => {
    expect(nestsRepetitions(pattern)).toBe(nested)
  })

  it('a pattern the parser cannot read is not judged (RegExp accepted it already)', () => {
    expect(nestsRepetitions('(?<=a)b')).toBe(false)
  })
})

describe('riskyPatterns', () => {
  it('names every nested pattern of a rule by its JSON path, however deep', () => {
    expect(
      riskyPatterns({
        type: 'any',
        rules: [
          { type: 'match', field: 'path', pattern: '^/admin' },
          { type: 'all', rules: [{ type: 'match', field: 'ua', pattern: '(a+)+' }] },
          { type: 'match', field: 'path', values: ['(a+)+'] },
        ],
      }),
    ).toEqual(['$.rules[1].rules[0].pattern'])
  })
})

describe('mixedScales', () => {
  it('finds a threshold combined with parts on another scale, however deep; matches and rate limits combine', () => {
    const latency = { type: 'threshold', field: 'latency_ms', op: '>', value: 1000 } as const
    const admin = { type: 'match', field: 'path', pattern: '^/admin' } as const
    const burst = { type: 'rate_limit', key: 'ip', window_s: 10, threshold: 20 } as const
    expect(mixedScales({ type: 'any', rules: [latency, admin] })).toEqual([
      'latency_ms',
      'match or rate limit (blocks at about 1)',
    ])
    expect(
      mixedScales({ type: 'all', rules: [burst, { type: 'any', rules: [admin, latency] }] }),
    ).toHaveLength(2)
    expect(mixedScales({ type: 'any', rules: [admin, burst] })).toBeNull()
    expect(mixedScales({ type: 'any', rules: [latency, { ...latency, value: 2000 }] })).toBeNull()
    expect(mixedScales({ type: 'any', rules: [latency, { ...latency, op: '<' }] })).toEqual([
      'latency_ms',
      'minus latency_ms',
    ])
    expect(mixedScales(latency)).toBeNull()
  })
})
