import fs from 'node:fs'
import path from 'node:path'
import type { Context } from '../context.js'
import { defaultHome, tildify } from '../core/config/paths.js'
import { embeddedDataDir, resolveSettings, type Settings } from '../core/config/settings.js'
import type { Databases } from '../core/db/pool.js'
import { migrateUp, migrationStatus, type SchemaTarget } from '../core/migrations/runner.js'
import { verifyChain, type VerifyResult } from '../core/audit/verify.js'
import { IntegrityError, OperationError } from '../core/errors.js'
import { type Ledger, openLedger } from '../core/ledger/ledger.js'
import { applyOperation, type LedgerRequest, type LedgerResult } from '../core/ledger/operations.js'
import { type LedgerHealth, ledgerHealth } from '../core/ledger/queries.js'
import { runSteps } from '../ui/tasks.js'
import { BACKUP_KEY_SPEC, backupDatabase } from './backup.js'
import type { CreateResult } from '../core/backup/create.js'
import { type VerifyBackupResult, verifyBackup } from '../core/backup/verify.js'
import { loadKeyring } from '../core/config/secrets.js'
import { PACKAGE_ROOT } from '../core/config/paths.js'
import { evaluate, type EvaluationDoc } from '../core/shadow/evaluate.js'
import { storeEvaluation } from '../core/shadow/evaluations.js'
import { writeTraffic } from '../core/shadow/generate.js'
import { DEFAULT_THRESHOLDS } from '../core/shadow/recommend.js'
import { addRule, getRule } from '../core/shadow/rule-store.js'
import { readRuleFile } from '../core/shadow/rules.js'
import { thousands } from '../core/thousands.js'

/** Settings the demo may not take from the environment: it never touches a real database or cache. */
const IGNORED_ENV = [
  'CREDITS_DATABASE_URL',
  'SHADOW_DATABASE_URL',
  'REDIS_URL',
  'REDIS_ADDR',
  'REDIS_PASSWORD',
  'AUDIT_HMAC_KEY',
  'AUDIT_HMAC_KEY_FILE',
  'ENCRYPT_KEY',
  'ENCRYPT_KEY_FILE',
  'BACKUP_KEY',
  'BACKUP_KEY_FILE',
  'BACKUP_DIR',
  'SHIELDX_PROFILE',
]

interface DemoState {
  settings: Settings
  dbs?: Databases
  ledger?: Ledger
  applied: string[]
  versions: Record<string, number>
  tenant: string
  topup?: LedgerResult
  consume?: LedgerResult
  replay?: LedgerResult
  refusal?: string
  chain?: VerifyResult
  health?: LedgerHealth
  backup?: CreateResult
  backupCheck?: VerifyBackupResult
  trafficFile?: string
  rulesStored?: number
  evaluation?: EvaluationDoc
}

/** The demo's evaluation: a layered candidate against a single threshold, on generated traffic. */
const DEMO_EVENTS = 20_000
const DEMO_CANDIDATE = { id: 'edge-guard', version: 1 }
const DEMO_CONTROL = { id: 'status-errors', version: 1 }

function userHome(ctx: Context): string {
  const fromEnv = ctx.io.env.SHIELDX_HOME
  if (ctx.globals.home) return path.resolve(ctx.globals.home)
  if (fromEnv !== undefined && fromEnv.trim() !== '') return path.resolve(fromEnv)
  return defaultHome(ctx.io.env)
}

/**
 * `shieldx demo`: the whole flow on an embedded database of its own ($SHIELDX_HOME/demo), so it
 * runs on a bare machine and can never touch the database a profile or the environment points at.
 * Each capability adds its step here as it lands.
 */
