/**
 * pg_dump's custom archive format, as much of it as finding one table's data in the stream that
 * goes to pg_restore, counting every table's rows and compressing the table data
 * (archive-compressor.ts) take (PostgreSQL's pg_backup_archiver.c ReadHead/ReadToc and
 * pg_backup_custom.c): a header, the table of contents, then each table's data as a block,
 * BLK_DATA, its dumpId, then (int length, bytes)* up to a length of 0. An int is a sign byte and
 * intSize bytes, least significant first; a string an int length (-1: null) and its bytes.
 *
 * Written by hand: no library reads this format, and all it takes is walking length prefixes. With
 * pg_dump -Z0 a table's data is its COPY text, one chunk per row, ending with `\.` and two empty
 * lines; in a compressed archive it is one zlib stream cut into chunks.
 */

/** Archive versions whose layout this reads: pg_dump 9.0 to 16. Anything else: not found. */
const MIN_VERSION = [1, 12]
const MAX_VERSION = [1, 15]
export const BLK_DATA = 1
const SECTION_DATA = 3
/** A table of contents larger than this is not a ledger's: give up rather than hold it. */
const MAX_HEADER_BYTES = 64 << 20

export interface TableData {
  /** The COPY statement pg_restore puts before the rows: `COPY schema.table (cols) FROM stdin;`. */
  copyStmt: string
  /** The archive's integer size, for reading the block's length prefixes. */
  intSize: number
  /** The chunks' payloads are one zlib stream (a compressed archive), not the COPY text itself. */
  zlib: boolean
}

/** Thrown by the header reader when the bytes so far end before the table of contents does. */
class NeedMore extends Error {}

/**
 * Where the header's compression field is: after PGDMP, the version (3 bytes), the int and offset
 * sizes and the format byte. Before archive version 1.15 it is an int (the zlib level, 0: none),
 * from 1.15 on one byte (the algorithm, 0: none).
 */
export const COMPRESSION_AT = 11

/**
 * The archive's int whose sign byte is b[at]: the bytes after it, to the end of b, are its
 * magnitude, least significant first.
 */
function archiveInt(b: ArrayLike<number>, at: number): number {
  let v = 0
  for (let k = b.length - 1; k > at; k--) v = v * 256 + b[k]!
  return b[at] !== 0 ? -v : v
}

/** The archive's int whose sign byte is b[at], with `size` bytes of magnitude after it. */
function archiveIntAt(b: Buffer, at: number, size: number): number {
  let v = 0
  for (let k = at + size; k > at; k--) v = v * 256 + b[k]!
  return b[at] !== 0 ? -v : v
}

/** A cursor over the archive's first bytes. */
class HeadReader {
  pos = 0
  intSize = 4
  constructor(private readonly b: Buffer) {}

  byte(): number {
    if (this.pos >= this.b.length) throw new NeedMore()
    return this.b[this.pos++]!
  }
  bytes(n: number): Buffer {
    if (this.pos + n > this.b.length) throw new NeedMore()
    this.pos += n
    return this.b.subarray(this.pos - n, this.pos)
  }
  int(): number {
    return archiveInt(this.bytes(1 + this.intSize), 0)
  }
  str(): string | null {
    const n = this.int()
    return n < 0 ? null : this.bytes(n).toString('utf8')
  }
}

/** Why the archive's layout is not one this reads. */
export class NotReadable extends Error {}

interface TocEntry {
  dumpId: number
  /** `schema.table` */
  name: string
  schema: string
  table: string
  copyStmt: string | null
}

export interface Head {
  /** [major, minor, revision] of the archive format */
  version: number[]
  /** The table data is compressed (zlib before 1.15; any algorithm from 1.15 on). */
  compressed: boolean
  intSize: number
  /** The tables' data entries (TABLE DATA in the data section). */
  entries: TocEntry[]
  /** Where the data blocks begin. */
  dataStart: number
}

