/**
 * Replay a traffic file through the control and the candidate rule.
 *
 * The replay runs on a thread of its own, the coordinator (replay-coordinator.ts), so that its
 * heap has a bounded young generation; the main thread only waits. The coordinator reads the
 * file (gunzipping .gz) and cuts it into blocks of whole lines. Parsing them (parse-block.ts,
 * with scan-lines.ts) is the costly part: with --workers N, N - 1 worker threads parse blocks
 * and hand their buffers back to be read into again, and the coordinator parses a block itself
 * whenever every worker has its fill (with --workers 1 it parses them all: one thread, no
 * hand-off). The bytes are hashed as stored, here with --workers 1 or 2 or for a compressed file
 * or a pipe, else by the first worker from the same shared buffers (RemoteHash): the coordinator's
 * windows are the one part no other thread can run. A thread that read the file again to hash
 * it was tried: its second read cost more than it saved.
 * Results are taken back in file order, so everything below is the same for any --workers:
 *
 * - Without rate limits, each block's parser decides and counts its events; the coordinator
 *   merges the tallies.
 * - With rate limits, a request's count is the number of requests with its key whose ts lies in
 *   (ts - window, ts], itself and any at the same instant included. Lines may be out of time
 *   order by up to `maxDisorderMs`: an event is decided only once the newest ts seen is more than
 *   that past it, so every event that could fall in its window has arrived. A line later than
 *   that is an error (or skipped and counted with --skip-invalid). The events waiting for their
 *   windows are the only ones held in memory: memory follows the disorder window and the number
 *   of distinct keys in a rate-limit window, never the size of the file. Each parser numbers
 *   the keys it sees and sends each new one once, so a key is looked up once, not per event.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { pipeline, Readable, Transform } from 'node:stream'
import { Worker } from 'node:worker_threads'
import { createGunzip } from 'node:zlib'
import {
  type ErrorData,
  errorFromData,
  InterruptedError,
  OperationError,
  TimeoutError,
  UsageError,
} from '../errors.js'
import { PACKAGE_ROOT } from '../config/paths.js'
import { openReadStream } from '../fs/read-stream.js'
import { compilePair, type CompiledPair, type RateLeaf } from './compile.js'
import {
  type BlockColumns,
  type BlockMessage,
  type BlockParserInput,
  blockParser,
  type BlockTask,
  type InvalidLine,
} from './parse-block.js'
import type { HashReply, HashTask, ReadyReply } from './replay-worker.js'
import type { RulePart } from './rules.js'
import { addEvent, mergeTally, newTally, type Tally } from './tally.js'

const WORKER_FILE = path.join(PACKAGE_ROOT, 'dist/core/shadow/replay-worker.js')
const BLOCK_BYTES = 1 << 20
/** Finished blocks the coordinator takes in one turn before it looks at its workers again. */
const TAKE_BATCH = 2
/**
 * A small young generation: parsing makes short-lived objects at a great rate, and with V8's
 * default the workers' heaps kept growing with the file (measured: +45% RSS from 250k to 1M
 * events) for ~5% less CPU. The old-generation cap turns a runaway (a gigantic line) into a
 * clear error instead of swapping.
 */
const WORKER_LIMITS = { maxYoungGenerationSizeMb: 4, maxOldGenerationSizeMb: 512 }

export interface ReplayOptions {
  /** a path, or '-' for `stdin` */
  file: string
  stdin?: Readable
  control: RulePart
  candidate: RulePart
  workers: number
  /**
   * Score only the first N events in time order. Every line is still read and checked (so the
   * same file gives the same errors and counts whatever N is), and all events before the cut in
   * time feed the rate-limit windows.
   */
  sampleSize?: number
  skipInvalid: boolean
  maxDisorderMs: number
  signal?: AbortSignal
  /**
   * Lines read (parsed and taken in file order) so far, and the bytes they came from. Not events
   * decided: with rate limits an event waits for its window, and a small file's are all decided
   * at its end ("100%, 0 events" was the first report).
   */
  onProgress?: (lines: number, bytesRead: number) => void
  /**
   * A pipe or standard input that sends nothing for this long fails the replay (exit 124): a
   * stalled producer must not hold a CI job for ever (--timeout).
   */
  idleTimeoutMs?: number
  /** For tests: smaller blocks, to cross many block boundaries with little data. */
  blockBytes?: number
  /**
   * For tests: wait until every worker is set up before the first block. Otherwise this thread
   * parses every block while they start, which is all of a small file.
   */
  awaitWorkers?: boolean
}

export interface ReplayResult {
  tally: Tally
  /** non-blank lines read */
  lines: number
  skipped: { invalid: number; out_of_order: number; examples: InvalidLine[] }
  traffic_sha256: string
  bytes: number
  compressed: boolean
  workers: number
  /** blocks parsed by worker threads; the rest were parsed on the replay thread */
  worker_blocks: number
  /** Per field the rules read: the valid lines without it (no part of a rule reading it blocks those). */
  missing_fields: Record<string, number>
  /** 'events': decided per event by the block parsers; 'windows': rate-limit windows in time order */
  mode: 'events' | 'windows'
}

const COORDINATOR_FILE = path.join(PACKAGE_ROOT, 'dist/core/shadow/replay-coordinator.js')
/** How long the replay thread has to stop by itself after Ctrl-C before it is stopped. */
const ABORT_GRACE_MS = 1000
/**
 * The replay's own thread. With V8's default young generation (up to 48 MB, grown as the
 * allocation rate stays high) its heap kept growing through a long file; 16 MB holds it flat
 * at no cost in speed (measured on 250k and 1M events).
 */
const COORDINATOR_LIMITS = {
  maxYoungGenerationSizeMb: 16,
  // A gigabyte holds millions of live keys. Not the process's own limit (4 GB on a big machine):
  // V8 collects lazily under a high limit, and peak RSS at 1M events rose from 115 to 137 MB.
  maxOldGenerationSizeMb: 1024,
}

