/**
 * The encryption layer of backups (src/core/backup/envelope.ts): chunked AES-256-GCM streams with
 * real crypto throughout. Round trips at the chunk boundaries, the exact file format, key rotation,
 * and every kind of damage: flipped bytes anywhere, reordered and spliced chunks, truncation,
 * appended data. Also that no plaintext leaves the decryptor before its chunk is authenticated,
 * and that memory stays flat on a 200 MB stream.
 */
import { createDecipheriv, randomBytes } from 'node:crypto'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { describe, expect, it } from 'vitest'
import {
  CHUNK_SIZE,
  createDecryptStream,
  createEncryptStream,
  MAX_HEADER_LENGTH,
  readEnvelopeHeader,
} from '../src/core/backup/envelope.js'
import { type KeySpec, type Keyring, parseKeyring } from '../src/core/config/secrets.js'
import { IntegrityError, ShieldxError, UsageError } from '../src/core/errors.js'

const BACKUP: KeySpec = { envName: 'BACKUP_KEY', bytes: { exact: 32 } }
const key1 = randomBytes(32)
const key2 = randomBytes(32)
const ring = (text: string): Keyring => parseKeyring(text, BACKUP, 'test')
const b64 = (b: Buffer) => b.toString('base64')
const ring1 = ring(`k1:${b64(key1)}`)
const ring21 = ring(`k2:${b64(key2)},k1:${b64(key1)}`)
const ring2 = ring(`k2:${b64(key2)}`)
/** Right kid, wrong bytes. */
const ring1Wrong = ring(`k1:${b64(key2)}`)
const FORBIDDEN = [b64(key1), key1.toString('hex'), b64(key2), key2.toString('hex')]

const HEADER_K1 = 4 + 1 + 1 + 2 + 8 + 4 // kid 'k1'
const OVERHEAD = 4 + 16 // length field + tag, per chunk
const PIECE = 64 * 1024 // what fs.createReadStream delivers

function plaintext(n: number): Buffer {
  // Distinct per position, so a reordered or misplaced chunk would never compare equal.
  const out = Buffer.alloc(n)
  for (let i = 0; i + 4 <= n; i += 4) out.writeUInt32LE((i * 2654435761) >>> 0, i)
  for (let i = n - (n % 4); i < n; i++) out[i] = i & 0xff
  return out
}

function pieces(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = []
  for (let o = 0; o < buf.length; o += size) out.push(buf.subarray(o, o + size))
  return out
}

async function encrypt(plain: Buffer, keyring: Keyring = ring1, pieceSize = PIECE): Promise<Buffer> {
  const parts: Buffer[] = []
  await pipeline(
    Readable.from(pieces(plain, pieceSize)),
    createEncryptStream(keyring),
    new Writable({
      write(chunk: Buffer, _e, cb) {
        parts.push(chunk)
        cb()
      },
    }),
  )
  return Buffer.concat(parts)
}

interface Decrypted {
  /** Everything the decrypt stream emitted, also when it then failed. */
  plain: Buffer
  chunks: number[]
  error: unknown
}

async function decrypt(file: Buffer, keyring: Keyring = ring1, pieceSize = PIECE): Promise<Decrypted> {
  const parts: Buffer[] = []
  const chunks: number[] = []
  let error: unknown
  try {
    await pipeline(
      Readable.from(pieces(file, pieceSize)),
      createDecryptStream(keyring, { onChunk: (i) => chunks.push(i) }),
      new Writable({
        write(chunk: Buffer, _e, cb) {
          parts.push(chunk)
          cb()
        },
      }),
    )
  } catch (err) {
    error = err
  }
  return { plain: Buffer.concat(parts), chunks, error }
}

/** The decryption failed with an IntegrityError of this code; returns it. */
function failed(result: Decrypted, code: string): IntegrityError {
  expect(result.error, 'the decryption should have failed').toBeInstanceOf(IntegrityError)
  const err = result.error as IntegrityError
  expect(err.code).toBe(code)
  expect(err.exitCode).toBe(4)
  const text = [err.message, err.hint ?? '', JSON.stringify(err.data ?? {})].join('\n')
  for (const secret of FORBIDDEN) expect(text).not.toContain(secret)
  // One sentence.
  expect(err.message).toMatch(/^[A-Z][^\n]*\.$/)
  return err
}

