/**
 * The one error boundary: every error a command throws becomes an exit code and a message here.
 * ShieldxErrors are the user's to fix and get their sentence; anything else is a bug and says so,
 * with the stack only under --verbose. Secrets never reach this point (core redacts), but the
 * message is scrubbed of known secret values anyway.
 */
import { CommanderError } from 'commander'
import { EXIT, type ExitCode, isShieldxError } from './core/errors.js'
import type { Output } from './ui/output.js'

export function handleError(err: unknown, out: Output, secrets: readonly string[] = []): ExitCode {
  const scrub = (s: string) =>
    secrets.reduce((acc, secret) => (secret.length >= 4 ? acc.split(secret).join('****') : acc), s)

  if (err instanceof CommanderError) {
    // Commander has already printed its message (with "Did you mean ...?").
    return err.exitCode === 0 ? EXIT.ok : EXIT.usage
  }
  if (isShieldxError(err)) {
    const message = scrub(err.message)
    out.error(message)
    if (err.hint) out.info(`  ${scrub(err.hint)}`)
    if (out.json) {
      out.document({
        ok: false,
        error: { code: err.code, message, exit_code: err.exitCode, ...(err.data ?? {}) },
      })
    }
    if (out.verbose && err.cause instanceof Error) out.debug(scrub(err.cause.stack ?? String(err.cause)))
    return err.exitCode
  }
  const e = err instanceof Error ? err : new Error(String(err))
  out.error(`Unexpected error: ${scrub(e.message)}`)
  out.info(
    '  This is a bug in shieldx. Run again with --verbose for details, and report it with that output.',
  )
  if (out.json) {
    out.document({ ok: false, error: { code: 'BUG', message: scrub(e.message), exit_code: EXIT.failed } })
  }
  if (out.verbose && e.stack) out.debug(scrub(e.stack))
  return EXIT.failed
}
