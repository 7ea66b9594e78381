/**
 * A zlib stream driven by awaits, for the code that feeds it piece by piece and takes its output
 * in between (archive-compressor.ts rewriting table data, chain-check.ts decompressing the audit
 * block). Every way it can fail rejects the call: damaged data, bytes after the end of the
 * stream, an error between calls. It never hangs on an error.
 */
import type zlib from 'node:zlib'

export class ZlibSteps {
  private out: Buffer[] = []
  private error: Error | null = null
  /** the stream reached its end (an inflater: the end of the compressed data) */
  private ended = false
  /** bytes given to zlib: more than it took means bytes after the end of the stream */
  private fed = 0

  constructor(private readonly z: zlib.Deflate | zlib.Inflate | zlib.Gzip) {
    z.on('data', (d: Buffer) => this.out.push(d))
    z.on('end', () => (this.ended = true))
    // Kept for the next call to throw: an error between calls must not go unhandled.
    z.on('error', (err) => (this.error ??= err))
  }

  /** Gives zlib `bytes`; the output made so far. */
  async write(bytes: Buffer): Promise<Buffer[]> {
    this.fed += bytes.length
    if (this.error) throw this.error
    if (!this.ended) await settled(this.z, (done) => this.z.write(bytes, done))
    return this.take()
  }

  /** Gives zlib its last `bytes` and ends the stream; the rest of the output. */
  async end(bytes: Buffer = Buffer.alloc(0)): Promise<Buffer[]> {
    this.fed += bytes.length
    if (this.error) throw this.error
    if (!this.ended) {
      await settled(this.z, (done) => {
        this.z.once('end', () => done())
        this.z.end(bytes)
      })
    }
    if (this.z.bytesWritten < this.fed) throw new Error('data after the end of the compressed stream')
    return this.take()
  }

  destroy(): void {
    this.z.destroy()
  }

  private take(): Buffer[] {
    const out = this.out
    this.out = []
    return out
  }
}

/**
 * Runs `start` on a zlib stream and resolves when it calls back, or rejects on the stream's error:
 * zlib never calls a write's callback after an error, so waiting for that alone would hang.
 */
function settled(z: NodeJS.EventEmitter, start: (done: (err?: Error | null) => void) => void) {
  return new Promise<void>((resolve, reject) => {
    const fail = (err: Error) => reject(err)
    z.once('error', fail)
    start((err) => {
      z.off('error', fail)
      if (err) reject(err)
      else resolve()
    })
  })
}
