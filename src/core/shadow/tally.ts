/**
 * What the replay counts, per rule and per pair of decisions: small, mergeable across worker
 * threads (plain arrays cross the boundary), and independent of the order events are added in.
 * attack = positive; block = positive prediction.
 */

export interface RuleTally {
  tp: number
  fp: number
  tn: number
  fn: number
  /** score -> [attacks, benign]: for AUC-ROC; grows with distinct scores, not with events */
  scores: Map<number, [number, number]>
  /** the entries of `scores` last used, by a hash of the score (see countScore) */
  recent: ScoreCache
}

interface ScoreCache {
  score: Float64Array
  entry: Array<[number, number] | undefined>
}

export interface Tally {
  events: number
  attacks: number
  control: RuleTally
  candidate: RuleTally
  /** paired decisions, "right" = the decision matches the label */
  both_right: number
  /** control right, candidate wrong (McNemar's b) */
  control_only_right: number
  /** candidate right, control wrong (McNemar's c) */
  candidate_only_right: number
  both_wrong: number
  first_ts: number
  last_ts: number
}

/** The plain-data form that crosses a worker boundary. */
export interface TallyData extends Omit<Tally, 'control' | 'candidate'> {
  control: Omit<RuleTally, 'scores' | 'recent'> & { scores: Array<[number, number, number]> }
  candidate: Omit<RuleTally, 'scores' | 'recent'> & { scores: Array<[number, number, number]> }
}

const CACHED = 256
const ruleTally = (): RuleTally => ({
  tp: 0,
  fp: 0,
  tn: 0,
  fn: 0,
  scores: new Map(),
  // NaN never equals a score, so every slot starts empty
  recent: { score: new Float64Array(CACHED).fill(NaN), entry: new Array(CACHED).fill(undefined) },
})

const bits = new Float64Array(1)
const words = new Uint32Array(bits.buffer)

/**
 * One more event with this score. Most events find their score's entry in a small cache: a Map
 * keyed by a fractional number (a rate limit's count / threshold) boxes the number on every
 * look-up, and that was a sixth of the replay's garbage.
 */
function countScore(r: RuleTally, score: number, attack: boolean): void {
  bits[0] = score
  const slot = (Math.imul(words[0]! ^ words[1]!, 0x9e3779b1) >>> 24) & (CACHED - 1)
  const recent = r.recent
  let s = recent.score[slot] === score ? recent.entry[slot] : undefined
  if (!s) {
    s = r.scores.get(score)
    if (!s) {
      s = [0, 0]
      r.scores.set(score, s)
    }
    recent.score[slot] = score
    recent.entry[slot] = s
  }
  s[attack ? 0 : 1]++
}

export function newTally(): Tally {
  return {
    events: 0,
    attacks: 0,
    control: ruleTally(),
    candidate: ruleTally(),
    both_right: 0,
    control_only_right: 0,
    candidate_only_right: 0,
    both_wrong: 0,
    first_ts: Infinity,
    last_ts: -Infinity,
  }
}

function addRule(r: RuleTally, attack: boolean, blocks: boolean, score: number): void {
  if (attack) {
    if (blocks) r.tp++
    else r.fn++
  } else if (blocks) r.fp++
  else r.tn++
  countScore(r, score, attack)
}

export function addEvent(
  t: Tally,
  ts: number,
  attack: boolean,
  controlBlocks: boolean,
  controlScore: number,
  candidateBlocks: boolean,
  candidateScore: number,
): void {
  t.events++
  if (attack) t.attacks++
  if (ts < t.first_ts) t.first_ts = ts
  if (ts > t.last_ts) t.last_ts = ts
  addRule(t.control, attack, controlBlocks, controlScore)
  addRule(t.candidate, attack, candidateBlocks, candidateScore)
  const controlRight = controlBlocks === attack
  const candidateRight = candidateBlocks === attack
  if (controlRight && candidateRight) t.both_right++
  else if (controlRight) t.control_only_right++
  else if (candidateRight) t.candidate_only_right++
  else t.both_wrong++
}

const ruleData = (r: RuleTally) => ({
  tp: r.tp,
  fp: r.fp,
  tn: r.tn,
  fn: r.fn,
  scores: [...r.scores].map(([s, [p, n]]) => [s, p, n] as [number, number, number]),
})

export function tallyToData(t: Tally): TallyData {
  return { ...t, control: ruleData(t.control), candidate: ruleData(t.candidate) }
}

function mergeRule(into: RuleTally, from: TallyData['control']): void {
  into.tp += from.tp
  into.fp += from.fp
  into.tn += from.tn
  into.fn += from.fn
  for (const [s, p, n] of from.scores) {
    const cur = into.scores.get(s)
    if (cur) {
      cur[0] += p
      cur[1] += n
    } else into.scores.set(s, [p, n])
  }
}

export function mergeTally(into: Tally, from: TallyData): void {
  into.events += from.events
  into.attacks += from.attacks
  into.both_right += from.both_right
  into.control_only_right += from.control_only_right
  into.candidate_only_right += from.candidate_only_right
  into.both_wrong += from.both_wrong
  into.first_ts = Math.min(into.first_ts, from.first_ts)
  into.last_ts = Math.max(into.last_ts, from.last_ts)
  mergeRule(into.control, from.control)
  mergeRule(into.candidate, from.candidate)
}
