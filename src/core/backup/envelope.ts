/**
 * The encryption layer of backups: streaming AES-256-GCM in independently authenticated chunks,
 * under the BACKUP_KEY ring. node:crypto does the cryptography; this module fixes the file format,
 * the order of checks, and the messages.
 *
 * Why chunks: Node's streaming GCM decipher checks the tag only in final(), after update() has
 * already handed out every byte of plaintext. A restore fed from such a stream would apply
 * unauthenticated data. Here every chunk carries its own tag, the decryptor holds a chunk's
 * plaintext until that tag has passed, and memory stays at about one chunk whatever the file size.
 *
 * File layout (format version 1), integers big-endian:
 *
 *   header
 *     offset  size  field
 *     0       4     magic "SHXB"
 *     4       1     format version (1)
 *     5       1     kid length n (1..64)
 *     6       n     kid, ASCII: which key of BACKUP_KEY encrypted the file
 *     6+n     8     nonce prefix, random, new for every file
 *     14+n    4     chunk size C: plaintext bytes per chunk (1 MiB)
 *   then chunks 0..k (k >= 0, at least one chunk even for an empty input), each
 *     4       ciphertext length L (uint32): L = C for chunks 0..k-1; 0 <= L <= C for the last, chunk k
 *     L       ciphertext (GCM: as long as the plaintext)
 *     16      GCM tag
 *
 * Chunk i is sealed with
 *   nonce = nonce prefix (8) || i (uint32)
 *   AAD   = the whole header || i (uint64) || final flag (1 byte: 1 for chunk k, 0 otherwise)
 * so the encrypted size is header + 20 bytes per chunk + the plaintext, known in advance.
 *
 * What that detects:
 * - any flipped bit in a chunk or its tag, and any change to the header (every AAD holds it);
 * - chunks reordered or spliced in from another file (the index and the file's random prefix are
 *   in the nonce and the AAD);
 * - truncation, also exactly at a chunk boundary (the last chunk left has final flag 0);
 * - anything appended after the final chunk (refused as soon as its first byte arrives).
 * The nonce is unique per key as long as nonce prefixes do not repeat: 64 random bits per file,
 * at most 2^32 chunks (4 PiB) per file.
 *
 * The encryptor learns which chunk is last by holding one chunk of plaintext back: a full chunk is
 * sealed as "not last" once another byte arrives, and whatever is held when the input ends (perhaps
 * nothing) is sealed as the last. So the last chunk may be full length; the decryptor, which cannot
 * tell from L = C whether a chunk is last, tries "not last" first and then "last" (two passes over
 * at most the one final chunk; a shorter chunk can only be the last one).
 *
 * Secrets rule (DESIGN.md): no message here contains key bytes or plaintext.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { Transform, type TransformCallback } from 'node:stream'
import type { Key, Keyring } from '../config/secrets.js'
import { IntegrityError, OperationError, UsageError } from '../errors.js'

/** Plaintext bytes per chunk (1 MiB); the last chunk may be shorter, or empty. */
export const CHUNK_SIZE = 1 << 20

const MAGIC = Buffer.from('SHXB', 'ascii')
const VERSION = 1
const KEY_BYTES = 32
const PREFIX_BYTES = 8
const TAG_BYTES = 16
const LENGTH_BYTES = 4
/** Everything in the header but the kid. */
const HEADER_FIXED = MAGIC.length + 1 + 1 + PREFIX_BYTES + 4
const MAX_KID = 64
/** The longest header there is: enough bytes for readEnvelopeHeader whatever the kid. */
export const MAX_HEADER_LENGTH = HEADER_FIXED + MAX_KID
/**
 * The largest chunk size a header may declare. The decryptor holds a chunk (ciphertext and
 * plaintext) in memory, so a damaged size field must not make it wait for gigabytes.
 */
