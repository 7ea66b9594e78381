/**
 * Bayesian A/B tests of two arms, 'control' and 'test': observations are recorded in batches
 * (successes out of trials, by hand or from a stored shadow evaluation), results are Beta(1, 1)
 * posteriors compared exactly and by Thompson sampling, with a sample-ratio-mismatch check. A test
 * becomes conclusive only when both arms reached the minimum sample size and one arm is best with
 * at least the confidence level; that verdict is then stored on the test (once).
 */
import { randomInt, randomUUID } from 'node:crypto'
import { UUID } from '../uuid.js'
import { wholeNumberOf } from '../whole-number.js'
import { evaluationId } from './evaluations.js'
import { formatRef, isRuleVersion } from './rules.js'
import type pg from 'pg'
import { isTimeout, type PgErrorLike, toTimeoutError } from '../db/pg-errors.js'
import { transaction } from '../db/tx.js'
import { ConflictError, OperationError, UsageError } from '../errors.js'
import {
  type BetaPosterior,
  type CredibleInterval,
  credibleInterval,
  posterior,
  posteriorMean,
  probBetterExact,
  thompson,
  thompsonDraw,
} from './bayes.js'
import { seededRandom } from './random.js'
import { chiSquareGoodnessOfFit, defined } from './stats.js'
import { thousands } from '../thousands.js'

export const VARIANTS = ['control', 'test'] as const
export type Variant = (typeof VARIANTS)[number]

export const AB_DEFAULTS = {
  confidence: 0.95,
  minSampleSize: 1000,
  /** Thompson seed of `ab results`: fixed, so the same data always prints the same numbers. */
  seed: 1,
  draws: 100_000,
  /** A sample ratio mismatch is flagged below this p-value. */
  srmAlpha: 0.001,
  intervalLevel: 0.95,
} as const

export interface AbTest {
  id: string
  name: string
  control_label: string
  test_label: string
  min_sample_size: number
  confidence_level: number
  status: 'running' | 'concluded' | 'stopped'
  winner: Variant | null
  created_at: string
  concluded_at: string | null
  /** Units `ab assign` gave each arm (its --dry-run aside): the split the sample-ratio check expects. */
  assigned: Record<Variant, number>
}

export interface ArmCounts {
  successes: number
  trials: number
}

export type Counts = Record<Variant, ArmCounts>

// --- input checks: one sentence naming the flag, exit 2, before anything is written -------------

const NAME = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/

function required(value: unknown, field: string, what: string): void {
  if (value === undefined || value === null) throw new UsageError(`${field} is required: ${what}.`)
}

export function testName(value: unknown, field = '--name'): string {
  required(value, field, 'a unique name for the test, e.g. sqli-v2')
  if (typeof value !== 'string' || !NAME.test(value) || UUID.test(value)) {
    throw new UsageError(
      `${field} must be 1-128 characters of letters, digits, '.', '_', ':', '@' or '-', starting with a letter or digit, and not a UUID; got ${JSON.stringify(value ?? null)}.`,
    )
  }
  return value
}

export function armLabel(value: unknown, field: string): string {
  required(value, field, 'what the arm runs, e.g. waf-sqli@1')
  if (
    typeof value !== 'string' ||
    value.trim() === '' ||
    value.length > 200 ||
    /[\u0000-\u001f\u007f]/.test(value)
  ) {
    throw new UsageError(
      `${field} must name what the arm runs (e.g. waf-sqli@1): 1-200 printable characters; got ${JSON.stringify(value ?? null)}.`,
    )
  }
  return value
}

export function confidence(value: unknown, field = '--confidence'): number {
  const n =
    typeof value === 'number'
      ? value
      : typeof value === 'string' && /^\d*\.?\d+$/.test(value)
        ? Number(value)
        : NaN
  if (!(n > 0.5 && n < 1)) {
    throw new UsageError(
      `${field} must be a number above 0.5 and below 1, e.g. 0.95; got ${JSON.stringify(value)}.`,
    )
  }
  return n
}

