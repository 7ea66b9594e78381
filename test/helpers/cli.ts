/**
 * Running shieldx in tests: in-process with captured stdout/stderr and a switchable TTY (fast,
 * and it exercises the same run() and error boundary as the binary), or as the built
 * bin/shieldx.js in a child process (end to end: signals, exit codes, startup).
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { PassThrough } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { afterAll } from 'vitest'
import { run } from '../../src/cli.js'
import type { Io } from '../../src/ui/io.js'
import { cleanEnv } from './env.js'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
export const BIN = path.join(ROOT, 'bin/shieldx.js')

export interface CliResult {
  code: number
  stdout: string
  stderr: string
}

export interface InProcessOptions {
  env?: NodeJS.ProcessEnv
  /** Pretend stdin/stdout/stderr are a terminal. */
  tty?: boolean
  /** Lines typed at a prompt. */
  input?: string
  signal?: AbortSignal
}

/** Streams that record what is written to them, with a chosen isTTY. */
export function capturedStreams(tty = false) {
  const stdout = new PassThrough() as PassThrough & { isTTY?: boolean; columns?: number }
  const stderr = new PassThrough() as PassThrough & { isTTY?: boolean; columns?: number }
  const stdin = new PassThrough() as PassThrough & { isTTY?: boolean }
  stdout.isTTY = tty
  stderr.isTTY = tty
  stdin.isTTY = tty
  stdout.columns = 120
  stderr.columns = 120
  let out = ''
  let err = ''
  stdout.on('data', (d) => {
    out += d
  })
  stderr.on('data', (d) => {
    err += d
  })
  return {
    stdout,
    stderr,
    stdin,
    get out() {
      return out
    },
    get err() {
      return err
    },
  }
}

export async function runCli(argv: string[], options: InProcessOptions = {}): Promise<CliResult> {
  const streams = capturedStreams(options.tty === true)
  const { stdout, stderr, stdin } = streams
  if (options.input !== undefined) stdin.end(options.input)
  const io: Io = { stdout, stderr, stdin, env: options.env ?? defaultEnv() }
  const code = await run(argv, io, options.signal ? { signal: options.signal } : {})
  return { code, stdout: streams.out, stderr: streams.err }
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv
  input?: string
  timeoutMs?: number
}

export async function spawnCli(argv: string[], options: SpawnOptions = {}): Promise<CliResult> {
  const r = await execa(process.execPath, [BIN, ...argv], {
    env: options.env ?? defaultEnv(),
    extendEnv: false,
    reject: false,
    input: options.input ?? '',
    timeout: options.timeoutMs ?? 60_000,
    stripFinalNewline: false,
  })
  return { code: r.exitCode ?? -1, stdout: r.stdout as string, stderr: r.stderr as string }
}

const made: string[] = []
let fileHome: string | undefined

/**
 * The environment of a run that names none: clean, with SHIELDX_HOME a temporary home of this
 * test file, so that a command never touches the developer's ~/.shieldx.
 */
function defaultEnv(): NodeJS.ProcessEnv {
  fileHome ??= tempHome('default')
  return cleanEnv({ SHIELDX_HOME: fileHome })
}

// Registered when a test file imports this module (vitest evaluates it once per file), so the
// homes a file makes are removed after that file, after the file's own afterAll hooks (which may
// still be closing an embedded database in one of them).
afterAll(() => {
  for (const dir of made.splice(0)) fs.rmSync(dir, { recursive: true, force: true })
  fileHome = undefined
})

/** A fresh, empty SHIELDX_HOME, removed after the test file. */
export function tempHome(label = 'home'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `shx-${label}-`))
  made.push(dir)
  return dir
}
