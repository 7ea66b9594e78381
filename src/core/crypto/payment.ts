/**
 * Payment data at rest: AES-256-GCM envelopes under the ENCRYPT_KEY ring, masking for display, and
 * validation of the token a user types. node:crypto does the cryptography; this module only fixes
 * the envelope format and the messages.
 *
 * Envelope layout (format version 1):
 *
 *   offset  size     field
 *   0       1        format version (1)
 *   1       1        kid length n (1..64)
 *   2       n        kid, ASCII: which key of the ring encrypted this
 *   2+n     12       nonce, random per envelope
 *   14+n    16       GCM tag
 *   30+n    rest     ciphertext (UTF-8 token; may be empty)
 *
 * The AAD is the header (version, kid length, kid) followed by `shieldx/payment/v1\0<tenantId>`:
 * the header is authenticated, and an envelope decrypts only for the purpose and tenant it was
 * made for, so a row copied to another tenant, or a blob from another purpose, fails.
 *
 * Secrets rule (DESIGN.md): no message here contains a token, plaintext or key bytes.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import type { Key, Keyring } from '../config/secrets.js'
import { IntegrityError, UsageError } from '../errors.js'

export interface PaymentContext {
  tenantId: string
}

const VERSION = 1
const KEY_BYTES = 32
const NONCE_BYTES = 12
const TAG_BYTES = 16
const PURPOSE = 'shieldx/payment/v1\0'
// The kid rule of src/core/config/secrets.ts. The kid read from an envelope is untrusted and is
// named in a message, so anything else is treated as damage rather than echoed.
const KID = /^[A-Za-z0-9._-]{1,64}$/
const MAX_TOKEN_CHARS = 512

export function encryptPaymentToken(token: string, keyring: Keyring, context: PaymentContext): Buffer {
  const key = checkedKey(keyring.current)
  const kid = Buffer.from(key.kid, 'ascii')
  const header = Buffer.concat([Buffer.from([VERSION, kid.length]), kid])
  const nonce = randomBytes(NONCE_BYTES)
  const cipher = createCipheriv('aes-256-gcm', key.bytes, nonce, { authTagLength: TAG_BYTES })
  cipher.setAAD(aad(header, context))
  const ciphertext = Buffer.concat([cipher.update(token, 'utf8'), cipher.final()])
  return Buffer.concat([header, nonce, cipher.getAuthTag(), ciphertext])
}

export function decryptPaymentToken(envelope: Buffer, keyring: Keyring, context: PaymentContext): string {
  if (envelope.length < 2) throw damaged()
  if (envelope[0] !== VERSION) {
    throw new IntegrityError(
      `The payment data has envelope format version ${envelope[0]}, which this shieldx cannot read.`,
      { code: 'PAYMENT_DECRYPT_FAILED' },
    )
  }
  const kidEnd = 2 + envelope[1]!
  const tagEnd = kidEnd + NONCE_BYTES + TAG_BYTES
  if (envelope.length < tagEnd) throw damaged()
  const kid = envelope.subarray(2, kidEnd).toString('latin1')
  if (!KID.test(kid)) throw damaged()
  const found = keyring.byId.get(kid)
  if (!found) {
    throw new IntegrityError(
      `The payment data was encrypted with key id '${kid}', which ENCRYPT_KEY lacks.`,
      {
        code: 'UNKNOWN_KEY',
        hint: 'After a rotation, keep the old key after the new one in ENCRYPT_KEY so it can still decrypt.',
        data: { kid },
      },
    )
  }
  const key = checkedKey(found)
  try {
    const decipher = createDecipheriv(
      'aes-256-gcm',
      key.bytes,
      envelope.subarray(kidEnd, kidEnd + NONCE_BYTES),
      {
        authTagLength: TAG_BYTES,
      },
    )
    decipher.setAAD(aad(envelope.subarray(0, kidEnd), context))
    decipher.setAuthTag(envelope.subarray(kidEnd + NONCE_BYTES, tagEnd))
    // GCM checks the tag in final(); nothing is returned before it passes (this is not a stream).
    const plain = Buffer.concat([decipher.update(envelope.subarray(tagEnd)), decipher.final()])
    return plain.toString('utf8')
  } catch {
    // Node's message ("unable to authenticate data") says nothing more useful, and a cause is not
    // kept, so that nothing derived from the envelope travels further than this sentence.
    throw damaged()
  }
}

/** For display: the last 4 characters, or nothing at all for a token too short to show any. */
export function maskToken(token: string): string {
  const compact = token.replace(/[\s-]/g, '')
  // Showing 4 of fewer than 8 characters would reveal half the token or more.
  if (compact.length < 8) return '****'
  return `**** ${compact.slice(-4)}`
}

/** Check a token from user input; returns it trimmed. Messages name the field, never the value. */
export function validatePaymentToken(token: string): string {
  const trimmed = token.trim()
  if (trimmed === '')
    throw invalid('The payment token is empty; expected the token from the payment provider.')
  if (trimmed.length > MAX_TOKEN_CHARS) {
    throw invalid(`The payment token is longer than ${MAX_TOKEN_CHARS} characters.`)
  }
  if (/[\u0000-\u001f\u007f-\u009f]/.test(trimmed)) {
    throw invalid('The payment token contains a control character; expected printable text only.')
  }
  return trimmed
}

function aad(header: Buffer, context: PaymentContext): Buffer {
  // The tenant comes last after a fixed prefix, so the AAD maps back to exactly one tenant id.
  return Buffer.concat([header, Buffer.from(PURPOSE + context.tenantId, 'utf8')])
}

function checkedKey(key: Key): Key {
  // parseKeyring enforces this for ENCRYPT_KEY; a ring built another way gets a sentence, not
  // node's "Invalid key length".
  if (key.bytes.length !== KEY_BYTES || !KID.test(key.kid)) {
    throw new UsageError(`ENCRYPT_KEY key '${key.kid}' must be ${KEY_BYTES} bytes with a valid key id.`)
  }
  return key
}

function damaged(): IntegrityError {
  return new IntegrityError(
    'The payment data could not be decrypted: it is damaged, belongs to another tenant, or was encrypted under a different key.',
    { code: 'PAYMENT_DECRYPT_FAILED' },
  )
}

function invalid(message: string): UsageError {
  return new UsageError(message, { code: 'INVALID_PAYMENT_TOKEN' })
}
