/**
 * A/B tests through the CLI against a real PostgreSQL: create, record (by hand and from a stored
 * evaluation), results (figures checked against scipy in test/fixtures/stats/cases.json), the
 * verdict and its thresholds, the sample-ratio check, assignment, and refusals.
 */
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import pg from 'pg'
import { assignFromCounts, assignVariant } from '../src/core/shadow/ab.js'
import { posterior, probBetterExact } from '../src/core/shadow/bayes.js'
import { ROOT, runCli, tempHome } from './helpers/cli.js'
import { createTestDatabase, type TestDatabase } from './helpers/db.js'
import { cleanEnv } from './helpers/env.js'

interface AbArm {
  successes: number
  trials: number
  alpha: number
  beta: number
  mean: number
  lower: number
  upper: number
}
interface AbCase {
  control: AbArm
  test: AbArm
  prob_test_beats_control: number
}
const cases = JSON.parse(fs.readFileSync(path.join(ROOT, 'test/fixtures/stats/cases.json'), 'utf8')) as {
  ab: AbCase
  chisquare: Array<{ observed: number[]; proportions: number[]; statistic: number; p_value: number }>
}

let db: TestDatabase
let home: string

const env = () => cleanEnv({ CREDITS_DATABASE_URL: db.url, SHIELDX_HOME: home })
const cli = (args: string[]) => runCli(['--no-color', ...args], { env: env() })

async function json(args: string[]) {
  const r = await cli(['--json', ...args])
  return { ...r, doc: JSON.parse(r.stdout) }
}

async function count(sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await db.query<{ n: string }>(sql, params)
  return Number(rows[0]!.n)
}

/** Units ab assign gave each arm of a test, as stored. */
async function assignedUnits(name: string): Promise<{ control: number; test: number }> {
  const { rows } = await db.query<{ c: string; t: string }>(
    `select assigned_control::text as c, assigned_test::text as t from shadow.ab_tests where name = $1`,
    [name],
  )
  return { control: Number(rows[0]!.c), test: Number(rows[0]!.t) }
}

/** Sets the units ab assign gave each arm, as thousands of assignments would have. */
const giveUnits = (name: string, control: number, test: number) =>
  db.query(`update shadow.ab_tests set assigned_control = $2, assigned_test = $3 where name = $1`, [
    name,
    control,
    test,
  ])

const observations = (name: string) =>
  count(
    'select count(*) as n from shadow.ab_observations o join shadow.ab_tests t on t.id = o.test_id where t.name = $1',
    [name],
  )

async function create(name: string, ...extra: string[]) {
  const r = await json([
    'ab',
    'create',
    '--name',
    name,
    '--control',
    'waf-sqli@1',
    '--test',
    'waf-sqli@2',
    ...extra,
  ])
  expect(r.code, r.stderr).toBe(0)
  return r.doc as { id: string; name: string }
}

async function record(name: string, variant: string, successes: number, trials: number) {
  const r = await json([
    'ab',
    'record',
    name,
    '--variant',
    variant,
    '--successes',
    String(successes),
    '--trials',
    String(trials),
  ])
  expect(r.code, r.stderr).toBe(0)
  return r
}

function expectRel(actual: number, expected: number, what: string, rel = 1e-6) {
  expect(
    Math.abs(actual - expected) / Math.abs(expected),
    `${what}: ${actual} vs ${expected}`,
  ).toBeLessThanOrEqual(rel)
}

beforeAll(async () => {
  db = await createTestDatabase('ab')
  home = tempHome('ab')
  const r = await cli(['migrate', 'up', '--no-backup'])
  expect(r.code, r.stderr).toBe(0)
})
afterAll(async () => {
  await db.drop()
})

