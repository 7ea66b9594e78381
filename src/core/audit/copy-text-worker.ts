/**
 * A thread for TextChainChecker: `restore` hands it pg_restore's text of the audit table, chunk by
 * chunk, so that the chains are verified beside the restore instead of on the thread feeding it.
 * Each chunk is acknowledged (the sender holds back while a few are in flight); an empty message
 * ends the text and is answered with the result, as is the first chunk after it gave up.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { keysFromWire, type WireKeys } from '../config/secrets.js'
import type { Head } from './checker.js'
import { type TextChainResult, TextChainChecker } from './copy-text.js'

export interface CopyTextWorkerInput {
  keys: WireKeys
  table: string
  heads: Record<string, Head>
}

export type CopyTextWorkerMessage = { type: 'ack' } | { type: 'result'; result: TextChainResult }

if (parentPort && workerData) {
  const input = workerData as CopyTextWorkerInput
  const checker = new TextChainChecker(keysFromWire(input.keys), input.table, input.heads)
  const port = parentPort
  let done = false
  port.on('message', (chunk: Uint8Array | null) => {
    if (done) return
    if (chunk !== null) checker.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength))
    // At the end of the text, or as soon as it gave up: the sender stops feeding it and ends this thread.
    if (chunk === null || checker.gaveUp) {
      done = true
      port.postMessage({ type: 'result', result: checker.end() } satisfies CopyTextWorkerMessage)
    } else port.postMessage({ type: 'ack' } satisfies CopyTextWorkerMessage)
  })
}
