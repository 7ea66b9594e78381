/**
 * The audit chains of a backup, verified while it is restored, from the restore's own stream: the
 * audit table's data block is found in the dump on its way to pg_restore (custom-format.ts) and
 * spilled to a temporary file, which a process at the lowest CPU priority
 * (src/chain-check-process.ts) reads behind it and checks with TextChainChecker against the
 * manifest's heads. The file, not a pipe, is what lets the check fall behind without ever slowing
 * the restore, and it is unlinked as soon as both processes hold it open, so nothing is left on
 * disk however either of them ends.
 *
 * The bytes checked are the bytes restored: the same stream, authenticated chunk by chunk and
 * hashed against the manifest before pg_restore sees its end. The caller uses the answer only when
 * that stream completed. Anything that goes wrong with the check only makes the answer not intact,
 * and the caller then runs verify-chain on the restored database.
 */
import { execFile, spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import zlib from 'node:zlib'
import { notIntact, TextChainChecker, type TextChainResult } from '../audit/copy-text.js'
import { PACKAGE_ROOT } from '../config/paths.js'
import { type Keyring, keysFromWire, keysToWire, type WireKeys } from '../config/secrets.js'
import { InterruptedError } from '../errors.js'
import { ChunkReader, type TableData, TableDataFinder } from './custom-format.js'
import type { Manifest } from './manifest.js'
import { ZlibSteps } from './zlib-steps.js'

export const AUDIT_TABLE = { schema: 'credits', table: 'audit_logs' }

/** What the restore tells the check, one JSON line each on its stdin; the first is the input. */
export type Message =
  | { input: { auditKeys: WireKeys; heads: Manifest['chains'] } }
  | { table: TableData }
  /** The spill file holds this many bytes of the table's block. */
  | { written: number }
  /** All of the block is in the spill file. */
  | { end: true }
  | { none: string }

/**
 * Spilled bytes not yet written before the check is given up: the page cache takes them far
 * faster than the dump is decompressed, so this is only reached when the disk is in trouble, and
 * then the restore goes on without the check rather than wait or hold them.
 */
const MAX_UNWRITTEN = 32 << 20

/**
 * Once the restore's stream has ended, how long the check may go without reading anything before
 * it is given up for verify-chain: a checker that is stopped or starved must not hold the restore.
 */
const STALL_MS = 10_000

/** Where the compiled chain check is: dist/, also when the caller runs from source (tests). */
const CHAIN_CHECK_PROCESS = path.join(PACKAGE_ROOT, 'dist/chain-check-process.js')

/** The restore's side: `tap` sees every byte of the dump on its way to pg_restore. */
export interface StreamedChainCheck {
  tap(chunk: Buffer): void
  /** The dump ended, every byte of it authenticated and the file's checksum matched. */
  finish(): void
  /** The restore failed or was interrupted: the check is killed, and this resolves once it is gone. */
  stop(): Promise<void>
  /** Its answer; interrupted by `signal`, the check is stopped and this rejects. */
  answer(signal?: AbortSignal): Promise<TextChainResult>
}

export function startChainCheck(
  auditKeys: Keyring,
  manifest: Manifest,
  env: NodeJS.ProcessEnv,
  options: { stallMs?: number } = {},
): StreamedChainCheck {
  let fd: number
  let child: ReturnType<typeof spawn>
  let dir: string | null = null
  try {
    dir = fs.mkdtempSync(path.join(env.TMPDIR || os.tmpdir(), 'shieldx-restore-'))
    const file = path.join(dir, 'audit-block')
    fd = fs.openSync(file, 'w+', 0o600)
    try {
      // Through nice(1), so that every thread of it starts at the lowest priority; with no secrets
      // in its environment (the keys go on stdin, never on a command line or in an environment).
      child = spawn('nice', ['-n', '19', process.execPath, CHAIN_CHECK_PROCESS], {
        stdio: ['pipe', 'pipe', 'ignore', fd],
        env: { PATH: env.PATH ?? '/usr/bin:/bin' },
      })
    } catch (err) {
      fs.closeSync(fd)
      throw err
    }
    // Then, where chrt(1) may, SCHED_IDLE for all its threads: it runs only on a CPU nothing else
    // wants and gives way at once when the restore's processes wake. Against nice 19 alone the
    // restore measured 1-4% faster (paired medians of 10-12 rounds, four runs, all one way). If
    // chrt is missing or refused, nice 19 is what it keeps.
    if (child.pid) execFile('chrt', ['--all-tasks', '--idle', '--pid', '0', String(child.pid)], () => {})
  } catch (err) {
    // It only ever speeds the restore up: if it cannot run, verify-chain runs after the restore.
    return unavailable(notIntact(`the chain check could not start: ${(err as Error).message}`))
  } finally {
    // Both hold it open now (or it failed): the name is not needed any more.
    if (dir) fs.rmSync(dir, { recursive: true, force: true })
  }

  const stdin = child.stdin!
  stdin.on('error', () => {}) // EPIPE when it has given up and gone
  const send = (m: Message) => {
    if (!stdin.destroyed) stdin.write(`${JSON.stringify(m)}\n`)
  }
  send({ input: { auditKeys: keysToWire(auditKeys), heads: manifest.chains } })

  /** When the check last moved: the restore spilled more, or the checker read more. */
  let moved = Date.now()
  const spill = new Spill(
    fd,
    (written) => {
      moved = Date.now()
      send({ written })
    },
    () => {
      send({ none: 'its spill file fell behind' })
      stdin.end()
    },
  )

  // Its stdout: a line {"read": bytes} now and then, and its answer as the last line.
  let out = ''
  child.stdout!.setEncoding('utf8')
  child.stdout!.on('data', (d: string) => {
    out += d
    const lines = out.split('\n')
    out = lines.pop()!
    if (lines.length > 0) moved = Date.now()
    for (const line of lines) if (!line.startsWith('{"read"')) answer = line
  })
  let answer = ''
  let answered = false
  const result = new Promise<TextChainResult>((resolve) => {
    child.on('error', (err) => resolve(notIntact(`the chain check could not start: ${err.message}`)))
    child.on('close', (code, signal) => {
      try {
        resolve(JSON.parse(answer) as TextChainResult)
      } catch {
        resolve(notIntact(`the chain check stopped (${signal ?? `exit ${code}`})`))
      }
    })
  }).finally(() => {
    answered = true
    spill.close()
  })
  let blockEnded = false
  const finder = new TableDataFinder(AUDIT_TABLE.schema, AUDIT_TABLE.table, {
    found: (table) => send({ table }),
    bytes: (slice) => spill.push(slice),
    end: () => {
      blockEnded = true
      spill.whenWritten(() => {
        send({ end: true })
        stdin.end()
      })
    },
    none: (why) => {
      send({ none: why })
      stdin.end()
    },
  })

  const stop = async () => {
    spill.close()
    if (!answered) child.kill('SIGKILL')
    await result
  }
  const stallMs = options.stallMs ?? STALL_MS
  /** The answer, or not intact once the check stands still for stallMs. */
  const unlessStalled = async (): Promise<TextChainResult> => {
    moved = Date.now()
    let stalled = false
    const watch = setInterval(
      () => {
        if (Date.now() - moved < stallMs) return
        stalled = true
        void stop()
      },
      Math.min(1000, stallMs / 4),
    )
    try {
      const r = await result
      return stalled ? notIntact(`the chain check read nothing for ${stallMs / 1000} s`, r) : r
    } finally {
      clearInterval(watch)
    }
  }
  return {
    tap: (chunk) => {
      if (finder.done || answered) return
      try {
        finder.write(chunk)
      } catch {
        // Whatever goes wrong here costs the check, never the restore it watches.
        void stop()
      }
    },
    finish: () => {
      if (!blockEnded) finder.end()
    },
    stop,
    answer: (signal) => untilAnswered(unlessStalled(), stop, signal),
  }
}

/** A check that cannot run: it answers at once, and verify-chain does the work. */
function unavailable(answer: TextChainResult): StreamedChainCheck {
  return { tap: () => {}, finish: () => {}, stop: async () => {}, answer: async () => answer }
}

/**
 * Appends slices to the spill file in order, a batch per write, never holding the caller up:
 * past MAX_UNWRITTEN bytes waiting it gives up instead (`onOverflow`) and drops what it holds.
 */
class Spill {
  private queue: Buffer[] = []
  private unwritten = 0
  private written = 0
  private writing = false
  private closed = false
  private onIdle: (() => void) | null = null

  constructor(
    private readonly fd: number,
    private readonly onWritten: (bytes: number) => void,
    private readonly onOverflow: () => void,
  ) {}

  push(slice: Buffer): void {
    if (this.closed) return
    this.queue.push(slice)
    this.unwritten += slice.length
    if (this.unwritten > MAX_UNWRITTEN) {
      this.close()
      this.onOverflow()
      return
    }
    this.flush()
  }

  /** `fn` once everything pushed so far is written (not if it is closed first). */
  whenWritten(fn: () => void): void {
    if (this.closed) return
    if (!this.writing && this.queue.length === 0) fn()
    else this.onIdle = fn
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.queue = []
    this.onIdle = null
    if (!this.writing) fs.close(this.fd, () => {})
  }

  private flush(): void {
    if (this.writing || this.queue.length === 0) return
    const batch = this.queue
    const bytes = this.unwritten
    this.queue = []
    this.writing = true
    fs.writev(this.fd, batch, this.written, (err, n) => {
      this.writing = false
      if (this.closed) {
        fs.close(this.fd, () => {})
        return
      }
      if (err || n !== bytes) {
        this.close()
        this.onOverflow()
        return
      }
      this.written += n
      this.unwritten -= n
      this.onWritten(this.written)
      if (this.queue.length > 0) this.flush()
      else if (this.onIdle) {
        const fn = this.onIdle
        this.onIdle = null
        fn()
      }
    })
  }
}

/** The check's answer, unless the command is interrupted first (then the check is stopped too). */
async function untilAnswered(
  result: Promise<TextChainResult>,
  stop: () => Promise<void>,
  signal: AbortSignal | undefined,
): Promise<TextChainResult> {
  if (!signal) return result
  let onAbort = () => {}
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(new InterruptedError())
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
  })
  try {
    return await Promise.race([result, aborted])
  } catch (err) {
    await stop()
    throw err
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}