/** What replay() hands its thread: the options that can be cloned, and whether stdin is piped in. */
export interface CoordinatorInput {
  options: Omit<ReplayOptions, 'stdin' | 'signal' | 'onProgress'>
  stdin: boolean
}

export type CoordinatorMessage =
  | { type: 'progress'; events: number; bytesRead: number }
  | { type: 'done'; result: ReplayResult }
  | { type: 'error'; error: ErrorData }

/**
 * Replay on a thread of its own (replay-coordinator.ts), which runs replayInThisThread. Ctrl-C
 * (the signal) asks it to stop and clean up; its errors come back with their exit codes.
 */
export async function replay(options: ReplayOptions): Promise<ReplayResult> {
  const { stdin, signal, onProgress, ...rest } = options
  if (signal?.aborted) throw new InterruptedError()
  const input: CoordinatorInput = { options: rest, stdin: stdin !== undefined }
  const worker = new Worker(COORDINATOR_FILE, {
    workerData: input,
    resourceLimits: COORDINATOR_LIMITS,
    stdin: stdin !== undefined,
  })
  // pipeline, not pipe: a read error on stdin ends the replay with a sentence, not a crash.
  let stdinError: Error | null = null
  if (stdin) {
    pipeline(stdin, worker.stdin!, (err) => {
      if (err && !stdinError && (err as NodeJS.ErrnoException).code !== 'ERR_STREAM_PREMATURE_CLOSE')
        stdinError = new UsageError(`--traffic -: cannot read standard input: ${err.message}.`, {
          cause: err,
        })
    })
  }
  // Ctrl-C asks the thread to stop and clean up. A thread that does not answer (busy in one line: a
  // pattern backtracking for minutes) is stopped from here, so the first Ctrl-C is always enough.
  let stopNow: (() => void) | null = null
  let forced: NodeJS.Timeout | null = null
  const abort = () => {
    worker.postMessage({ type: 'abort' })
    forced = setTimeout(() => stopNow?.(), ABORT_GRACE_MS)
  }
  signal?.addEventListener('abort', abort, { once: true })
  try {
    return await new Promise<ReplayResult>((resolve, reject) => {
      stopNow = () => reject(new InterruptedError())
      worker.on('message', (m: CoordinatorMessage) => {
        if (m.type === 'progress') onProgress?.(m.events, m.bytesRead)
        else if (m.type === 'done') resolve(m.result)
        else reject(stdinError ?? errorFromData(m.error))
      })
      worker.on('error', (err) => {
        const oom = (err as NodeJS.ErrnoException).code === 'ERR_WORKER_OUT_OF_MEMORY'
        reject(
          new OperationError(
            oom
              ? `The replay ran out of memory (${COORDINATOR_LIMITS.maxOldGenerationSizeMb} MB): are there too many keys live in a rate-limit window, or is --max-disorder very large?`
              : `The replay stopped: ${err.message}`,
            { cause: err },
          ),
        )
      })
      worker.on('exit', (code) =>
        reject(new OperationError(`The replay thread exited early (code ${code}).`)),
      )
    })
  } finally {
    if (forced) clearTimeout(forced)
    signal?.removeEventListener('abort', abort)
    // Done or failed, nothing more is read: a producer still writing gets EPIPE, not a wait.
    stdin?.destroy()
    await worker.terminate()
  }
}

