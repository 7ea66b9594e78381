/**
 * A verify-chain worker thread: partitions of the tenants, on a connection of its own, so parsing
 * rows and computing HMACs both run on every core. It connects as soon as it starts, then
 * verifies the partitions the main thread hands it, one at a time, until told there are no more.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { Client } from '../db/driver.js'
import { type ErrorData, errorToData } from '../errors.js'
import { type Key, keysFromWire, type WireKeys } from '../config/secrets.js'
import type { Head } from './checker.js'
import { type PartitionResult, type PartitionSpec, verifyPartition } from './partition.js'

export interface WorkerInput {
  connectionString: string
}

/**
 * The next partition to verify, or null: no more, finish. The first task carries the keys and the
 * heads the checkpoints promise, for every partition after it too (the thread starts before
 * either is known).
 */
export interface WorkerTask {
  partition: PartitionSpec | null
  checkpoint?: Record<string, Head>
  keys?: WireKeys
}

export type WorkerMessage =
  | { type: 'progress'; rows: number }
  | { type: 'done'; result: PartitionResult }
  | { type: 'error'; error: ErrorData }

async function main(input: WorkerInput): Promise<void> {
  const tasks = taskQueue()
  // A whole partition is a few long reads (COPY, in chunks): no statement timeout on them.
  const client = new Client({
    connectionString: input.connectionString,
    application_name: 'shieldx verify-chain',
  })
  client.on('error', () => {})
  await client.connect()
  try {
    // One snapshot for every partition this thread verifies.
    await client.query('begin isolation level repeatable read read only')
    let checkpoint: Record<string, Head> = {}
    let keys = new Map<string, Key>()
    for (;;) {
      const task = await tasks.next()
      if (task.checkpoint) checkpoint = task.checkpoint
      if (task.keys) keys = keysFromWire(task.keys)
      if (!task.partition) break
      const result = await verifyPartition(client, task.partition, keys, checkpoint, (rows) =>
        parentPort!.postMessage({ type: 'progress', rows } satisfies WorkerMessage),
      )
      parentPort!.postMessage({ type: 'done', result } satisfies WorkerMessage)
    }
    await client.query('commit')
  } finally {
    tasks.close()
    await client.end().catch(() => {})
  }
}

/** The main thread's messages, in order, as they are awaited; close() lets the thread exit. */
function taskQueue(): { next(): Promise<WorkerTask>; close(): void } {
  const queued: WorkerTask[] = []
  let waiting: ((task: WorkerTask) => void) | null = null
  const onMessage = (task: WorkerTask) => {
    if (waiting) {
      const resolve = waiting
      waiting = null
      resolve(task)
    } else queued.push(task)
  }
  parentPort!.on('message', onMessage)
  return {
    next: () =>
      queued.length > 0
        ? Promise.resolve(queued.shift()!)
        : new Promise<WorkerTask>((resolve) => {
            waiting = resolve
          }),
    close: () => {
      parentPort!.off('message', onMessage)
    },
  }
}

if (parentPort && workerData) {
  main(workerData as WorkerInput).catch((err: unknown) => {
    // Typed: an IntegrityError found in a thread is still exit 4, a lost connection still not a bug.
    parentPort!.postMessage({ type: 'error', error: errorToData(err) } satisfies WorkerMessage)
  })
}
