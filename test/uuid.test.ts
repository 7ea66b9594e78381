/** Transaction ids: version 7 UUIDs, ordered by time, random below the millisecond. */
import { describe, expect, it } from 'vitest'
import { UUID, uuidV7 } from '../src/core/uuid.js'

describe('uuidV7', () => {
  it('holds the millisecond in its first 48 bits, version 7 and the RFC variant', () => {
    const ms = Date.UTC(2026, 10, 22, 16, 30, 0, 123)
    const id = uuidV7(ms)
    expect(id).toMatch(UUID)
    expect(parseInt(id.replace(/-/g, '').slice(0, 12), 16)).toBe(ms)
    expect(id[14]).toBe('7')
    expect('89ab').toContain(id[19])
  })

  it('holds the first and the last millisecond of 48 bits, and refuses times outside them', () => {
    expect(uuidV7(0)).toMatch(/^00000000-0000-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(uuidV7(2 ** 48 - 1)).toMatch(/^ffffffff-ffff-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    for (const bad of [-1, 2 ** 48, Number.NaN, Number.POSITIVE_INFINITY])
      expect(() => uuidV7(bad)).toThrow(RangeError)
  })

  it('sorts as text in time order across milliseconds, and never repeats', () => {
    const ids = Array.from({ length: 3000 }, (_, i) => uuidV7(1_700_000_000_000 + Math.floor(i / 3)))
    // (within one millisecond the order is random: only across them is it fixed)
    for (let i = 3; i < ids.length; i += 3) expect(ids[i - 1]! < ids[i]!).toBe(true)
    expect(new Set(ids).size).toBe(ids.length)
    // 74 random bits: the random part differs between ids of the same millisecond.
    expect(new Set(ids.slice(0, 3).map((x) => x.slice(15))).size).toBe(3)
  })
})
