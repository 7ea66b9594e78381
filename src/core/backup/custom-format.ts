/**
 * pg_dump's custom archive format, as much of it as finding one table's data in the stream that
 * goes to pg_restore takes (PostgreSQL's pg_backup_archiver.c ReadHead/ReadToc and
 * pg_backup_custom.c): a header, the table of contents, then each table's data as a block,
 * BLK_DATA, its dumpId, then (int length, bytes)* up to a length of 0. An int is a sign byte and
 * intSize bytes, least significant first; a string an int length (-1: null) and its bytes.
 *
 * Written by hand: no library reads this format, and all it takes is walking length prefixes. With
 * pg_dump -Z0 a table's data is its COPY text, one chunk per row, ending with `\.`.
 */

/** Archive versions whose layout this reads: pg_dump 9.0 to 16. Anything else: not found. */
const MIN_VERSION = [1, 12]
const MAX_VERSION = [1, 15]
const BLK_DATA = 1
const SECTION_DATA = 3
/** A table of contents larger than this is not a ledger's: give up rather than hold it. */
const MAX_HEADER_BYTES = 64 << 20

export interface TableData {
  /** The COPY statement pg_restore puts before the rows: `COPY schema.table (cols) FROM stdin;`. */
  copyStmt: string
  /** The archive's integer size, for reading the block's length prefixes. */
  intSize: number
}

/** Thrown by the header reader when the bytes so far end before the table of contents does. */
class NeedMore extends Error {}

/**
 * The archive's int whose sign byte is b[at]: the bytes after it, to the end of b, are its
 * magnitude, least significant first.
 */
function archiveInt(b: ArrayLike<number>, at: number): number {
  let v = 0
  for (let k = b.length - 1; k > at; k--) v = v * 256 + b[k]!
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

interface Toc {
  dumpId: number
  table: TableData
  /** Where the data blocks begin. */
  dataStart: number
}

/** The header and table of contents, if `b` holds them; the entry for `schema.table`'s data. */
function readToc(b: Buffer, schema: string, table: string): Toc {
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
  const compression = version[1]! >= 15 ? r.byte() : r.int()
  if (compression !== 0) throw new NotReadable('a compressed archive')
  for (let i = 0; i < 7; i++) r.int() // the creation time
  r.str() // database
  r.str() // server version
  r.str() // pg_dump version
  const count = r.int()
  let found: Omit<Toc, 'dataStart'> | null = null
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
    if (desc === 'TABLE DATA' && section === SECTION_DATA && namespace === schema && tag === table) {
      if (found || !copyStmt) throw new NotReadable(`${schema}.${table} has no single COPY`)
      found = { dumpId, table: { copyStmt, intSize: r.intSize } }
    }
  }
  if (!found) throw new NotReadable(`no data for ${schema}.${table} in the archive`)
  return { ...found, dataStart: r.pos }
}

/**
 * Watches the archive as it streams past and hands on the bytes of one table's data block: its
 * chunks with their length prefixes, up to and with the 0 that ends them, as slices of the chunks
 * it is given (no copies). It only reads; what it is given goes on unchanged. Once the block has
 * ended, or the archive is not one it reads, it ignores the rest.
 */
export class TableDataFinder {
  private state: 'toc' | 'blocks' | 'done' = 'toc'
  private head: Buffer[] = []
  private headBytes = 0
  private dumpId = -1
  private intSize = 4
  /** In the blocks: what the bytes being read are. */
  private at: 'block' | 'length' | 'data' = 'block'
  /** The bytes of the current block header or length prefix read so far. */
  private prefix: number[] = []
  /** Data bytes still to skip. */
  private skip = 0
  private inTable = false

  constructor(
    private readonly schema: string,
    private readonly name: string,
    private readonly sink: {
      /** The table's entry in the table of contents, before any of its bytes. */
      found(table: TableData): void
      bytes(slice: Buffer): void
      end(): void
      /** The archive is not one it reads, or has no data for the table: nothing more comes. */
      none(why: string): void
    },
  ) {}