interface Record_ {
  start: number
  length: number
  end: number
}

/** Where each chunk record sits in a (well-formed) file. */
function layout(file: Buffer): { headerLength: number; records: Record_[] } {
  const { headerLength } = readEnvelopeHeader(file)
  const records: Record_[] = []
  for (let o = headerLength; o < file.length;) {
    const length = file.readUInt32BE(o)
    records.push({ start: o, length, end: o + 4 + length + 16 })
    o += 4 + length + 16
  }
  return { headerLength, records }
}

const flip = (file: Buffer, at: number, mask = 0x01): Buffer => {
  const copy = Buffer.from(file)
  copy[at]! ^= mask
  return copy
}

// 3.5 chunks: chunks 0-2 full, chunk 3 (the last) half.
const PLAIN4 = plaintext(3.5 * CHUNK_SIZE)
const FILE4 = await encrypt(PLAIN4)
const L4 = layout(FILE4)

// --- round trips ------------------------------------------------------------------------------------------

describe('round trips', () => {
  it.each([
    ['empty', 0, 1],
    ['1 byte', 1, 1],
    ['CHUNK_SIZE - 1', CHUNK_SIZE - 1, 1],
    ['CHUNK_SIZE', CHUNK_SIZE, 1],
    ['CHUNK_SIZE + 1', CHUNK_SIZE + 1, 2],
    ['2 * CHUNK_SIZE', 2 * CHUNK_SIZE, 2],
    ['3.5 chunks', 3.5 * CHUNK_SIZE, 4],
  ])('%s: decrypts to the same bytes; size = header + 20 per chunk + plaintext', async (_n, size, chunks) => {
    const plain = plaintext(size)
    const file = await encrypt(plain)
    expect(file.length).toBe(HEADER_K1 + OVERHEAD * chunks + size)
    const { records } = layout(file)
    expect(records).toHaveLength(chunks)
    // Every chunk but the last is full; the last holds the rest (a full chunk when size is a
    // multiple of CHUNK_SIZE, nothing at all for an empty input).
    for (const r of records.slice(0, -1)) expect(r.length).toBe(CHUNK_SIZE)
    expect(records.at(-1)!.length).toBe(size - (chunks - 1) * CHUNK_SIZE)
    const out = await decrypt(file)
    expect(out.error).toBeUndefined()
    expect(out.plain.equals(plain)).toBe(true)
    expect(out.chunks).toEqual([...Array(chunks).keys()])
  })

  it('the same plaintext encrypts differently each time (new nonce prefix), at the same length', async () => {
    const plain = plaintext(1000)
    const [a, b] = [await encrypt(plain), await encrypt(plain)]
    expect(a.length).toBe(b.length)
    expect(a.equals(b)).toBe(false)
    expect(a.subarray(HEADER_K1 - 12, HEADER_K1 - 4).equals(b.subarray(HEADER_K1 - 12, HEADER_K1 - 4))).toBe(
      false,
    )
  })

  it('how the input is split does not matter, on either side', async () => {
    const plain = plaintext(CHUNK_SIZE + 12345)
    // Encrypt from odd-sized writes, decrypt from other odd-sized ones.
    const file = await encrypt(plain, ring1, 99_991)
    expect(file.length).toBe(HEADER_K1 + 2 * OVERHEAD + plain.length)
    const out = await decrypt(file, ring1, 77_773)
    expect(out.error).toBeUndefined()
    expect(out.plain.equals(plain)).toBe(true)
    // A small file written and read one byte at a time: the header and length fields arrive split.
    const small = plaintext(300)
    const smallFile = await encrypt(small, ring1, 1)
    const bytewise = await decrypt(smallFile, ring1, 1)
    expect(bytewise.error).toBeUndefined()
    expect(bytewise.plain.equals(small)).toBe(true)
  })
})

