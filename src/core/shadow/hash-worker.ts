/**
 * SHA-256 of the traffic file, on a thread of its own: with parse workers running, hashing on the
 * main thread made it the bottleneck (a third of its time). It reads the file itself — from the
 * page cache, as the main thread just did or is doing — so no bytes cross threads.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import { parentPort, workerData } from 'node:worker_threads'

export type HashResult = { sha256: string; bytes: number } | { error: string }

const { file } = workerData as { file: string }
const hash = createHash('sha256')
let bytes = 0
fs.createReadStream(file, { highWaterMark: 1 << 20 })
  .on('data', (chunk) => {
    hash.update(chunk as Buffer)
    bytes += chunk.length
  })
  .on('end', () => parentPort!.postMessage({ sha256: hash.digest('hex'), bytes } satisfies HashResult))
  .on('error', (err) => parentPort!.postMessage({ error: err.message } satisfies HashResult))