/** The replay itself, on the calling thread: the coordinator thread runs this. */
export async function replayInThisThread(options: ReplayOptions): Promise<ReplayResult> {
  // --workers N: N threads parse in all, this one among them. A thread more than there are cores
  // only fights for them: on 2 cores, 1 + 2 threads took 8% more CPU than 2 for the same work.
  const threads = Math.max(1, options.workers)
  // With --workers 3 or more, the first worker thread hashes a plain file's bytes: this thread
  // runs the windows, which only it can, and beside two parsers hashing would make it the slowest.
  // With --workers 2 this thread hashes as it reads, and the blocks it hands over are moved, not
  // shared: on 2 cores, 1M events, that measured 3-10% faster than the worker hashing shared blocks
  // (bytes another core wrote, and copied out of shared memory slowly).
  const remoteHash = threads > 2 ? new RemoteHash() : null
  const input = await openTraffic(
    options.file,
    options.stdin,
    options.signal,
    remoteHash,
    options.idleTimeoutMs,
  )
  const pair = compilePair(options.control, options.candidate)
  const windowed = pair.rate.length > 0 || options.sampleSize !== undefined
  const parserInput: BlockParserInput = {
    control: options.control,
    candidate: options.candidate,
    mode: windowed ? 'columns' : 'tally',
  }
  const tally = newTally()
  const sequencer = windowed ? new Sequencer(pair, tally, options, threads) : null
  const skipped = { invalid: 0, out_of_order: 0, examples: [] as InvalidLine[] }
  let lines = 0
  /** per field the parsers report on (BlockMessage.missing): lines without it */
  const missing = new Array<number>(pair.stateless.length + pair.keys.length).fill(0)
  /** lines (blank ones too) before the block taken next: block-relative line numbers + this */
  let lineBase = 0
  /** each dispatched block's bytes, by seq, until it is taken; the bytes of the blocks taken */
  const sizes = new Map<number, number>()
  let taken = 0
  let failure: Error | null = null

  const workers = Array.from({ length: threads - 1 }, () => {
    const w = new Worker(WORKER_FILE, { workerData: parserInput, resourceLimits: WORKER_LIMITS })
    w.unref()
    return w
  })
  if (input.hashedRemotely) remoteHash!.attach(workers[0]!)
  const inline = blockParser(parserInput)
  const load = new Map<Worker, number>(workers.map((w) => [w, 0]))
  /**
   * Workers whose parser is set up. Until then this thread parses every block itself: a block sent
   * to a thread still starting (about 40 ms) would hold up all the blocks after it, which are
   * taken in file order.
   */
  const ready = new Set<Worker>()
  let workerBlocks = 0
  const done = new Map<number, { msg: BlockMessage & { type: 'block' }; source: number }>()
  let nextSeq = 0
  let dispatched = 0
  let wake: (() => void) | null = null
  const notify = () => {
    const w = wake
    wake = null
    w?.()
  }

  /** `source`: which parser made the block (its key dictionary is its own). */
  const take = (msg: BlockMessage & { type: 'block' }, source: number) => {
    const base = lineBase + 1 // 1-based, as editors count
    lineBase += msg.rawLines
    lines += msg.lines
    for (let j = 0; j < missing.length; j++) missing[j]! += msg.missing[j]!
    const firstInvalid = msg.invalid[0]
    const invalidError = firstInvalid
      ? new UsageError(`${options.file} line ${base + firstInvalid.line}: ${firstInvalid.error}.`, {
          code: 'INVALID_TRAFFIC',
          hint: 'Fix the line, or pass --skip-invalid to skip and count such lines.',
          data: { line: base + firstInvalid.line },
        })
      : null
    if (invalidError && options.skipInvalid) {
      skipped.invalid += msg.invalidCount
      for (const x of msg.invalid) {
        if (skipped.examples.length < 10) skipped.examples.push({ line: base + x.line, error: x.error })
      }
    }
    if (msg.tally) {
      if (invalidError && !options.skipInvalid) throw invalidError
      mergeTally(tally, msg.tally)
    } else if (msg.columns && sequencer) {
      try {
        sequencer.add(msg.columns, base, source)
      } catch (err) {
        // Report whichever problem comes first in the file.
        const line = (err as { data?: { line?: number } }).data?.line ?? Infinity
        if (invalidError && !options.skipInvalid && base + firstInvalid!.line < line) throw invalidError
        throw err
      }
      if (invalidError && !options.skipInvalid) throw invalidError
    }
    taken += sizes.get(msg.seq) ?? 0
    sizes.delete(msg.seq)
    // (a .gz: the blocks are gunzipped bytes, the file's size is not; the bytes read of it stand in)
    options.onProgress?.(lines, input.compressed ? input.bytes() : taken)
  }

  /**
   * Take the finished blocks that are next in file order, a few at a time, between the loop's
   * turns: a worker whose queue ran low gets its next block before this thread takes a long run
   * of them (early on, before the windows' code is optimized, taking ten blocks took 100 ms, and
   * the worker sat idle through it).
   */
  let takeScheduled = false
  const takeSome = () => {
    takeScheduled = false
    try {
      for (let n = 0; n < TAKE_BATCH && !failure && done.has(nextSeq); n++) {
        const m = done.get(nextSeq)!
        done.delete(nextSeq)
        nextSeq++
        take(m.msg, m.source)
      }
    } catch (err) {
      failure ??= err as Error
    }
    if (!failure && done.has(nextSeq)) scheduleTake()
    notify()
  }
  const scheduleTake = () => {
    if (takeScheduled) return
    takeScheduled = true
    setImmediate(takeSome)
  }

  // Source 0 is this thread's own parser; worker i is source i + 1.
  workers.forEach((w, i) => {
    w.on('message', (msg: BlockMessage | HashReply | ReadyReply) => {
      if (msg.type === 'ready') {
        ready.add(w)
        return notify()
      }
      if (msg.type === 'hashed') return input.recycle(msg.id)
      if (msg.type === 'digest') {
        remoteHash!.hex = msg.hex
        return notify()
      }
      load.set(w, (load.get(w) ?? 1) - 1)
      if (msg.type === 'block' && msg.recycled !== undefined) input.recycle(msg.recycled)
      if (msg.type === 'error') failure ??= new OperationError(`Replay failed in a worker: ${msg.message}`)
      else {
        done.set(msg.seq, { msg, source: i + 1 })
        workerBlocks++
      }
      scheduleTake()
      notify()
    })
    w.on('error', (err) => {
      const oom = (err as NodeJS.ErrnoException).code === 'ERR_WORKER_OUT_OF_MEMORY'
      failure ??= new OperationError(
        oom
          ? `A replay worker ran out of memory (${WORKER_LIMITS.maxOldGenerationSizeMb} MB): is a line of the traffic file enormous?`
          : `A replay worker stopped: ${err.message}`,
        { cause: err },
      )
      notify()
    })
  })

  // (Ctrl-C also stops the input's reading: see openTraffic.)
  options.signal?.addEventListener('abort', notify, { once: true })
  const waitUntil = async (ready: () => boolean) => {
    while (!ready() && !failure && !options.signal?.aborted) {
      await new Promise<void>((resolve) => {
        wake = resolve
      })
    }
  }

  try {
    // Blocks out at once, per worker and in all: enough that a worker never waits for work while
    // this thread parses a block of its own or takes a few (with 4 per worker, the worker sat idle
    // a tenth of the time).
    const perWorker = 8
    const limit = perWorker * threads + 8
    if (options.awaitWorkers) await waitUntil(() => ready.size === workers.length)
    const blockBytes = options.blockBytes ?? BLOCK_BYTES
    let dispatchedBytes = 0
    for await (const block of blocks(input.chunks, blockBytes)) {
      if (failure || options.signal?.aborted) break
      await waitUntil(() => dispatched - nextSeq < limit)
      if (failure || options.signal?.aborted) break
      const task: BlockTask = {
        seq: dispatched++,
        head: block.head,
        bytes: block.body,
        sharedId: input.sharedId(block.body.buffer),
      }
      const size = (block.head?.length ?? 0) + block.body.length
      dispatchedBytes += size
      sizes.set(task.seq, size)
      const cap = workerQueueCap(
        perWorker,
        workers.length,
        input.size === null ? null : input.size - dispatchedBytes,
        blockBytes,
      )
      let w: Worker | null = null
      for (const [x, n] of load) if (ready.has(x) && n < cap && (!w || n < load.get(w)!)) w = x
      if (w) {
        load.set(w, load.get(w)! + 1)
        // a shared buffer is shared, not moved
        w.postMessage(task, task.sharedId === undefined ? [block.body.buffer as ArrayBuffer] : [])
        continue
      }
      // Every worker has its fill: this thread parses the block itself.
      try {
        done.set(task.seq, { msg: inline(task), source: 0 })
      } catch (err) {
        failure ??= err as Error
      }
      input.recycle(block.body.buffer)
      scheduleTake()
    }
    await waitUntil(() => nextSeq === dispatched)
    if (options.signal?.aborted) throw new InterruptedError()
    if (failure) throw failure
    sequencer?.finish()
    if (sequencer) skipped.out_of_order = sequencer.late
    if (input.hashedRemotely) {
      remoteHash!.requestDigest()
      await waitUntil(() => remoteHash!.hex !== null)
      if (failure) throw failure
    }
  } catch (err) {
    input.close()
    if (options.signal?.aborted) throw new InterruptedError()
    throw input.error() ?? err
  } finally {
    options.signal?.removeEventListener('abort', notify)
    await Promise.all(workers.map((w) => w.terminate()))
  }
  if (input.error()) throw input.error()
  return {
    tally,
    lines,
    skipped,
    traffic_sha256: input.digest(),
    bytes: input.bytes(),
    compressed: input.compressed,
    workers: threads,
    worker_blocks: workerBlocks,
    missing_fields: missingByField(pair, missing),
    mode: windowed ? 'windows' : 'events',
  }
}