function wholeNumber(value: unknown, field: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = wholeNumberOf(value)
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(
      `${field} must be a whole number${min > 0 ? ` of at least ${min}` : ' (0 or more)'}${max < Number.MAX_SAFE_INTEGER ? ` and at most ${max}` : ''}; got ${JSON.stringify(value ?? null)}.`,
    )
  }
  return n
}

export function minSampleSize(value: unknown, field = '--min-sample-size'): number {
  return wholeNumber(value, field, 1, 2_147_483_647)
}

export function seed(value: unknown, field = '--seed'): number {
  return wholeNumber(value, field, 0, 0xffffffff)
}

export function variant(value: unknown, field = '--variant'): Variant {
  if (value === undefined || value === null)
    throw new UsageError(`${field} is required: 'control' or 'test'.`)
  if (value !== 'control' && value !== 'test') {
    throw new UsageError(`${field} must be 'control' or 'test'; got ${JSON.stringify(value)}.`)
  }
  return value
}

/** successes and trials of one batch: 0 <= successes <= trials, trials >= 1. */
export function counts(successes: unknown, trials: unknown): ArmCounts {
  const t = wholeNumber(trials, '--trials', 1)
  const s = wholeNumber(successes, '--successes', 0)
  if (s > t) throw new UsageError(`--successes (${s}) cannot be more than --trials (${t}).`)
  return { successes: s, trials: t }
}

// --- storage -------------------------------------------------------------------------------------

interface TestRow {
  id: string
  name: string
  control_label: string
  test_label: string
  min_sample_size: number
  confidence_level: string
  status: AbTest['status']
  winner: string | null
  created_at: Date
  concluded_at: Date | null
  assigned_control: string
  assigned_test: string
}

const TEST_COLUMNS =
  'id, name, control_label, test_label, min_sample_size, confidence_level, status, winner, created_at, concluded_at, assigned_control::text, assigned_test::text'

function toTest(r: TestRow): AbTest {
  return {
    id: r.id,
    name: r.name,
    control_label: r.control_label,
    test_label: r.test_label,
    min_sample_size: r.min_sample_size,
    confidence_level: Number(r.confidence_level),
    status: r.status,
    winner: r.winner === 'control' || r.winner === 'test' ? r.winner : null,
    created_at: r.created_at.toISOString(),
    concluded_at: r.concluded_at ? r.concluded_at.toISOString() : null,
    assigned: { control: Number(r.assigned_control), test: Number(r.assigned_test) },
  }
}

async function query<R extends pg.QueryResultRow>(
  db: pg.Pool | pg.PoolClient,
  what: string,
  sql: string,
  params: unknown[],
  timeoutMs: number,
): Promise<pg.QueryResult<R>> {
  try {
    return await db.query<R>(sql, params)
  } catch (err) {
    if (isTimeout(err)) throw toTimeoutError(err, what, timeoutMs)
    throw err
  }
}

export interface StoreOptions {
  timeoutMs: number
}

export interface CreateInput {
  name: string
  control: string
  test: string
  confidence?: number
  minSampleSize?: number
}

export async function createAbTest(
  pool: pg.Pool,
  input: CreateInput,
  options: StoreOptions,
): Promise<AbTest> {
  const name = testName(input.name)
  const controlLabel = armLabel(input.control, '--control')
  const testLabel = armLabel(input.test, '--test')
  // Both arms running one thing can only tie: a test that cannot conclude anything.
  if (testLabel.trim() === controlLabel.trim())
    throw new UsageError(
      `--test must name something other than --control; both are ${JSON.stringify(testLabel)}.`,
    )
  const level = confidence(input.confidence ?? AB_DEFAULTS.confidence)
  const minimum = minSampleSize(input.minSampleSize ?? AB_DEFAULTS.minSampleSize)
  try {
    const { rows } = await query<TestRow>(
      pool,
      'Creating the A/B test',
      `insert into shadow.ab_tests (id, name, variants, min_sample_size, confidence_level, control_label, test_label)
       values ($1, $2, $3, $4, $5, $6, $7) returning ${TEST_COLUMNS}`,
      [randomUUID(), name, [...VARIANTS], minimum, level, controlLabel, testLabel],
      options.timeoutMs,
    )
    return toTest(rows[0]!)
  } catch (err) {
    const e = err as PgErrorLike & { constraint?: string }
    if (e?.code === '23505' && e.constraint === 'ab_tests_name_key') {
      throw new ConflictError(`An A/B test named '${name}' already exists.`, {
        code: 'AB_TEST_EXISTS',
        hint: `Pick another --name, or see it with 'shieldx ab results ${name}'.`,
      })
    }
    throw err
  }
}

