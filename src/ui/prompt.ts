/**
 * Confirmation before destructive work. On a terminal we ask; without one (CronJob, CI) or with
 * --no-input, only --yes lets it through. Declining is exit 3 with nothing changed.
 */
import readline from 'node:readline/promises'
import { SafetyError } from '../core/errors.js'
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
}

export function canPrompt(io: Io, noInput: boolean): boolean {
  return !noInput && io.stdin.isTTY === true && io.stderr.isTTY === true
}

export async function confirm(io: Io, options: ConfirmOptions): Promise<void> {
  if (options.yes) return
  if (!canPrompt(io, options.noInput)) {
    throw new SafetyError(
      `Refusing to ${options.action} without confirmation: pass --yes (there is no terminal to ask).`,
      {
        code: 'CONFIRMATION_REQUIRED',
      },
    )
  }
  const rl = readline.createInterface({ input: io.stdin, output: io.stderr, terminal: false })
  try {
    const prompt = options.typeToConfirm
      ? `${options.question} Type '${options.typeToConfirm}' to confirm: `
      : `${options.question} [y/N] `
    const answer = (await rl.question(prompt)).trim()
    const ok = options.typeToConfirm ? answer === options.typeToConfirm : /^y(es)?$/i.test(answer)
    if (!ok) throw new SafetyError('Cancelled; nothing was changed.', { code: 'DECLINED' })
  } finally {
    rl.close()
  }
}