const MAX_CHUNK_SIZE = 16 << 20
/** Nonce = prefix || uint32 index. */
const MAX_CHUNKS = 2 ** 32
// The kid rule of src/core/config/secrets.ts. A kid read from a file is untrusted and is named in
// a message, so anything else is treated as damage rather than echoed.
const KID = /^[A-Za-z0-9._-]{1,64}$/

interface Header {
  bytes: Buffer
  version: number
  kid: string
  prefix: Buffer
  chunkSize: number
}

// --- encrypt ----------------------------------------------------------------------------------------------

/** Plaintext in, encrypted backup file bytes out. Uses keyring.current. */
export function createEncryptStream(keyring: Keyring): Transform {
  return new EncryptStream(checkedKey(keyring.current))
}

class EncryptStream extends Transform {
  private readonly key: Key
  private readonly header: Buffer
  private readonly prefix: Buffer
  /** The chunk of plaintext held back until we know whether it is the last. */
  private readonly held = Buffer.allocUnsafe(CHUNK_SIZE)
  private heldLength = 0
  private index = 0

  constructor(key: Key) {
    super()
    this.key = key
    this.prefix = randomBytes(PREFIX_BYTES)
    this.header = buildHeader(key.kid, this.prefix, CHUNK_SIZE)
    this.push(this.header)
  }

  override _transform(data: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      let offset = 0
      while (offset < data.length) {
        // A full chunk followed by at least one more byte: it is not the last.
        if (this.heldLength === CHUNK_SIZE) {
          this.seal(this.held, false)
          this.heldLength = 0
        }
        const copied = data.copy(this.held, this.heldLength, offset, offset + CHUNK_SIZE - this.heldLength)
        this.heldLength += copied
        offset += copied
      }
      callback()
    } catch (err) {
      callback(err as Error)
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.seal(this.held.subarray(0, this.heldLength), true)
      callback()
    } catch (err) {
      callback(err as Error)
    }
  }

  private seal(plain: Buffer, final: boolean): void {
    if (this.index >= MAX_CHUNKS) {
      throw new OperationError(`The backup is too large to encrypt: more than ${MAX_CHUNKS} chunks.`, {
        code: 'BACKUP_TOO_LARGE',
      })
    }
    const cipher = createCipheriv('aes-256-gcm', this.key.bytes, nonce(this.prefix, this.index), {
      authTagLength: TAG_BYTES,
    })
    cipher.setAAD(aad(this.header, this.index, final))
    // update() returns a new buffer, so `held` can be refilled once this returns. GCM's final()
    // returns no bytes (it computes the tag), so there is nothing to append to the ciphertext.
    const ciphertext = cipher.update(plain)
    cipher.final()
    const length = Buffer.alloc(LENGTH_BYTES)
    length.writeUInt32BE(ciphertext.length)
    this.push(length)
    this.push(ciphertext)
    this.push(cipher.getAuthTag())
    this.index++
  }
}

// --- decrypt ----------------------------------------------------------------------------------------------

export interface DecryptOptions {
  /** Called with each chunk's index once it has passed authentication and its plaintext is pushed. */
  onChunk?: (index: number) => void
}

/**
 * Encrypted backup file bytes in, plaintext out. A chunk's plaintext is pushed only after its tag
 * has been checked; every failure is an IntegrityError (exit 4) emitted as the stream's error.
 */
export function createDecryptStream(keyring: Keyring, options: DecryptOptions = {}): Transform {
  return new DecryptStream(keyring, options.onChunk)
}

class DecryptStream extends Transform {
  private readonly keyring: Keyring
  private readonly onChunk: ((index: number) => void) | undefined
  /** Received, not yet consumed input; `offset` is the file offset of its first byte. */
  private pending: Buffer[] = []
  private pendingLength = 0
  private offset = 0
  private header: Header | undefined
  private key: Key | undefined
  /** The next chunk expected. */
  private index = 0
  /** File offset just past the final chunk, once it has been authenticated. */
  private finalEnd: number | undefined