/** By name, or by id when TEST is a UUID. */
export async function findAbTest(
  db: pg.Pool | pg.PoolClient,
  ref: string,
  options: StoreOptions & { forUpdate?: boolean },
): Promise<AbTest> {
  const byId = UUID.test(ref)
  const { rows } = await query<TestRow>(
    db,
    'Reading the A/B test',
    `select ${TEST_COLUMNS} from shadow.ab_tests where ${byId ? 'id = $1::uuid' : 'name = $1'}${options.forUpdate ? ' for update' : ''}`,
    [ref],
    options.timeoutMs,
  )
  if (!rows[0]) {
    throw new OperationError(`There is no A/B test ${byId ? 'with id' : 'named'} '${ref}'.`, {
      code: 'AB_TEST_NOT_FOUND',
      hint: "Create it with 'shieldx ab create'.",
    })
  }
  return toTest(rows[0])
}

export async function readCounts(
  db: pg.Pool | pg.PoolClient,
  testId: string,
  options: StoreOptions,
): Promise<Counts> {
  const { rows } = await query<{ variant: string; successes: string; trials: string }>(
    db,
    'Reading the A/B observations',
    `select variant, sum(successes)::text as successes, sum(trials)::text as trials
       from shadow.ab_observations where test_id = $1 group by variant`,
    [testId],
    options.timeoutMs,
  )
  const out: Counts = { control: { successes: 0, trials: 0 }, test: { successes: 0, trials: 0 } }
  for (const r of rows) {
    if (r.variant !== 'control' && r.variant !== 'test') continue
    // (record refuses a batch that would pass this; a sum stored before that check could)
    if (BigInt(r.trials) > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new OperationError(
        `The ${r.variant} arm holds ${r.trials} trials, more than can be counted exactly (${thousands(Number.MAX_SAFE_INTEGER)}).`,
        { code: 'AB_COUNTS_TOO_LARGE' },
      )
    }
    out[r.variant] = { successes: Number(r.successes), trials: Number(r.trials) }
  }
  return out
}

/**
 * The test, with its records serialized: one at a time per test, so the room afterBatch checked is
 * the room there is. An advisory lock, not FOR UPDATE on the test's row, which `ab assign`'s
 * count updates: assignments never wait for a record.
 */
async function lockedTest(client: pg.PoolClient, ref: string, options: StoreOptions): Promise<AbTest> {
  const t = await findAbTest(client, ref, options)
  await query(
    client,
    'Waiting for another record into the test',
    'select pg_advisory_xact_lock(hashtextextended($1, 0))',
    [`shieldx.ab:${t.id}`],
    options.timeoutMs,
  )
  return t
}

/**
 * The arms' totals once `batch` is recorded over `totals` (records into a test are serialized, so
 * that is what the database will hold). A batch that would take an arm past 2^53 - 1 trials is
 * refused (exit 2): beyond that the sums can no longer be counted exactly, and the test could not
 * be read again.
 */
function afterBatch(t: AbTest, totals: Counts, batch: Array<{ variant: Variant } & ArmCounts>): Counts {
  const out: Counts = { control: { ...totals.control }, test: { ...totals.test } }
  for (const b of batch) {
    if (out[b.variant].trials + b.trials > Number.MAX_SAFE_INTEGER) {
      throw new UsageError(
        `Recording ${thousands(b.trials)} more trial${b.trials === 1 ? '' : 's'} would take the ${b.variant} arm of '${t.name}' past ${thousands(Number.MAX_SAFE_INTEGER)} trials, more than can be counted exactly; nothing was recorded.`,
        { code: 'AB_COUNTS_TOO_LARGE' },
      )
    }
    out[b.variant].trials += b.trials
    out[b.variant].successes += b.successes
  }
  return out
}