/**
 * Blocks a worker may hold, the one being dealt included: `perWorker`, except near the end of a
 * file of known size, where that is the blocks still to come after this one plus this one, shared
 * out between the workers (rounded up): about as many as the replay thread parses meanwhile. With
 * full queues to the last block, the worker parsed up to 8 blocks at the end while the replay
 * thread waited: 20-100 ms of a 1.5-2.7 s replay, measured. A file that has grown past its size
 * at the start counts as one of unknown size.
 */
export function workerQueueCap(
  perWorker: number,
  workers: number,
  bytesLeft: number | null,
  blockBytes: number,
): number {
  if (bytesLeft === null || bytesLeft < 0 || workers === 0) return perWorker
  return Math.min(perWorker, Math.ceil((Math.ceil(bytesLeft / blockBytes) + 1) / workers))
}

/** The parsers' per-leaf counts by field name (two leaves reading one field count the same lines). */
function missingByField(pair: CompiledPair, missing: number[]): Record<string, number> {
  const fields = [...pair.stateless.map((i) => (pair.leaves[i] as { field: string }).field), ...pair.keys]
  const out: Record<string, number> = {}
  fields.forEach((f, j) => (out[f] = Math.max(out[f] ?? 0, missing[j]!)))
  return out
}

interface TrafficInput {
  chunks: AsyncIterable<Buffer>
  /**
   * A block's buffer back from its parser, or a chunk's from the worker that hashed it: free to
   * read into again once both are done with it (plain files only).
   */
  recycle(buffer: ArrayBufferLike | number): void
  /** The id of a shared buffer of the pool (see openPlainFile), for it to be recycled by. */
  sharedId(buffer: ArrayBufferLike): number | undefined
  /** The bytes are hashed by the worker given to the RemoteHash (a plain file, --workers 3+). */
  hashedRemotely: boolean
  /** How many bytes there are to read, when known before reading (a regular file, as stored). */
  size: number | null
  compressed: boolean
  digest(): string
  bytes(): number
  error(): Error | null
  /** Stop reading and release the file (on failure or Ctrl-C). */
  close(): void
}

/**
 * The file's bytes, hashed as stored, gunzipped when its first bytes are the gzip magic. A regular
 * file that is not gzip is read into pooled buffers (openPlainFile); anything else (a pipe,
 * /dev/stdin, a .gz) as a stream from the start.
 */
