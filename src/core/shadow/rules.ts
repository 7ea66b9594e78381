/**
 * Security rule definitions: their shape, validation (every problem named by its JSON path), and
 * references like `waf-sqli@3`. Storage is in rule-store.ts; evaluation in compile.ts.
 */
import fs from 'node:fs'
import { UsageError } from '../errors.js'
import { nestsRepetitions } from './regex-safety.js'

export type RateLimitKey = 'ip' | 'tenant_id' | 'path'
export type ThresholdOp = '>=' | '>' | '<=' | '<'

export type RulePart =
  | { type: 'rate_limit'; key: RateLimitKey; window_s: number; threshold: number }
  | { type: 'threshold'; field: string; op: ThresholdOp; value: number }
  | { type: 'match'; field: string; pattern: string; flags?: string }
  | { type: 'match'; field: string; values: Array<string | number | boolean> }
  | { type: 'all' | 'any'; rules: RulePart[] }

/** A stored rule: the top level carries id, version and name; its parts do not need them. */
export type RuleDefinition = RulePart & { id: string; version: number; name: string; description?: string }

export interface RuleRef {
  id: string
  /** null: the newest stored version. */
  version: number | null
}

export const RULE_ID = /^[a-z0-9][a-z0-9._-]{0,127}$/
export const RATE_LIMIT_KEYS: readonly RateLimitKey[] = ['ip', 'tenant_id', 'path']
const OPS: readonly ThresholdOp[] = ['>=', '>', '<=', '<']
const TYPES = ['rate_limit', 'threshold', 'match', 'all', 'any'] as const
/** Deep enough for any real rule; a guard against a runaway or cyclic generator. */
const MAX_DEPTH = 16

function invalid(path: string, expected: string, source?: string): never {
  throw new UsageError(`Invalid rule${source ? ` in ${source}` : ''}: ${path} ${expected}.`, {
    code: 'INVALID_RULE',
    data: { path },
  })
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function fieldName(v: unknown, path: string, source?: string): string {
  if (typeof v !== 'string' || !/^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/.test(v))
    invalid(path, 'must be a field name such as "status" or "latency_ms"', source)
  return v
}

function positive(v: unknown, path: string, source: string | undefined, integer: boolean): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v)))
    invalid(path, `must be a positive ${integer ? 'whole number' : 'number'}`, source)
  return v
}

/** At least a millisecond: timestamps are in milliseconds, a shorter window would not hold the request itself. */
function windowSeconds(v: unknown, path: string, source?: string): number {
  const w = positive(v, path, source, false)
  if (w < 0.001 || w > 31_536_000)
    invalid(path, 'must be from 0.001 (1 ms) to 31536000 (a year) seconds', source)
  return w
}

function allowOnly(obj: Record<string, unknown>, keys: string[], path: string, source?: string): void {
  for (const k of Object.keys(obj)) {
    if (!keys.includes(k))
      invalid(`${path}.${k}`, `is not a field of this rule type (allowed: ${keys.join(', ')})`, source)
  }
}

function parsePart(v: unknown, path: string, depth: number, top: boolean, source?: string): RulePart {
  if (!isObject(v)) invalid(path, 'must be an object', source)
  if (depth > MAX_DEPTH) invalid(path, `nests deeper than ${MAX_DEPTH} levels`, source)
  const type = v.type
  if (typeof type !== 'string' || !(TYPES as readonly string[]).includes(type))
    invalid(`${path}.type`, `must be one of ${TYPES.join(', ')}`, source)
  const meta = top ? ['id', 'version', 'name', 'description'] : ['name', 'description']
  switch (type) {
    case 'rate_limit': {
      allowOnly(v, ['type', 'key', 'window_s', 'threshold', ...meta], path, source)
      if (typeof v.key !== 'string' || !(RATE_LIMIT_KEYS as readonly string[]).includes(v.key))
        invalid(`${path}.key`, `must be one of ${RATE_LIMIT_KEYS.join(', ')}`, source)
      return {
        type,
        key: v.key as RateLimitKey,
        window_s: windowSeconds(v.window_s, `${path}.window_s`, source),
        threshold: positive(v.threshold, `${path}.threshold`, source, true),
      }
    }
    case 'threshold': {
      allowOnly(v, ['type', 'field', 'op', 'value', ...meta], path, source)
      if (typeof v.op !== 'string' || !(OPS as readonly string[]).includes(v.op))
        invalid(`${path}.op`, `must be one of ${OPS.join(' ')}`, source)
      if (typeof v.value !== 'number' || !Number.isFinite(v.value))
        invalid(`${path}.value`, 'must be a number', source)
      return {
        type,
        field: fieldName(v.field, `${path}.field`, source),
        op: v.op as ThresholdOp,
        value: v.value,
      }
    }
    case 'match': {
      allowOnly(v, ['type', 'field', 'pattern', 'flags', 'values', ...meta], path, source)
      const field = fieldName(v.field, `${path}.field`, source)
      if ((v.pattern === undefined) === (v.values === undefined))
        invalid(
          path,
          'must have either "pattern" (a regular expression) or "values" (a list), not both',
          source,
        )
      if (v.pattern !== undefined) {
        if (typeof v.pattern !== 'string' || v.pattern === '')
          invalid(`${path}.pattern`, 'must be a non-empty string', source)
        if (v.flags !== undefined && (typeof v.flags !== 'string' || !/^[imsu]*$/.test(v.flags)))
          invalid(`${path}.flags`, 'may only hold the regular expression flags i, m, s, u', source)
        try {
          new RegExp(v.pattern, v.flags as string | undefined)
        } catch (err) {
          invalid(`${path}.pattern`, `is not a valid regular expression (${(err as Error).message})`, source)
        }

        return v.flags === undefined
          ? { type, field, pattern: v.pattern }
          : { type, field, pattern: v.pattern, flags: v.flags as string }
      }
      if (v.flags !== undefined) invalid(`${path}.flags`, 'applies to "pattern" only', source)
      if (!Array.isArray(v.values) || v.values.length === 0)
        invalid(`${path}.values`, 'must be a non-empty list', source)
      v.values.forEach((x, i) => {
        if (!['string', 'number', 'boolean'].includes(typeof x))
          invalid(`${path}.values[${i}]`, 'must be a string, number or boolean', source)
      })
      return { type, field, values: v.values as Array<string | number | boolean> }
    }
    default: {
      allowOnly(v, ['type', 'rules', ...meta], path, source)
      if (!Array.isArray(v.rules) || v.rules.length === 0)
        invalid(`${path}.rules`, 'must be a non-empty list of rules', source)
      return {
        type: type as 'all' | 'any',
        rules: v.rules.map((r, i) => parsePart(r, `${path}.rules[${i}]`, depth + 1, false, source)),
      }
    }
  }
}