// --- format -----------------------------------------------------------------------------------------------

describe('format', () => {
  it('header: SHXB | version 1 | kid length | kid | 8-byte nonce prefix | chunk size', () => {
    expect(FILE4.subarray(0, 4).toString('latin1')).toBe('SHXB')
    expect(FILE4[4]).toBe(1)
    expect(FILE4[5]).toBe(2)
    expect(FILE4.subarray(6, 8).toString('latin1')).toBe('k1')
    expect(FILE4.readUInt32BE(16)).toBe(CHUNK_SIZE)
    expect(readEnvelopeHeader(FILE4)).toEqual({ version: 1, kid: 'k1', headerLength: HEADER_K1 })
    expect(L4.headerLength).toBe(HEADER_K1)
  })

  it('chunk i opens with nonce prefix || i and AAD header || i (uint64) || final flag, as documented', () => {
    const header = FILE4.subarray(0, HEADER_K1)
    const prefix = header.subarray(8, 16)
    const open = (i: number, final: number): Buffer | undefined => {
      const r = L4.records[i]!
      const nonce = Buffer.alloc(12)
      prefix.copy(nonce)
      nonce.writeUInt32BE(i, 8)
      const aad = Buffer.alloc(HEADER_K1 + 9)
      header.copy(aad)
      aad.writeBigUInt64BE(BigInt(i), HEADER_K1)
      aad[HEADER_K1 + 8] = final
      const d = createDecipheriv('aes-256-gcm', key1, nonce, { authTagLength: 16 })
      d.setAAD(aad)
      d.setAuthTag(FILE4.subarray(r.end - 16, r.end))
      const plain = d.update(FILE4.subarray(r.start + 4, r.end - 16))
      try {
        d.final()
        return plain
      } catch {
        return undefined
      }
    }
    expect(open(0, 0)!.equals(PLAIN4.subarray(0, CHUNK_SIZE))).toBe(true)
    expect(open(0, 1)).toBeUndefined()
    expect(open(2, 0)!.equals(PLAIN4.subarray(2 * CHUNK_SIZE, 3 * CHUNK_SIZE))).toBe(true)
    expect(open(3, 1)!.equals(PLAIN4.subarray(3 * CHUNK_SIZE))).toBe(true)
    expect(open(3, 0)).toBeUndefined()
  })

  it('readEnvelopeHeader needs at most MAX_HEADER_LENGTH bytes and refuses what is not a backup', () => {
    expect(readEnvelopeHeader(FILE4.subarray(0, HEADER_K1)).headerLength).toBe(HEADER_K1)
    const thrown = (buf: Buffer): IntegrityError => {
      try {
        readEnvelopeHeader(buf)
      } catch (err) {
        expect(err).toBeInstanceOf(IntegrityError)
        return err as IntegrityError
      }
      return expect.unreachable('readEnvelopeHeader accepted it')
    }
    expect(thrown(Buffer.from('PGDMP\x01\x0e\x00')).code).toBe('BACKUP_FORMAT')
    const v2 = Buffer.from(FILE4.subarray(0, HEADER_K1))
    v2[4] = 2
    const e = thrown(v2)
    expect(e.code).toBe('BACKUP_FORMAT')
    expect(e.message).toContain('format version 2')
    expect(thrown(FILE4.subarray(0, HEADER_K1 - 1)).code).toBe('BACKUP_TRUNCATED')
    expect(thrown(Buffer.alloc(0)).code).toBe('BACKUP_TRUNCATED')
    expect(MAX_HEADER_LENGTH).toBe(18 + 64)
  })

  it('a key that is not 32 bytes is refused before anything is written', () => {
    const bad: Keyring = { current: { kid: 'k1', bytes: randomBytes(16) }, byId: new Map() }
    expect(() => createEncryptStream(bad)).toThrow(UsageError)
    expect(() => createEncryptStream(bad)).toThrow(/BACKUP_KEY key 'k1' must be 32 bytes/)
  })
})