/** The header and table of contents, if `b` holds them. */
export function readHead(b: Buffer): Head {
  const r = new HeadReader(b)
  if (r.bytes(5).toString('latin1') !== 'PGDMP') throw new NotReadable('not a custom-format archive')
  const version = [r.byte(), r.byte(), r.byte()]
  const cmp = (v: number[]) => version[0]! - v[0]! || version[1]! - v[1]!
  if (cmp(MIN_VERSION) < 0 || cmp(MAX_VERSION) > 0)
    throw new NotReadable(`archive version ${version.join('.')}`)
  r.intSize = r.byte()
  const offSize = r.byte()
  if (r.intSize < 1 || r.intSize > 6 || offSize < 1 || offSize > 8)
    throw new NotReadable('integer sizes out of range')
  if (r.byte() !== 1) throw new NotReadable('not a custom-format archive')
  // Compression: a level before 1.15, an algorithm after; 0 both times is none.
  if (r.pos !== COMPRESSION_AT) throw new NotReadable('an unexpected header')
  const compression = version[1]! >= 15 ? r.byte() : r.int()
  for (let i = 0; i < 7; i++) r.int() // the creation time
  r.str() // database
  r.str() // server version
  r.str() // pg_dump version
  const count = r.int()
  const entries: TocEntry[] = []
  for (let i = 0; i < count; i++) {
    const dumpId = r.int()
    r.int() // has data
    r.str() // table oid
    r.str() // oid
    const tag = r.str()
    const desc = r.str()
    const section = r.int()
    r.str() // definition
    r.str() // drop statement
    const copyStmt = r.str()
    const namespace = r.str()
    r.str() // tablespace
    if (version[1]! >= 14) r.str() // table access method
    r.str() // owner
    r.str() // "false": with oids
    while (r.str() !== null); // dependencies
    r.byte() // data state
    r.bytes(offSize) // data offset
    if (desc === 'TABLE DATA' && section === SECTION_DATA && namespace !== null && tag !== null) {
      entries.push({ dumpId, name: `${namespace}.${tag}`, schema: namespace, table: tag, copyStmt })
    }
  }
  return { version, compressed: compression !== 0, intSize: r.intSize, entries, dataStart: r.pos }
}

/** Gathers the archive's first chunks until its table of contents is whole. */
export class HeadReceiver {
  private chunks: Buffer[] = []
  private bytes = 0

  /**
   * The head and the bytes after it; null while more is needed; or why it is not readable. `all`:
   * every byte given so far.
   */
  add(chunk: Buffer): { head: Head; rest: Buffer; all: Buffer } | { why: string; all: Buffer } | null {
    this.chunks.push(chunk)
    this.bytes += chunk.length
    const all = this.chunks.length === 1 ? chunk : Buffer.concat(this.chunks)
    try {
      const head = readHead(all)
      this.chunks = []
      return { head, rest: all.subarray(head.dataStart), all }
    } catch (err) {
      if (err instanceof NeedMore && this.bytes <= MAX_HEADER_BYTES) {
        this.chunks = [all]
        return null
      }
      this.chunks = []
      return {
        all,
        why:
          err instanceof NotReadable
            ? err.message
            : err instanceof NeedMore
              ? 'the table of contents is too large'
              : 'an unreadable table of contents',
      }
    }
  }
}

/** What a BlockWalker wants of a block: its bytes as they are, its chunks' payloads, or nothing. */
type Want = 'raw' | 'payload' | 'skip'

/** What a BlockWalker tells of the blocks it walks. */
export interface BlockListener {
  /** A block of this dumpId begins. */
  begin(dumpId: number): Want
  /** 'raw': the block's bytes after its header, length prefixes and the final 0 included. */
  raw?(slice: Buffer): void
  /** 'payload': chunk payload bytes b[start, end). */
  payload?(b: Buffer, start: number, end: number): void
  /** The block ended; false stops the walk. */
  end(): boolean
  /** The bytes are not blocks it reads: nothing more comes. */
  giveUp(why: string): void
}

/**
 * The data blocks after the table of contents, walked as they stream past: for each block it asks
 * what is wanted and hands that on, as slices of the chunks it is given (no copies). A block is
 * BLK_DATA, its dumpId, then (int length, bytes)* up to a length of 0.
 */
export class BlockWalker {
  private at: 'block' | 'length' | 'data' = 'block'
  /** The bytes of the current block header or length prefix read so far. */
  private prefix: number[] = []
  /** Data bytes still to come in the current chunk. */
  private left = 0
  private want: Want = 'skip'
  stopped = false

  /** `inBlock`: the bytes start after a block's header, and this is what is wanted of it. */
  constructor(
    private readonly intSize: number,
    private readonly on: BlockListener,
    inBlock?: Want,
  ) {
    if (inBlock) {
      this.at = 'length'
      this.want = inBlock
    }
  }