/** Validate a rule document; any problem is exit 2 with the JSON path of the first one. */
export function parseRule(doc: unknown, source?: string): RuleDefinition {
  if (!isObject(doc)) invalid('$', 'must be a JSON object', source)
  if (typeof doc.id !== 'string' || !RULE_ID.test(doc.id))
    invalid(
      '$.id',
      'must be lowercase letters, digits, ".", "_" or "-" (at most 128), e.g. "waf-sqli"',
      source,
    )
  if (
    typeof doc.version !== 'number' ||
    !Number.isInteger(doc.version) ||
    doc.version < 1 ||
    doc.version > 2 ** 31 - 1
  )
    invalid('$.version', 'must be a whole number ≥ 1', source)
  if (typeof doc.name !== 'string' || doc.name.trim() === '')
    invalid('$.name', 'must be a non-empty string', source)
  if (doc.description !== undefined && typeof doc.description !== 'string')
    invalid('$.description', 'must be a string', source)
  const part = parsePart(doc, '$', 0, true, source)
  return {
    id: doc.id,
    version: doc.version,
    name: doc.name,
    ...(doc.description === undefined ? {} : { description: doc.description }),
    ...part,
  } as RuleDefinition
}

/** Read and validate a rule file (before anything touches the database: bad input writes nothing). */
export function readRuleFile(file: string): RuleDefinition {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    throw new UsageError(`Cannot read the rule file ${file} (${(err as NodeJS.ErrnoException).code}).`)
  }
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (err) {
    throw new UsageError(`The rule file ${file} is not valid JSON (${(err as Error).message}).`, {
      data: { path: '$' },
    })
  }
  return parseRule(doc, file)
}

/** `waf-sqli`, `waf-sqli@3`. */
export function parseRuleRef(text: string, flag: string): RuleRef {
  const m = /^([^@]+)(?:@(\d+))?$/.exec(text.trim())
  if (!m || !RULE_ID.test(m[1]!))
    throw new UsageError(
      `${flag} must be a rule id, optionally with @VERSION (e.g. waf-sqli@3); got "${text}".`,
    )
  return { id: m[1]!, version: m[2] === undefined ? null : Number(m[2]) }
}

/** Does `text` name one version of a rule (`waf-sqli@3`), rather than being free text? */
export function isRuleVersion(text: string): boolean {
  const m = /^([^@]+)@\d+$/.exec(text)
  return m !== null && RULE_ID.test(m[1]!)
}

export function formatRef(r: { id: string; version: number }): string {
  return `${r.id}@${r.version}`
}

/** The part of a definition that decides (no id, version, name): what two versions compare by. */
export function ruleBody(def: RuleDefinition): RulePart {
  const { id: _id, version: _version, name: _name, description: _d, ...body } = def
  return body as RulePart
}

/**
 * The JSON paths of a rule's patterns that nest one unbounded repetition in another (as in
 * (a+)+): on a crafted input they backtrack exponentially, and one line holds the replay, or a
 * WAF running the rule, for minutes. Not refused (the check is a heuristic, and [a-z]+(\.[a-z]+)*
 * is safe though nested), but warned of when the rule is added.
 */
export function riskyPatterns(rule: RulePart, path = '$'): string[] {
  if (rule.type === 'match')
    return 'pattern' in rule && nestsRepetitions(rule.pattern) ? [`${path}.pattern`] : []
  if (rule.type === 'all' || rule.type === 'any')
    return rule.rules.flatMap((r, i) => riskyPatterns(r, `${path}.rules[${i}]`))
  return []
}

/**
 * The scales an all/any rule's parts score on, when they are not one. A match scores 0 or 1 and a
 * rate limit its count over its threshold: both block at about 1, so they combine. A threshold
 * scores the field's value (negated for < and <=), in the field's own units. The spec's min/max
 * of parts on different scales ranks events by raw numbers in different units, not by what the
 * rule decides, so its AUC-ROC can be anything (a rule that blocked every attack and nothing else
 * scored 0). Null when the parts share one scale.
 */
export function mixedScales(rule: RulePart): string[] | null {
  const scale = (r: RulePart): string[] => {
    switch (r.type) {
      case 'match':
      case 'rate_limit':
        return ['match or rate limit (blocks at about 1)']
      case 'threshold':
        return [`${r.op === '<' || r.op === '<=' ? 'minus ' : ''}${r.field}`]
      default:
        return [...new Set(r.rules.flatMap(scale))]
    }
  }
  const all = scale(rule)
  return (rule.type === 'all' || rule.type === 'any') && all.length > 1 ? all : null
}
