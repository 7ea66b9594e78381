/**
 * Finding pg_dump / pg_restore / psql, checking they can talk to the server, and handing them a
 * connection without putting the password on their command line (where `ps` would show it).
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { urlUserinfo } from '../config/redact.js'
import { OperationError } from '../errors.js'

const run = promisify(execFile)

export type PgTool = 'pg_dump' | 'pg_restore' | 'psql'

export interface ToolInfo {
  path: string
  major: number
  version: string
}

/**
 * The binary to use for a server of `serverMajor`: $SHIELDX_PG_BIN if set, else Debian's
 * /usr/lib/postgresql/<N>/bin for the server's version or the newest above it, else PATH.
 * pg_dump refuses servers newer than itself, so an older one is an error that says what to install.
 */
export async function findTool(tool: PgTool, serverMajor: number, env: NodeJS.ProcessEnv): Promise<ToolInfo> {
  const candidates = versioned(tool, serverMajor, env)
  if (!env.SHIELDX_PG_BIN) candidates.push(tool) // PATH
  let newest: ToolInfo | null = null
  for (const candidate of candidates) {
    const info = await probe(candidate)
    if (!info) continue
    if (info.major >= serverMajor) return info
    if (!newest || info.major > newest.major) newest = info
  }
  if (newest) {
    throw new OperationError(
      `${tool} ${newest.version} (${newest.path}) is older than the PostgreSQL ${serverMajor} server and cannot ${tool === 'pg_dump' ? 'dump' : 'restore to'} it.`,
      {
        code: 'PG_TOOL_TOO_OLD',
        hint: `Install postgresql-client-${serverMajor} (or newer), or point SHIELDX_PG_BIN at its bin directory.`,
      },
    )
  }
  throw new OperationError(
    `${tool} was not found${env.SHIELDX_PG_BIN ? ` in SHIELDX_PG_BIN (${env.SHIELDX_PG_BIN})` : ' on PATH'}.`,
    {
      code: 'PG_TOOL_MISSING',
      hint: `Install postgresql-client-${serverMajor} (Debian: apt-get install postgresql-client-${serverMajor}).`,
    },
  )
}

/**
 * Starts asking every installed `tool` for its version now, before the server's version is known,
 * so that the findTool that follows finds its answer waiting: the `--version` run overlaps the
 * connection to the server instead of coming after it (it is on the way to every restore).
 */
export function warmTool(tool: PgTool, env: NodeJS.ProcessEnv): void {
  for (const candidate of versioned(tool, 0, env)) void probe(candidate)
}

/** $SHIELDX_PG_BIN's tool, or Debian's /usr/lib/postgresql/<N>/bin ones for N >= serverMajor, oldest first. */
function versioned(tool: PgTool, serverMajor: number, env: NodeJS.ProcessEnv): string[] {
  if (env.SHIELDX_PG_BIN) return [path.join(env.SHIELDX_PG_BIN, tool)]
  const root = '/usr/lib/postgresql'
  return safeReaddir(root)
    .map(Number)
    .filter((n) => Number.isInteger(n) && n >= serverMajor)
    .sort((a, b) => a - b)
    .map((m) => path.join(root, String(m), 'bin', tool))
}

/** A binary's version, asked once per process (a failed probe is asked again next time). */
function probe(bin: string): Promise<ToolInfo | null> {
  let known = probed.get(bin)
  if (!known) {
    known = probeOnce(bin)
    probed.set(bin, known)
    void known.then((info) => {
      if (!info) probed.delete(bin)
    })
  }
  return known
}
const probed = new Map<string, Promise<ToolInfo | null>>()

async function probeOnce(bin: string): Promise<ToolInfo | null> {
  try {
    const { stdout } = await run(bin, ['--version'], { timeout: 10_000 })
    const m = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?/.exec(stdout)
    if (!m) return null
    return { path: bin, major: Number(m[1]), version: `${m[1]}${m[2] ? `.${m[2]}` : ''}` }
  } catch {
    return null
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return fs.readdirSync(dir)
  } catch {
    return []
  }
}

/**
 * A connection for a libpq tool: the URL without its password for -d, and the password in
 * PGPASSWORD. Other PG* variables of ours are cleared so they cannot redirect the tool.
 */
export function toolConnection(
  url: string,
  env: NodeJS.ProcessEnv,
): { dbname: string; env: NodeJS.ProcessEnv } {
  const info = urlUserinfo(url)
  const clean: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(env)) if (!/^PG/.test(k)) clean[k] = v
  if (!info) return { dbname: url, env: clean }
  // rest starts at the '@' that ends the userinfo
  const dbname = info.prefix + (info.user ? info.user + info.rest : info.rest.slice(1))
  if (info.password !== null) clean.PGPASSWORD = safeDecode(info.password)
  return { dbname, env: clean }
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    return s
  }
}
