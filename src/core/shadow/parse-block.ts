/**
 * One block of traffic lines: parsed (the costly part, so replay.ts runs it on every core) and
 * the leaves that need only the event itself scored. Without rate limits the block is also
 * decided and counted here, and the coordinator (replay.ts) only merges tallies. With rate
 * limits it comes back as compact columns; the coordinator runs the windows in time order.
 */
import { compilePair, type CompiledPair, type StatelessLeaf } from './compile.js'
import type { RulePart } from './rules.js'
import { addEvent, newTally, type Tally, tallyToData, type TallyData } from './tally.js'
import { fieldReader, TrafficLineReader } from './traffic.js'

export interface BlockParserInput {
  control: RulePart
  candidate: RulePart
  /** 'tally': decide and count here; 'columns': return scores and keys for the coordinator */
  mode: 'tally' | 'columns'
  /** For tests: keys remembered before the dictionary starts over (DICT_LIMIT). */
  dictLimit?: number
}

export interface BlockTask {
  seq: number
  /** the start of the block's first line (left over from the previous chunk), if any */
  head: Uint8Array | null
  bytes: Uint8Array
  /** the bytes are a shared buffer of the reader's pool: its id, handed back in the result */
  sharedId?: number
}

export interface InvalidLine {
  /** within the block, from 0; replay.ts turns it into the file's line number */
  line: number
  error: string
}

/** At most this many invalid lines are described per block; the rest are only counted. */
const DESCRIBED = 20

export interface BlockColumns {
  n: number
  ts: Float64Array
  attack: Uint8Array
  /** line within the block, from 0 */
  line: Uint32Array
  /** n × stateless-leaf scores, row-major */
  vals: Float64Array
  /** n × keys, the id of each event's key in this parser's dictionary (-1: no such field) */
  keyIds: Int32Array
  /**
   * Per key, the strings this block added to the parser's dictionary (their ids follow on from
   * the ones before). A parser keeps its dictionary across blocks, so the coordinator resolves
   * each key once, not once per event; it starts over (`dictReset`) past DICT_LIMIT keys.
   */
  dicts: string[][]
  dictReset: boolean
}

export type BlockMessage =
  | {
      type: 'block'
      seq: number
      /** non-blank lines */
      lines: number
      /** lines including blank ones: where the next block's numbering starts */
      rawLines: number
      invalid: InvalidLine[]
      invalidCount: number
      /**
       * Per field the rules read (the stateless leaves' fields, then the rate-limit keys): the
       * valid lines without it, which no part of a rule reading it can block.
       */
      missing: number[]
      columns?: BlockColumns
      /**
       * the block's buffer, handed back (transferred) for the reader to fill again, or the id of
       * the shared buffer it was in (BlockTask.sharedId)
       */
      recycled?: ArrayBuffer | number
      /** tally mode: this block's tally */
      tally?: TallyData
    }
  | { type: 'error'; message: string }

export type BlockParser = (task: BlockTask) => BlockMessage & { type: 'block' }

/** Keys a parser remembers before it starts its dictionary over: keeps memory flat in file size. */
const DICT_LIMIT = 100_000

/** A parser's key dictionary, kept across its blocks. */
interface Dictionary {
  maps: Array<Map<string, number>>
  /**
   * Per key, its strings in id order. A block's new keys are the tail of these, sliced off at its
   * end: pushed onto a fresh array per block instead, each block's first string changed the array's
   * elements kind, and the whole line loop was deoptimized and compiled again (measured: 22
   * compilations of it in one replay, a fifth of the replay's CPU on V8's compiler threads).
   */
  names: string[][]
  size: number
}

/**
 * A parser's working columns, kept across its blocks and grown as needed: a block's columns are
 * copied out of them into one buffer of their exact size. Fresh arrays per block (ten typed
 * arrays, each memory of its own outside the heap) made most of the replay's garbage collection:
 * its time grew with the number of blocks, not of events.
 */
interface Scratch {
  ts: Float64Array
  attack: Uint8Array
  line: Uint32Array
  vals: Float64Array
  keyIds: Int32Array
}