async function testWithCounts(pool: pg.Pool, ref: string, options: StoreOptions) {
  const t = await findAbTest(pool, ref, options)
  return { t, c: await readCounts(pool, t.id, options) }
}

export interface RecordResult {
  test: string
  test_id: string
  evaluation_id: string | null
  recorded: Array<{ variant: Variant } & ArmCounts>
  /** Both arms' totals after this batch. */
  totals: Counts
  /** E.g. recording into a concluded test. */
  warnings: string[]
}

/**
 * Recording into a concluded (or stopped) test is allowed, so late data is not lost, but it does
 * not reopen the test: the stored verdict stays, and the result says so.
 */
function lateWarning(t: AbTest): string[] {
  if (t.status === 'running') return []
  const when = t.concluded_at ? ` on ${t.concluded_at}` : ''
  return [
    t.status === 'concluded'
      ? `A/B test '${t.name}' concluded${when} (winner: ${t.winner ?? 'none'}); the observations are recorded, but the stored verdict does not change.`
      : `A/B test '${t.name}' is stopped; the observations are recorded, but it stays stopped.`,
  ]
}

export async function recordObservation(
  pool: pg.Pool,
  ref: string,
  input: { variant: Variant; successes: number; trials: number },
  options: StoreOptions,
): Promise<RecordResult> {
  const v = variant(input.variant)
  const c = counts(input.successes, input.trials)
  return transaction(
    pool,
    async (client) => {
      const t = await lockedTest(client, ref, options)
      const totals = afterBatch(t, await readCounts(client, t.id, options), [{ variant: v, ...c }])
      await query(
        client,
        'Recording the observation',
        'insert into shadow.ab_observations (test_id, variant, successes, trials) values ($1, $2, $3, $4)',
        [t.id, v, c.successes, c.trials],
        options.timeoutMs,
      )
      return {
        test: t.name,
        test_id: t.id,
        evaluation_id: null,
        recorded: [{ variant: v, ...c }],
        totals,
        warnings: lateWarning(t),
      }
    },
    { what: 'Recording the observation', timeoutMs: options.timeoutMs },
  )
}

const CONFUSION_KEYS = ['tp', 'fp', 'tn', 'fn'] as const

/** successes = tp + tn (the rule decided right), trials = tp + fp + tn + fn. */
function confusionCounts(doc: unknown, evaluation: string, key: string, arm: Variant): ArmCounts {
  const m = (doc as Record<string, unknown> | null)?.[key] as Record<string, unknown> | undefined
  const ok = m && CONFUSION_KEYS.every((k) => Number.isSafeInteger(m[k]) && (m[k] as number) >= 0)
  if (!ok) {
    throw new OperationError(
      `Evaluation ${evaluation} has no confusion counts (tp, fp, tn, fn) under metrics.${key}, so the ${arm} arm cannot be recorded.`,
      { code: 'EVALUATION_WITHOUT_METRICS' },
    )
  }
  const [tp, fp, tn, fn] = CONFUSION_KEYS.map((k) => m[k] as number) as [number, number, number, number]
  const trials = tp + fp + tn + fn
  if (trials === 0) {
    throw new OperationError(
      `Evaluation ${evaluation} has no samples for the ${arm} arm (tp + fp + tn + fn = 0).`,
      {
        code: 'EVALUATION_WITHOUT_SAMPLES',
      },
    )
  }
  return { successes: tp + tn, trials }
}

