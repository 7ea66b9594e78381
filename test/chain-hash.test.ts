/**
 * The writer's chain hash: HMAC-SHA256 from the key's prepared state must be byte for byte what
 * createHmac gives, or every chain it writes breaks (verify-chain judges on createHmac's word).
 */
import { createHmac, randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { type AuditRow, canonical, ChainKey, chainHash } from '../src/core/audit/chain.js'

const row = (over: Partial<AuditRow> = {}): AuditRow => ({
  tenant_id: 'acme',
  seq: 1,
  transaction_id: '01a20410-230d-7a33-88f9-17ceb74ff4f7',
  action: 'consume',
  amount: 5,
  balance_after: 95,
  reserved_after: 0,
  key_id: 'k1',
  created_at: new Date('2026-11-22T16:30:00.123Z'),
  ...over,
})

describe('chainHash', () => {
  it('is HMAC-SHA256 of canonical(row) || prev_hash, for short and long rows, keys and hashes alike', () => {
    const keys = [randomBytes(32), randomBytes(64), randomBytes(100)].map((bytes, i) => ({
      kid: `k${i}`,
      bytes,
    }))
    const rows = [
      row(),
      row({ tenant_id: 'T'.repeat(128), seq: Number.MAX_SAFE_INTEGER, balance_after: 2 ** 52 }),
      row({ transaction_id: null, action: 'expire', key_id: 'a-key-id-'.repeat(30) }),
      row({ tenant_id: 'x', key_id: 'ключ-é-€-😀'.repeat(20) }),
      // Lengths across block boundaries: the tenant grows one character at a time.
      ...Array.from({ length: 140 }, (_, i) => row({ tenant_id: `t${'a'.repeat(i)}`, seq: i + 1 })),
    ]
    for (const key of keys) {
      // (Otherwise chainHash takes createHmac itself, and this test would prove nothing.)
      expect(new ChainKey(key).fast).toBe(true)
      let prev: Buffer = Buffer.alloc(32)
      for (const r of rows) {
        const expected = createHmac('sha256', key.bytes).update(canonical(r)).update(prev).digest()
        const got = chainHash(key, r, prev)
        expect(got.equals(expected)).toBe(true)
        prev = got
      }
    }
  })
})