export async function demo(ctx: Context, opts: { reset?: boolean }): Promise<void> {
  // Only the home, resolved as the locator does (flag > SHIELDX_HOME > default): the demo ignores
  // profiles, so a broken config.yaml must not stop it.
  const demoHome = path.join(userHome(ctx), 'demo')
  if (opts.reset) fs.rmSync(demoHome, { recursive: true, force: true })
  const env = { ...ctx.io.env }
  for (const name of IGNORED_ENV) delete env[name]
  const settings = resolveSettings({ env, flags: { home: demoHome, timeout: ctx.globals.timeout } })
  const where = tildify(embeddedDataDir(demoHome), ctx.io.env)
  // A new tenant each run, so the figures printed are this run's own.
  const tenant = `demo-${Date.now().toString(36)}`
  const state: DemoState = { settings, applied: [], versions: {}, tenant }
  const consumeKey = `demo-consume-${tenant}`
  const write = (s: DemoState, req: LedgerRequest, key: string) =>
    applyOperation(s.ledger!.db.pool, req, key, s.ledger!.keys, { timeoutMs: s.ledger!.db.timeoutMs })
  const targets = (dbs: Databases): SchemaTarget[] => [
    { schema: 'credits', db: dbs.credits },
    { schema: 'shadow', db: dbs.shadow },
  ]

  ctx.out.info(
    `shieldx demo: an embedded database of its own in ${where} (your configured databases are not touched).`,
  )
  await runSteps(ctx.out, state, [
    {
      title: 'Start the embedded PostgreSQL (PGlite)',
      run: async (s) => {
        s.dbs = await ctx.databases(s.settings)
        return s.dbs.credits.createdEmbedded ? `created in ${where}` : `reused ${where}`
      },
    },
    {
      title: 'Apply the credits and shadow migrations',
      run: async (s) => {
        const result = await migrateUp(targets(s.dbs!), {
          migrationsDir: s.settings.migrationsDir.value,
          timeoutMs: s.settings.timeoutMs.value,
        })
        s.applied = result.steps.map((st) => `${st.schema}/${String(st.version).padStart(4, '0')}_${st.name}`)
        return s.applied.length ? `applied ${s.applied.length}` : 'already up to date'
      },
    },
    {
      title: 'Check the schema versions',
      run: async (s) => {
        const statuses = await migrationStatus(targets(s.dbs!), s.settings.migrationsDir.value)
        for (const st of statuses) s.versions[st.schema] = st.current
        return statuses.map((st) => `${st.schema} at ${st.current}`).join(', ')
      },
    },
    {
      title: `Top up tenant ${tenant} with 1000 credits`,
      run: async (s) => {
        s.ledger = await openLedger(s.settings, s.dbs!.credits, {
          cache: false,
          notice: (m) => ctx.out.info(m),
        })
        s.topup = await write(
          s,
          { kind: 'topup', tenantId: tenant, amount: 1000, description: 'demo' },
          `demo-topup-${tenant}`,
        )
        return `balance ${s.topup.balance}`
      },
    },
    {
      title: 'Consume 250 credits (idempotency key demo-consume-...)',
      run: async (s) => {
        s.consume = await write(
          s,
          { kind: 'consume', tenantId: tenant, amount: 250, description: 'demo scan' },
          consumeKey,
        )
        return `balance ${s.consume.balance}`
      },
    },
    {
      title: 'Send the same consume again, as a client retrying after a timeout would',
      run: async (s) => {
        s.replay = await write(
          s,
          { kind: 'consume', tenantId: tenant, amount: 250, description: 'demo scan' },
          consumeKey,
        )
        if (!s.replay.replayed || s.replay.transaction_id !== s.consume!.transaction_id) {
          throw new OperationError('The retried consume was applied twice: the ledger is broken.')
        }
        return `replayed, balance still ${s.replay.balance}`
      },
    },
    {
      title: 'Try to consume more than is available',
      run: async (s) => {
        try {
          await write(s, { kind: 'consume', tenantId: tenant, amount: 5000 }, `demo-overdraft-${tenant}`)
        } catch (err) {
          if ((err as { code?: string }).code !== 'INSUFFICIENT_CREDITS') throw err
          s.refusal = (err as Error).message
          return 'refused (INSUFFICIENT_CREDITS), nothing changed'
        }
        throw new OperationError('An overdraft was allowed: the ledger is broken.')
      },
    },
    {
      title: 'Verify the audit hash chain',
      run: async (s) => {
        s.chain = await verifyChain(s.ledger!.db, s.ledger!.keys.audit, {})
        if (!s.chain.ok) throw new IntegrityError('The audit chain of the demo database is broken.')
        return `intact: ${s.chain.tenants_checked} tenant(s), ${s.chain.rows_checked} row(s)`
      },
    },
    {
      title: 'Check the P0 invariants',
      run: async (s) => {
        s.health = await ledgerHealth(s.ledger!.db.pool)
        return `negative balances ${s.health.negative_balances}, chain errors ${s.health.last_verification?.chain_errors ?? 0}`
      },
    },
    {
      title: 'Back up the credits database (compressed, encrypted, with a manifest)',
      run: async (s, report) => {
        s.backup = await backupDatabase(ctx, s.settings, s.ledger!.db, 'credits', 'demo', report)
        return `${tildify(s.backup.file, ctx.io.env)} (${s.backup.bytes} bytes)`
      },
    },
    {
      title: 'Verify the backup by restoring it into a scratch database',
      run: async (s) => {
        const keys = loadKeyring(s.settings.backupKey, BACKUP_KEY_SPEC).keyring
        s.backupCheck = await verifyBackup(s.backup!.file, {
          keys,
          env: ctx.io.env,
          timeoutMs: s.settings.timeoutMs.value,
          restoreTest: { server: null, auditKeys: s.ledger!.keys.audit },
        })
        if (!s.backupCheck.ok) {
          const failed = s.backupCheck.checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.detail}`)
          throw new IntegrityError(`The demo backup failed verification: ${failed.join('; ')}`)
        }
        return `${s.backupCheck.checks.length} checks passed, chain intact after restore`
      },
    },
    {
      title: `Generate ${thousands(DEMO_EVENTS)} events of labelled synthetic traffic`,
      run: async (s) => {
        s.trafficFile = path.join(demoHome, 'traffic.jsonl.gz')
        const r = await writeTraffic({
          events: DEMO_EVENTS,
          attackRate: 0.2,
          seed: 7,
          out: s.trafficFile,
          force: true,
          signal: ctx.signal,
        })
        return `${r.attacks} attacks, ${r.benign} benign, in ${tildify(s.trafficFile, ctx.io.env)}`
      },
    },
    {
      title: 'Store the example rules (fixtures/rules)',
      run: async (s) => {
        const dir = path.join(PACKAGE_ROOT, 'fixtures', 'rules')
        const files = fs.readdirSync(dir).filter((f) => f.endsWith('.json'))
        for (const f of files) {
          await addRule(s.dbs!.shadow.pool, readRuleFile(path.join(dir, f)))
        }
        s.rulesStored = files.length
        return `${files.length} rules`
      },
    },
    {
      title: `Evaluate ${DEMO_CANDIDATE.id}@1 against ${DEMO_CONTROL.id}@1 on that traffic`,
      run: async (s) => {
        const db = s.dbs!.shadow.pool
        s.evaluation = await evaluate({
          candidate: await getRule(db, DEMO_CANDIDATE),
          control: await getRule(db, DEMO_CONTROL),
          traffic: s.trafficFile!,
          workers: 2,
          skipInvalid: false,
          maxDisorderMs: 60_000,
          seed: 1,
          thresholds: DEFAULT_THRESHOLDS,
          signal: ctx.signal,
        })
        s.evaluation.created_at = await storeEvaluation(db, s.evaluation)
        return `${s.evaluation.recommendation.decision} (stored as ${s.evaluation.id})`
      },
    },
  ])

  const ledgerDoc = {
    tenant,
    topup: pick(state.topup!),
    consume: pick(state.consume!),
    replay: pick(state.replay!),
    overdraft_refused: state.refusal !== undefined,
    chain: {
      ok: state.chain!.ok,
      tenants_checked: state.chain!.tenants_checked,
      rows_checked: state.chain!.rows_checked,
    },
    negative_balances: state.health!.negative_balances,
  }
  const backupDoc = {
    file: state.backup!.file,
    bytes: state.backup!.bytes,
    verified: state.backupCheck!.ok,
    checks: state.backupCheck!.checks.map((c) => c.name),
  }
  const e = state.evaluation!
  const evaluationDoc = {
    id: e.id,
    candidate: `${e.candidate.id}@${e.candidate.version}`,
    control: `${e.control.id}@${e.control.version}`,
    traffic: state.trafficFile!,
    sample_size: e.sample_size,
    decision: e.recommendation.decision,
    confidence_score: e.recommendation.confidence_score,
    candidate_metrics: {
      precision: e.candidate_metrics.precision,
      recall: e.candidate_metrics.recall,
      fpr: e.candidate_metrics.fpr,
    },
  }
  if (ctx.out.json) {
    ctx.out.document({
      database: where,
      migrations_applied: state.applied,
      schema_versions: state.versions,
      ledger: ledgerDoc,
      backup: backupDoc,
      evaluation: evaluationDoc,
    })
    return
  }
  ctx.out.result(`Embedded database: ${where}`)
  ctx.out.result(
    state.applied.length
      ? `Migrations applied: ${state.applied.join(', ')}`
      : 'Migrations: already up to date',
  )
  ctx.out.result(
    `Schema versions: ${Object.entries(state.versions)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  )
  ctx.out.result(
    `Ledger: ${tenant} topped up 1000, consumed 250 (balance ${state.consume!.balance}); the retry replayed transaction ${state.replay!.transaction_id} instead of charging twice; an overdraft of 5000 was refused.`,
  )
  ctx.out.result(
    `Audit chain: intact, ${state.chain!.rows_checked} row(s) across ${state.chain!.tenants_checked} tenant(s).`,
  )
  ctx.out.result(
    `Backup: ${tildify(state.backup!.file, ctx.io.env)}, restored into a scratch database and checked (${state.backupCheck!.checks.map((c) => c.name).join(', ')}).`,
  )
  const pct = (x: number | null) => (x === null ? 'n/a' : `${(x * 100).toFixed(1)}%`)
  ctx.out.result(
    `Shadow evaluation: ${evaluationDoc.candidate} vs ${evaluationDoc.control} on ${thousands(e.sample_size)} events: ${ctx.out.style('bold', e.recommendation.decision)} (confidence ${e.recommendation.confidence_score.toFixed(3)}, risk ${e.recommendation.risk_level}); precision ${pct(e.control_metrics.precision)} -> ${pct(e.candidate_metrics.precision)}, recall ${pct(e.control_metrics.recall)} -> ${pct(e.candidate_metrics.recall)}, benign blocked ${pct(e.control_metrics.fpr)} -> ${pct(e.candidate_metrics.fpr)}.`,
  )
  ctx.out.result('')
  // The demo's own databases and keys: whatever the environment points at is set aside, as the
  // demo itself did, or the next command would ask the configured database for the demo's rows.
  const setAside = IGNORED_ENV.filter((name) => ctx.io.env[name])
  const unset = setAside.length > 0 ? `env ${setAside.map((name) => `-u ${name}`).join(' ')} ` : ''
  const demoCli = `${unset}shieldx --home ${tildify(demoHome, ctx.io.env)}`
  ctx.out.result(`Next: ${demoCli} credits history ${tenant}`)
  ctx.out.result(`      ${demoCli} evaluate show ${e.id}`)
  ctx.out.result(`      ${demoCli} verify-chain`)
  ctx.out.result('      shieldx locate   (what a command would touch, and why)')
}

function pick(r: LedgerResult) {
  return { transaction_id: r.transaction_id, amount: r.amount, balance: r.balance, replayed: r.replayed }
}