// --- keys -------------------------------------------------------------------------------------------------

describe('keys', () => {
  it('rotation: made with [k1], restored with [k2, k1]; new backups use k2', async () => {
    const out = await decrypt(FILE4, ring21)
    expect(out.error).toBeUndefined()
    expect(out.plain.equals(PLAIN4)).toBe(true)
    const fresh = await encrypt(plaintext(10), ring21)
    expect(readEnvelopeHeader(fresh).kid).toBe('k2')
    expect((await decrypt(fresh, ring2)).plain.equals(plaintext(10))).toBe(true)
    failed(await decrypt(fresh, ring1), 'BACKUP_UNKNOWN_KEY')
  })

  it('a kid the ring does not hold is named, and nothing is decrypted', async () => {
    const out = await decrypt(FILE4, ring2)
    const err = failed(out, 'BACKUP_UNKNOWN_KEY')
    expect(err.message).toBe("The backup was encrypted with key 'k1', which BACKUP_KEY does not hold.")
    expect(err.data).toEqual({ kid: 'k1' })
    expect(out.plain.length).toBe(0)
  })

  it('wrong key bytes under the right kid: chunk 0 fails, blaming the key first', async () => {
    const out = await decrypt(FILE4, ring1Wrong)
    const err = failed(out, 'BACKUP_CORRUPT')
    const r = L4.records[0]!
    expect(err.message).toBe(
      `Chunk 0 (bytes ${r.start}-${r.end - 1} of the file) failed authentication: wrong BACKUP_KEY or a damaged file.`,
    )
    expect(out.plain.length).toBe(0)
    expect(out.chunks).toEqual([])
  })
})

// --- damage -----------------------------------------------------------------------------------------------

