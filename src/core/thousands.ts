/** A count as a report shows it: 1,234,567, the same whatever the machine's locale. */
export function thousands(n: number): string {
  return n.toLocaleString('en-US')
}
