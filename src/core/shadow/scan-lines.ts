/**
 * Traffic lines scanned for a few fields in WebAssembly (asm/scan-lines.ts): the JavaScript side.
 *
 * JSON.parse of every line (an object and a string per field, most never read) was two thirds of
 * a replay's CPU and most of its garbage. The scanner checks each line against JSON's grammar and
 * records where the wanted fields' values are; strings are made only for the values asked for.
 * It is a fast path, not a second parser: a line it is not sure of comes back not scanned, and
 * the caller reads it with JSON.parse. A line it scans gives exactly what JSON.parse would have
 * for the fields it kept (test/scan-lines.test.ts holds it to that on generated and mangled lines).
 */
import path from 'node:path'
import { PACKAGE_ROOT } from '../config/paths.js'
import { instantiate, type WasmGlobal } from '../wasm.js'

/** What a wanted field held (kind(), without the flags). */
export const ABSENT = 0
export const STRING = 1
export const NUMBER = 2
export const NULL = 3
export const TRUE = 4
export const FALSE = 5
const TYPE = 0x0f
const ESCAPED = 0x10
const WIDE = 0x20
const NUMBER_TEXT = 0x40

interface ScanExports {
  memory: { buffer: ArrayBuffer }
  layout(count: number, inCapacity: number, lines: number): number
  scan(from: number, length: number): number
  NAMES: WasmGlobal
  IN: WasmGlobal
  IN_CAPACITY: WasmGlobal
  LINES: WasmGlobal
  KIND: WasmGlobal
  START: WasmGlobal
  END: WasmGlobal
  NUM: WasmGlobal
  LINE_END: WasmGlobal
  OK: WasmGlobal
}

const WASM_FILE = path.join(PACKAGE_ROOT, 'dist/core/shadow/scan-lines.wasm')
/** Rows per scan() call: a block of a megabyte holds about 4,000 traffic lines. */
const LINES = 4096
/** What the input area starts with; a bigger block (a very long line) grows it. */
const FIRST_CAPACITY = (1 << 20) + (64 << 10)

export class LineScanner {
  private memory!: Buffer
  private kinds!: Uint8Array
  private starts!: Int32Array
  private ends!: Int32Array
  private nums!: Float64Array
  private lineEnds!: Int32Array
  private oks!: Uint8Array
  private inAt = 0
  private capacity = 0
  /** the buffer being scanned: its bytes from `base` are in the input area */
  private base = 0
  private length = 0
  /** the next line to scan, relative to base */
  private next = 0
  private readonly count: number

  /** A scanner for these field names (plain ASCII), or null where WebAssembly cannot run it. */
  static create(names: readonly string[], decoder: InstanceType<typeof TextDecoder>): LineScanner | null {
    const exports = instantiate<ScanExports>(WASM_FILE)
    if (exports === null) return null
    const s = new LineScanner(exports, names, decoder)
    return s.layout(FIRST_CAPACITY) ? s : null
  }

  private constructor(
    private readonly exports: ScanExports,
    names: readonly string[],
    private readonly decoder: InstanceType<typeof TextDecoder>,
  ) {
    this.count = names.length
    const encoded = Buffer.concat(
      names.map((n) => {
        if (!/^[\x20-\x7e]{1,255}$/.test(n)) throw new Error(`the scanner takes plain ASCII names: ${n}`)
        return Buffer.concat([Buffer.of(n.length), Buffer.from(n, 'latin1')])
      }),
    )
    if (encoded.length > 4096) throw new Error('too many field names for the scanner')
    Buffer.from(exports.memory.buffer).set(encoded, exports.NAMES.value)
  }

