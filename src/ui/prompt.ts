/**
 * Confirmation before destructive work. On a terminal we ask; without one (CronJob, CI) or with
 * --no-input, only --yes lets it through. Declining is exit 3 with nothing changed.
 */
import readline from 'node:readline/promises'
import { InterruptedError, SafetyError } from '../core/errors.js'
import type { Io } from './io.js'

export interface ConfirmOptions {
  /** --yes given. */
  yes: boolean
  /** --no-input given. */
  noInput: boolean
  /** "migrate down": used in the refusal sentence. */
  action: string
  /** The question, e.g. "Revert 2 migrations on credits?" */
  question: string
  /** When set, the user must type this exact text (a database name) rather than y. */
  typeToConfirm?: string
  /** Ctrl-C: the question stops at once (exit 130). Default: the run's signal, io.signal. */
  signal?: AbortSignal
}

export function canPrompt(io: Io, noInput: boolean): boolean {
  return !noInput && io.stdin.isTTY === true && io.stderr.isTTY === true
}

export async function confirm(io: Io, options: ConfirmOptions): Promise<void> {
  if (options.yes) return
  if (!canPrompt(io, options.noInput)) {
    const why = options.noInput
      ? '--no-input was given, so shieldx does not ask'
      : 'there is no terminal to ask'
    throw new SafetyError(`Refusing to ${options.action} without confirmation: pass --yes (${why}).`, {
      code: 'CONFIRMATION_REQUIRED',
    })
  }
  // A Ctrl-C at the question ends it (bin/ turns SIGINT into this signal): without the signal,
  // readline kept waiting for a line, the command's connections open, until a second Ctrl-C.
  const signal = options.signal ?? io.signal
  const interrupted = (cause?: unknown) =>
    new InterruptedError('Interrupted at the confirmation; nothing was changed.', { cause })
  if (signal?.aborted) throw interrupted()
  const rl = readline.createInterface({ input: io.stdin, output: io.stderr, terminal: false })
  try {
    const prompt = options.typeToConfirm
      ? `${options.question} Type '${options.typeToConfirm}' to confirm: `
      : `${options.question} [y/N] `
    let line: string
    try {
      line = await rl.question(prompt, signal ? { signal } : {})
    } catch (err) {
      if (!signal?.aborted) throw err
      io.stderr.write('\n') // the error goes below the "^C" the terminal echoed after the question
      throw interrupted(err)
    }
    const answer = line.trim()
    const ok = options.typeToConfirm ? answer === options.typeToConfirm : /^y(es)?$/i.test(answer)
    if (!ok) throw new SafetyError('Cancelled; nothing was changed.', { code: 'DECLINED' })
  } finally {
    rl.close()
  }
}