async function openTraffic(
  file: string,
  stdin: Readable | undefined,
  signal: AbortSignal | undefined,
  remoteHash: RemoteHash | null,
  idleTimeoutMs: number | undefined,
): Promise<TrafficInput> {
  let stat: fs.Stats | null = null
  if (file !== '-') {
    try {
      stat = await fs.promises.stat(file)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      throw new UsageError(
        code === 'ENOENT'
          ? `--traffic: there is no file ${file}.`
          : `--traffic: cannot read ${file} (${code}).`,
      )
    }
    if (stat.isDirectory()) throw new UsageError(`--traffic: ${file} is a directory, not a file.`)
    if (stat.isFile()) {
      const plain = await openPlainFile(file, stat.size, remoteHash)
      if (plain) return plain
    }
  } else if (!stdin) throw new UsageError('--traffic -: there is no standard input to read.')
  const stored = storedBytes()
  let error: Error | null = null
  let raw: Readable
  try {
    raw = stat ? openReadStream(file, stat, { highWaterMark: BLOCK_BYTES }) : stdin!
  } catch (err) {
    throw readError(file, err as Error)
  }
  const hasher = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      stored.add(chunk)
      cb(null, chunk)
    },
  })
  /** Since when the replay has been waiting for bytes that have not come (null: not waiting). */
  let waitingSince: number | null = Date.now()
  // Only where bytes may stop coming: a pipe, a FIFO, standard input (a file always has its next).
  // Measured while the replay waits, not while it is busy with what it has.
  const watch =
    idleTimeoutMs !== undefined && !stat?.isFile()
      ? setInterval(
          () => {
            if (waitingSince === null || Date.now() - waitingSince < idleTimeoutMs) return
            error ??= new TimeoutError(
              `--traffic ${file}: nothing came for ${idleTimeoutMs / 1000}s; is the producer stalled?`,
              { hint: 'Raise the limit with --timeout if the traffic comes that slowly.' },
            )
            raw.destroy(error)
          },
          Math.min(1000, Math.max(10, idleTimeoutMs / 4)),
        )
      : null
  watch?.unref()
  // pipeline, not pipe: an error anywhere (a read error, EIO) ends the whole chain and is kept.
  const hashed = pipeline(raw, hasher, (err) => {
    if (watch) clearInterval(watch)
    if (err && !error) error = readError(file, err)
  })
  const chunks = hashed[Symbol.asyncIterator]() as AsyncIterator<Buffer>
  // A pipe may send nothing for a long time: Ctrl-C ends the read at once, first bytes or not.
  const stopReading = () => raw.destroy()
  signal?.addEventListener('abort', stopReading, { once: true })
  let first: IteratorResult<Buffer>
  try {
    first = await chunks.next()
    waitingSince = null
    if (signal?.aborted) throw new InterruptedError()
  } catch (err) {
    signal?.removeEventListener('abort', stopReading)
    raw.destroy()
    if (signal?.aborted) throw new InterruptedError()
    throw error ?? readError(file, err as Error)
  }
  const compressed = !first.done && first.value[0] === 0x1f && first.value[1] === 0x8b
  const replayed = Readable.from(
    (async function* () {
      if (first.done) return
      yield first.value
      for (;;) {
        waitingSince = Date.now()
        const next = await chunks.next()
        waitingSince = null
        if (next.done) return
        yield next.value
      }
    })(),
    { objectMode: false },
  )
  let stream: Readable = replayed
  if (compressed) {
    stream = pipeline(replayed, createGunzip(), (err) => {
      if (err && !error) error = streamError(file, err)
    })
  }
  // The reader may see the stream's error before the pipeline's callback has kept it: it is named
  // here too, so that a truncated .gz is bad input (exit 2), not an unexpected error.
  async function* named(): AsyncGenerator<Buffer> {
    try {
      for await (const chunk of stream) yield chunk as Buffer
    } catch (err) {
      throw error ?? streamError(file, err as Error)
    }
  }
  return {
    chunks: named(),
    recycle: () => {},
    sharedId: () => undefined,
    hashedRemotely: false,
    size: null,
    compressed,
    digest: stored.digest,
    bytes: stored.bytes,
    error: () => error,
    close: () => {
      if (watch) clearInterval(watch)
      signal?.removeEventListener('abort', stopReading)
      stream.destroy()
      raw.destroy()
    },
  }
}

/** A failure of a traffic stream: zlib's (a damaged or cut .gz), or the read's. */
function streamError(file: string, err: Error): UsageError {
  if (!/^Z_/.test(String((err as NodeJS.ErrnoException).code))) return readError(file, err)
  return new UsageError(`--traffic: ${file} is not a valid gzip file (${err.message}).`, { cause: err })
}

function readError(file: string, err: Error): UsageError {
  return new UsageError(`--traffic: cannot read ${file}: ${err.message}.`, { cause: err })
}

/**
 * The traffic's SHA-256 computed by a parsing worker (replay-worker.ts): each chunk, in shared
 * memory, is posted to it as it is read, in file order; it hands the buffer back once hashed.
 */
class RemoteHash implements StoredBytes {
  hex: string | null = null
  private worker: Worker | null = null
  private count = 0

  attach(worker: Worker): void {
    this.worker = worker
  }

  /** `id`: the shared buffer's, for the worker to hand back. */
  add(chunk: Buffer, id?: number): void {
    this.count += chunk.length
    this.worker!.postMessage({ type: 'hash', bytes: chunk, id: id! } satisfies HashTask)
  }

  bytes(): number {
    return this.count
  }

  /** Asks for the digest: it comes back as a 'digest' message, after every chunk's. */
  requestDigest(): void {
    this.worker!.postMessage({ type: 'digest' } satisfies HashTask)
  }

  digest(): string {
    return this.hex!
  }
}

/** The SHA-256 and the size of the traffic as stored, fed chunk by chunk as it is read. */
interface StoredBytes {
  add(chunk: Buffer, id?: number): void
  bytes(): number
  digest(): string
}

function storedBytes(): StoredBytes {
  const hash = createHash('sha256')
  let bytes = 0
  let digest: string | null = null
  return {
    add: (chunk) => {
      hash.update(chunk)
      bytes += chunk.length
    },
    bytes: () => bytes,
    digest: () => (digest ??= hash.digest('hex')),
  }
}

/** Read buffers kept for reuse: about the blocks in flight at once. */
const POOL_LIMIT = 32

/**
 * A file that is not gzip, read with fs.read into a pool of buffers that the parsers hand back.
 * Fresh buffers per chunk cost a page fault per 4 KiB, and a block parsed in a worker was only
 * freed at that worker's next full GC: memory crept up with the file. Null for a gzip file.
 */
