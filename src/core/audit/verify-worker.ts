/**
 * A verify-chain worker thread: one partition of the tenants, on its own connection, so parsing
 * rows and computing HMACs both run on every core.
 */
import { parentPort, workerData } from 'node:worker_threads'
import pg from 'pg'
import type { Key } from '../config/secrets.js'
import type { Head } from './checker.js'
import { type PartitionResult, type PartitionSpec, verifyPartition } from './partition.js'

export interface WorkerInput {
  connectionString: string
  statementTimeoutMs: number
  partition: PartitionSpec
  keys: Array<{ kid: string; key: string }>
  checkpoint: Record<string, Head>
}

export type WorkerMessage =
  | { type: 'progress'; rows: number }
  | { type: 'done'; result: PartitionResult }
  | { type: 'error'; message: string; code?: string }

async function main(input: WorkerInput): Promise<void> {
  const keys = new Map<string, Key>(
    input.keys.map((k) => [k.kid, { kid: k.kid, bytes: Buffer.from(k.key, 'base64') }]),
  )
  // A whole partition is one long read: the statement timeout applies per fetch, not to the scan.
  const client = new pg.Client({
    connectionString: input.connectionString,
    application_name: 'shieldx verify-chain',
  })
  client.on('error', () => {})
  await client.connect()
  try {
    await client.query('begin isolation level repeatable read read only')
    const result = await verifyPartition(client, input.partition, keys, input.checkpoint, (rows) =>
      parentPort!.postMessage({ type: 'progress', rows } satisfies WorkerMessage),
    )
    await client.query('commit')
    parentPort!.postMessage({ type: 'done', result } satisfies WorkerMessage)
  } finally {
    await client.end().catch(() => {})
  }
}

if (parentPort && workerData) {
  main(workerData as WorkerInput).catch((err: Error & { code?: string }) => {
    parentPort!.postMessage({ type: 'error', message: err.message, code: err.code } satisfies WorkerMessage)
  })
}