describe('flipped bytes', () => {
  // Header regions of a 'k1' file, and what a flipped byte in each must produce.
  const regions: [string, number, number, (mask: number) => string[]][] = [
    ['magic', 0, 4, () => ['BACKUP_FORMAT']],
    ['version', 4, 5, () => ['BACKUP_FORMAT']],
    // A different length takes part of the nonce prefix as kid: unknown if it looks like a kid.
    ['kid length', 5, 6, () => ['BACKUP_CORRUPT', 'BACKUP_UNKNOWN_KEY']],
    ['kid', 6, 8, (m) => (m === 0x01 ? ['BACKUP_UNKNOWN_KEY'] : ['BACKUP_CORRUPT'])],
    ['nonce prefix', 8, 16, () => ['BACKUP_CORRUPT']],
    ['chunk size', 16, 20, () => ['BACKUP_CORRUPT']],
  ]
  for (const [name, from, to, codes] of regions) {
    it(`in the header's ${name}: detected, no plaintext released`, async () => {
      for (let at = from; at < to; at++) {
        for (const mask of [0x01, 0x80]) {
          const out = await decrypt(flip(FILE4, at, mask))
          expect(out.error, `byte ${at} ^ ${mask}`).toBeInstanceOf(IntegrityError)
          const code = (out.error as IntegrityError).code
          expect(codes(mask), `byte ${at} ^ ${mask}: ${code}`).toContain(code)
          failed(out, code)
          expect(out.plain.length).toBe(0)
        }
      }
    })
  }

  it('in the nonce prefix: chunk 0 is named', async () => {
    const err = failed(await decrypt(flip(FILE4, 10)), 'BACKUP_CORRUPT')
    expect(err.message).toMatch(/^Chunk 0 \(bytes 20-1048615 of the file\) failed authentication/)
  })

  it.each([0, 1])('in the length field of chunk %i: detected as damage of that chunk', async (i) => {
    const r = L4.records[i]!
    // High byte: the length exceeds the chunk size and is refused before reading on.
    const big = failed(await decrypt(flip(FILE4, r.start, 0x01)), 'BACKUP_CORRUPT')
    expect(big.message).toBe(
      `Chunk ${i} (at byte ${r.start} of the file) declares ${CHUNK_SIZE + (1 << 24)} bytes, more than the chunk size of ${CHUNK_SIZE}: the file is damaged.`,
    )
    // 0x00100000 -> 0x00080000: a shorter chunk (so taken for the last), which fails authentication.
    const out = await decrypt(flip(FILE4, r.start + 1, 0x18))
    const short = failed(out, 'BACKUP_CORRUPT')
    expect(short.message).toMatch(
      new RegExp(`^Chunk ${i} \\(bytes ${r.start}-${r.start + 4 + (1 << 19) + 16 - 1} of the file\\) failed`),
    )
    expect(short.data).toMatchObject({ chunk: i })
    expect(out.plain.equals(PLAIN4.subarray(0, i * CHUNK_SIZE))).toBe(true)
  })

  const cases: [string, number, (r: Record_) => number][] = [
    ['the first ciphertext byte of chunk 0', 0, (r) => r.start + 4],
    ['the middle of chunk 1', 1, (r) => r.start + 4 + 500_000],
    ['the last ciphertext byte of chunk 2', 2, (r) => r.end - 17],
    ['the ciphertext of the last chunk', 3, (r) => r.start + 4 + 1234],
    ['the tag of chunk 1', 1, (r) => r.end - 16],
    ['the last byte of the file (the last tag)', 3, (r) => r.end - 1],
  ]
  it.each(cases)('in %s: that chunk fails, with its byte range', async (_what, i, where) => {
    const r = L4.records[i]!
    const out = await decrypt(flip(FILE4, where(r)))
    const err = failed(out, 'BACKUP_CORRUPT')
    const tail =
      i === 0
        ? 'wrong BACKUP_KEY or a damaged file.'
        : 'the file is damaged or was encrypted with a different key.'
    expect(err.message).toBe(
      `Chunk ${i} (bytes ${r.start}-${r.end - 1} of the file) failed authentication: ${tail}`,
    )
    expect(err.data).toEqual({ chunk: i, first_byte: r.start, last_byte: r.end - 1 })
    // Exactly the chunks before it came out.
    expect(out.plain.equals(PLAIN4.subarray(0, i * CHUNK_SIZE))).toBe(true)
    expect(out.chunks).toEqual([...Array(i).keys()])
  })

  it('every single byte of a small backup, flipped, is detected', async () => {
    const small = plaintext(40)
    const file = await encrypt(small)
    for (let at = 0; at < file.length; at++) {
      const out = await decrypt(flip(file, at))
      expect(out.error, `byte ${at}`).toBeInstanceOf(ShieldxError)
      expect(out.plain.length, `byte ${at}`).toBe(0)
    }
  })
})

describe('no unauthenticated plaintext', () => {
  it('with chunk 2 of 4 damaged, exactly chunks 0 and 1 come out, and nothing of chunk 2', async () => {
    const r = L4.records[2]!
    // Damage the very end of chunk 2: all of its ciphertext but one byte decrypts "fine" first.
    const out = await decrypt(flip(FILE4, r.end - 17))
    failed(out, 'BACKUP_CORRUPT')
    expect(out.chunks).toEqual([0, 1])
    expect(out.plain.length).toBe(2 * CHUNK_SIZE)
    expect(out.plain.equals(PLAIN4.subarray(0, 2 * CHUNK_SIZE))).toBe(true)
  })

  it('Node streaming GCM alone would have released chunk 2 (why the chunks exist)', () => {
    // The decipher hands out plaintext from update() before final() finds the damage: this is the
    // fact the design guards against, checked here so the test above is known to be meaningful.
    const r = L4.records[2]!
    const damaged = flip(FILE4, r.end - 17)
    const header = damaged.subarray(0, HEADER_K1)
    const nonce = Buffer.alloc(12)
    header.copy(nonce, 0, 8, 16)
    nonce.writeUInt32BE(2, 8)
    const aad = Buffer.alloc(HEADER_K1 + 9)
    header.copy(aad)
    aad.writeBigUInt64BE(2n, HEADER_K1)
    const d = createDecipheriv('aes-256-gcm', key1, nonce, { authTagLength: 16 })
    d.setAAD(aad)
    d.setAuthTag(damaged.subarray(r.end - 16, r.end))
    const released = d.update(damaged.subarray(r.start + 4, r.end - 16))
    expect(released.subarray(0, 1000).equals(PLAIN4.subarray(2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 1000))).toBe(
      true,
    )
    expect(() => d.final()).toThrow()
  })
})