async function openPlainFile(
  file: string,
  size: number,
  remoteHash: RemoteHash | null,
): Promise<TrafficInput | null> {
  let fh: fs.promises.FileHandle
  try {
    fh = await fs.promises.open(file, 'r')
  } catch (err) {
    throw readError(file, err as Error)
  }
  try {
    const magic = Buffer.alloc(2)
    const { bytesRead } = await fh.read(magic, 0, 2, 0)
    if (bytesRead === 2 && magic[0] === 0x1f && magic[1] === 0x8b) {
      await fh.close()
      return null
    }
  } catch (err) {
    await fh.close().catch(() => {})
    throw readError(file, err as Error)
  }
  const stored: StoredBytes = remoteHash ?? storedBytes()
  const pool: Buffer[] = []
  /**
   * With a remote hash the buffers are shared memory, read by a block's parser and by the hashing
   * worker without a copy, and back in the pool once both are done. A shared buffer that crosses
   * to a thread and back is a new object there, so each is known by a number: its id.
   */
  const ids = new WeakMap<ArrayBufferLike, number>()
  const shared = new Map<number, { buf: Buffer; holds: number }>()
  let nextId = 0
  let error: Error | null = null
  let closed = false
  const readNext = async (): Promise<Buffer> => {
    const buf =
      pool.pop() ??
      (remoteHash ? Buffer.from(new SharedArrayBuffer(BLOCK_BYTES)) : Buffer.allocUnsafeSlow(BLOCK_BYTES))
    if (remoteHash) {
      const id = nextId++
      ids.set(buf.buffer, id)
      shared.set(id, { buf, holds: 2 })
    }
    try {
      const { bytesRead } = await fh.read(buf, 0, BLOCK_BYTES, null)
      return buf.subarray(0, bytesRead)
    } catch (err) {
      error ??= readError(file, err as Error)
      throw error
    }
  }
  // The read ahead may fail while nobody awaits it yet: marked handled here, it is thrown where awaited.
  const ahead = () => {
    const p = readNext()
    p.catch(() => {})
    return p
  }
  let started = false
  async function* chunks(): AsyncGenerator<Buffer> {
    started = true
    // One read ahead, so the disk works while the chunk before is cut and parsed.
    let next = ahead()
    try {
      while (!closed) {
        const chunk = await next
        if (chunk.length === 0) return
        next = ahead()
        stored.add(chunk, ids.get(chunk.buffer))
        yield chunk
      }
    } finally {
      await next.catch(() => {})
      await fh.close().catch(() => {})
    }
  }
  return {
    chunks: chunks(),
    recycle: (buffer) => {
      const id = typeof buffer === 'number' ? buffer : ids.get(buffer)
      if (id === undefined) {
        // moved to a parser and back (a new object), or a copy: this thread's alone now
        if (buffer instanceof ArrayBuffer && buffer.byteLength === BLOCK_BYTES && pool.length < POOL_LIMIT)
          pool.push(Buffer.from(buffer))
        return
      }
      const entry = shared.get(id)
      if (!entry || --entry.holds > 0) return
      shared.delete(id)
      if (pool.length < POOL_LIMIT) pool.push(entry.buf)
    },
    sharedId: (buffer) => ids.get(buffer),
    hashedRemotely: remoteHash !== null,
    size,
    compressed: false,
    digest: () => stored.digest(),
    bytes: () => stored.bytes(),
    error: () => error,
    close: () => {
      closed = true
      // Never started (a failure before the first read): the generator's finally will not run.
      if (!started) fh.close().catch(() => {})
    },
  }
}

/** A block of whole lines: `head` (what the previous chunk left over, small) then `body`. */
interface RawBlock {
  head: Uint8Array | null
  /** in an ArrayBuffer of its own, so that it can be transferred to a worker, not copied */
  body: Uint8Array
}

/**
 * Blocks of whole lines: a chunk up to its last newline, after what the previous chunk left over.
 * The chunk's own buffer becomes the block when it can (the file's chunks are buffers of their
 * own): only the leftover line is copied, not the megabyte.
 */
async function* blocks(stream: AsyncIterable<Buffer>, blockBytes: number): AsyncGenerator<RawBlock> {
  let carry: Buffer[] = []
  let carried = 0
  const head = (): Uint8Array | null => {
    const h =
      carried === 0 ? null : carry.length === 1 ? new Uint8Array(carry[0]!) : Buffer.concat(carry, carried)
    carry = []
    carried = 0
    return h
  }
  for await (const data of stream) {
    let chunk = data
    while (chunk.length > 0) {
      const room = blockBytes - carried
      // the last line end within the room left, else the first after it (a very long line)
      let nl = chunk.length < room ? -1 : chunk.lastIndexOf(0x0a, room - 1)
      if (nl === -1 && chunk.length >= room) nl = chunk.indexOf(0x0a, room)
      if (nl === -1) {
        carry.push(chunk)
        carried += chunk.length
        break
      }
      const whole = chunk.byteOffset === 0 && chunk.buffer.byteLength === chunk.length
      const rest = chunk.subarray(nl + 1)
      if (whole && nl < blockBytes) {
        // The common case: the chunk's buffer is the block (transferred, so detached here); the
        // partial line after it is copied out first.
        const h = head()
        if (rest.length > 0) {
          carry.push(Buffer.from(rest))
          carried = rest.length
        }
        yield { head: h, body: new Uint8Array(chunk.buffer, 0, nl + 1) }
        break
      }
      yield { head: head(), body: new Uint8Array(chunk.subarray(0, nl + 1)) }
      chunk = rest
    }
  }
  if (carried > 0) yield { head: null, body: head()! }
}

/**
 * Timestamps of one key, sorted, oldest dropped from the front as windows move on: a[head, len).
 * A busy key's array is written over rather than replaced (its live part moved to the front now
 * and then), so a key in a long burst makes no garbage. (A plain array, not a Float64Array: a
 * typed array's memory lies outside the heap, and growing thousands of them cost more.)
 */
class TsList {
  a: number[] = []
  head = 0
  len = 0
  /** swept out of the key map: a parser's cached id must be resolved again */
  dead = false

  insert(ts: number): void {
    const a = this.a
    const len = this.len
    if (len === this.head || ts >= a[len - 1]!) {
      if (len < a.length) a[len] = ts
      else a.push(ts)
      this.len = len + 1
      return
    }
    const at = this.upper(ts)
    if (len === a.length) a.push(0)
    for (let j = len; j > at; j--) a[j] = a[j - 1]!
    a[at] = ts
    this.len = len + 1
  }

