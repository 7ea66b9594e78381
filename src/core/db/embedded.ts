/**
 * The embedded database: PGlite with its data under $SHIELDX_HOME/data, served on a private unix
 * socket by pglite-socket so that the rest of shieldx talks to it through the same `pg` driver as
 * to a server (one SQL path, not two).
 *
 * PGlite is a single backend in this process, so two shieldx processes must never open the same
 * data directory. A lock directory beside it (`data.lock/pid`) guards that; a lock whose pid is
 * dead is stale and taken over. Hand-written because we want the holder's pid in the message and
 * liveness by pid, not by mtime as proper-lockfile does.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ConflictError, OperationError } from '../errors.js'

export interface EmbeddedServer {
  /** Directory holding the socket `.s.PGSQL.5432`: pass as `host` to pg. */
  socketDir: string
  port: number
  /** True when this start ran initdb on an empty home. */
  created: boolean
  /** The PGlite instance itself: PGlite's own pg_dump (backups) runs on it, not over the socket. */
  pglite: import('@electric-sql/pglite').PGlite
  stop(): Promise<void>
}

const SOCKET_PORT = 5432

/** `dataDir` null: a scratch database in memory (a backup's test restore), no lock, gone on stop. */
export async function startEmbedded(dataDir: string | null, timeoutMs: number): Promise<EmbeddedServer> {
  if (dataDir) fs.mkdirSync(path.dirname(dataDir), { recursive: true, mode: 0o700 })
  const releaseLock = dataDir ? await acquireDirLock(`${dataDir}.lock`, timeoutMs, dataDir) : () => {}
  try {
    // Loaded here, not at the top: PGlite's WASM is ~10 MB and most commands on a server never need it.
    const { PGlite } = await import('@electric-sql/pglite')
    const { PGLiteSocketServer } = await import('@electric-sql/pglite-socket')

    const created = dataDir === null || !fs.existsSync(dataDir)
    if (dataDir && created) await initDataDir(dataDir, PGlite)

    const db = dataDir ? await PGlite.create({ dataDir }) : await PGlite.create()
    const socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'shieldx-pg-'))
    const server = new PGLiteSocketServer({
      db,
      path: path.join(socketDir, `.s.PGSQL.${SOCKET_PORT}`),
      // Our pool holds one connection. pg's pool destroys a connection after a failed query and
      // opens the next one at once; with a limit of 1 the server refuses that new connection
      // while it is still closing the old one (EPIPE on the next query). The server's query queue
      // keeps any transaction to the connection that began it and rolls it back on disconnect.
      maxConnections: 2,
    })
    await server.start()

    let stopped = false
    return {
      socketDir,
      port: SOCKET_PORT,
      created,
      pglite: db,
      async stop() {
        if (stopped) return
        stopped = true
        try {
          await server.stop()
          await db.close()
        } finally {
          fs.rmSync(socketDir, { recursive: true, force: true })
          releaseLock()
        }
      },
    }
  } catch (err) {
    releaseLock()
    if (err instanceof ConflictError) throw err
    throw new OperationError(`Cannot start the embedded database in ${dataDir}: ${(err as Error).message}`, {
      cause: err,
    })
  }
}

/**
 * initdb into a scratch directory and rename it into place, so a start killed halfway leaves
 * no half-made data directory that would look like a real one next time.
 */
async function initDataDir(
  dataDir: string,
  PGlite: typeof import('@electric-sql/pglite').PGlite,
): Promise<void> {
  const scratch = `${dataDir}.init-${process.pid}`
  fs.rmSync(scratch, { recursive: true, force: true })
  const db = await PGlite.create({ dataDir: scratch })
  await db.close()
  fs.renameSync(scratch, dataDir)
}

/** A lock directory without a pid file (left by an old shieldx, or made by hand) is stale after this. */
const NO_PID_STALE_MS = 5000
/** A takeover lock older than this was left by a process that died during a takeover. */
const TAKEOVER_STALE_MS = 10_000

/**
 * Take the lock directory, waiting up to timeoutMs for a live holder; a holder that died is
 * taken over. Every step that changes `lockDir` is one rename, so there is no moment in which
 * the directory exists without its pid file, and nobody ever deletes `lockDir` in place:
 * - create: make `lockDir.new-*` with the pid file inside, rename it to `lockDir` (fails if
 *   `lockDir` exists, because a lock made this way is never empty);
 * - take over or release: rename `lockDir` to a unique `lockDir.stale-*`, then delete that.
 */