/** Bytes read from the spill file at a time, into one buffer reused for every read. */
const READ_BYTES = 1 << 20

/**
 * The check's side, in the child: reads the spill file (`fd`) behind the restore as `messages`
 * say how far it is written, and checks the rows. Stops reading as soon as the answer is known.
 */
export async function checkSpilledChains(
  fd: number,
  messages: AsyncIterable<Message>,
  onRead: (bytes: number) => void = () => {},
): Promise<TextChainResult> {
  const incoming = messages[Symbol.asyncIterator]()
  const first = await incoming.next()
  if (first.done || !('input' in first.value)) return notIntact('no input')
  const { auditKeys, heads } = first.value.input
  const table = `${AUDIT_TABLE.schema}.${AUDIT_TABLE.table}`
  const checker = new TextChainChecker(keysFromWire(auditKeys), table, heads)
  let reader: ChunkReader | null = null
  /** A compressed archive's table data: one zlib stream across the chunks' payloads. */
  let inflater: Inflater | null = null
  let written = 0
  let ended = false
  let read = 0
  const buf = Buffer.alloc(READ_BYTES)
  for (;;) {
    if (reader && read < written) {
      // Blocking is fine here: this process does nothing else, and its messages wait in the pipe.
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, written - read), read)
      if (n === 0) return notIntact('the spill file ends early', countedBy(checker))
      read += n
      const blockEnded = reader.write(buf.subarray(0, n))
      if (inflater) {
        try {
          await inflater.flush(blockEnded)
        } catch (err) {
          return notIntact(
            `the audit data does not decompress (${(err as Error).message})`,
            countedBy(checker),
          )
        }
      }
      if (blockEnded || checker.gaveUp) break
      onRead(read)
      // A turn of the event loop, so that what onRead wrote goes out while it catches up.
      await new Promise(setImmediate)
      continue
    }
    if (ended) return notIntact('the spill file ends before the table data does', countedBy(checker))
    const next = await incoming.next()
    if (next.done) return notIntact('the restore stopped', countedBy(checker))
    const m = next.value
    if ('table' in m) {
      checker.write(Buffer.from(m.table.copyStmt))
      const into = m.table.zlib ? (inflater = new Inflater((text) => checker.write(text))) : null
      reader = new ChunkReader(m.table.intSize, (slice) => (into ? into.add(slice) : checker.write(slice)))
    } else if ('written' in m) written = m.written
    else if ('end' in m) ended = true
    else if ('none' in m) return notIntact(m.none, countedBy(checker))
  }
  return checker.end()
}

