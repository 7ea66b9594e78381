/**
 * Classification metrics of a rule replayed over labelled traffic: attack = positive, the rule
 * blocking = a positive prediction. Every value that is undefined (0/0) is null and the reason is
 * given in words, never a silent 0: scikit-learn returns MCC 0 where it is undefined, we do not.
 */
import { defined, type Maybe, undefinedBecause } from './stats.js'

export interface Confusion {
  /** attacks the rule blocked */
  tp: number
  /** benign events the rule blocked */
  fp: number
  /** benign events the rule let through */
  tn: number
  /** attacks the rule let through */
  fn: number
}

/** [score, positives, negatives]: plain arrays, so a histogram can cross a worker-thread boundary. */
export type ScoreEntry = [score: number, positives: number, negatives: number]

/**
 * Counts of positives and negatives per distinct score. Memory grows with the number of distinct
 * scores, not with the number of events, so the exact AUC of millions of events stays cheap.
 */
export class ScoreHistogram {
  private readonly counts = new Map<number, [number, number]>()

  /** Count `count` events with this score (a positive = an attack). */
  add(score: number, positive: boolean, count = 1): this {
    if (!Number.isFinite(score)) throw new RangeError(`a score must be a finite number, got ${score}`)
    if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`count must be a whole number >= 0`)
    let c = this.counts.get(score)
    if (!c) {
      c = [0, 0]
      this.counts.set(score, c)
    }
    c[positive ? 0 : 1] += count
    return this
  }

  merge(other: ScoreHistogram): this {
    for (const [score, pos, neg] of other.entries()) {
      this.add(score, true, pos)
      this.add(score, false, neg)
    }
    return this
  }

  /** Unsorted [score, positives, negatives] rows. */
  entries(): ScoreEntry[] {
    return [...this.counts].map(([score, [pos, neg]]) => [score, pos, neg])
  }

  static fromEntries(entries: Iterable<ScoreEntry>): ScoreHistogram {
    const h = new ScoreHistogram()
    for (const [score, pos, neg] of entries) {
      h.add(score, true, pos)
      h.add(score, false, neg)
    }
    return h
  }

  get distinctScores(): number {
    return this.counts.size
  }

  get positives(): number {
    let n = 0
    for (const [pos] of this.counts.values()) n += pos
    return n
  }

  get negatives(): number {
    let n = 0
    for (const [, neg] of this.counts.values()) n += neg
    return n
  }
}

/**
 * Exact ROC AUC = P(score of a positive > score of a negative) + 0.5 * P(tie), the Mann-Whitney
 * U / (n1 n0), by one pass over the sorted distinct scores. Undefined without positives or
 * without negatives.
 */
export function aucRoc(hist: ScoreHistogram): Maybe {
  const rows = hist.entries().sort((x, y) => x[0] - y[0])
  let positives = 0
  let negatives = 0
  for (const [, pos, neg] of rows) {
    positives += pos
    negatives += neg
  }
  if (positives === 0 && negatives === 0) return undefinedBecause('no scored events')
  if (positives === 0) return undefinedBecause('no positives (attacks) among the scored events')
  if (negatives === 0) return undefinedBecause('no negatives (benign events) among the scored events')
  let negativesBelow = 0
  let wins = 0
  for (const [, pos, neg] of rows) {
    wins += pos * (negativesBelow + 0.5 * neg)
    negativesBelow += neg
  }
  return defined(wins / positives / negatives)
}

export type MetricName = 'precision' | 'recall' | 'f1' | 'accuracy' | 'fpr' | 'mcc' | 'auc_roc'

export interface RuleMetrics extends Confusion {
  precision: number | null
  recall: number | null
  f1: number | null
  accuracy: number | null
  fpr: number | null
  mcc: number | null
  auc_roc: number | null
  /** For each metric that is null: why, in words. */
  undefined: Partial<Record<MetricName, string>>
}

function assertConfusion(c: Confusion): void {
  for (const k of ['tp', 'fp', 'tn', 'fn'] as const) {
    if (!Number.isSafeInteger(c[k]) || c[k] < 0) {
      throw new RangeError(`confusion ${k} must be a whole number >= 0, got ${c[k]}`)
    }
  }
}

/**
 * precision = tp/(tp+fp), recall = tp/(tp+fn), f1 = 2tp/(2tp+fp+fn) (defined whenever there is
 * a positive or a positive prediction: a rule that catches no attack has F1 0, as scikit-learn
 * >= 1.3), accuracy, fpr = fp/(fp+tn), Matthews' correlation (null when any margin is zero), and
 * the ROC AUC of the scores when a histogram is given.
 */
export function ruleMetrics(c: Confusion, hist?: ScoreHistogram | null): RuleMetrics {
  assertConfusion(c)
  const { tp, fp, tn, fn } = c
  const why: Partial<Record<MetricName, string>> = {}
  const ratio = (name: MetricName, num: number, den: number, reason: string): number | null => {
    if (den === 0) {
      why[name] = reason
      return null
    }
    return num / den
  }
  const total = tp + fp + tn + fn
  const precision = ratio('precision', tp, tp + fp, 'no predicted positives: the rule blocked nothing')
  const recall = ratio('recall', tp, tp + fn, 'no positives: the traffic has no attacks')
  const f1 = ratio('f1', 2 * tp, 2 * tp + fp + fn, 'no positives and no predicted positives')
  const accuracy = ratio('accuracy', tp + tn, total, 'no events')
  const fpr = ratio('fpr', fp, fp + tn, 'no negatives: the traffic has no benign events')

  let mcc: number | null = null
  const zeroMargins = [
    [tp + fp, 'no predicted positives'],
    [tn + fn, 'no predicted negatives'],
    [tp + fn, 'no positives'],
    [tn + fp, 'no negatives'],
  ]
    .filter(([n]) => n === 0)
    .map(([, what]) => what as string)
  if (zeroMargins.length > 0) {
    why.mcc = `a zero margin (${zeroMargins.join(', ')}): the correlation is 0/0`
  } else {
    // The numerator exactly (tp*tn can pass 2^53), then the denominator without overflow.
    const numerator = Number(BigInt(tp) * BigInt(tn) - BigInt(fp) * BigInt(fn))
    mcc = numerator / (Math.sqrt((tp + fp) * (tp + fn)) * Math.sqrt((tn + fp) * (tn + fn)))
  }

  let auc: number | null = null
  if (!hist) {
    why.auc_roc = 'no scores were recorded'
  } else {
    const a = aucRoc(hist)
    if (a.value === null) why.auc_roc = a.reason
    auc = a.value
  }
  return { tp, fp, tn, fn, precision, recall, f1, accuracy, fpr, mcc, auc_roc: auc, undefined: why }
}
