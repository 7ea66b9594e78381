/** A replay worker thread: parses the blocks the coordinator sends (see parse-block.ts). */
import { parentPort, workerData } from 'node:worker_threads'
import { type BlockMessage, type BlockParserInput, blockParser, type BlockTask } from './parse-block.js'

const parse = blockParser(workerData as BlockParserInput)

parentPort!.on('message', (task: BlockTask) => {
  try {
    const msg = parse(task)
    const c = msg.columns
    // The bytes are done with (decoded into strings): back to the reader, which reuses them.
    msg.recycled = task.bytes.buffer as ArrayBuffer
    parentPort!.postMessage(msg, [
      msg.recycled,
      ...((c
        ? [c.ts.buffer, c.attack.buffer, c.line.buffer, c.vals.buffer, c.keyIds.buffer]
        : []) as ArrayBuffer[]),
    ])
  } catch (err) {
    parentPort!.postMessage({ type: 'error', message: (err as Error).message } satisfies BlockMessage)
  }
})