/**
 * The table data of a compressed archive, decompressed as its chunks are read from the spill file.
 * Every way it can fail (damaged data, bytes after the end of the stream, the checker throwing)
 * rejects flush(), which the caller reports as not intact: it never hangs.
 */
export class Inflater {
  private readonly z = new ZlibSteps(zlib.createInflate({ chunkSize: READ_BYTES }))
  private pending: Buffer[] = []

  constructor(private readonly text: (b: Buffer) => void) {}

  /**
   * A payload slice of the read buffer, kept as it is: the caller flushes before it reads into
   * that buffer again, and flush copies the slices out first thing.
   */
  add(slice: Buffer): void {
    this.pending.push(slice)
  }

  /** Decompresses what was added; at the block's end, to the end of the stream. */
  async flush(end: boolean): Promise<void> {
    const bytes = Buffer.concat(this.pending)
    this.pending = []
    for (const out of await (end ? this.z.end(bytes) : this.z.write(bytes))) this.text(out)
  }
}

function countedBy(checker: TextChainChecker): { rows: number; tenants: number } {
  const { rows, tenants } = checker.end()
  return { rows, tenants }
}

/** Messages as the child reads them from its stdin. */
export async function* readMessages(input: NodeJS.ReadableStream): AsyncIterable<Message> {
  for await (const line of readline.createInterface({ input, crlfDelay: Infinity })) {
    if (line) yield JSON.parse(line) as Message
  }
}
