/**
 * A replay worker thread: parses the blocks the coordinator sends (see parse-block.ts), and the
 * first worker also hashes the file's bytes for it, chunk by chunk in file order (replay.ts's
 * RemoteHash).
 */
import { createHash } from 'node:crypto'
import { parentPort, workerData } from 'node:worker_threads'
import { type BlockMessage, type BlockParserInput, blockParser, type BlockTask } from './parse-block.js'

/** `id`: the shared buffer's (replay.ts's openPlainFile), handed back once hashed. */
export type HashTask = { type: 'hash'; bytes: Uint8Array; id: number } | { type: 'digest' }
export type HashReply = { type: 'hashed'; id: number } | { type: 'digest'; hex: string }
/** Sent once, when the parser is set up: blocks sent before would wait for the thread to start. */
export type ReadyReply = { type: 'ready' }

const parse = blockParser(workerData as BlockParserInput)
const hash = createHash('sha256')
parentPort!.postMessage({ type: 'ready' } satisfies ReadyReply)

parentPort!.on('message', (task: BlockTask | HashTask) => {
  if ('type' in task) {
    if (task.type === 'hash') {
      hash.update(task.bytes)
      parentPort!.postMessage({ type: 'hashed', id: task.id } satisfies HashReply)
    } else parentPort!.postMessage({ type: 'digest', hex: hash.digest('hex') } satisfies HashReply)
    return
  }
  try {
    const msg = parse(task)
    const c = msg.columns
    // The bytes are done with: back to the reader, which reuses them. Shared memory (the hashing
    // worker reads it too) is named by its id; a buffer of this thread's own is moved back.
    const bytes = task.bytes.buffer as ArrayBuffer
    msg.recycled = task.sharedId ?? bytes
    parentPort!.postMessage(msg, [
      ...(task.sharedId === undefined ? [bytes] : []),
      // the columns share one buffer (parse-block.ts's packColumns)
      ...(c ? [c.ts.buffer as ArrayBuffer] : []),
    ])
  } catch (err) {
    parentPort!.postMessage({ type: 'error', message: (err as Error).message } satisfies BlockMessage)
  }
})