  /** Room for `capacity` bytes of input; the views are made again, as growing memory detaches them. */
  private layout(capacity: number): boolean {
    const x = this.exports
    if (!x.layout(this.count, capacity, LINES)) return false
    const buffer = x.memory.buffer
    const cells = LINES * this.count
    this.memory = Buffer.from(buffer)
    this.kinds = new Uint8Array(buffer, x.KIND.value, cells)
    this.starts = new Int32Array(buffer, x.START.value, cells)
    this.ends = new Int32Array(buffer, x.END.value, cells)
    this.nums = new Float64Array(buffer, x.NUM.value, cells)
    this.lineEnds = new Int32Array(buffer, x.LINE_END.value, LINES)
    this.oks = new Uint8Array(buffer, x.OK.value, LINES)
    this.inAt = x.IN.value
    this.capacity = x.IN_CAPACITY.value
    return true
  }

  /** Takes the lines of b from `from` on (copied in); false if there is not memory for them. */
  load(b: Buffer, from: number): boolean {
    const length = b.length - from
    if (length > this.capacity && !this.layout(length + (64 << 10))) return false
    b.copy(this.memory, this.inAt, from)
    this.base = from
    this.length = length
    this.next = 0
    return true
  }

  /** Scans the next lines: how many (rows 0 .. n-1), 0 when every line is done. */
  scan(): number {
    if (this.next >= this.length) return 0
    const n = this.exports.scan(this.next, this.length)
    this.next = this.lineEnds[n - 1]! + 1
    return n
  }

  /** Where row l's line ends in the loaded buffer: its newline, or the buffer's end. */
  lineEnd(l: number): number {
    return this.base + this.lineEnds[l]!
  }

  /** Whether row l's line was scanned (else it is for JSON.parse). */
  ok(l: number): boolean {
    return this.oks[l] === 1
  }

  kind(l: number, field: number): number {
    return this.kinds[l * this.count + field]! & TYPE
  }

  /** A STRING with neither escapes nor bytes over 0x7f, or a whole NUMBER of up to 15 digits. */
  isPlain(l: number, field: number): boolean {
    return (this.kinds[l * this.count + field]! & (ESCAPED | WIDE | NUMBER_TEXT)) === 0
  }

  /** A NUMBER's value; for field 0 as a plain STRING, the ISO-8601 UTC time in it (else NaN). */
  number(l: number, field: number): number {
    const i = l * this.count + field
    if (this.kinds[i]! & NUMBER_TEXT)
      return Number(this.memory.toString('latin1', this.at(this.starts[i]!), this.at(this.ends[i]!)))
    return this.nums[i]!
  }

  /** A STRING's text, as JSON.parse gives it. */
  text(l: number, field: number): string {
    const i = l * this.count + field
    const kind = this.kinds[i]!
    const start = this.at(this.starts[i]!)
    const end = this.at(this.ends[i]!)
    if ((kind & (ESCAPED | WIDE)) === 0) return this.memory.toString('latin1', start, end)
    // with the quotes: the scanner checked the grammar, so JSON.parse of it cannot fail
    const quoted = this.memory.subarray(start - 1, end + 1)
    const raw = kind & WIDE ? this.decoder.decode(quoted) : quoted.toString('latin1')
    return kind & ESCAPED ? (JSON.parse(raw) as string) : raw.slice(1, -1)
  }

  /** Whether a STRING's text is exactly `ascii`, an ASCII literal. */
  textIs(l: number, field: number, ascii: string): boolean {
    const i = l * this.count + field
    if ((this.kinds[i]! & (ESCAPED | WIDE)) !== 0) return this.text(l, field) === ascii
    const start = this.at(this.starts[i]!)
    if (this.at(this.ends[i]!) - start !== ascii.length) return false
    const m = this.memory
    for (let j = 0; j < ascii.length; j++) if (m[start + j] !== ascii.charCodeAt(j)) return false
    return true
  }

  /** A field's value as JSON.parse gives it, undefined when absent. */
  value(l: number, field: number): unknown {
    switch (this.kind(l, field)) {
      case STRING:
        return this.text(l, field)
      case NUMBER:
        return this.number(l, field)
      case NULL:
        return null
      case TRUE:
        return true
      case FALSE:
        return false
      default:
        return undefined
    }
  }

  private at(offset: number): number {
    return this.inAt + offset
  }
}
