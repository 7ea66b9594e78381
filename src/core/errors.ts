/**
 * Typed errors. Core throws these; the one error boundary (src/boundary.ts) maps them to
 * exit codes and messages. Anything that is not a ShieldxError is a bug.
 *
 * Exit codes (DESIGN.md): 0 ok, 1 failed, 2 usage, 3 refused by a safety precondition,
 * 4 integrity failure, 5 conflict, 124 timed out, 130 interrupted.
 */
export const EXIT = {
  ok: 0,
  failed: 1,
  usage: 2,
  refused: 3,
  integrity: 4,
  conflict: 5,
  timeout: 124,
  interrupted: 130,
} as const

export type ExitCode = (typeof EXIT)[keyof typeof EXIT]

export interface ErrorDetails {
  /** Stable machine-readable code for --json output, e.g. INSUFFICIENT_CREDITS. */
  code?: string
  /** A second sentence telling the user what to do next. */
  hint?: string
  /** Extra structured fields for --json output. Never put secrets here. */
  data?: Record<string, unknown>
  cause?: unknown
}

export class ShieldxError extends Error {
  readonly exitCode: ExitCode
  readonly code: string
  readonly hint: string | undefined
  readonly data: Record<string, unknown> | undefined

  constructor(message: string, exitCode: ExitCode, defaultCode: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause })
    this.name = new.target.name
    this.exitCode = exitCode
    this.code = details.code ?? defaultCode
    this.hint = details.hint
    this.data = details.data
  }
}

/** Bad input: a flag, an argument, a config value. Exit 2. */
export class UsageError extends ShieldxError {
  constructor(message: string, details?: ErrorDetails) {
    super(message, EXIT.usage, 'USAGE', details)
  }
}

/** The operation could not be done (unreachable database, SQL error, ...). Exit 1. */
export class OperationError extends ShieldxError {
  constructor(message: string, details?: ErrorDetails) {
    super(message, EXIT.failed, 'FAILED', details)
  }
}

/** A command that is listed but not built yet. Exit 1, never fake output. */
export class NotBuiltError extends ShieldxError {
  constructor(command: string) {
    super(`'shieldx ${command}' is not built yet.`, EXIT.failed, 'NOT_BUILT', {
      hint: 'It is on the roadmap in DESIGN.md; see README.md for what works today.',
    })
  }
}

/** Refused by a safety precondition (needs --yes, --force, a conclusive evaluation...). Exit 3. */
export class SafetyError extends ShieldxError {
  constructor(message: string, details?: ErrorDetails) {
    super(message, EXIT.refused, 'REFUSED', details)
  }
}

/** Something that must be intact is not: a checksum, a chain, a backup. Exit 4. */
export class IntegrityError extends ShieldxError {
  constructor(message: string, details?: ErrorDetails) {
    super(message, EXIT.integrity, 'INTEGRITY', details)
  }
}

/** A lock is held, or a key was reused with different parameters. Exit 5. */
export class ConflictError extends ShieldxError {
  constructor(message: string, details?: ErrorDetails) {
    super(message, EXIT.conflict, 'CONFLICT', details)
  }
}

/** A deadline passed. Exit 124, like timeout(1). */
export class TimeoutError extends ShieldxError {
  constructor(message: string, details?: ErrorDetails) {
    super(message, EXIT.timeout, 'TIMEOUT', details)
  }
}

/** SIGINT / SIGTERM. Exit 130. */
export class InterruptedError extends ShieldxError {
  constructor(message = 'Interrupted.', details?: ErrorDetails) {
    super(message, EXIT.interrupted, 'INTERRUPTED', details)
  }
}

export function isShieldxError(err: unknown): err is ShieldxError {
  return err instanceof ShieldxError
}

/** An error in the plain form that crosses a worker-thread boundary (structured clone drops classes). */
export type ErrorData =
  | {
      shieldx: true
      message: string
      exitCode: ExitCode
      code: string
      hint?: string
      data?: Record<string, unknown>
      /** the cause's stack (or message), for --verbose */
      cause?: string
    }
  | {
      shieldx: false
      message: string
      stack?: string
      /** pg's SQLSTATE or Node's error code: what says a lost connection from a bug */
      code?: string
    }

export function errorToData(err: unknown): ErrorData {
  if (isShieldxError(err)) {
    return {
      shieldx: true,
      message: err.message,
      exitCode: err.exitCode,
      code: err.code,
      ...(err.hint === undefined ? {} : { hint: err.hint }),
      ...(err.data === undefined ? {} : { data: err.data }),
      ...(err.cause instanceof Error ? { cause: err.cause.stack ?? err.cause.message } : {}),
    }
  }
  const e = err instanceof Error ? err : new Error(String(err))
  const code = (e as NodeJS.ErrnoException).code
  return {
    shieldx: false,
    message: e.message,
    ...(e.stack === undefined ? {} : { stack: e.stack }),
    ...(typeof code === 'string' ? { code } : {}),
  }
}

/** The error again on this side: a ShieldxError keeps its exit code, code, hint and data; a bug stays a bug. */
export function errorFromData(d: ErrorData): Error {
  if (!d.shieldx) {
    const e = new Error(d.message)
    if (d.stack) e.stack = d.stack
    if (d.code !== undefined) Object.assign(e, { code: d.code })
    return e
  }
  const details: ErrorDetails = {
    code: d.code,
    ...(d.hint === undefined ? {} : { hint: d.hint }),
    ...(d.data === undefined ? {} : { data: d.data }),
    ...(d.cause === undefined
      ? {}
      : { cause: Object.assign(new Error(d.cause.split('\n')[0]), { stack: d.cause }) }),
  }
  switch (d.exitCode) {
    case EXIT.usage:
      return new UsageError(d.message, details)
    case EXIT.failed:
      return new OperationError(d.message, details)
    case EXIT.interrupted:
      return new InterruptedError(d.message, details)
    default:
      return new ShieldxError(d.message, d.exitCode, d.code, details)
  }
}
