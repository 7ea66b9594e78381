/**
 * Payment data at rest (src/core/crypto/payment.ts): AES-256-GCM envelopes under the ENCRYPT_KEY
 * ring, with real crypto throughout: round trips, rotation, tampering at every byte, truncation,
 * tenant binding, masking, input validation, and messages that never carry the token.
 */
import { createDecipheriv, randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { type KeySpec, type Keyring, parseKeyring } from '../src/core/config/secrets.js'
import {
  decryptPaymentToken,
  encryptPaymentToken,
  maskToken,
  validatePaymentToken,
} from '../src/core/crypto/payment.js'
import { IntegrityError, ShieldxError, UsageError } from '../src/core/errors.js'

const AES: KeySpec = { envName: 'ENCRYPT_KEY', bytes: { exact: 32 } }
const keyA = randomBytes(32)
const keyB = randomBytes(32)
const ring = (text: string): Keyring => parseKeyring(text, AES, 'test')
const ringA = ring(`k1:${keyA.toString('base64')}`)
const ringBA = ring(`k2:${keyB.toString('base64')},k1:${keyA.toString('base64')}`)

const tenant = { tenantId: 'tenant-1' }
const TOKEN = 'tok_ZEBRAsecret_4242424242424242'
// Distinctive pieces of the token and of the keys that no message may contain.
const FORBIDDEN = [TOKEN, 'ZEBRAsecret', keyA.toString('base64'), keyA.toString('hex')]

/** Runs fn, which must throw a ShieldxError, and returns that error. */
function thrown(fn: () => unknown): ShieldxError {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(ShieldxError)
    return err as ShieldxError
  }
  throw new Error('expected a throw, but the call returned')
}

function expectDecryptFailed(err: ShieldxError): void {
  expect(err).toBeInstanceOf(IntegrityError)
  expect(err.code).toBe('PAYMENT_DECRYPT_FAILED')
  expect(err.exitCode).toBe(4)
}

function expectNoSecrets(err: ShieldxError): void {
  const text = [err.message, err.hint ?? '', JSON.stringify(err.data ?? {}), String(err.cause ?? '')].join(
    '\n',
  )
  for (const secret of FORBIDDEN) expect(text).not.toContain(secret)
}

/** Offsets of the documented layout for an envelope made with kid `kid`. */
function layout(kid: string) {
  const kidEnd = 2 + kid.length
  return { kidEnd, nonceEnd: kidEnd + 12, tagEnd: kidEnd + 28 }
}

