/**
 * A directory the user named (--dir, BACKUP_DIR), made where missing, one level at a time.
 *
 * Not fs.mkdirSync's recursive mode: under /proc it loops for ever (each level reports ENOENT, its
 * parent EEXIST, and it starts again), and its errors (EEXIST, ENOTDIR, EACCES) are not sentences.
 */
import fs from 'node:fs'
import path from 'node:path'
import { UsageError } from '../errors.js'

const WHY: Record<string, string> = {
  EEXIST: 'it is a file, not a directory',
  ENOTDIR: 'a part of the path is a file, not a directory',
  EACCES: 'permission denied',
  EPERM: 'not permitted there',
  EROFS: 'the file system is read-only',
  ENOENT: 'a directory cannot be made there',
  ENOSPC: 'the disk is full',
}

export function makeDir(dir: string, what: string, mode = 0o700): void {
  const missing: string[] = []
  let at = path.resolve(dir)
  for (;;) {
    let st: fs.Stats | null = null
    try {
      st = fs.statSync(at)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'ENOENT') throw refusal(what, dir, code)
    }
    if (st) {
      if (!st.isDirectory()) throw refusal(what, dir, missing.length === 0 ? 'EEXIST' : 'ENOTDIR')
      break
    }
    missing.unshift(at)
    const parent = path.dirname(at)
    if (parent === at) break
    at = parent
  }
  for (const d of missing) {
    try {
      fs.mkdirSync(d, { mode })
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'EEXIST' && fs.statSync(d).isDirectory()) continue // made meanwhile by someone else
      throw refusal(what, dir, code)
    }
  }
}

function refusal(what: string, dir: string, code: string | undefined): UsageError {
  return new UsageError(`${what}: cannot use ${dir} as a directory (${(code && WHY[code]) ?? code}).`, {
    code: 'BAD_DIRECTORY',
  })
}