describe('ab create', () => {
  it('creates a running test with the defaults', async () => {
    const r = await json([
      'ab',
      'create',
      '--name',
      'defaults',
      '--control',
      'waf-sqli@1',
      '--test',
      'waf-sqli@2',
    ])
    expect(r.code, r.stderr).toBe(0)
    expect(r.doc).toMatchObject({
      name: 'defaults',
      control_label: 'waf-sqli@1',
      test_label: 'waf-sqli@2',
      min_sample_size: 1000,
      confidence_level: 0.95,
      status: 'running',
      winner: null,
      concluded_at: null,
    })
    expect(r.doc.id).toMatch(/^[0-9a-f-]{36}$/)
    const { rows } = await db.query('select variants from shadow.ab_tests where name = $1', ['defaults'])
    expect(rows[0]!.variants).toEqual(['control', 'test'])
  })

  it('a duplicate name is a conflict: exit 5', async () => {
    await create('dup')
    const r = await json(['ab', 'create', '--name', 'dup', '--control', 'a', '--test', 'b'])
    expect(r.code).toBe(5)
    expect(r.doc).toMatchObject({ ok: false, error: { code: 'AB_TEST_EXISTS', exit_code: 5 } })
    expect(r.stderr).toContain("An A/B test named 'dup' already exists.")
    expect(await count("select count(*) as n from shadow.ab_tests where name = 'dup'")).toBe(1)
  })

  it('bad input is exit 2 naming the flag, and nothing is written', async () => {
    const before = await count('select count(*) as n from shadow.ab_tests')
    const base = ['ab', 'create', '--name', 'bad', '--control', 'a', '--test', 'b']
    for (const [extra, flag] of [
      [['--confidence', '1.2'], '--confidence'],
      [['--confidence', '0.5'], '--confidence'],
      [['--confidence', 'high'], '--confidence'],
      [['--min-sample-size', '0'], '--min-sample-size'],
      [['--min-sample-size', '10.5'], '--min-sample-size'],
    ] as const) {
      const r = await cli([...base, ...extra])
      expect(r.code, extra.join(' ')).toBe(2)
      expect(r.stderr).toMatch(new RegExp(`^error: ${flag} must be`))
      expect(r.stdout).toBe('')
    }
    const missing = await cli(['ab', 'create', '--control', 'a', '--test', 'b'])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toContain('--name is required')
    const uuidName = await cli(['ab', 'create', '--name', randomUUID(), '--control', 'a', '--test', 'b'])
    expect(uuidName.code).toBe(2)
    const same = await cli(['ab', 'create', '--name', 'same', '--control', 'waf@1', '--test', 'waf@1 '])
    expect(same.code).toBe(2)
    expect(same.stderr).toContain('--test must name something other than --control')
    expect(await count('select count(*) as n from shadow.ab_tests')).toBe(before)
  })
})