/** Both arms from a stored evaluation: control <- control_metrics, test <- candidate_metrics; once. */
export async function recordEvaluation(
  pool: pg.Pool,
  ref: string,
  evaluation: string,
  options: StoreOptions,
): Promise<RecordResult> {
  const id = evaluationId(evaluation, '--from-evaluation')
  return transaction(
    pool,
    async (client) => {
      const t = await lockedTest(client, ref, options)
      const { rows } = await query<{
        metrics: unknown
        rule_id: string
        control_rule_id: string
        control_version: number
        candidate_version: number
      }>(
        client,
        'Reading the evaluation',
        'select metrics, rule_id, control_rule_id, control_version, candidate_version from shadow.evaluations where id = $1',
        [id],
        options.timeoutMs,
      )
      const e = rows[0]
      if (!e) {
        throw new OperationError(`There is no evaluation with id ${id}.`, {
          code: 'EVALUATION_NOT_FOUND',
          hint: "Evaluations are stored by 'shieldx evaluate'.",
        })
      }
      // An arm labelled as a rule version takes only that version's results: recorded under
      // another's name (or swapped), they would make the wrong rule the winner.
      const ran = {
        control: formatRef({ id: e.control_rule_id, version: e.control_version }),
        test: formatRef({ id: e.rule_id, version: e.candidate_version }),
      }
      for (const v of VARIANTS) {
        const label = v === 'control' ? t.control_label : t.test_label
        if (isRuleVersion(label) && label !== ran[v]) {
          throw new UsageError(
            `The ${v} arm of A/B test '${t.name}' is ${label}, but evaluation ${id} ran ${ran[v]} as its ${v === 'test' ? 'candidate' : 'control'}; nothing was recorded.`,
            {
              code: 'EVALUATION_MISMATCH',
              hint: `Record it into a test whose control is ${ran.control} and whose test is ${ran.test}.`,
            },
          )
        }
      }
      const arms: Array<[Variant, ArmCounts]> = [
        ['control', confusionCounts(e.metrics, id, 'control_metrics', 'control')],
        ['test', confusionCounts(e.metrics, id, 'candidate_metrics', 'test')],
      ]
      const totals = afterBatch(
        t,
        await readCounts(client, t.id, options),
        arms.map(([variant, c]) => ({ variant, ...c })),
      )
      try {
        for (const [v, c] of arms) {
          await query(
            client,
            'Recording the evaluation',
            `insert into shadow.ab_observations (test_id, variant, successes, trials, evaluation_id)
               values ($1, $2, $3, $4, $5)`,
            [t.id, v, c.successes, c.trials, id],
            options.timeoutMs,
          )
        }
      } catch (err) {
        const pgErr = err as PgErrorLike & { constraint?: string }
        if (pgErr?.code === '23505' && pgErr.constraint === 'ab_observations_one_evaluation') {
          throw new ConflictError(`Evaluation ${id} is already recorded in A/B test '${t.name}'.`, {
            code: 'EVALUATION_ALREADY_RECORDED',
            hint: 'Each evaluation counts once per test.',
          })
        }
        throw err
      }
      const warnings = lateWarning(t)
      return {
        test: t.name,
        test_id: t.id,
        evaluation_id: id,
        recorded: arms.map(([v, c]) => ({ variant: v, ...c })),
        totals,
        warnings,
      }
    },
    { what: 'Recording the evaluation', timeoutMs: options.timeoutMs },
  )
}

// --- results -------------------------------------------------------------------------------------

export interface ArmResult extends ArmCounts {
  variant: Variant
  label: string
  posterior: BetaPosterior
  mean: number
  credible_interval: CredibleInterval
  /** P(this arm has the higher rate), Thompson sampling. */
  prob_best: number
  /** E[max rate - this arm's rate], Thompson sampling. */
  expected_loss: number
}

export interface Check {
  check: 'min_sample_size' | 'confidence'
  variant: Variant | null
  passed: boolean
  detail: string
}

export interface SampleRatio {
  /**
   * 'even': a chi-square test against 50/50. 'assignments': `ab assign` counted units for the test,
   * and no arm may have more trials than units (no split is expected).
   */
  expected_from: 'assignments' | 'even'
  /** control's and test's expected shares; null with 'assignments' */
  expected_split: [number, number] | null
  /** units `ab assign` gave each arm */
  assigned: Record<Variant, number>
  statistic: number | null
  p_value: number | null
  alpha: number
  flagged: boolean
  reason?: string
}