  constructor(keyring: Keyring, onChunk: ((index: number) => void) | undefined) {
    super()
    this.keyring = keyring
    this.onChunk = onChunk
  }

  override _transform(data: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      if (data.length > 0) {
        this.pending.push(data)
        this.pendingLength += data.length
      }
      this.consume()
      callback()
    } catch (err) {
      callback(err as Error)
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.consume()
      if (this.finalEnd === undefined) throw this.truncated()
      callback()
    } catch (err) {
      callback(err as Error)
    }
  }

  /** Parse and decrypt as far as the input received allows. */
  private consume(): void {
    if (!this.header) {
      const parsed = parseHeader(this.peekBytes(Math.min(this.pendingLength, MAX_HEADER_LENGTH)))
      if ('need' in parsed) return
      this.header = parsed
      this.key = this.lookUpKey(parsed.kid)
      this.takeBytes(parsed.bytes.length)
    }
    const { chunkSize } = this.header
    for (;;) {
      if (this.finalEnd !== undefined) {
        if (this.pendingLength > 0) throw trailing(this.index - 1, this.finalEnd)
        return
      }
      if (this.pendingLength < LENGTH_BYTES) return
      const start = this.offset
      const length = this.peekBytes(LENGTH_BYTES).readUInt32BE(0)
      if (length > chunkSize) {
        throw new IntegrityError(
          `Chunk ${this.index} (at byte ${start} of the file) declares ${length} bytes, more than the chunk size of ${chunkSize}: the file is damaged.`,
          { code: 'BACKUP_CORRUPT', data: { chunk: this.index, offset: start } },
        )
      }
      const recordLength = LENGTH_BYTES + length + TAG_BYTES
      if (this.pendingLength < recordLength) return
      if (this.index >= MAX_CHUNKS) throw corrupt(this.index, start, start + recordLength - 1)
      this.takeBytes(LENGTH_BYTES)
      const ciphertext = this.takeBytes(length)
      const tag = Buffer.concat(this.takeBytes(TAG_BYTES))
      // Only the last chunk may be short; a full-length one may be either.
      const opened =
        (length === chunkSize ? this.open(ciphertext, tag, false) : undefined) ??
        this.open(ciphertext, tag, true)
      if (!opened) throw corrupt(this.index, start, start + recordLength - 1)
      for (const piece of opened.plain) if (piece.length > 0) this.push(piece)
      if (opened.final) this.finalEnd = start + recordLength
      const index = this.index++
      this.onChunk?.(index)
    }
  }

  /** Decrypt one chunk; undefined when its tag does not verify under the given final flag. */
  private open(
    ciphertext: Buffer[],
    tag: Buffer,
    final: boolean,
  ): { plain: Buffer[]; final: boolean } | undefined {
    const header = this.header!
    const decipher = createDecipheriv('aes-256-gcm', this.key!.bytes, nonce(header.prefix, this.index), {
      authTagLength: TAG_BYTES,
    })
    decipher.setAAD(aad(header.bytes, this.index, final))
    decipher.setAuthTag(tag)
    // Held here, not pushed, until final() has checked the tag.
    const plain = ciphertext.map((piece) => decipher.update(piece))
    try {
      decipher.final()
    } catch {
      // Node's "Unsupported state or unable to authenticate data" adds nothing; no cause is kept.
      return undefined
    }
    return { plain, final }
  }

  private lookUpKey(kid: string): Key {
    return checkedKey(backupKeyFor(this.keyring, kid))
  }

  private truncated(): IntegrityError {
    if (!this.header) {
      const message =
        this.offset + this.pendingLength === 0
          ? 'The backup is empty: it is truncated.'
          : `The backup ends inside its header, after ${this.pendingLength} bytes: it is truncated.`
      return new IntegrityError(message, { code: 'BACKUP_TRUNCATED', data: { chunks: 0 } })
    }
    const message =
      this.pendingLength > 0
        ? `The backup ends inside chunk ${this.index} (which starts at byte ${this.offset} of the file), without its final chunk: it is truncated.`
        : this.index === 0
          ? 'The backup ends right after its header, without any chunk: it is truncated.'
          : `The backup ends after chunk ${this.index - 1} without its final chunk: it is truncated.`
    return new IntegrityError(message, {
      code: 'BACKUP_TRUNCATED',
      data: { chunks: this.index, bytes: this.offset + this.pendingLength },
    })
  }

  /** The first n (<= pendingLength) input bytes, without consuming them. */
  private peekBytes(n: number): Buffer {
    const first = this.pending[0]
    if (first && first.length >= n) return first.subarray(0, n)
    return Buffer.concat(this.pending, this.pendingLength).subarray(0, n)
  }

  /** Consume n (<= pendingLength) input bytes, as slices of what was received (no copy). */
  private takeBytes(n: number): Buffer[] {
    const out: Buffer[] = []
    let left = n
    while (left > 0) {
      const first = this.pending[0]!
      if (first.length <= left) {
        out.push(first)
        this.pending.shift()
        left -= first.length
      } else {
        out.push(first.subarray(0, left))
        this.pending[0] = first.subarray(left)
        left = 0
      }
    }
    this.pendingLength -= n
    this.offset += n
    return out
  }
}

