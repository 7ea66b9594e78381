/** A replay worker thread: parses the blocks the main thread sends (see parse-block.ts). */
import { parentPort, workerData } from 'node:worker_threads'
import { type BlockMessage, type BlockParserInput, blockParser, type BlockTask } from './parse-block.js'

const parse = blockParser(workerData as BlockParserInput)

parentPort!.on('message', (task: BlockTask) => {
  try {
    const msg = parse(task)
    const c = msg.type === 'block' ? msg.columns : undefined
    parentPort!.postMessage(
      msg,
      c
        ? ([c.ts.buffer, c.attack.buffer, c.line.buffer, c.vals.buffer, c.keyIds.buffer] as ArrayBuffer[])
        : [],
    )
  } catch (err) {
    parentPort!.postMessage({ type: 'error', message: (err as Error).message } satisfies BlockMessage)
  }
})