  /** index of the first element > ts */
  upper(ts: number): number {
    let lo = this.head
    let hi = this.len
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.a[mid]! <= ts) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** how many in (from, to] */
  count(from: number, to: number): number {
    return this.upper(to) - this.upper(from)
  }

  evict(upTo: number): void {
    const a = this.a
    let head = this.head
    const len = this.len
    while (head < len && a[head]! <= upTo) head++
    if (head === len) {
      // A quiet key lets its timestamps go (no new array: the same one, emptied): memory follows
      // the keys live in a window, and most keys of a large file are quiet most of the time.
      this.head = this.len = 0
      a.length = 0
    } else if (head > 256 && head * 2 > len) {
      // a busy key: its live part moved to the front, and the array cut to it
      for (let j = head; j < len; j++) a[j - head] = a[j]!
      this.len = len - head
      this.head = 0
      a.length = this.len
    } else this.head = head
  }

  get empty(): boolean {
    return this.head === this.len
  }
}

/**
 * The events waiting for their windows that arrived in time order, oldest first: a ring of
 * (block, row) pairs that grows when full and is otherwise reused, so queueing makes no garbage.
 */
class EventRing {
  // 16,384: a minute of disorder at a few hundred requests a second without growing. Each growth
  // is code the windows' loop has not run yet, so V8 throws that loop's optimized code away.
  private blocks: Array<Block | undefined> = new Array(1 << 14).fill(undefined)
  private rows = new Int32Array(1 << 14)
  private head = 0
  /** how many are queued */
  size = 0

  push(b: Block, i: number): void {
    if (this.size === this.rows.length) this.grow()
    const at = (this.head + this.size) & (this.rows.length - 1)
    this.blocks[at] = b
    this.rows[at] = i
    this.size++
  }

  firstBlock(): Block {
    return this.blocks[this.head]!
  }

  firstRow(): number {
    return this.rows[this.head]!
  }

  lastTs(): number {
    if (this.size === 0) return -Infinity
    const at = (this.head + this.size - 1) & (this.rows.length - 1)
    return this.blocks[at]!.ts[this.rows[at]!]!
  }

  shift(): void {
    // the block is let go of, so that a decided block can be collected
    this.blocks[this.head] = undefined
    this.head = (this.head + 1) & (this.rows.length - 1)
    this.size--
  }

  private grow(): void {
    const n = this.rows.length
    const blocks = new Array<Block | undefined>(n * 2).fill(undefined)
    const rows = new Int32Array(n * 2)
    for (let j = 0; j < n; j++) {
      const at = (this.head + j) & (n - 1)
      blocks[j] = this.blocks[at]
      rows[j] = this.rows[at]!
    }
    this.blocks = blocks
    this.rows = rows
    this.head = 0
  }
}

interface Block extends BlockColumns {
  lists: Array<Array<TsList>>
  /** arrival order of the block's first event: ties in time are decided in arrival order */
  firstSeq: number
}

interface Late {
  ts: number
  seq: number
  b: Block
  i: number
}

/**
 * Rate-limit windows in time order, for the 'columns' mode: takes blocks in file order, decides
 * an event once no line still to come can fall in its window, and counts it.
 */
class Sequencer {
  late = 0
  full = false
  private readonly maps: Array<Map<string, TsList>>
  private readonly maxWindow: number[]
  private readonly rateKey: number[]
  private maxTs = -Infinity
  /** the line that holds maxTs: named when a later line is too far behind it */
  private maxLine = 0
  private arrived = 0
  /** items at or before this are no longer in any window still to be computed */
  private evictBefore = -Infinity
  private sizeAtSweep = 1024
  // In-order arrivals queue up sorted; late ones go to a heap.
  private readonly fifo = new EventRing()
  private heap: Late[] = []
  private readonly vals: Float64Array
  /** per parser: its key ids -> the lists (and the key names, to resolve a swept list again) */
  /**
   * One slot per parser, made up front: an array that grew when a worker's first block came in
   * made V8 throw away the windows' optimized code (an out-of-bounds read).
   */
  private readonly caches: Array<{ lists: TsList[][]; names: string[][] } | null>

  constructor(
    private readonly pair: CompiledPair,
    private readonly tally: Tally,
    private readonly options: Pick<ReplayOptions, 'maxDisorderMs' | 'skipInvalid' | 'sampleSize' | 'file'>,
    /** the block parsers: this thread's and the workers' */
    parsers: number,
  ) {
    this.caches = Array.from({ length: parsers }, () => null)
    this.maps = pair.keys.map(() => new Map())
    this.rateKey = pair.rate.map((i) => pair.keys.indexOf((pair.leaves[i] as RateLeaf).key))
    this.maxWindow = pair.keys.map((k) =>
      Math.max(
        0,
        ...pair.rate
          .map((i) => pair.leaves[i] as RateLeaf)
          .filter((l) => l.key === k)
          .map((l) => l.windowMs),
      ),
    )
    this.vals = new Float64Array(pair.leaves.length)
  }

  private resolve(k: number, key: string): TsList {
    const m = this.maps[k]!
    let l = m.get(key)
    if (!l) {
      l = new TsList()
      m.set(key, l)
    }
    return l
  }

