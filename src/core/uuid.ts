import { randomFillSync } from 'node:crypto'

/** A UUID as Postgres prints it (any case): ids of transactions, reservations, evaluations, tests. */
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))
/** Random bytes drawn in bulk (one call to the CSPRNG per 256 ids), as randomUUID does too. */
const pool = Buffer.alloc(10 * 256)
let poolAt = pool.length

/**
 * A version 7 UUID (RFC 9562): the Unix time in milliseconds, then 74 random bits. Transaction
 * ids are these, so that a new row's primary-key entry lands at the right edge of the btree, as
 * time-ordered keys do, instead of on a random leaf page of an index that outgrows the cache (a
 * v4 key dirties, and after each checkpoint logs in full, a page per insert).
 */
export function uuidV7(ms: number): string {
  if (!(ms >= 0 && ms < 2 ** 48))
    throw new RangeError(`uuidV7: ${ms} is not a time in 48 bits of milliseconds`)
  if (poolAt === pool.length) {
    randomFillSync(pool)
    poolAt = 0
  }
  const r = poolAt
  poolAt += 10
  const t = Math.floor(ms)
  const hi = Math.floor(t / 0x10000) // the top 32 of the 48 bits
  const lo = t % 0x10000
  return (
    hi.toString(16).padStart(8, '0') +
    '-' +
    lo.toString(16).padStart(4, '0') +
    '-7' +
    HEX[pool[r]! & 0x0f]!.slice(1) +
    HEX[pool[r + 1]!]! +
    '-' +
    HEX[(pool[r + 2]! & 0x3f) | 0x80]! +
    HEX[pool[r + 3]!]! +
    '-' +
    HEX[pool[r + 4]!]! +
    HEX[pool[r + 5]!]! +
    HEX[pool[r + 6]!]! +
    HEX[pool[r + 7]!]! +
    HEX[pool[r + 8]!]! +
    HEX[pool[r + 9]!]!
  )
}
