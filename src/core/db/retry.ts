/**
 * Retries with exponential backoff and decorrelated jitter (cockatiel), for work that is safe
 * to run again: serialization failures, deadlocks and dropped connections.
 */
import { ExponentialBackoff, handleWhen, retry } from 'cockatiel'
import { isConnectionError, isSerializationError } from './pg-errors.js'

export interface RetryOptions {
  /** Attempts in all, including the first. */
  maxAttempts?: number
  initialDelayMs?: number
  maxDelayMs?: number
  /** Retry on a dropped connection too (the caller knows the work is idempotent or did not start). */
  onConnectionLoss?: boolean
  /** Another error worth a retry (e.g. a unique-key race the caller resolves by replaying). */
  retryIf?: (err: unknown) => boolean
  /** Called before each retry, e.g. to log it with --verbose. */
  onRetry?: (err: unknown, attempt: number) => void
}

export async function withRetry<T>(
  fn: (attempt: number) => Promise<T>,
  options: RetryOptions = {},
): Promise<T> {
  const retryConnections = options.onConnectionLoss ?? true
  const policy = retry(
    handleWhen(
      (err) =>
        isSerializationError(err) ||
        (retryConnections && isConnectionError(err)) ||
        (options.retryIf?.(err) ?? false),
    ),
    {
      maxAttempts: (options.maxAttempts ?? 6) - 1,
      backoff: new ExponentialBackoff({
        initialDelay: options.initialDelayMs ?? 20,
        maxDelay: options.maxDelayMs ?? 2000,
      }),
    },
  )
  if (options.onRetry) {
    const onRetry = options.onRetry
    policy.onRetry((event) => {
      if ('error' in event) onRetry(event.error, event.attempt)
    })
  }
  return policy.execute(({ attempt }) => fn(attempt))
}