describe('reordered and spliced chunks', () => {
  const record = (file: Buffer, r: Record_) => file.subarray(r.start, r.end)

  it('chunks 1 and 2 swapped: chunk 1 fails', async () => {
    const [r0, r1, r2, r3] = L4.records as [Record_, Record_, Record_, Record_]
    const swapped = Buffer.concat([
      FILE4.subarray(0, r0.end),
      record(FILE4, r2),
      record(FILE4, r1),
      record(FILE4, r3),
    ])
    expect(swapped.length).toBe(FILE4.length)
    const out = await decrypt(swapped)
    const err = failed(out, 'BACKUP_CORRUPT')
    expect(err.message).toMatch(/^Chunk 1 \(/)
    expect(out.plain.equals(PLAIN4.subarray(0, CHUNK_SIZE))).toBe(true)
  })

  it('the last chunk moved forward (a shorter file that ends in a final chunk): fails', async () => {
    const [r0, , , r3] = L4.records as [Record_, Record_, Record_, Record_]
    const out = await decrypt(Buffer.concat([FILE4.subarray(0, r0.end), record(FILE4, r3)]))
    expect(failed(out, 'BACKUP_CORRUPT').message).toMatch(/^Chunk 1 \(/)
  })

  it('a chunk from another backup of the same data, same key: fails (per-file nonce prefix)', async () => {
    const other = await encrypt(PLAIN4)
    const o = layout(other).records[1]!
    const [r0, r1] = L4.records as [Record_, Record_]
    const spliced = Buffer.concat([FILE4.subarray(0, r0.end), record(other, o), FILE4.subarray(r1.end)])
    const out = await decrypt(spliced)
    expect(failed(out, 'BACKUP_CORRUPT').message).toMatch(/^Chunk 1 \(/)
  })
})

describe('truncation', () => {
  const [r0, r1, r2, r3] = L4.records as [Record_, Record_, Record_, Record_]
  it.each([
    ['nothing at all', 0, 'The backup is empty: it is truncated.', 0],
    ['3 bytes', 3, 'The backup ends inside its header, after 3 bytes: it is truncated.', 0],
    ['inside the header', HEADER_K1 - 1, /^The backup ends inside its header/, 0],
    [
      'right after the header',
      HEADER_K1,
      'The backup ends right after its header, without any chunk: it is truncated.',
      0,
    ],
    ['inside the length field of chunk 0', HEADER_K1 + 2, /^The backup ends inside chunk 0 \(/, 0],
    ['inside chunk 0', r0.start + 1000, /^The backup ends inside chunk 0 \(which starts at byte 20/, 0],
    [
      'exactly after chunk 0',
      r0.end,
      'The backup ends after chunk 0 without its final chunk: it is truncated.',
      1,
    ],
    ['inside the tag of chunk 1', r1.end - 5, /^The backup ends inside chunk 1 /, 1],
    [
      'exactly at the last chunk boundary (final chunk dropped)',
      r2.end,
      'The backup ends after chunk 2 without its final chunk: it is truncated.',
      3,
    ],
    ['one byte short', r3.end - 1, /^The backup ends inside chunk 3 /, 3],
  ])('cut %s: BACKUP_TRUNCATED', async (_what, at, message, chunksOut) => {
    const out = await decrypt(FILE4.subarray(0, at))
    const err = failed(out, 'BACKUP_TRUNCATED')
    if (typeof message === 'string') expect(err.message).toBe(message)
    else expect(err.message).toMatch(message)
    // The chunks before the cut were authenticated and came out; nothing more.
    expect(out.chunks).toEqual([...Array(chunksOut).keys()])
    expect(out.plain.equals(PLAIN4.subarray(0, chunksOut * CHUNK_SIZE))).toBe(true)
  })

  it('a backup whose last chunk is full length, cut before it: truncated, not accepted', async () => {
    const plain = plaintext(2 * CHUNK_SIZE)
    const file = await encrypt(plain)
    const [a] = layout(file).records as [Record_]
    const err = failed(await decrypt(file.subarray(0, a.end)), 'BACKUP_TRUNCATED')
    expect(err.message).toBe('The backup ends after chunk 0 without its final chunk: it is truncated.')
  })
})

describe('appended data', () => {
  const [, r1, , r3] = L4.records as [Record_, Record_, Record_, Record_]
  const EXPECTED = `The backup continues after its final chunk (chunk 3, which ends at byte ${r3.end - 1} of the file): something was appended to it.`
  it.each([
    ['one zero byte', Buffer.alloc(1)],
    ['text', Buffer.from('hello\n')],
    ['a copy of the final chunk', FILE4.subarray(r3.start, r3.end)],
    ['a copy of chunk 1 (a valid-looking chunk)', FILE4.subarray(r1.start, r1.end)],
    ['a whole second backup', FILE4],
  ])('%s after the final chunk: BACKUP_TRAILING_DATA', async (_what, extra) => {
    const out = await decrypt(Buffer.concat([FILE4, extra]))
    const err = failed(out, 'BACKUP_TRAILING_DATA')
    expect(err.message).toBe(EXPECTED)
  })

  it('appended to a backup with an empty final chunk, as one write: still refused', async () => {
    const file = await encrypt(Buffer.alloc(0))
    const out = await decrypt(Buffer.concat([file, Buffer.from('x')]), ring1, 1 << 20)
    expect(failed(out, 'BACKUP_TRAILING_DATA').message).toContain('chunk 0,')
  })
})

// --- memory -----------------------------------------------------------------------------------------------

describe('memory', () => {
  it('encrypt + decrypt of a 200 MB stream: rss stays flat, the bytes come back', async () => {
    const MB = 1 << 20
    const block = plaintext(PIECE)
    const source = (total: number) => {
      let left = total
      return new Readable({
        read() {
          if (left <= 0) {
            this.push(null)
            return
          }
          const n = Math.min(left, PIECE)
          left -= n
          this.push(block.subarray(0, n))
        },
      })
    }
    let peak = 0
    const run = async (total: number) => {
      let received = 0
      let mismatches = 0
      let writes = 0
      await pipeline(
        source(total),
        createEncryptStream(ring1),
        createDecryptStream(ring1),
        new Writable({
          write(chunk: Buffer, _e, cb) {
            // Check the bytes against the repeating source block, without keeping them.
            for (let o = 0; o < chunk.length;) {
              const at = (received + o) % PIECE
              const n = Math.min(chunk.length - o, PIECE - at)
              if (!chunk.subarray(o, o + n).equals(block.subarray(at, at + n))) mismatches++
              o += n
            }
            received += chunk.length
            // Sampled here: the pipeline may never yield to timers, so an interval would not run.
            if (++writes % 8 === 0) peak = Math.max(peak, process.memoryUsage().rss)
            cb()
          },
        }),
      )
      return { received, mismatches }
    }
    // V8 frees dead Buffers (every chunk allocates a fresh one) once about 64 MB of external
    // memory has piled up, so any streaming code's rss first climbs to that level. Warm up to it,
    // then measure: a stream 3 times longer must not raise rss further. Buffering the whole
    // stream would add 200 MB (plaintext) plus 200 MB (ciphertext).
    await run(64 * MB)
    const base = process.memoryUsage().rss
    peak = base
    const started = performance.now()
    const { received, mismatches } = await run(200 * MB)
    const seconds = (performance.now() - started) / 1000
    expect(received).toBe(200 * MB)
    expect(mismatches).toBe(0)
    expect(peak - base).toBeLessThan(64 * MB)
    expect(seconds).toBeLessThan(10)
  })
})