export async function acquireDirLock(lockDir: string, timeoutMs: number, what: string): Promise<() => void> {
  const deadline = Date.now() + timeoutMs
  const pidFile = path.join(lockDir, 'pid')
  // The pid, and a nonce so that two locks by the same pid are still told apart.
  const token = `${process.pid}\n${randomBytes(8).toString('hex')}\n`
  for (;;) {
    if (tryCreateLock(lockDir, token)) {
      sweepLitter(lockDir)
      let released = false
      return () => {
        if (released) return
        released = true
        if (readText(pidFile) === token) removeLockDir(lockDir)
      }
    }
    const seen = readText(pidFile)
    const holder = parsePid(seen)
    const stale = holder !== null ? !isAlive(holder) : ageMs(lockDir) > NO_PID_STALE_MS
    if (stale) {
      if (!takeOverStale(lockDir, seen)) await sleep(20)
      continue
    }
    if (Date.now() >= deadline) {
      throw new ConflictError(
        `The embedded database ${what} is in use by another shieldx process${holder ? ` (pid ${holder})` : ''}.`,
        { hint: 'Wait for it to finish, or raise --timeout to wait longer.', code: 'EMBEDDED_LOCKED' },
      )
    }
    await sleep(100)
  }
}

function tryCreateLock(lockDir: string, token: string): boolean {
  // rename() would silently replace an *empty* directory, such as one made by hand or by an
  // older shieldx that has not written its pid yet: leave any existing lock to the stale check.
  if (fs.existsSync(lockDir)) return false
  const tmp = `${lockDir}.new-${process.pid}-${randomBytes(4).toString('hex')}`
  fs.mkdirSync(tmp, { mode: 0o700 })
  try {
    fs.writeFileSync(path.join(tmp, 'pid'), token)
    fs.renameSync(tmp, lockDir)
    return true
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOTEMPTY' || code === 'EEXIST') return false
    throw err
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true }) // gone already after a successful rename
  }
}

/**
 * Remove a lock judged stale, whose pid file read `seen`. Two processes can judge the same lock
 * stale, and a third can make a fresh lock in between: moving a lock away to look at it, then
 * putting it back, loses that race (the fresh lock cannot go back, and its holder runs on
 * unprotected). So takeovers are serialised by a second, short-lived lock (`lockDir.takeover`,
 * made with mkdir, which only one process can win): under it the pid file is read again, and the
 * lock is removed only if it is still the one judged stale. Nobody else removes a lock, so what
 * is read under the takeover lock cannot change before the removal. Exported for tests.
 */
export function takeOverStale(lockDir: string, seen: string | null): boolean {
  const mutex = `${lockDir}.takeover`
  try {
    fs.mkdirSync(mutex, { mode: 0o700 })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    // Another process is taking over; the caller looks again. A takeover lock left by a process
    // killed in the middle of one (it holds it for microseconds) is cleared once it is old.
    if (ageMs(mutex) > TAKEOVER_STALE_MS) fs.rmSync(mutex, { recursive: true, force: true })
    return false
  }
  try {
    const now = readText(path.join(lockDir, 'pid'))
    const same = now === seen && (seen !== null || ageMs(lockDir) > NO_PID_STALE_MS)
    if (same && fs.existsSync(lockDir)) removeLockDir(lockDir)
    return true
  } finally {
    fs.rmSync(mutex, { recursive: true, force: true })
  }
}

function removeLockDir(lockDir: string): void {
  const grave = `${lockDir}.stale-${process.pid}-${randomBytes(4).toString('hex')}`
  try {
    fs.renameSync(lockDir, grave)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  fs.rmSync(grave, { recursive: true, force: true })
}

/** `lockDir.new-PID-*` and `lockDir.stale-PID-*` left by a process killed halfway. */
function sweepLitter(lockDir: string): void {
  const dir = path.dirname(lockDir)
  const litter = new RegExp(`^${escapeRegExp(path.basename(lockDir))}\\.(?:new|stale)-(\\d+)-[0-9a-f]+$`)
  try {
    for (const name of fs.readdirSync(dir)) {
      const m = litter.exec(name)
      if (m && !isAlive(Number(m[1]))) fs.rmSync(path.join(dir, name), { recursive: true, force: true })
    }
  } catch {
    // tidiness only
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

function readText(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch {
    return null
  }
}

/** The pid on the first line of a lock's pid file. */
function parsePid(text: string | null): number | null {
  if (text === null) return null
  const pid = Number(text.split('\n', 1)[0]!.trim())
  return Number.isInteger(pid) && pid > 0 ? pid : null
}

/** Is a process with this pid running on this machine (EPERM: yes, but not ours)? */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function ageMs(p: string): number {
  try {
    return Date.now() - fs.statSync(p).mtimeMs
  } catch {
    return 0
  }
}