  get done(): boolean {
    return this.state === 'done'
  }

  write(chunk: Buffer): void {
    if (this.state === 'done') return
    if (this.state === 'toc') {
      this.head.push(chunk)
      this.headBytes += chunk.length
      const all = this.head.length === 1 ? chunk : Buffer.concat(this.head)
      let toc: Toc
      try {
        toc = readToc(all, this.schema, this.name)
      } catch (err) {
        if (err instanceof NeedMore && this.headBytes <= MAX_HEADER_BYTES) {
          this.head = [all]
          return
        }
        this.head = []
        return this.giveUp(
          err instanceof NotReadable
            ? err.message
            : err instanceof NeedMore
              ? 'the table of contents is too large'
              : 'an unreadable table of contents',
        )
      }
      this.head = []
      this.dumpId = toc.dumpId
      this.intSize = toc.table.intSize
      this.state = 'blocks'
      this.sink.found(toc.table)
      chunk = all.subarray(toc.dataStart)
    }
    this.blocks(chunk)
  }

  /** The stream ended: if the block did not, the table's data is incomplete. */
  end(): void {
    if (this.state !== 'done') this.giveUp(`the archive ends before the data of ${this.schema}.${this.name}`)
  }

  private giveUp(why: string): void {
    this.state = 'done'
    this.sink.none(why)
  }

  private blocks(b: Buffer): void {
    const width = 1 + this.intSize
    let i = 0
    // Where the table's bytes in this chunk begin.
    let from = this.inTable ? 0 : -1
    while (i < b.length && this.state === 'blocks') {
      if (this.at === 'data') {
        const n = Math.min(this.skip, b.length - i)
        i += n
        this.skip -= n
        if (this.skip === 0) this.at = 'length'
        continue
      }
      // A block header (type byte, dumpId) or a length prefix, perhaps split between chunks.
      const need = this.at === 'block' ? 1 + width : width
      while (this.prefix.length < need && i < b.length) this.prefix.push(b[i++]!)
      if (this.prefix.length < need) break
      const value = archiveInt(this.prefix, this.at === 'block' ? 1 : 0)
      if (this.at === 'block') {
        if (this.prefix[0] !== BLK_DATA) return this.giveUp('large objects before the table data')
        this.prefix = []
        this.at = 'length'
        if (value === this.dumpId) {
          this.inTable = true
          from = i
        }
        continue
      }
      this.prefix = []
      if (value < 0) return this.giveUp('a negative chunk length')
      if (value > 0) {
        this.skip = value
        this.at = 'data'
        continue
      }
      this.at = 'block'
      if (this.inTable) {
        this.sink.bytes(b.subarray(from, i))
        this.inTable = false
        this.state = 'done'
        this.sink.end()
        return
      }
    }
    if (this.inTable && from < b.length) this.sink.bytes(b.subarray(from, b.length))
  }
}

/**
 * The payloads of a data block's chunks, from its bytes as TableDataFinder hands them on, in pieces
 * of any size: calls `data` with each payload (or part of one), returns true once the block's 0
 * length has come.
 */
export class ChunkReader {
  private prefix: number[] = []
  private left = 0
  private ended = false

  constructor(
    private readonly intSize: number,
    private readonly data: (slice: Buffer) => void,
  ) {}

  write(b: Buffer): boolean {
    let i = 0
    while (i < b.length && !this.ended) {
      if (this.left > 0) {
        const n = Math.min(this.left, b.length - i)
        this.data(b.subarray(i, i + n))
        i += n
        this.left -= n
        continue
      }
      while (this.prefix.length < 1 + this.intSize && i < b.length) this.prefix.push(b[i++]!)
      if (this.prefix.length < 1 + this.intSize) break
      if (this.prefix[0] !== 0) throw new NotReadable('a negative chunk length')
      const v = archiveInt(this.prefix, 0)
      this.prefix = []
      if (v === 0) this.ended = true
      this.left = v
    }
    return this.ended
  }
}