  /**
   * `lineBase`: the file line number of the block's first line, for messages. `source`: the
   * parser that made it, whose key dictionary (ids -> lists) is cached here.
   */
  add(c: BlockColumns, lineBase: number, source: number): void {
    const K = this.pair.keys.length
    let cache = this.caches[source]
    if (!cache || c.dictReset) {
      cache = { lists: this.pair.keys.map(() => []), names: this.pair.keys.map(() => []) }
      this.caches[source] = cache
    }
    c.dicts.forEach((added, k) => {
      for (const key of added) {
        cache.names[k]!.push(key)
        cache.lists[k]!.push(this.resolve(k, key))
      }
    })
    const lists = cache.lists
    // Field by field, not a spread: columns come both from this thread's parser and cloned from
    // workers, and a spread would keep two shapes apart, making every read of a block polymorphic.
    const b: Block = {
      n: c.n,
      ts: c.ts,
      attack: c.attack,
      line: c.line,
      vals: c.vals,
      keyIds: c.keyIds,
      dicts: c.dicts,
      dictReset: c.dictReset,
      lists,
      firstSeq: this.arrived,
    }
    this.arrived += c.n
    const D = this.options.maxDisorderMs
    for (let i = 0; i < c.n; i++) {
      const ts = c.ts[i]!
      if (ts < this.maxTs - D) {
        if (!this.options.skipInvalid) {
          const line = lineBase + c.line[i]!
          throw new UsageError(
            `${this.options.file} line ${line}: its ts (${iso(ts)}) is ${((this.maxTs - ts) / 1000).toFixed(3)}s before line ${this.maxLine} (${iso(this.maxTs)}), more than --max-disorder allows (${D / 1000}s).`,
            {
              code: 'TRAFFIC_OUT_OF_ORDER',
              hint: `If line ${this.maxLine} is the wrong one, fix it; otherwise sort the file by ts, raise --max-disorder, or pass --skip-invalid to skip and count such lines.`,
              data: { line, ahead_line: this.maxLine },
            },
          )
        }
        this.late++
        continue
      }
      if (ts > this.maxTs) {
        this.maxTs = ts
        this.maxLine = lineBase + c.line[i]!
      }
      // Past the sample: lines are still checked above, but nothing more is scored.
      if (this.full) continue
      for (let k = 0; k < K; k++) {
        const id = c.keyIds[i * K + k]!
        if (id >= 0) {
          let l = lists[k]![id]!
          if (l.dead) {
            // the key went quiet and was swept; it is back: a live list again
            l = this.resolve(k, cache.names[k]![id]!)
            lists[k]![id] = l
          }
          l.evict(this.evictBefore - this.maxWindow[k]!)
          l.insert(ts)
        }
      }
      if (ts >= this.fifo.lastTs()) this.fifo.push(b, i)
      else this.heapPush({ ts, seq: b.firstSeq + i, b, i })
    }
    this.release(this.maxTs - D)
    this.sweep()
  }

  /** Decide and count every waiting event earlier than the watermark, in time order. */
  private release(watermark: number): void {
    for (;;) {
      if (this.full) return
      const fifo = this.fifo
      const fifoTs = fifo.size > 0 ? fifo.firstBlock().ts[fifo.firstRow()]! : Infinity
      const heapTs = this.heap.length > 0 ? this.heap[0]!.ts : Infinity
      const ts = Math.min(fifoTs, heapTs)
      if (!(ts < watermark)) break
      // On a tie the FIFO goes first: an in-order event of the same ts always arrived earlier.
      if (fifoTs <= heapTs) {
        this.decide(fifo.firstBlock(), fifo.firstRow())
        fifo.shift()
      } else {
        const top = this.heapPop()
        this.decide(top.b, top.i)
      }
    }
    // Every event still to be decided has ts >= watermark, so its window starts after watermark - w.
    if (watermark > this.evictBefore) this.evictBefore = watermark
  }

  private decide(b: Block, i: number): void {
    const pair = this.pair
    const vals = this.vals
    const S = pair.stateless.length
    const K = pair.keys.length
    const ts = b.ts[i]!
    for (let j = 0; j < S; j++) vals[pair.stateless[j]!] = b.vals[i * S + j]!
    for (let r = 0; r < pair.rate.length; r++) {
      const leafIndex = pair.rate[r]!
      const leaf = pair.leaves[leafIndex] as RateLeaf
      const k = this.rateKey[r]!
      const id = b.keyIds[i * K + k]!
      vals[leafIndex] = id < 0 ? -Infinity : b.lists[k]![id]!.count(ts - leaf.windowMs, ts) / leaf.threshold
    }
    addEvent(
      this.tally,
      ts,
      b.attack[i] === 1,
      pair.control.blocks(vals),
      pair.control.score(vals),
      pair.candidate.blocks(vals),
      pair.candidate.score(vals),
    )
    if (this.options.sampleSize !== undefined && this.tally.events >= this.options.sampleSize)
      this.full = true
  }

  /** Drop keys with nothing left in any window, now and then: memory follows live keys only. */
  private sweep(): void {
    let size = 0
    for (const m of this.maps) size += m.size
    if (size < this.sizeAtSweep * 2) return
    this.maps.forEach((m, k) => {
      for (const [key, l] of m) {
        l.evict(this.evictBefore - this.maxWindow[k]!)
        if (l.empty) {
          m.delete(key)
          l.dead = true
        }
      }
    })
    size = 0
    for (const m of this.maps) size += m.size
    this.sizeAtSweep = Math.max(1024, size)
  }

  finish(): void {
    this.release(Infinity)
  }

  private heapPush(x: Late): void {
    const h = this.heap
    h.push(x)
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (before(h[p]!, x)) break
      h[i] = h[p]!
      i = p
    }
    h[i] = x
  }

  private heapPop(): Late {
    const h = this.heap
    const top = h[0]!
    const last = h.pop()!
    if (h.length > 0) {
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        if (l >= h.length) break
        const r = l + 1
        const c = r < h.length && before(h[r]!, h[l]!) ? r : l
        if (before(last, h[c]!)) break
        h[i] = h[c]!
        i = c
      }
      h[i] = last
    }
    return top
  }
}

/** Heap order: by time, then arrival, so which of two same-instant events is decided first never depends on blocks. */
function before(a: Late, b: Late): boolean {
  return a.ts < b.ts || (a.ts === b.ts && a.seq < b.seq)
}

function iso(ms: number): string {
  return Number.isFinite(ms) && Math.abs(ms) <= 8.64e15 ? new Date(ms).toISOString() : String(ms)
}