export interface AbResults {
  test: Pick<AbTest, 'id' | 'name' | 'min_sample_size' | 'confidence_level' | 'created_at'>
  /** conclusive only when every check passed, or when the test concluded before (stored). */
  status: 'conclusive' | 'running'
  verdict: string
  /** The verdict of record: once a test concluded, its stored winner, whatever came since. */
  winner: Variant | null
  /** What the figures say now, stored verdict aside (they differ after late data). */
  current: { status: 'conclusive' | 'running'; winner: Variant | null }
  /** The arm more likely to be best, conclusive or not. */
  leader: Variant | null
  checks: Check[]
  arms: ArmResult[]
  prob_test_beats_control: {
    exact: number | null
    exact_reason?: string
    thompson: number
    /** Which one the confidence check used: the exact value when there is one. */
    used: 'exact' | 'thompson'
  }
  sample_ratio: SampleRatio
  thompson: { draws: number; seed: number }
  /** What is stored on the test: its status, winner and when it concluded. */
  stored: Pick<AbTest, 'status' | 'winner' | 'concluded_at'>
  warnings: string[]
}

/** A p-value in `digits` significant digits; an underflow to 0 reads 0, not 0.0. */
export const pValue = (p: number, digits: number): string => (p === 0 ? '0' : p.toPrecision(digits))

const fmtP = (p: number) => (p === 1 ? '1' : p >= 0.9999 ? p.toFixed(6) : p.toFixed(4))

/**
 * The figures and the verdict from a test and its counts; no database. The confidence check uses
 * the exact P(test beats control) (closed form) when it can be computed and Thompson's estimate
 * otherwise, so the verdict carries no Monte-Carlo noise; both are reported.
 */
export function analyse(
  t: AbTest,
  c: Counts,
  options: { seed?: number } = {},
): Omit<AbResults, 'stored' | 'current'> {
  const s = options.seed ?? AB_DEFAULTS.seed
  const posts = VARIANTS.map((v) => posterior(c[v].successes, c[v].trials))
  const mc = thompson(posts, { draws: AB_DEFAULTS.draws, seed: s })
  // Arms with the same posterior, or each with as many successes as failures (both symmetric
  // about 1/2; no data at all is one case), are tied: P(test beats control) is 1/2 exactly. The
  // closed form lands a rounding error to one side (0.49999999999995 for 50/100 against 50/100),
  // which named a leader where there is none.
  const [pc, pt] = [posts[0]!, posts[1]!]
  const tied = (pc.alpha === pt.alpha && pc.beta === pt.beta) || posts.every((p) => p.alpha === p.beta)
  const exact = tied ? defined(0.5) : probBetterExact(pc, pt)
  const pTest = exact.value ?? mc.prob_best[1]!
  const probBest: Record<Variant, number> = { control: 1 - pTest, test: pTest }
  const arms: ArmResult[] = VARIANTS.map((v, i) => ({
    variant: v,
    label: v === 'control' ? t.control_label : t.test_label,
    successes: c[v].successes,
    trials: c[v].trials,
    posterior: posts[i]!,
    mean: posteriorMean(posts[i]!),
    credible_interval: credibleInterval(posts[i]!, AB_DEFAULTS.intervalLevel),
    prob_best: mc.prob_best[i]!,
    expected_loss: mc.expected_loss[i]!,
  }))

  const leader: Variant | null = pTest > 0.5 ? 'test' : pTest < 0.5 ? 'control' : null
  const checks: Check[] = VARIANTS.map((v) => {
    const n = c[v].trials
    const passed = n >= t.min_sample_size
    return {
      check: 'min_sample_size',
      variant: v,
      passed,
      detail: passed
        ? `${v} reached the minimum sample size (${thousands(n)} trials, minimum ${thousands(t.min_sample_size)})`
        : `${v} has ${thousands(n)} of the ${thousands(t.min_sample_size)} trials it needs`,
    }
  })
  const how = exact.value === null ? 'Thompson' : 'exact'
  const best = leader ?? 'test'
  const confident = probBest[best] >= t.confidence_level
  checks.push({
    check: 'confidence',
    variant: leader,
    passed: confident,
    detail: confident
      ? `${best} is best with probability ${fmtP(probBest[best])} (${how}), at least the ${t.confidence_level} required`
      : leader === null
        ? `the arms are tied (each is best with probability 0.5); ${t.confidence_level} is required`
        : `${leader} leads, but its probability of being best, ${fmtP(probBest[leader])} (${how}), is below the ${t.confidence_level} required`,
  })
  const conclusive = checks.every((x) => x.passed)
  const winner = conclusive ? best : null

  const { sampleRatio, warning } = sampleRatioCheck(t.assigned, c)
  const warnings: string[] = warning ? [warning] : []

  const failed = checks.filter((x) => !x.passed).map((x) => x.detail)
  const verdict = conclusive
    ? `Conclusive: ${winner} (${winner === 'control' ? t.control_label : t.test_label}) is better, with probability ${fmtP(probBest[winner!])}.`
    : `Running: ${failed.join('; ')}.`
  return {
    test: {
      id: t.id,
      name: t.name,
      min_sample_size: t.min_sample_size,
      confidence_level: t.confidence_level,
      created_at: t.created_at,
    },
    status: conclusive ? 'conclusive' : 'running',
    verdict,
    winner,
    leader,
    checks,
    arms,
    prob_test_beats_control: {
      exact: exact.value,
      ...(exact.reason ? { exact_reason: exact.reason } : {}),
      thompson: mc.prob_best[1]!,
      used: exact.value === null ? 'thompson' : 'exact',
    },
    sample_ratio: sampleRatio,
    thompson: { draws: mc.draws, seed: s },
    warnings,
  }
}

