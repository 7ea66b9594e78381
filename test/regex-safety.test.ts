/** The nested-repetition heuristic behind `rules add`'s warning about catastrophic patterns. */
import { describe, expect, it } from 'vitest'
import { nestsRepetitions } from '../src/core/shadow/regex-safety.js'
import { riskyPatterns } from '../src/core/shadow/rules.js'

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
