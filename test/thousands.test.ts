/** Counts as reports print them: grouped by hand, exactly as ICU's en-US grouping would. */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { thousands } from '../src/core/thousands.js'

describe('thousands', () => {
  it('groups whole numbers in threes, as en-US does', () => {
    expect(thousands(0)).toBe('0')
    expect(thousands(999)).toBe('999')
    expect(thousands(1000)).toBe('1,000')
    expect(thousands(1_000_000)).toBe('1,000,000')
    expect(thousands(823_723)).toBe('823,723')
    expect(thousands(-1234)).toBe('-1,234')
    expect(thousands(Number.MAX_SAFE_INTEGER)).toBe('9,007,199,254,740,991')
  })

  it('matches toLocaleString("en-US") for any safe integer', () => {
    fc.assert(
      fc.property(fc.maxSafeInteger(), (n) => {
        expect(thousands(n)).toBe(n.toLocaleString('en-US'))
      }),
      { numRuns: 5000 },
    )
  })

  it('leaves what is not a safe integer to ICU (fractions, infinities), and prints -0 as 0', () => {
    for (const n of [1234.5678, 0.5, Infinity, Number.NaN, 2 ** 60])
      expect(thousands(n)).toBe(n.toLocaleString('en-US'))
    expect(thousands(-0)).toBe('0')
  })
})