  write(b: Buffer): void {
    const width = 1 + this.intSize
    let i = 0
    // Where the raw bytes in this chunk begin.
    let from = this.want === 'raw' ? 0 : -1
    while (i < b.length && !this.stopped) {
      if (this.at === 'data') {
        const n = Math.min(this.left, b.length - i)
        if (this.want === 'payload') this.on.payload!(b, i, i + n)
        i += n
        this.left -= n
        if (this.left === 0) this.at = 'length'
        continue
      }
      // A block header (type byte, dumpId) or a length prefix, perhaps split between chunks.
      const need = this.at === 'block' ? 1 + width : width
      let value: number
      let type: number
      if (this.prefix.length === 0 && i + need <= b.length) {
        // All of it in this chunk (nearly always): read in place, one per row of every table.
        type = b[i]!
        value = archiveIntAt(b, i + need - width, this.intSize)
        i += need
      } else {
        while (this.prefix.length < need && i < b.length) this.prefix.push(b[i++]!)
        if (this.prefix.length < need) break
        type = this.prefix[0]!
        value = archiveInt(this.prefix, need - width)
        this.prefix = []
      }
      if (this.at === 'block') {
        if (type !== BLK_DATA) return this.stop('large objects before the table data')
        this.at = 'length'
        this.want = this.on.begin(value)
        if (this.want === 'raw') from = i
        continue
      }
      if (value < 0) return this.stop('a negative chunk length')
      if (value > 0) {
        this.left = value
        this.at = 'data'
        continue
      }
      this.at = 'block'
      if (this.want === 'raw') this.on.raw!(b.subarray(from, i))
      this.want = 'skip'
      if (!this.on.end()) this.stopped = true
    }
    if (this.want === 'raw' && from < b.length) this.on.raw!(b.subarray(from, b.length))
  }

  private stop(why: string): void {
    this.stopped = true
    this.on.giveUp(why)
  }
}

/**
 * A whole archive as it streams past: its table of contents (HeadReceiver), which `toc` sees
 * first and may refuse (a reason: nothing more is read), then its data blocks (BlockWalker).
 */
class ArchiveWalker {
  private readonly head = new HeadReceiver()
  private blocks: BlockWalker | null = null
  private stopped = false

  constructor(private readonly on: BlockListener & { toc(head: Head): string | null }) {}

  /** Nothing more is read: the walk was stopped or given up. */
  get done(): boolean {
    return this.stopped || this.blocks?.stopped === true
  }

  /** The table of contents has been read. */
  get started(): boolean {
    return this.blocks !== null
  }

  write(chunk: Buffer): void {
    if (this.done) return
    if (this.blocks === null) {
      const read = this.head.add(chunk)
      if (read === null) return
      if ('why' in read) return this.stop(read.why)
      const refused = this.on.toc(read.head)
      if (refused !== null) return this.stop(refused)
      this.blocks = new BlockWalker(read.head.intSize, this.on)
      chunk = read.rest
    }
    this.blocks.write(chunk)
  }

  /** Gives up with `why`, unless it is done already. */
  stop(why: string): void {
    if (this.done) return
    this.stopped = true
    this.on.giveUp(why)
  }
}

/**
 * Watches the archive as it streams past and hands on the bytes of one table's data block: its
 * chunks with their length prefixes, up to and with the 0 that ends them, as slices of the chunks
 * it is given (no copies). It only reads; what it is given goes on unchanged. Once the block has
 * ended, or the archive is not one it reads, it ignores the rest.
 */
export class TableDataFinder {
  private readonly walker: ArchiveWalker

  constructor(
    private readonly schema: string,
    private readonly name: string,
    sink: {
      /** The table's entry in the table of contents, before any of its bytes. */
      found(table: TableData): void
      bytes(slice: Buffer): void
      end(): void
      /** The archive is not one it reads, or has no data for the table: nothing more comes. */
      none(why: string): void
    },
  ) {
    let dumpId = -1
    let inTable = false
    this.walker = new ArchiveWalker({
      toc: (head) => {
        const mine = head.entries.filter((e) => e.schema === schema && e.table === name)
        if (mine.length === 0) return `no data for ${schema}.${name} in the archive`
        const entry = mine[0]!
        if (mine.length > 1 || !entry.copyStmt) return `${schema}.${name} has no single COPY`
        // From 1.15 on the algorithm may be lz4 or zstd, which this does not read.
        if (head.compressed && head.version[1]! >= 15) return 'table data compressed by pg_dump 16 or later'
        dumpId = entry.dumpId
        sink.found({ copyStmt: entry.copyStmt, intSize: head.intSize, zlib: head.compressed })
        return null
      },
      begin: (id) => {
        inTable = id === dumpId
        return inTable ? 'raw' : 'skip'
      },
      raw: (slice) => sink.bytes(slice),
      end: () => {
        if (!inTable) return true
        sink.end()
        return false
      },
      giveUp: (why) => sink.none(why),
    })
  }

  get done(): boolean {
    return this.walker.done
  }

