/**
 * The one error boundary: every error a command throws becomes an exit code and a message here.
 * ShieldxErrors are the user's to fix and get their sentence; anything else is a bug and says so,
 * with the stack only under --verbose. Secrets never reach this point (core redacts), but the
 * message is scrubbed of known secret values anyway.
 */
import { CommanderError } from 'commander'
import { scrubSecrets } from './core/config/redact.js'
import { isConnectionError, isTimeout } from './core/db/pg-errors.js'
import {
  EXIT,
  type ExitCode,
  isShieldxError,
  OperationError,
  type ShieldxError,
  TimeoutError,
} from './core/errors.js'
import type { Output } from './ui/output.js'

export function handleError(err: unknown, out: Output, secrets: readonly string[] = []): ExitCode {
  const scrub = (s: string) => scrubSecrets(s, secrets)
  err = fromDatabase(err) ?? err

  if (err instanceof CommanderError) {
    // --help and --version end here too, with exit code 0.
    if (err.exitCode === 0) return EXIT.ok
    // Commander has already printed its message (with "Did you mean ...?") on stderr; --json
    // still owes stdout its one document.
    if (out.json) {
      out.document({
        ok: false,
        error: { code: 'USAGE', message: scrub(commanderMessage(err)), exit_code: EXIT.usage },
      })
    }
    return EXIT.usage
  }
  if (isShieldxError(err)) {
    const message = scrub(err.message)
    out.error(message)
    if (err.hint) out.info(`  ${scrub(err.hint)}`)
    if (out.json) {
      out.document({
        ok: false,
        error: {
          code: err.code,
          message,
          ...(err.hint ? { hint: scrub(err.hint) } : {}),
          exit_code: err.exitCode,
          ...(err.data ?? {}),
        },
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

/**
 * A database error that no command put into words: a lost connection or a statement past its time
 * limit is something for the user to act on, not a bug in shieldx. Transactions interrupted this
 * way roll back; the commands whose outcome can be unknown (a lost COMMIT) say so themselves.
 */
function fromDatabase(err: unknown): ShieldxError | null {
  if (isShieldxError(err) || !(err instanceof Error)) return null
  if (isTimeout(err)) {
    return new TimeoutError(`A database statement ran past its time limit (${err.message}).`, {
      hint: 'Raise the limit with --timeout (e.g. --timeout 5m) if the work is expected to take longer.',
      cause: err,
    })
  }
  if (isConnectionError(err)) {
    return new OperationError(`The connection to the database was lost (${err.message}).`, {
      code: 'DB_CONNECTION_LOST',
      hint: 'Check that the server is up and reachable, then run the command again.',
      cause: err,
    })
  }
  // SQLSTATE classes that describe the server and its surroundings, not our SQL: authorisation
  // (28), a missing database (3D), resources such as disk or connections (53), an operator's
  // intervention (57), system errors (58). Anything else from the server stays a bug of ours.
  // Also a database closed to connections (ALTER DATABASE ... ALLOW_CONNECTIONS false): 55000.
  const sqlstate = (err as { code?: unknown }).code
  const closed = sqlstate === '55000' && /is not currently accepting connections/.test(err.message)
  if (typeof sqlstate === 'string' && (closed || /^(28|3D|53|57|58)[0-9A-Z]{3}$/.test(sqlstate))) {
    return new OperationError(`The database server refused: ${err.message} [SQLSTATE ${sqlstate}].`, {
      code: 'DB_REFUSED',
      cause: err,
    })
  }
  return null
}

/** Commander's message without its "error: " prefix; a group run without a subcommand says so. */
function commanderMessage(err: CommanderError): string {
  if (err.code === 'commander.help' || err.message === '(outputHelp)') {
    return 'A subcommand is required; run with --help to see them.'
  }
  return err.message.replace(/^error: /, '').trim()
}
