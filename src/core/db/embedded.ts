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
  stop(): Promise<void>
}

const SOCKET_PORT = 5432

export async function startEmbedded(dataDir: string, timeoutMs: number): Promise<EmbeddedServer> {
  fs.mkdirSync(path.dirname(dataDir), { recursive: true, mode: 0o700 })
  const releaseLock = await acquireDirLock(`${dataDir}.lock`, timeoutMs, dataDir)
  try {
    // Loaded here, not at the top: PGlite's WASM is ~10 MB and most commands on a server never need it.
    const { PGlite } = await import('@electric-sql/pglite')
    const { PGLiteSocketServer } = await import('@electric-sql/pglite-socket')

    const created = !fs.existsSync(dataDir)
    if (created) await initDataDir(dataDir, PGlite)

    const db = await PGlite.create({ dataDir })
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

async function acquireDirLock(lockDir: string, timeoutMs: number, what: string): Promise<() => void> {
  const deadline = Date.now() + timeoutMs
  const pidFile = path.join(lockDir, 'pid')
  for (;;) {
    try {
      fs.mkdirSync(lockDir, { mode: 0o700 })
      fs.writeFileSync(pidFile, String(process.pid))
      let released = false
      return () => {
        if (released) return
        released = true
        fs.rmSync(lockDir, { recursive: true, force: true })
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    const holder = readPid(pidFile)
    if (holder !== null && !isAlive(holder)) {
      fs.rmSync(lockDir, { recursive: true, force: true })
      continue
    }
    if (holder === null) {
      // The holder made the directory but has not written its pid yet, or died in between.
      const age = ageMs(lockDir)
      if (age > 5000) {
        fs.rmSync(lockDir, { recursive: true, force: true })
        continue
      }
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

function readPid(file: string): number | null {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}

function isAlive(pid: number): boolean {
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
