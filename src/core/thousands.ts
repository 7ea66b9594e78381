/**
 * A count as a report shows it: 1,234,567, the same whatever the machine's locale.
 *
 * Whole numbers are grouped here rather than by toLocaleString('en-US'), whose first call in a
 * process loads ICU's locale data: 15-30 ms measured, inside `evaluate`'s timed run and on every
 * command that prints a count. Anything else (a fraction, an infinity) still goes to ICU.
 */
export function thousands(n: number): string {
  if (!Number.isSafeInteger(n)) return n.toLocaleString('en-US')
  const digits = String(Math.abs(n))
  let out = digits.slice(0, digits.length % 3 || 3)
  for (let i = out.length; i < digits.length; i += 3) out += `,${digits.slice(i, i + 3)}`
  return n < 0 ? `-${out}` : out
}
