/**
 * A thread for TextChainChecker: `restore` hands it pg_restore's text of the audit table, chunk by
 * chunk, so that the chains are verified beside the restore instead of on the thread feeding it.
 * Each chunk is acknowledged (the sender holds back while a few are in flight); an empty message
 * ends the text and is answered with the result.
 */
import { parentPort, workerData } from 'node:worker_threads'
import type { Key } from '../config/secrets.js'
import type { Head } from './checker.js'
import { type TextChainResult, TextChainChecker } from './copy-text.js'

export interface CopyTextWorkerInput {
  keys: Array<{ kid: string; key: string }>
  table: string
  heads: Record<string, Head>
}

export type CopyTextWorkerMessage = { type: 'ack' } | { type: 'result'; result: TextChainResult }

if (parentPort && workerData) {
  const input = workerData as CopyTextWorkerInput
  const keys = new Map<string, Key>(
    input.keys.map((k) => [k.kid, { kid: k.kid, bytes: Buffer.from(k.key, 'base64') }]),
  )
  const checker = new TextChainChecker(keys, input.table, input.heads)
  const port = parentPort
  port.on('message', (chunk: Uint8Array | null) => {
    if (chunk === null) {
      port.postMessage({ type: 'result', result: checker.end() } satisfies CopyTextWorkerMessage)
      port.close()
      return
    }
    checker.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength))
    port.postMessage({ type: 'ack' } satisfies CopyTextWorkerMessage)
  })
}