describe('encryptPaymentToken / decryptPaymentToken', () => {
  it('round-trips tokens, including empty and non-ASCII ones', () => {
    for (const token of [TOKEN, '', 'x', 'pm_ünïcødé_✓', 'a'.repeat(512)]) {
      const envelope = encryptPaymentToken(token, ringA, tenant)
      expect(decryptPaymentToken(envelope, ringA, tenant)).toBe(token)
    }
  })

  it('writes the documented layout, which plain node:crypto can open', () => {
    const envelope = encryptPaymentToken(TOKEN, ringA, tenant)
    const { kidEnd, nonceEnd, tagEnd } = layout('k1')
    expect(envelope[0]).toBe(1)
    expect(envelope[1]).toBe(2)
    expect(envelope.subarray(2, kidEnd).toString('ascii')).toBe('k1')
    expect(envelope.length).toBe(tagEnd + Buffer.byteLength(TOKEN))
    expect(envelope.includes(Buffer.from('ZEBRAsecret'))).toBe(false)

    const decipher = createDecipheriv('aes-256-gcm', keyA, envelope.subarray(kidEnd, nonceEnd))
    decipher.setAAD(
      Buffer.concat([envelope.subarray(0, kidEnd), Buffer.from('shieldx/payment/v1\0tenant-1')]),
    )
    decipher.setAuthTag(envelope.subarray(nonceEnd, tagEnd))
    const plain = Buffer.concat([decipher.update(envelope.subarray(tagEnd)), decipher.final()])
    expect(plain.toString('utf8')).toBe(TOKEN)
  })

  it('uses a fresh nonce: two encryptions of one token differ', () => {
    const one = encryptPaymentToken(TOKEN, ringA, tenant)
    const two = encryptPaymentToken(TOKEN, ringA, tenant)
    const { kidEnd, nonceEnd } = layout('k1')
    expect(one.equals(two)).toBe(false)
    expect(one.subarray(kidEnd, nonceEnd).equals(two.subarray(kidEnd, nonceEnd))).toBe(false)
    expect(decryptPaymentToken(one, ringA, tenant)).toBe(TOKEN)
    expect(decryptPaymentToken(two, ringA, tenant)).toBe(TOKEN)
  })

  it('rotates keys: old envelopes open under the new ring, new ones use the new key', () => {
    const old = encryptPaymentToken(TOKEN, ringA, tenant)
    expect(decryptPaymentToken(old, ringBA, tenant)).toBe(TOKEN)

    const fresh = encryptPaymentToken(TOKEN, ringBA, tenant)
    expect(fresh[1]).toBe(2)
    expect(fresh.subarray(2, 4).toString('ascii')).toBe('k2')
    expect(decryptPaymentToken(fresh, ringBA, tenant)).toBe(TOKEN)
    // Really under k2: a ring holding only k2 opens it, one holding only k1 does not know the kid.
    expect(decryptPaymentToken(fresh, ring(`k2:${keyB.toString('base64')}`), tenant)).toBe(TOKEN)
    expect(thrown(() => decryptPaymentToken(fresh, ringA, tenant)).code).toBe('UNKNOWN_KEY')
  })

  it('works with the fingerprint kid of a bare key', () => {
    const bare = ring(keyA.toString('base64'))
    expect(bare.current.kid).toMatch(/^k[0-9a-f]{8}$/)
    const envelope = encryptPaymentToken(TOKEN, bare, tenant)
    expect(envelope.subarray(2, 2 + envelope[1]!).toString('ascii')).toBe(bare.current.kid)
    expect(decryptPaymentToken(envelope, bare, tenant)).toBe(TOKEN)
  })

  it('names an unknown kid, and nothing of the keys', () => {
    const envelope = encryptPaymentToken(TOKEN, ringBA, tenant)
    const err = thrown(() => decryptPaymentToken(envelope, ringA, tenant))
    expect(err).toBeInstanceOf(IntegrityError)
    expect(err.code).toBe('UNKNOWN_KEY')
    expect(err.exitCode).toBe(4)
    expect(err.message).toContain("'k2'")
    expect(err.data).toEqual({ kid: 'k2' })
    for (const key of [keyA, keyB]) {
      const text = `${err.message} ${err.hint} ${JSON.stringify(err.data)}`
      expect(text).not.toContain(key.toString('base64'))
      expect(text).not.toContain(key.toString('hex'))
    }
  })

  it('fails with the wrong key bytes under the same kid', () => {
    const envelope = encryptPaymentToken(TOKEN, ringA, tenant)
    const impostor = ring(`k1:${keyB.toString('base64')}`)
    expectDecryptFailed(thrown(() => decryptPaymentToken(envelope, impostor, tenant)))
  })

  it('authenticates the kid: relabelling an envelope to another kid with the same key fails', () => {
    // k0 and k1 hold the same bytes, so only the AAD over the header can tell them apart.
    const twins = ring(`k1:${keyA.toString('base64')},k0:${keyA.toString('base64')}`)
    const envelope = encryptPaymentToken(TOKEN, twins, tenant)
    const relabelled = Buffer.from(envelope)
    relabelled[3] = '0'.charCodeAt(0)
    expect(relabelled.subarray(2, 4).toString('ascii')).toBe('k0')
    expectDecryptFailed(thrown(() => decryptPaymentToken(relabelled, twins, tenant)))
  })

  it('fails when any single byte is changed, at every position', () => {
    const envelope = encryptPaymentToken(TOKEN, ringA, tenant)
    const { kidEnd } = layout('k1')
    for (let i = 0; i < envelope.length; i++) {
      for (const mask of [0x01, 0x80]) {
        const bad = Buffer.from(envelope)
        bad[i] = bad[i]! ^ mask
        const err = thrown(() => decryptPaymentToken(bad, ringA, tenant))
        expect(err, `byte ${i} ^ ${mask}`).toBeInstanceOf(IntegrityError)
        // A changed kid (or kid length) may spell a kid the ring does not hold; everything
        // else is damage.
        const allowed =
          i >= 1 && i < kidEnd ? ['PAYMENT_DECRYPT_FAILED', 'UNKNOWN_KEY'] : ['PAYMENT_DECRYPT_FAILED']
        expect(allowed, `byte ${i} ^ ${mask}: ${err.code}`).toContain(err.code)
        expectNoSecrets(err)
      }
    }
  })

  it('fails on truncation at every interesting length', () => {
    const envelope = encryptPaymentToken(TOKEN, ringA, tenant)
    const { kidEnd, nonceEnd, tagEnd } = layout('k1')
    const lengths = [
      0,
      1,
      2,
      kidEnd - 1,
      kidEnd,
      kidEnd + 5,
      nonceEnd,
      tagEnd - 1,
      tagEnd,
      envelope.length - 1,
    ]
    for (const length of lengths) {
      const err = thrown(() => decryptPaymentToken(envelope.subarray(0, length), ringA, tenant))
      expectDecryptFailed(err)
      expectNoSecrets(err)
    }
    // And one byte too many is damage as well.
    expectDecryptFailed(
      thrown(() => decryptPaymentToken(Buffer.concat([envelope, Buffer.from([0])]), ringA, tenant)),
    )
  })

  it("fails for another tenant's context", () => {
    const envelope = encryptPaymentToken(TOKEN, ringA, tenant)
    for (const tenantId of ['tenant-2', 'tenant-1 ', 'tenant-', '', 'tenant-1\0']) {
      const err = thrown(() => decryptPaymentToken(envelope, ringA, { tenantId }))
      expectDecryptFailed(err)
      expect(err.message).toMatch(/could not be decrypted/)
    }
    expect(decryptPaymentToken(envelope, ringA, { tenantId: 'tenant-1' })).toBe(TOKEN)
  })

  it('refuses an unknown format version with its own sentence', () => {
    const envelope = encryptPaymentToken(TOKEN, ringA, tenant)
    for (const version of [0, 2, 255]) {
      const bad = Buffer.from(envelope)
      bad[0] = version
      const err = thrown(() => decryptPaymentToken(bad, ringA, tenant))
      expectDecryptFailed(err)
      expect(err.message).toContain(`format version ${version}`)
    }
  })

  it('never puts the token or the keys in any error', () => {
    const envelope = encryptPaymentToken(TOKEN, ringA, tenant)
    const flipped = Buffer.from(envelope)
    flipped[flipped.length - 1] = flipped[flipped.length - 1]! ^ 0xff
    const failures = [
      () => decryptPaymentToken(envelope, ringA, { tenantId: 'other' }),
      () => decryptPaymentToken(flipped, ringA, tenant),
      () => decryptPaymentToken(envelope.subarray(0, 20), ringA, tenant),
      () => decryptPaymentToken(envelope, ring(`k9:${keyB.toString('base64')}`), tenant),
      () => decryptPaymentToken(envelope, ring(`k1:${keyB.toString('base64')}`), tenant),
      () => validatePaymentToken(TOKEN.repeat(30)),
      () => validatePaymentToken(`${TOKEN}\u0007`),
      () => validatePaymentToken(`${TOKEN}\n${TOKEN}`),
    ]
    for (const fail of failures) expectNoSecrets(thrown(fail))
  })
})

