/**
 * A whole number as a flag or a JSON field gives it: a number, or a string of digits (spaces
 * around allowed); NaN for anything else. Integer, sign and range checks are the caller's.
 */
export function wholeNumberOf(value: unknown): number {
  if (typeof value === 'number') return value
  return typeof value === 'string' && /^\d+$/.test(value.trim()) ? Number(value) : NaN
}