// --- header -----------------------------------------------------------------------------------------------

/**
 * Read the header at the start of an encrypted backup (for `backup verify` and manifest checks).
 * `buf` is the start of the file; MAX_HEADER_LENGTH bytes always suffice. Chunks begin at
 * headerLength. Nothing here is authenticated yet: only decryption proves the header intact.
 */
export function readEnvelopeHeader(buf: Buffer): { version: number; kid: string; headerLength: number } {
  const parsed = parseHeader(buf.subarray(0, MAX_HEADER_LENGTH))
  if ('need' in parsed) {
    throw new IntegrityError(
      buf.length === 0
        ? 'The backup is empty: it is truncated.'
        : `The backup ends inside its header, after ${buf.length} bytes: it is truncated.`,
      { code: 'BACKUP_TRUNCATED', data: { chunks: 0 } },
    )
  }
  return { version: parsed.version, kid: parsed.kid, headerLength: parsed.bytes.length }
}

/**
 * Parse a header from the first bytes of a file. Returns { need } when more bytes are needed;
 * throws as soon as the bytes present rule the file out (a 2-byte file that is not "SH" is not a
 * truncated backup, it is not a backup).
 */
function parseHeader(buf: Buffer): Header | { need: number } {
  const magic = buf.subarray(0, MAGIC.length)
  if (!magic.equals(MAGIC.subarray(0, magic.length))) {
    throw new IntegrityError('The file is not a shieldx backup: it does not start with "SHXB".', {
      code: 'BACKUP_FORMAT',
    })
  }
  if (buf.length < MAGIC.length + 2) return { need: MAGIC.length + 2 }
  const version = buf[MAGIC.length]!
  if (version !== VERSION) {
    throw new IntegrityError(
      `The backup has format version ${version}, which this shieldx cannot read (it reads version ${VERSION}).`,
      {
        code: 'BACKUP_FORMAT',
        hint: 'A newer shieldx may read it; if no version of shieldx wrote this, the file is damaged.',
        data: { version },
      },
    )
  }
  const kidLength = buf[MAGIC.length + 1]!
  if (kidLength < 1 || kidLength > MAX_KID) throw damagedHeader(`its key id length ${kidLength} is invalid`)
  const headerLength = HEADER_FIXED + kidLength
  if (buf.length < headerLength) return { need: headerLength }
  const kidStart = MAGIC.length + 2
  const kid = buf.subarray(kidStart, kidStart + kidLength).toString('latin1')
  if (!KID.test(kid)) throw damagedHeader('its key id has characters a key id cannot have')
  const prefix = Buffer.from(buf.subarray(kidStart + kidLength, kidStart + kidLength + PREFIX_BYTES))
  const chunkSize = buf.readUInt32BE(kidStart + kidLength + PREFIX_BYTES)
  if (chunkSize < 1 || chunkSize > MAX_CHUNK_SIZE) {
    throw damagedHeader(`its chunk size ${chunkSize} is outside 1..${MAX_CHUNK_SIZE}`)
  }
  // A copy: the input buffer may be a slice of a larger one that is reused.
  return { bytes: Buffer.from(buf.subarray(0, headerLength)), version, kid, prefix, chunkSize }
}