/**
 * Results of a test. When conclusive, the verdict is stored on the test (status 'concluded',
 * winner, concluded_at) the first time only: running results again changes nothing.
 */
export async function abResults(
  pool: pg.Pool,
  ref: string,
  options: StoreOptions & { seed?: number },
): Promise<AbResults> {
  const { t, c } = await testWithCounts(pool, ref, options)
  const r = analyse(t, c, options.seed === undefined ? {} : { seed: options.seed })
  let stored: AbResults['stored'] = { status: t.status, winner: t.winner, concluded_at: t.concluded_at }
  if (r.status === 'conclusive' && t.status === 'running') {
    const { rows } = await query<TestRow>(
      pool,
      'Storing the verdict',
      `update shadow.ab_tests set status = 'concluded', winner = $2, concluded_at = now()
        where id = $1 and status = 'running' returning ${TEST_COLUMNS}`,
      [t.id, r.winner],
      options.timeoutMs,
    )
    // Another run may have stored it a moment ago: read what is there.
    const now = rows[0] ? toTest(rows[0]) : await findAbTest(pool, t.id, options)
    stored = { status: now.status, winner: now.winner, concluded_at: now.concluded_at }
  }
  const current = { status: r.status, winner: r.winner }
  if (stored.status === 'concluded' && (r.status !== 'conclusive' || r.winner !== stored.winner)) {
    const since = r.status === 'conclusive' ? `now favour ${r.winner}` : 'are no longer conclusive'
    r.warnings.push(
      `The test concluded on ${stored.concluded_at} with winner ${stored.winner ?? 'none'}; with the data recorded since, the figures ${since}. The stored verdict stands.`,
    )
    const label = stored.winner === 'control' ? t.control_label : t.test_label
    r.status = 'conclusive'
    r.winner = stored.winner
    r.verdict = `Concluded on ${stored.concluded_at}: ${stored.winner} (${label}) is better (the stored verdict); the figures recorded since ${since}.`
  }
  if (stored.status === 'stopped') r.warnings.push('The test is stopped.')
  return { ...r, current, stored }
}

/**
 * The sample-ratio-mismatch check. Units handed out by `ab assign` follow Thompson sampling, whose
 * split is uneven by design and moves as the arms' figures do, so a fixed expected split cannot be
 * tested against: recorded trials lag the assignments, and the latest units lean to the leading
 * arm. Once a test has units counted, the check is that no arm has more trials than units it was
 * given (units recorded twice, or trials from elsewhere); a lag only ever leaves trials short. A
 * test without counted units (counts recorded by hand, or from evaluations, which give both arms
 * the same events) gets a chi-square test against 50/50.
 */
