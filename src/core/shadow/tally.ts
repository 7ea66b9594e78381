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
  control: Omit<RuleTally, 'scores'> & { scores: Array<[number, number, number]> }
  candidate: Omit<RuleTally, 'scores'> & { scores: Array<[number, number, number]> }
}

const ruleTally = (): RuleTally => ({ tp: 0, fp: 0, tn: 0, fn: 0, scores: new Map() })

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
  const s = r.scores.get(score)
  if (s) s[attack ? 0 : 1]++
  else r.scores.set(score, attack ? [1, 0] : [0, 1])
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