describe('ab record and results', () => {
  it('figures match scipy: posteriors, means, 95% intervals, P(test beats control)', async () => {
    const t = await create('figures')
    const c = cases.ab
    // Batches add up: 200/400 + 280/600 = 480/1000.
    await record('figures', 'control', 200, 400)
    await record('figures', 'control', 280, 600)
    const rec = await record('figures', 'test', c.test.successes, c.test.trials)
    expect(rec.doc.totals).toEqual({
      control: { successes: 480, trials: 1000 },
      test: { successes: 540, trials: 1000 },
    })

    const r = await json(['ab', 'results', 'figures'])
    expect(r.code, r.stderr).toBe(0)
    for (const [i, arm] of [c.control, c.test].entries()) {
      const a = r.doc.arms[i]
      expect(a.variant).toBe(i === 0 ? 'control' : 'test')
      expect(a).toMatchObject({ successes: arm.successes, trials: arm.trials })
      expect(a.posterior).toEqual({ alpha: arm.alpha, beta: arm.beta })
      expectRel(a.mean, arm.mean, 'mean', 1e-12)
      expect(a.credible_interval.level).toBe(0.95)
      expectRel(a.credible_interval.lower, arm.lower, 'lower')
      expectRel(a.credible_interval.upper, arm.upper, 'upper')
    }
    const p = r.doc.prob_test_beats_control
    expect(Math.abs(p.exact - c.prob_test_beats_control)).toBeLessThan(1e-9)
    expect(p.used).toBe('exact')
    const tol = 4 * Math.sqrt((p.exact * (1 - p.exact)) / r.doc.thompson.draws) + 1e-3
    expect(Math.abs(p.thompson - p.exact)).toBeLessThan(tol)
    expect(r.doc.arms[1].prob_best).toBe(p.thompson)
    expect(r.doc.arms[0].prob_best + r.doc.arms[1].prob_best).toBeCloseTo(1, 12)
    expect(r.doc.arms[1].expected_loss).toBeLessThan(r.doc.arms[0].expected_loss)
    expect(r.doc.thompson).toEqual({ draws: 100_000, seed: 1 })
    expect(r.doc.sample_ratio).toMatchObject({ p_value: 1, flagged: false, alpha: 0.001 })

    // Both arms have 1,000 trials and P(test best) = 0.9964 >= 0.95: conclusive, and stored once.
    expect(r.doc.status).toBe('conclusive')
    expect(r.doc.winner).toBe('test')
    expect(r.doc.checks.every((x: { passed: boolean }) => x.passed)).toBe(true)
    expect(r.doc.verdict).toBe('Conclusive: test (waf-sqli@2) is better, with probability 0.9964.')
    expect(r.doc.stored).toMatchObject({ status: 'concluded', winner: 'test' })
    const row = await db.query('select status, winner, concluded_at from shadow.ab_tests where id = $1', [
      t.id,
    ])
    expect(row.rows[0]).toMatchObject({ status: 'concluded', winner: 'test' })

    // Reproducible with the default seed; idempotent on the stored verdict; by id too.
    const again = await json(['ab', 'results', t.id])
    expect(again.doc.arms).toEqual(r.doc.arms)
    expect(again.doc.stored).toEqual(r.doc.stored)
    expect(again.doc.warnings).toEqual([])
    const other = await json(['ab', 'results', 'figures', '--seed', '2'])
    expect(other.doc.arms[1].prob_best).not.toBe(r.doc.arms[1].prob_best)
    expect(other.doc.thompson.seed).toBe(2)
  })

  it('stays running below the minimum sample size however clear, and concludes exactly at it', async () => {
    await create('threshold', '--min-sample-size', '500')
    await record('threshold', 'control', 50, 200)
    await record('threshold', 'test', 150, 200)
    let r = await json(['ab', 'results', 'threshold'])
    expect(r.doc.status).toBe('running')
    expect(r.doc.winner).toBeNull()
    expect(r.doc.leader).toBe('test')
    expect(r.doc.prob_test_beats_control.exact).toBeGreaterThan(0.999999)
    expect(r.doc.checks).toEqual([
      {
        check: 'min_sample_size',
        variant: 'control',
        passed: false,
        detail: 'control has 200 of the 500 trials it needs',
      },
      {
        check: 'min_sample_size',
        variant: 'test',
        passed: false,
        detail: 'test has 200 of the 500 trials it needs',
      },
      {
        check: 'confidence',
        variant: 'test',
        passed: true,
        detail: 'test is best with probability 1 (exact), at least the 0.95 required',
      },
    ])
    expect(r.doc.verdict).toBe(
      'Running: control has 200 of the 500 trials it needs; test has 200 of the 500 trials it needs.',
    )
    expect(r.doc.stored.status).toBe('running')

    await record('threshold', 'control', 100, 299)
    await record('threshold', 'test', 200, 300)
    r = await json(['ab', 'results', 'threshold'])
    expect(r.doc.status).toBe('running')
    expect(r.doc.checks.map((c: { passed: boolean }) => c.passed)).toEqual([false, true, true])
    expect(r.doc.checks[0].detail).toBe('control has 499 of the 500 trials it needs')
    expect(
      await count(
        "select count(*) as n from shadow.ab_tests where name = 'threshold' and status = 'running'",
      ),
    ).toBe(1)

    await record('threshold', 'control', 0, 1)
    r = await json(['ab', 'results', 'threshold'])
    expect(r.doc.status).toBe('conclusive')
    expect(r.doc.winner).toBe('test')
    expect(r.doc.checks[0]).toMatchObject({
      passed: true,
      detail: 'control reached the minimum sample size (500 trials, minimum 500)',
    })
    expect(r.doc.stored).toMatchObject({ status: 'concluded', winner: 'test' })
  })

  it('stays running when no arm is confident enough, saying so', async () => {
    await create('close', '--min-sample-size', '100', '--confidence', '0.99')
    await record('close', 'control', 50, 100)
    await record('close', 'test', 55, 100)
    const r = await json(['ab', 'results', 'close'])
    expect(r.doc.status).toBe('running')
    expect(r.doc.checks[2]).toMatchObject({ check: 'confidence', variant: 'test', passed: false })
    expect(r.doc.checks[2].detail).toMatch(
      /^test leads, but its probability of being best, 0\.7\d{3} \(exact\), is below the 0\.99 required$/,
    )
  })

  it('past the minimum sample size, the check gives the trials and the minimum the right way round', async () => {
    await create('past-minimum', '--min-sample-size', '100')
    await record('past-minimum', 'control', 400, 1000)
    await record('past-minimum', 'test', 90, 99)
    const r = await json(['ab', 'results', 'past-minimum'])
    expect(r.doc.checks.slice(0, 2)).toEqual([
      {
        check: 'min_sample_size',
        variant: 'control',
        passed: true,
        detail: 'control reached the minimum sample size (1,000 trials, minimum 100)',
      },
      {
        check: 'min_sample_size',
        variant: 'test',
        passed: false,
        detail: 'test has 99 of the 100 trials it needs',
      },
    ])
    const text = await cli(['ab', 'results', 'past-minimum'])
    expect(text.stdout).toContain('✔ control reached the minimum sample size (1,000 trials, minimum 100)\n')
    expect(text.stdout).toContain('✘ test has 99 of the 100 trials it needs\n')
  })

  it('an exact tie names no leader: the arms are tied, in JSON and in words', async () => {
    const expectTie = async (name: string) => {
      const r = await json(['ab', 'results', name])
      expect(r.doc.leader).toBeNull()
      expect(r.doc.prob_test_beats_control.exact).toBe(0.5)
      expect(r.doc.checks[2]).toEqual({
        check: 'confidence',
        variant: null,
        passed: false,
        detail: 'the arms are tied (each is best with probability 0.5); 0.95 is required',
      })
      const text = await cli(['ab', 'results', name])
      expect(text.stdout).toContain(
        '✘ the arms are tied (each is best with probability 0.5); 0.95 is required\n',
      )
      expect(text.stdout).not.toContain('leads')
      return text
    }
    await create('tie', '--min-sample-size', '100')
    // No data yet: both arms Beta(1, 1).
    await expectTie('tie')
    // The same counts in both arms.
    await record('tie', 'control', 37, 100)
    await record('tie', 'test', 37, 100)
    const same = await expectTie('tie')
    expect(same.stdout.split('\n')[0]).toBe(
      'Running: the arms are tied (each is best with probability 0.5); 0.95 is required.',
    )
    // Not a tie: one more success for test.
    await record('tie', 'test', 1, 1)
    const r = await json(['ab', 'results', 'tie'])
    expect(r.doc.leader).toBe('test')
    expect(r.doc.checks[2].detail).toMatch(/^test leads, /)

    // Other counts, each arm with as many successes as failures: tied by symmetry.
    await create('tie-symmetric', '--min-sample-size', '100')
    await record('tie-symmetric', 'control', 13, 26)
    await record('tie-symmetric', 'test', 463, 926)
    await expectTie('tie-symmetric')
  })

  it('flags a sample ratio mismatch on 10,000 vs 8,000, not on 10,000 vs 9,950', async () => {
    const ref = (o: number[]) =>
      cases.chisquare.find(
        (c) => c.observed[0] === o[0] && c.observed[1] === o[1] && c.proportions[0] === 0.5,
      )!
    await create('srm-bad')
    await record('srm-bad', 'control', 5000, 10_000)
    await record('srm-bad', 'test', 4000, 8000)
    const bad = await json(['ab', 'results', 'srm-bad'])
    expect(bad.doc.sample_ratio.flagged).toBe(true)
    expectRel(bad.doc.sample_ratio.statistic, ref([10_000, 8000]).statistic, 'srm statistic')
    expectRel(bad.doc.sample_ratio.p_value, ref([10_000, 8000]).p_value, 'srm p')
    expect(bad.doc.warnings[0]).toMatch(/^Sample ratio mismatch: control has 10,000 trials and test 8,000/)
    expect(bad.stderr).toContain('warning: Sample ratio mismatch')

    await create('srm-ok')
    await record('srm-ok', 'control', 5000, 10_000)
    await record('srm-ok', 'test', 4975, 9950)
    const ok = await json(['ab', 'results', 'srm-ok'])
    expect(ok.doc.sample_ratio.flagged).toBe(false)
    expectRel(ok.doc.sample_ratio.p_value, ref([10_000, 9950]).p_value, 'srm p')
    expect(ok.doc.warnings).toEqual([])
    expect(ok.stderr).toBe('')
  })

  it('a batch that would take an arm past 2^53 - 1 trials is exit 2 and recorded nowhere; the test stays readable', async () => {
    await create('huge')
    const max = String(Number.MAX_SAFE_INTEGER)
    expect(
      (await cli(['ab', 'record', 'huge', '--variant', 'control', '--successes', max, '--trials', max])).code,
    ).toBe(0)
    const over = await cli([
      'ab',
      'record',
      'huge',
      '--variant',
      'control',
      '--successes',
      '1',
      '--trials',
      '1',
    ])
    expect(over.code).toBe(2)
    expect(over.stderr).toContain(
      "error: Recording 1 more trial would take the control arm of 'huge' past 9,007,199,254,740,991 trials",
    )
    expect(await observations('huge')).toBe(1)
    const r = await json(['ab', 'results', 'huge'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.doc.arms[0].trials).toBe(Number.MAX_SAFE_INTEGER)
    // p underflows to 0 against 50/50: it reads 0, not 0.0
    expect(r.doc.warnings[0]).toContain(', p = 0 against a 50/50 split')
  })

  it('bad counts are exit 2 naming the flag, and nothing is written', async () => {
    await create('counts')
    for (const [args, message] of [
      [
        ['--variant', 'test', '--successes', '11', '--trials', '10'],
        '--successes (11) cannot be more than --trials (10).',
      ],
      [
        ['--variant', 'test', '--successes', '0', '--trials', '0'],
        '--trials must be a whole number of at least 1',
      ],
      [
        ['--variant', 'test', '--successes', '-1', '--trials', '10'],
        '--successes must be a whole number (0 or more)',
      ],
      [['--variant', 'test', '--successes', '1', '--trials', '1.5'], '--trials must be a whole number'],
      [['--variant', 'both', '--successes', '1', '--trials', '2'], "--variant must be 'control' or 'test'"],
      [['--variant', 'test', '--trials', '2'], '--successes is required with --variant.'],
      [['--successes', '1', '--trials', '2'], "--variant is required: 'control' or 'test'."],
      [['--variant', 'test', '--successes', '1', '--from-evaluation', randomUUID()], 'not both'],
      [[], "'ab record' needs --variant, --successes and --trials, or --from-evaluation."],
      [['--from-evaluation', 'e-1'], '--from-evaluation must be an evaluation id'],
    ] as const) {
      const r = await cli(['ab', 'record', 'counts', ...args])
      expect(r.code, args.join(' ')).toBe(2)
      expect(r.stderr, args.join(' ')).toContain(message)
    }
    expect(await observations('counts')).toBe(0)
  })

  it('an unknown test or evaluation is exit 1 in one sentence', async () => {
    const r = await cli(['ab', 'results', 'nope'])
    expect(r.code).toBe(1)
    expect(r.stderr.split('\n')[0]).toBe("error: There is no A/B test named 'nope'.")
    const id = randomUUID()
    const byId = await cli(['ab', 'record', id, '--variant', 'test', '--successes', '1', '--trials', '1'])
    expect(byId.code).toBe(1)
    expect(byId.stderr).toContain(`There is no A/B test with id '${id}'.`)
    await create('no-eval')
    const e = await json(['ab', 'record', 'no-eval', '--from-evaluation', id])
    expect(e.code).toBe(1)
    expect(e.doc.error).toMatchObject({
      code: 'EVALUATION_NOT_FOUND',
      message: `There is no evaluation with id ${id}.`,
    })
  })

  it('records both arms from a stored evaluation, once', async () => {
    await db.query(
      `insert into shadow.rules (id, version, definition) values ('waf-sqli', 1, '{}'), ('waf-sqli', 2, '{}')`,
    )
    const evaluation = randomUUID()
    await db.query(
      `insert into shadow.evaluations
         (id, rule_id, control_rule_id, control_version, candidate_version, dataset, samples, metrics, recommendation, conclusive)
       values ($1, 'waf-sqli', 'waf-sqli', 1, 2, 'fixture', 1000, $2, 'NEED_MORE_DATA', false)`,
      [
        evaluation,
        JSON.stringify({
          control_metrics: { tp: 90, fp: 10, tn: 880, fn: 20, precision: 0.9 },
          candidate_metrics: { tp: 105, fp: 8, tn: 882, fn: 5 },
        }),
      ],
    )
    const t = await create('from-eval')
    const r = await json(['ab', 'record', t.id, '--from-evaluation', evaluation.toUpperCase()])
    expect(r.code, r.stderr).toBe(0)
    expect(r.doc).toMatchObject({
      test: 'from-eval',
      evaluation_id: evaluation,
      recorded: [
        { variant: 'control', successes: 970, trials: 1000 },
        { variant: 'test', successes: 987, trials: 1000 },
      ],
      warnings: [],
    })
    const again = await json(['ab', 'record', 'from-eval', '--from-evaluation', evaluation])
    expect(again.code).toBe(5)
    expect(again.doc.error).toMatchObject({
      code: 'EVALUATION_ALREADY_RECORDED',
      message: `Evaluation ${evaluation} is already recorded in A/B test 'from-eval'.`,
    })
    expect(await observations('from-eval')).toBe(2)

    // Into another test it may go once too, but not into an arm labelled as another rule version,
    // nor swapped: one rule's results would count for the other. Exit 2, nothing written.
    await json(['ab', 'create', '--name', 'from-eval-2', '--control', 'waf-sqli@1', '--test', 'waf-sqli@3'])
    const other = await json(['ab', 'record', 'from-eval-2', '--from-evaluation', evaluation])
    expect(other.code).toBe(2)
    expect(other.doc.error).toMatchObject({
      code: 'EVALUATION_MISMATCH',
      message: `The test arm of A/B test 'from-eval-2' is waf-sqli@3, but evaluation ${evaluation} ran waf-sqli@2 as its candidate; nothing was recorded.`,
      hint: 'Record it into a test whose control is waf-sqli@1 and whose test is waf-sqli@2.',
    })
    expect(await observations('from-eval-2')).toBe(0)
    await json(['ab', 'create', '--name', 'swapped', '--control', 'waf-sqli@2', '--test', 'waf-sqli@1'])
    expect((await json(['ab', 'record', 'swapped', '--from-evaluation', evaluation])).code).toBe(2)
    expect(await observations('swapped')).toBe(0)
    // Free-text labels cannot be checked: recorded.
    await json(['ab', 'create', '--name', 'free-text', '--control', 'current rule', '--test', 'new rule'])
    expect((await json(['ab', 'record', 'free-text', '--from-evaluation', evaluation])).code).toBe(0)
    expect(await observations('free-text')).toBe(2)

    // An evaluation without confusion counts is refused, nothing written.
    const broken = randomUUID()
    await db.query(
      `insert into shadow.evaluations
         (id, rule_id, control_rule_id, control_version, candidate_version, dataset, samples, metrics, recommendation, conclusive)
       values ($1, 'waf-sqli', 'waf-sqli', 1, 2, 'fixture', 0, '{"control_metrics": {"tp": 1}}', 'NEED_MORE_DATA', false)`,
      [broken],
    )
    await create('broken-eval')
    const b = await cli(['ab', 'record', 'broken-eval', '--from-evaluation', broken])
    expect(b.code).toBe(1)
    expect(b.stderr).toContain('has no confusion counts (tp, fp, tn, fn) under metrics.control_metrics')
    expect(await observations('broken-eval')).toBe(0)
  })

  it('recording into a concluded test is allowed, with a warning; the stored verdict stands', async () => {
    await create('late', '--min-sample-size', '10')
    await record('late', 'control', 1, 100)
    await record('late', 'test', 90, 100)
    expect((await json(['ab', 'results', 'late'])).doc.stored.status).toBe('concluded')
    const r = await cli([
      'ab',
      'record',
      'late',
      '--variant',
      'control',
      '--successes',
      '5000',
      '--trials',
      '5000',
    ])
    expect(r.code).toBe(0)
    expect(r.stderr).toMatch(
      /^warning: A\/B test 'late' concluded on .* \(winner: test\); the observations are recorded/,
    )
    // The verdict of record is what a gate reading .winner gets; the new figures are beside it.
    const after = await json(['ab', 'results', 'late'])
    expect(after.doc).toMatchObject({
      status: 'conclusive',
      winner: 'test',
      current: { status: 'conclusive', winner: 'control' },
      stored: { status: 'concluded', winner: 'test' },
    })
    expect(after.doc.verdict).toMatch(
      /^Concluded on .*: test \(waf-sqli@2\) is better \(the stored verdict\); the figures recorded since now favour control\.$/,
    )
    expect(after.doc.warnings.join(' ')).toContain('now favour control. The stored verdict stands.')
    const text = await cli(['ab', 'results', 'late'])
    expect(text.stdout.split('\n')[0]).toMatch(/^Concluded on .*: test \(waf-sqli@2\) is better/)
  })
})

describe('ab assign', () => {
  it('draws in proportion to the probability of being best', () => {
    const counts = { control: { successes: 40, trials: 100 }, test: { successes: 47, trials: 100 } }
    const p = probBetterExact(posterior(40, 100), posterior(47, 100)).value!
    const n = 2000
    let tests = 0
    for (let s = 0; s < n; s++) if (assignFromCounts(counts, s).variant === 'test') tests++
    expect(Math.abs(tests / n - p)).toBeLessThan(4 * Math.sqrt((p * (1 - p)) / n))
    expect(assignFromCounts(counts, 123)).toEqual(assignFromCounts(counts, 123))
  })

  it('prints the arm; --json gives the draws; a seed reproduces it', async () => {
    await create('assign')
    await record('assign', 'control', 10, 100)
    await record('assign', 'test', 90, 100)
    const human = await cli(['ab', 'assign', 'assign'])
    expect(human.code).toBe(0)
    expect(human.stdout).toBe('test\n')
    const a = await json(['ab', 'assign', 'assign', '--seed', '9'])
    expect(a.doc).toMatchObject({ test: 'assign', variant: 'test', seed: 9 })
    expect(a.doc.draws.test).toBeGreaterThan(a.doc.draws.control)
    const again = (await json(['ab', 'assign', 'assign', '--seed', '9'])).doc
    expect({ ...again, assigned: null }).toEqual({ ...a.doc, assigned: null })
    const bad = await cli(['ab', 'assign', 'assign', '--seed', 'x'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('--seed must be a whole number')
  })

  it('counts each unit on its arm (--dry-run draws without counting)', async () => {
    await create('assign-count')
    await record('assign-count', 'control', 10, 100)
    await record('assign-count', 'test', 90, 100)
    const first = await json(['ab', 'assign', 'assign-count', '--seed', '9'])
    expect(first.doc).toMatchObject({ variant: 'test', counted: true, assigned: { control: 0, test: 1 } })
    const dry = await json(['ab', 'assign', 'assign-count', '--seed', '9', '--dry-run'])
    expect(dry.doc).toMatchObject({ variant: 'test', counted: false, assigned: { control: 0, test: 1 } })
    expect(await assignedUnits('assign-count')).toEqual({ control: 0, test: 1 })
    // Once units are counted, trials beyond them are flagged, however many were recorded by hand.
    const r = await json(['ab', 'results', 'assign-count'])
    expect(r.doc.sample_ratio).toMatchObject({
      expected_from: 'assignments',
      expected_split: null,
      assigned: { control: 0, test: 1 },
      flagged: true,
    })
    expect(r.doc.warnings[0]).toMatch(
      /^Sample ratio mismatch: control has 100 trials, but ab assign gave it 0 units/,
    )
  })

  it('recording more cannot clear a flag: trials past the units stay flagged', async () => {
    await create('srm-more')
    await giveUnits('srm-more', 5, 15)
    await record('srm-more', 'control', 3, 6)
    await record('srm-more', 'test', 5, 10)
    expect((await json(['ab', 'results', 'srm-more'])).doc.sample_ratio.flagged).toBe(true)
    await record('srm-more', 'test', 2, 5) // 21 trials for 20 units in all
    const r = await json(['ab', 'results', 'srm-more'])
    expect(r.doc.sample_ratio).toMatchObject({ expected_from: 'assignments', flagged: true })
    expect(r.doc.warnings[0]).toMatch(
      /^Sample ratio mismatch: control has 6 trials, but ab assign gave it 5 units/,
    )
  })

  it('concurrent assignments are each counted once', async () => {
    await create('assign-race')
    const pool = new pg.Pool({ connectionString: db.url, max: 8 })
    try {
      const runs = await Promise.all(
        Array.from({ length: 64 }, (_, i) =>
          assignVariant(pool, 'assign-race', { timeoutMs: 30_000, seed: i }),
        ),
      )
      const byArm = { control: 0, test: 0 }
      for (const a of runs) byArm[a.variant]++
      expect(byArm.control + byArm.test).toBe(64)
      expect(await assignedUnits('assign-race')).toEqual(byArm)
    } finally {
      await pool.end()
    }
  })

  it('with units from ab assign, an uneven split or trials still to come are no mismatch; more trials than units are', async () => {
    await create('srm-thompson')
    // what ab assign gave a test whose test arm led: 1,000 units to control, 3,000 to test
    await giveUnits('srm-thompson', 1000, 3000)
    await record('srm-thompson', 'control', 430, 900)
    await record('srm-thompson', 'test', 1560, 2990)
    const ok = await json(['ab', 'results', 'srm-thompson'])
    expect(ok.doc.sample_ratio).toMatchObject({
      expected_from: 'assignments',
      expected_split: null,
      assigned: { control: 1000, test: 3000 },
      p_value: null,
      flagged: false,
    })
    // (against 50/50, 900 and 2,990 trials would have been flagged at p ~ 1e-270)
    expect(ok.doc.warnings).toEqual([])
    const okText = await cli(['ab', 'results', 'srm-thompson'])
    expect(okText.stdout).toContain(
      '\nSample ratio: trials against the units ab assign gave (control 1,000, test 3,000): ok\n',
    )

    await create('srm-over')
    await giveUnits('srm-over', 2000, 2000)
    await record('srm-over', 'control', 480, 1000)
    await record('srm-over', 'test', 1250, 2500)
    const over = await json(['ab', 'results', 'srm-over'])
    expect(over.doc.sample_ratio).toMatchObject({ expected_from: 'assignments', flagged: true })
    expect(over.doc.warnings[0]).toBe(
      'Sample ratio mismatch: test has 2,500 trials, but ab assign gave it 2,000 units; units were recorded twice or came from elsewhere. Check how units are assigned before trusting the result.',
    )
    const text = await cli(['ab', 'results', 'srm-over'])
    expect(text.stdout).toContain(
      '\nSample ratio: trials against the units ab assign gave (control 2,000, test 2,000): MISMATCH, an arm has more trials than units\n',
    )
  })
})

describe('human output', () => {
  it('results: the verdict first, a small table, the checks; record and create in a sentence', async () => {
    const c = await cli([
      'ab',
      'create',
      '--name',
      'human',
      '--control',
      'waf-sqli@1',
      '--test',
      'waf-sqli@2',
    ])
    expect(c.stdout).toMatch(
      /^Created A\/B test human: control waf-sqli@1, test waf-sqli@2; conclusive at 0\.95 with 1,000 trials per arm\.\n/,
    )
    const rec = await cli([
      'ab',
      'record',
      'human',
      '--variant',
      'control',
      '--successes',
      '480',
      '--trials',
      '1000',
    ])
    expect(rec.stdout).toBe('Recorded control 480/1,000 in human.\nTotals: control 480/1,000, test 0/0.\n')
    await record('human', 'test', 500, 900)
    const r = await cli(['ab', 'results', 'human'])
    expect(r.code).toBe(0)
    const lines = r.stdout.split('\n')
    expect(lines[0]).toBe('Running: test has 900 of the 1,000 trials it needs.')
    expect(lines[1]).toBe('')
    expect(lines[2]).toBe(
      'ARM      LABEL       SUCCESSES  TRIALS  MEAN    95% INTERVAL     P(BEST)  EXP. LOSS',
    )
    expect(lines[3]).toMatch(
      /^control {2}waf-sqli@1 {2}480 {8}1,000 {3}0\.4800 {2}0\.4492 - 0\.5110 {2}0\.000\d {3}0\.07\d\d$/,
    )
    expect(lines[4]).toMatch(
      /^test {5}waf-sqli@2 {2}500 {8}900 {5}0\.5554 {2}0\.5229 - 0\.5877 {2}0\.999\d {3}\d\.\de-6$/,
    )
    expect(r.stdout).toMatch(
      /\nP\(test beats control\): 0\.9995 exact, 0\.999\d Thompson \(100,000 draws, seed 1\)\n/,
    )
    expect(r.stdout).toContain('\nSample ratio: p = 0.0218 against 50/50, ok\n')
    expect(r.stdout).toContain('✔ control reached the minimum sample size (1,000 trials, minimum 1,000)\n')
    expect(r.stdout).toContain('✘ test has 900 of the 1,000 trials it needs\n')
    expect(r.stdout).toContain('✔ test is best with probability 0.9995 (exact), at least the 0.95 required\n')
    expect(r.stderr).toBe('')
    expect(r.stdout).not.toContain('\u001b[')
  })
})
