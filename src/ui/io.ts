/**
 * The streams a command talks through. The real process streams in bin/, PassThroughs with a
 * chosen isTTY in tests, so the same code runs in-process under test and in a terminal.
 */
import type { Readable, Writable } from 'node:stream'

export type OutStream = Writable & { isTTY?: boolean; columns?: number }
export type InStream = Readable & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown }

export interface Io {
  stdout: OutStream
  stderr: OutStream
  stdin: InStream
  env: NodeJS.ProcessEnv
  /** Aborted on Ctrl-C / SIGTERM (set by the run's Context): a prompt stops waiting on it. */
  signal?: AbortSignal
}

export function processIo(): Io {
  return { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env }
}