export function blockParser(input: BlockParserInput): BlockParser {
  const parser = new LineParser(input)
  return (task) => parser.parse(task)
}

/**
 * A parser's state across its blocks, and the line loop as a method of this one object. The loop
 * was a closure made per block: V8 optimized each block's closure anew (measured: the loop compiled
 * 13-22 times per replay of 1M events, 12-35 ms each on V8's compiler threads, which with
 * --workers 2 take CPU from the two parsing threads).
 */
class LineParser {
  private readonly pair: CompiledPair
  private readonly mode: BlockParserInput['mode']
  private readonly leaves: StatelessLeaf[]
  private readonly readers: Array<(e: Record<string, unknown>) => unknown>
  private readonly reader: TrafficLineReader
  private readonly dictionary: Dictionary
  private readonly scratch: Scratch
  /** the leaves' scores of one event (tally mode) */
  private readonly vals: Float64Array
  private readonly dictLimit: number
  // The block being parsed:
  private line = 0
  private lines = 0
  private n = 0
  private invalid: InvalidLine[] = []
  private invalidCount = 0
  private missing: number[] = []
  private tally: Tally | null = null

  constructor(input: BlockParserInput) {
    const pair = compilePair(input.control, input.candidate)
    this.pair = pair
    this.mode = input.mode
    // ignoreBOM: a decoder strips a BOM at the start of every piece; only the file's own is dropped (parse).
    const decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true })
    this.leaves = pair.stateless.map((i) => pair.leaves[i]) as StatelessLeaf[]
    this.readers = this.leaves.map((l) => fieldReader(l.field))
    this.reader = new TrafficLineReader(
      this.leaves.map((l) => l.field),
      pair.keys,
      decoder,
    )
    this.dictionary = { maps: pair.keys.map(() => new Map()), names: pair.keys.map(() => []), size: 0 }
    this.scratch = newScratch(input.mode === 'columns' ? 4096 : 0, pair.stateless.length, pair.keys.length)
    this.vals = new Float64Array(pair.leaves.length)
    this.dictLimit = input.dictLimit ?? DICT_LIMIT
  }

  parse(task: BlockTask): BlockMessage & { type: 'block' } {
    const pair = this.pair
    const S = pair.stateless.length
    const K = pair.keys.length
    this.line = 0
    this.lines = 0
    this.n = 0
    this.invalid = []
    this.invalidCount = 0
    this.missing = new Array<number>(S + K).fill(0)
    this.tally = this.mode === 'tally' ? newTally() : null
    const dictionary = this.dictionary
    const dictReset = dictionary.size > this.dictLimit
    if (dictReset) {
      dictionary.maps = pair.keys.map(() => new Map())
      dictionary.names = pair.keys.map(() => [])
      dictionary.size = 0
    }
    const firstNew = dictionary.names.map((a) => a.length)

    const body = Buffer.from(task.bytes.buffer, task.bytes.byteOffset, task.bytes.byteLength)
    // The file's byte-order mark, if any, is not part of its first line.
    let from =
      task.seq === 0 && !task.head && body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf ? 3 : 0
    if (task.head) {
      // the head (left over from the previous chunk) with the rest of its line
      const nl = body.indexOf(0x0a)
      from = nl === -1 ? body.length : nl + 1
      this.readLines(Buffer.concat([task.head, body.subarray(0, from)]), 0)
    }
    this.readLines(body, from)

    // Blocks end with a newline, after which the loop stops: `line` is the count of lines.
    const base = {
      type: 'block' as const,
      seq: task.seq,
      lines: this.lines,
      rawLines: this.line,
      invalid: this.invalid,
      invalidCount: this.invalidCount,
      missing: this.missing,
    }
    if (this.tally) return { ...base, tally: tallyToData(this.tally) }
    const dicts = dictionary.names.map((a, k) => a.slice(firstNew[k]))
    return { ...base, columns: { n: this.n, ...packColumns(this.scratch, this.n, S, K), dicts, dictReset } }
  }

  /** Every line of b from `from`: a block is whole lines, the last one's newline aside. */
  private readLines(b: Buffer, from: number): void {
    const { pair, leaves, readers, reader, tally, vals, missing, invalid, scratch } = this
    const S = pair.stateless.length
    const K = pair.keys.length
    const dictMaps = this.dictionary.maps
    const dictNames = this.dictionary.names
    // columns mode: the parser's scratch columns, grown as needed, copied out at the block's end
    let { ts, attack, line: lineNo, vals: cvals, keyIds } = scratch
    let cap = ts.length
    let n = this.n
    let line = this.line
    let lines = this.lines
    let invalidCount = this.invalidCount
    reader.begin(b, from)
    while (reader.next()) {
      const thisLine = line++
      if (reader.kind === 'blank') continue
      lines++
      if (reader.kind === 'invalid') {
        invalidCount++
        if (invalid.length < DESCRIBED) invalid.push({ line: thisLine, error: reader.error })
        continue
      }
      const e = reader.event
      for (let j = 0; j < S; j++) if (readers[j]!(e) == null) missing[j]!++
      if (tally) {
        for (let j = 0; j < S; j++) vals[pair.stateless[j]!] = leaves[j]!.score(e)
        addEvent(
          tally,
          reader.ts,
          reader.attack,
          pair.control.blocks(vals),
          pair.control.score(vals),
          pair.candidate.blocks(vals),
          pair.candidate.score(vals),
        )
        continue
      }
      if (n === cap) {
        cap = Math.max(4096, cap * 2)
        ts = grow(ts, cap)
        attack = grow(attack, cap)
        lineNo = grow(lineNo, cap)
        cvals = grow(cvals, cap * S)
        keyIds = grow(keyIds, cap * K)
        Object.assign(scratch, { ts, attack, line: lineNo, vals: cvals, keyIds })
      }
      ts[n] = reader.ts
      attack[n] = reader.attack ? 1 : 0
      lineNo[n] = thisLine
      for (let j = 0; j < S; j++) cvals[n * S + j] = leaves[j]!.score(e)
      for (let k = 0; k < K; k++) {
        const v = reader.keys[k]
        if (v === undefined) {
          keyIds[n * K + k] = -1
          missing[S + k]!++
          continue
        }
        const m = dictMaps[k]!
        let id = m.get(v)
        if (id === undefined) {
          id = m.size
          m.set(v, id)
          dictNames[k]!.push(v)
          this.dictionary.size++
        }
        keyIds[n * K + k] = id
      }
      n++
    }
    this.n = n
    this.line = line
    this.lines = lines
    this.invalidCount = invalidCount
  }
}

