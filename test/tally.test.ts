/**
 * The replay's tally: per-score counts (for AUC-ROC) stay exact through the cache in front of the
 * score map, whatever the scores: thousands of distinct ones sharing its slots, -0 and 0, infinities.
 */
import { describe, expect, it } from 'vitest'
import { seededRandom } from '../src/core/shadow/random.js'
import { addEvent, mergeTally, newTally, tallyToData } from '../src/core/shadow/tally.js'

describe('tally', () => {
  it('counts every score exactly, with far more distinct scores than the cache has slots', () => {
    const rng = seededRandom(11)
    const pool = [
      -Infinity,
      Infinity,
      0,
      -0,
      ...Array.from({ length: 3000 }, (_, i) => (i + 1) / 7),
      ...Array.from({ length: 500 }, (_, i) => 200 + i),
    ]
    const want = new Map<number, [number, number]>()
    const one = newTally()
    const halves = [newTally(), newTally()]
    for (let i = 0; i < 60_000; i++) {
      // runs of the same score, as a rate limit gives, and jumps between distinct ones
      const score = pool[rng() < 0.5 ? i % 7 : Math.floor(rng() * pool.length)]!
      const attack = rng() < 0.3
      const key = Object.is(score, -0) ? 0 : score
      const w = want.get(key) ?? [0, 0]
      w[attack ? 0 : 1]++
      want.set(key, w)
      addEvent(one, i, attack, false, 0, score > 1, score)
      addEvent(halves[i % 2]!, i, attack, false, 0, score > 1, score)
    }
    const sorted = (m: Map<number, [number, number]>) => [...m].sort((a, b) => a[0] - b[0])
    expect(sorted(one.candidate.scores)).toEqual(sorted(want))
    const merged = newTally()
    for (const h of halves) mergeTally(merged, tallyToData(h))
    expect(sorted(merged.candidate.scores)).toEqual(sorted(want))
    expect(want.size, 'most scores drawn').toBeGreaterThan(3000)
    expect(one.candidate.scores.has(0) && !one.candidate.scores.has(NaN)).toBe(true)
  })
})