function buildHeader(kid: string, prefix: Buffer, chunkSize: number): Buffer {
  const kidBytes = Buffer.from(kid, 'ascii')
  const size = Buffer.alloc(4)
  size.writeUInt32BE(chunkSize)
  return Buffer.concat([MAGIC, Buffer.from([VERSION, kidBytes.length]), kidBytes, prefix, size])
}

// --- helpers ----------------------------------------------------------------------------------------------

function nonce(prefix: Buffer, index: number): Buffer {
  const out = Buffer.alloc(PREFIX_BYTES + 4)
  prefix.copy(out, 0)
  out.writeUInt32BE(index, PREFIX_BYTES)
  return out
}

function aad(header: Buffer, index: number, final: boolean): Buffer {
  const out = Buffer.alloc(header.length + 9)
  header.copy(out, 0)
  out.writeBigUInt64BE(BigInt(index), header.length)
  out[header.length + 8] = final ? 1 : 0
  return out
}

/** The key a backup names (its manifest's or header's key id), or exit 4 saying BACKUP_KEY lacks it. */
export function backupKeyFor(keyring: Keyring, kid: string): Key {
  const key = keyring.byId.get(kid)
  if (!key) {
    throw new IntegrityError(`The backup was encrypted with key '${kid}', which BACKUP_KEY does not hold.`, {
      code: 'BACKUP_UNKNOWN_KEY',
      hint: 'After a rotation, keep the old key after the new one in BACKUP_KEY so older backups still restore.',
      data: { kid },
    })
  }
  return key
}

function checkedKey(key: Key): Key {
  // parseKeyring enforces this for BACKUP_KEY; a ring built another way gets a sentence, not
  // node's "Invalid key length".
  if (key.bytes.length !== KEY_BYTES || !KID.test(key.kid)) {
    throw new UsageError(`BACKUP_KEY key '${key.kid}' must be ${KEY_BYTES} bytes with a valid key id.`)
  }
  return key
}

function corrupt(chunk: number, first: number, last: number): IntegrityError {
  const where = `Chunk ${chunk} (bytes ${first}-${last} of the file) failed authentication`
  return chunk === 0
    ? new IntegrityError(`${where}: wrong BACKUP_KEY or a damaged file.`, {
        code: 'BACKUP_CORRUPT',
        hint: 'Check that BACKUP_KEY holds the key this backup was made with under the same key id.',
        data: { chunk, first_byte: first, last_byte: last },
      })
    : new IntegrityError(`${where}: the file is damaged or was encrypted with a different key.`, {
        code: 'BACKUP_CORRUPT',
        data: { chunk, first_byte: first, last_byte: last },
      })
}

function damagedHeader(what: string): IntegrityError {
  return new IntegrityError(`The backup header is damaged: ${what}.`, { code: 'BACKUP_CORRUPT' })
}

function trailing(lastChunk: number, end: number): IntegrityError {
  return new IntegrityError(
    `The backup continues after its final chunk (chunk ${lastChunk}, which ends at byte ${end - 1} of the file): something was appended to it.`,
    { code: 'BACKUP_TRAILING_DATA', data: { chunks: lastChunk + 1, end } },
  )
}