describe('maskToken', () => {
  it('shows only the last 4 characters', () => {
    expect(maskToken('4242424242424242')).toBe('**** 4242')
    expect(maskToken('12345678')).toBe('**** 5678')
    expect(maskToken('tok_abcdefghWXYZ')).toBe('**** WXYZ')
  })

  it('ignores spaces and dashes', () => {
    expect(maskToken('4242 4242 4242 1234')).toBe('**** 1234')
    expect(maskToken('4242-4242-4242-1234')).toBe('**** 1234')
    expect(maskToken(' 4242 4242-4242 12-34 ')).toBe('**** 1234')
  })

  it('masks short tokens completely', () => {
    for (const token of ['', '1', '1234', '1234567', '12 34 56 7', '1-2-3-4-5-6-7']) {
      expect(maskToken(token), JSON.stringify(token)).toBe('****')
    }
  })

  it('never contains the hidden part', () => {
    const masked = maskToken(TOKEN)
    expect(masked).toBe('**** 4242')
    expect(masked).not.toContain('ZEBRA')
  })
})

describe('validatePaymentToken', () => {
  it('returns the token trimmed', () => {
    expect(validatePaymentToken('  tok_abc  ')).toBe('tok_abc')
    expect(validatePaymentToken('tok_abc\n')).toBe('tok_abc')
    expect(validatePaymentToken('4242 4242 4242 4242')).toBe('4242 4242 4242 4242')
    expect(validatePaymentToken('a'.repeat(512))).toBe('a'.repeat(512))
    expect(validatePaymentToken(` ${'a'.repeat(512)} `)).toBe('a'.repeat(512))
  })

  it.each([
    ['empty', ''],
    ['blank', ' \t\n '],
    ['too long', 'a'.repeat(513)],
    ['NUL', 'tok\u0000abc'],
    ['escape sequence', 'tok\u001b[31mabc'],
    ['inner newline', 'tok\nabc'],
    ['inner tab', 'tok\tabc'],
    ['DEL', 'tok\u007fabc'],
    ['C1 control', 'tok\u0085abc'],
  ])('rejects %s with a usage error naming the field', (_label, token) => {
    const err = thrown(() => validatePaymentToken(token))
    expect(err).toBeInstanceOf(UsageError)
    expect(err.exitCode).toBe(2)
    expect(err.message).toContain('payment token')
    if (token.trim() !== '') expect(err.message).not.toContain(token.trim())
  })
})
