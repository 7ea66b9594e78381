/**
 * Rules turned into something fast to run on a million events. Both rules of an evaluation share
 * one table of leaves; per event the replay fills `vals[leaf]` with each leaf's score, then each
 * rule's score and decision are combined from those (min/max for all/any).
 *
 * Scores (issue): rate_limit = count / threshold; threshold = the field's value (negated for <= and
 * <); match = 1 or 0; all/any = min/max of the parts. A request without the field a leaf reads is
 * not blocked by that leaf: a match scores it 0, as any other value that does not match (a third
 * level would make a yes/no rule's ROC curve depend on which requests carry the field); a threshold
 * scores it -Infinity, below every value.
 */
import { RATE_LIMIT_KEYS, type RateLimitKey, type RulePart } from './rules.js'
import { fieldReader } from './traffic.js'

/** A leaf decided by the event alone (threshold, match). */
export interface StatelessLeaf {
  kind: 'stateless'
  /** the event's field it reads (`a.b` for a nested one) */
  field: string
  score: (e: Record<string, unknown>) => number
  /** blocks when score > cut (strict) or score >= cut */
  cut: number
  strict: boolean
}

/** A leaf that needs the events around it: the count of same-key requests in the window. */
export interface RateLeaf {
  kind: 'rate'
  key: RateLimitKey
  windowMs: number
  threshold: number
  /** blocks when count > threshold, i.e. score = count / threshold > 1 */
  cut: 1
  strict: true
}

export type Leaf = StatelessLeaf | RateLeaf

export interface CompiledRule {
  score: (vals: Float64Array) => number
  blocks: (vals: Float64Array) => boolean
}

export interface CompiledPair {
  leaves: Leaf[]
  /** indices into leaves of the stateless ones, in order: the worker fills these */
  stateless: number[]
  /** indices of the rate leaves */
  rate: number[]
  /** the rate-limit keys in use, in a fixed order */
  keys: RateLimitKey[]
  control: CompiledRule
  candidate: CompiledRule
}

function numeric(v: unknown): number {
  if (typeof v === 'number') return v
  if (typeof v === 'string' && v.trim() !== '') {
    const n = Number(v)
    return Number.isFinite(n) ? n : NaN
  }
  if (typeof v === 'boolean') return v ? 1 : 0
  return NaN
}

function compileLeaf(part: RulePart): Leaf {
  switch (part.type) {
    case 'rate_limit':
      return {
        kind: 'rate',
        key: part.key,
        windowMs: part.window_s * 1000,
        threshold: part.threshold,
        cut: 1,
        strict: true,
      }
    case 'threshold': {
      const read = fieldReader(part.field)
      const negate = part.op === '<=' || part.op === '<'
      return {
        kind: 'stateless',
        field: part.field,
        score: (e) => {
          const n = numeric(read(e))
          if (Number.isNaN(n)) return -Infinity
          return negate ? -n : n
        },
        cut: negate ? -part.value : part.value,
        strict: part.op === '>' || part.op === '<',
      }
    }
    case 'match': {
      const read = fieldReader(part.field)
      if ('pattern' in part) {
        const re = new RegExp(part.pattern, part.flags)
        return {
          kind: 'stateless',
          field: part.field,
          score: (e) => {
            const v = read(e)
            if (v === undefined || v === null) return 0
            return re.test(typeof v === 'string' ? v : String(v)) ? 1 : 0
          },
          cut: 1,
          strict: false,
        }
      }
      // Values compare as text, so that 404 in a rule matches "404" in a log and the reverse.
      const set = new Set(part.values.map(String))
      return {
        kind: 'stateless',
        field: part.field,
        score: (e) => {
          const v = read(e)
          if (v === undefined || v === null) return 0
          return set.has(typeof v === 'string' ? v : String(v)) ? 1 : 0
        },
        cut: 1,
        strict: false,
      }
    }
    default:
      throw new Error(`not a leaf: ${part.type}`)
  }
}

/** Compile the control and the candidate into one leaf table. */
export function compilePair(control: RulePart, candidate: RulePart): CompiledPair {
  const leaves: Leaf[] = []
  const build = (part: RulePart): CompiledRule => {
    if (part.type === 'all' || part.type === 'any') {
      const parts = part.rules.map(build)
      const scores = parts.map((p) => p.score)
      const decisions = parts.map((p) => p.blocks)
      // Plain loops, not every/some: no closure made per event on the replay's hot path.
      if (part.type === 'all') {
        return {
          score: (vals) => {
            let s = Infinity
            for (const f of scores) s = Math.min(s, f(vals))
            return s
          },
          blocks: (vals) => {
            for (const f of decisions) if (!f(vals)) return false
            return true
          },
        }
      }
      return {
        score: (vals) => {
          let s = -Infinity
          for (const f of scores) s = Math.max(s, f(vals))
          return s
        },
        blocks: (vals) => {
          for (const f of decisions) if (f(vals)) return true
          return false
        },
      }
    }
    const i = leaves.length
    const leaf = compileLeaf(part)
    leaves.push(leaf)
    const { cut, strict } = leaf
    return {
      score: (vals) => vals[i]!,
      blocks: strict ? (vals) => vals[i]! > cut : (vals) => vals[i]! >= cut,
    }
  }
  const c = build(control)
  const k = build(candidate)
  const stateless: number[] = []
  const rate: number[] = []
  leaves.forEach((l, i) => (l.kind === 'stateless' ? stateless : rate).push(i))
  const used = new Set(rate.map((i) => (leaves[i] as RateLeaf).key))
  return {
    leaves,
    stateless,
    rate,
    keys: RATE_LIMIT_KEYS.filter((x) => used.has(x)),
    control: c,
    candidate: k,
  }
}
