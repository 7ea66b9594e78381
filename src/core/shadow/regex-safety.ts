/**
 * A rule's pattern runs on fields attackers write (paths, user agents): one nested in another
 * unbounded repetition, as in ^(a+)+$, backtracks exponentially on a crafted input, and a single
 * line then holds the replay (and the WAF running the rule) for minutes. The check is the classic
 * star-height test, a heuristic: it finds the common catastrophic shape, not every slow pattern,
 * and it also finds some safe ones ([a-z]+(\.[a-z]+)*), so `rules add` warns rather than refuses.
 */
import { createRequire } from 'node:module'

// ret is CommonJS whose default export its type declarations do not describe for NodeNext.
const ret = createRequire(import.meta.url)('ret') as ((pattern: string) => unknown) & {
  types: { REPETITION: number }
}
const { types } = ret

/** A repetition this wide counts as unbounded: (x{1,100})+ backtracks as (x+)+ does. */
const WIDE = 16

type Node = {
  type: number
  stack?: Node[]
  options?: Node[][]
  value?: unknown
  min?: number
  max?: number | null
}

/**
 * True when a repetition is nested in another, both unbounded or wide. A pattern the parser
 * cannot read is not judged here (false): `new RegExp` has already accepted it.
 */
export function nestsRepetitions(pattern: string): boolean {
  let root: Node
  try {
    root = ret(pattern) as unknown as Node
  } catch {
    return false
  }
  return walk(root, 0)
}

function walk(node: Node, height: number): boolean {
  if (node.type === types.REPETITION) {
    const wide = node.max === null || node.max === undefined || node.max === Infinity || node.max > WIDE
    if (wide) height++
    if (height > 1) return true
    return walk(node.value as Node, height)
  }
  for (const option of node.options ?? []) for (const child of option) if (walk(child, height)) return true
  for (const child of node.stack ?? []) if (walk(child, height)) return true
  return false
}
