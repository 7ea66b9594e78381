/**
 * The replay's own thread (see replay.ts): it reads the traffic, runs the parsing workers and the
 * rate-limit windows, and posts back the result, progress and errors. Running here rather than on
 * the main thread gives the replay a heap with a bounded young generation (a flag the main thread
 * can only take on the node command line), and leaves the main thread free for the terminal.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { errorToData } from '../errors.js'
import { type CoordinatorInput, type CoordinatorMessage, replayInThisThread } from './replay.js'

const input = workerData as CoordinatorInput
const aborted = new AbortController()
parentPort!.on('message', (m: { type: 'abort' }) => {
  if (m.type === 'abort') aborted.abort()
})

const post = (m: CoordinatorMessage) => parentPort!.postMessage(m)

replayInThisThread({
  ...input.options,
  ...(input.stdin ? { stdin: process.stdin } : {}),
  signal: aborted.signal,
  onProgress: (events, bytesRead) => post({ type: 'progress', events, bytesRead }),
}).then(
  (result) => post({ type: 'done', result }),
  (err: unknown) => post({ type: 'error', error: errorToData(err) }),
)