function newScratch(cap: number, S: number, K: number): Scratch {
  return {
    ts: new Float64Array(cap),
    attack: new Uint8Array(cap),
    line: new Uint32Array(cap),
    vals: new Float64Array(cap * S),
    keyIds: new Int32Array(cap * K),
  }
}

/**
 * The first n rows of the scratch columns, copied into one ArrayBuffer (one allocation, one
 * transfer to the coordinator), widest elements first so that every view is aligned.
 */
function packColumns(s: Scratch, n: number, S: number, K: number): Scratch {
  const buffer = new ArrayBuffer(n * (8 + 8 * S + 4 * K + 4 + 1))
  let at = 0
  const take = <T extends Float64Array | Int32Array | Uint32Array | Uint8Array>(
    from: T,
    count: number,
    make: new (b: ArrayBuffer, at: number, count: number) => T,
  ): T => {
    const view = new make(buffer, at, count)
    view.set(from.subarray(0, count) as never)
    at += count * view.BYTES_PER_ELEMENT
    return view
  }
  return {
    ts: take(s.ts, n, Float64Array),
    vals: take(s.vals, n * S, Float64Array),
    keyIds: take(s.keyIds, n * K, Int32Array),
    line: take(s.line, n, Uint32Array),
    attack: take(s.attack, n, Uint8Array),
  }
}

function grow<T extends Float64Array | Uint8Array | Uint32Array | Int32Array>(a: T, size: number): T {
  const b = new (a.constructor as new (n: number) => T)(size)
  b.set(a)
  return b
}