  write(chunk: Buffer): void {
    this.walker.write(chunk)
  }

  /** The stream ended: if the block did not, the table's data is incomplete. */
  end(): void {
    this.walker.stop(`the archive ends before the data of ${this.schema}.${this.name}`)
  }
}

/** `\.`, then three line ends. */
const ENDING = [0x5c, 0x2e, 0x0a, 0x0a, 0x0a]

/**
 * Counts every table's rows in the archive as it streams past: the lines of each table's COPY
 * text, less what pg_dump ends it with (`\.` and two empty lines). restore compares them with the
 * manifest instead of counting the restored tables again: pg_restore loads a table's lines all or
 * none (one transaction, stopping at the first error), so once it has committed they are the
 * table's rows. Any other ending, or an archive it does not read, and it counts nothing: the
 * caller then counts in the database.
 */
export class RowCounter {
  private readonly names = new Map<number, string>()
  private readonly counts: Record<string, number> = {}
  /** The tables whose block has ended: all of them, or the archive was cut short. */
  private readonly seen = new Set<string>()
  private current: string | null = null
  /** The last bytes of the current block's text, to check its ending. */
  private tail = [0, 0, 0, 0, 0]
  private why: string | null = null
  private readonly walker = new ArchiveWalker({
    toc: (head) => {
      // Counting the rows of compressed data would mean decompressing it all a second time.
      if (head.compressed) return 'the table data is compressed'
      for (const e of head.entries) {
        this.names.set(e.dumpId, e.name)
        this.counts[e.name] = 0
      }
      return null
    },
    begin: (dumpId) => {
      this.current = this.names.get(dumpId) ?? null
      this.tail = [0, 0, 0, 0, 0]
      return this.current === null ? 'skip' : 'payload'
    },
    payload: (b, start, end) => this.lines(b, start, end),
    end: () => {
      // A block of no table it knows (the table of contents did not list it): skipped.
      if (this.current === null) return true
      const name = this.current
      this.current = null
      this.seen.add(name)
      // pg_dump ends the text with `\.\n\n\n`: three line ends that are no row.
      if (!ENDING.every((c, i) => this.tail[i] === c)) {
        this.why = `the data of ${name} does not end as pg_dump ends it`
        return false
      }
      this.counts[name]! -= 3
      return true
    },
    giveUp: (why) => (this.why = why),
  })

  /** Never throws: counting is a shortcut for restore, which must not fail because of it. */
  write(chunk: Buffer): void {
    try {
      this.walker.write(chunk)
    } catch (err) {
      this.walker.stop(`unreadable data (${(err as Error).message})`)
    }
  }

  /**
   * Each table's rows (`schema.table`), once the whole archive has gone past; null when the
   * archive is not one it reads, or ended early (whyNot says which).
   */
  rows(): Record<string, number> | null {
    return this.whyNot() === null ? this.counts : null
  }

  whyNot(): string | null {
    if (this.why !== null) return this.why
    if (!this.walker.started) return 'the archive ended in its table of contents'
    const missing = Object.keys(this.counts).filter((t) => !this.seen.has(t))
    return missing.length > 0 ? `the archive ended before the data of ${missing[0]}` : null
  }

  private lines(b: Buffer, start: number, end: number): void {
    let n = 0
    for (let p = b.indexOf(0x0a, start); p !== -1 && p < end; p = b.indexOf(0x0a, p + 1)) n++
    this.counts[this.current!]! += n
    const t = this.tail
    if (end - start >= t.length) for (let k = 0; k < t.length; k++) t[k] = b[end - t.length + k]!
    else {
      for (let i = start; i < end; i++) {
        t.copyWithin(0, 1)
        t[t.length - 1] = b[i]!
      }
    }
  }
}

/**
 * The payloads of a data block's chunks, from its bytes as TableDataFinder hands them on, in pieces
 * of any size: calls `data` with each payload (or part of one), returns true once the block's 0
 * length has come. Throws NotReadable on bytes that are not chunks.
 */
export class ChunkReader {
  private ended = false
  private readonly walker: BlockWalker

  constructor(intSize: number, data: (slice: Buffer) => void) {
    this.walker = new BlockWalker(
      intSize,
      {
        begin: () => 'skip', // never: it ends with its one block
        payload: (b, start, end) => data(b.subarray(start, end)),
        end: () => {
          this.ended = true
          return false
        },
        giveUp: (why) => {
          throw new NotReadable(why)
        },
      },
      'payload',
    )
  }

  write(b: Buffer): boolean {
    this.walker.write(b)
    return this.ended
  }
}
