/**
 * A file to read as a stream, where the file may be a named pipe (a FIFO, or /dev/stdin when that
 * is a pipe). A pipe is opened as a non-blocking pipe handle, not a file stream: a file stream's
 * read waits in a libuv thread for bytes that may never come, and neither Ctrl-C nor even
 * process.exit gets past it. Opened non-blocking, the open returns at once; the handle still
 * waits for a writer, reads to the writer's end, and closes at once when destroyed.
 */
import fs from 'node:fs'
import net from 'node:net'
import type { Readable } from 'node:stream'

/** `stat`: the caller's own stat of the file (it has checked the file is there and no directory). */
export function openReadStream(
  file: string,
  stat: fs.Stats,
  options: { highWaterMark?: number } = {},
): Readable {
  if (!stat.isFIFO()) return fs.createReadStream(file, options)
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  return new net.Socket({ fd, readable: true, writable: false })
}