export function sampleRatioCheck(
  assigned: Record<Variant, number>,
  c: Counts,
): { sampleRatio: SampleRatio; warning: string | null } {
  const units = assigned.control + assigned.test
  const base = { assigned: { ...assigned }, alpha: AB_DEFAULTS.srmAlpha }
  if (units > 0) {
    const over = VARIANTS.find((v) => c[v].trials > assigned[v])
    return {
      sampleRatio: {
        ...base,
        expected_split: null,
        expected_from: 'assignments',
        statistic: null,
        p_value: null,
        flagged: over !== undefined,
        reason: `units assigned by Thompson sampling (ab assign): each arm's trials are checked against the units it was given`,
      },
      warning:
        over === undefined
          ? null
          : `Sample ratio mismatch: ${over} has ${thousands(c[over].trials)} trials, but ab assign gave it ${thousands(assigned[over])} units; units were recorded twice or came from elsewhere. Check how units are assigned before trusting the result.`,
    }
  }
  const srm = chiSquareGoodnessOfFit([c.control.trials, c.test.trials], [0.5, 0.5])
  const flagged = srm.p_value !== null && srm.p_value < AB_DEFAULTS.srmAlpha
  return {
    sampleRatio: {
      ...base,
      expected_split: [0.5, 0.5],
      expected_from: 'even',
      statistic: srm.statistic,
      p_value: srm.p_value,
      flagged,
      ...(srm.reason ? { reason: srm.reason } : {}),
    },
    warning: flagged
      ? `Sample ratio mismatch: control has ${thousands(c.control.trials)} trials and test ${thousands(c.test.trials)}, p = ${pValue(srm.p_value!, 2)} against a 50/50 split (flagged below ${AB_DEFAULTS.srmAlpha}); check how units are assigned before trusting the result.`
      : null,
  }
}

// --- assignment ----------------------------------------------------------------------------------

export interface Assignment {
  test: string
  variant: Variant
  /** The rate drawn from each arm's posterior; the higher one wins. */
  draws: Record<Variant, number>
  seed: number
  /** false with --dry-run: the draw was not counted as a unit given out */
  counted: boolean
  /** units given to each arm so far, this one included when counted */
  assigned: Record<Variant, number>
}

/** One Thompson draw per arm from the current posteriors: which variant the next unit gets. */
export function assignFromCounts(
  c: Counts,
  rngSeed: number,
): { variant: Variant; draws: Record<Variant, number> } {
  const d = thompsonDraw(
    VARIANTS.map((v) => posterior(c[v].successes, c[v].trials)),
    seededRandom(rngSeed),
  )
  return { variant: VARIANTS[d.index]!, draws: { control: d.draws[0]!, test: d.draws[1]! } }
}

/**
 * Without a seed the draw is random (a fixed default would always give the same answer). The unit
 * is counted on its arm (one atomic increment, so concurrent callers never lose one) unless
 * `dryRun`: those counts are the split the sample-ratio check expects.
 */
export async function assignVariant(
  pool: pg.Pool,
  ref: string,
  options: StoreOptions & { seed?: number; dryRun?: boolean },
): Promise<Assignment> {
  const { t, c } = await testWithCounts(pool, ref, options)
  const s = options.seed ?? randomInt(0x100000000)
  const a = assignFromCounts(c, s)
  let assigned = t.assigned
  if (!options.dryRun) {
    const column = a.variant === 'control' ? 'assigned_control' : 'assigned_test'
    const { rows } = await query<{ assigned_control: string; assigned_test: string }>(
      pool,
      'Counting the assignment',
      `update shadow.ab_tests set ${column} = ${column} + 1 where id = $1
        returning assigned_control::text, assigned_test::text`,
      [t.id],
      options.timeoutMs,
    )
    assigned = { control: Number(rows[0]!.assigned_control), test: Number(rows[0]!.assigned_test) }
  }
  return { test: t.name, ...a, seed: s, counted: !options.dryRun, assigned }
}
