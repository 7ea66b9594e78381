/**
 * The command table. Every command's code is imported lazily inside its action (as changesets
 * does), so `shieldx --help` loads commander and nothing else: startup time is a feature.
 */
import fs from 'node:fs'
import { Command, InvalidArgumentError, Option } from 'commander'
import { handleError } from './boundary.js'
import type { Context, GlobalOptions } from './context.js'
import { secretValues } from './core/config/redact.js'
import { EXIT, InterruptedError, NotBuiltError, UsageError } from './core/errors.js'
import type { Io } from './ui/io.js'
import { Output } from './ui/output.js'

const VERSION = (
  JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version

export interface RunOptions {
  /** Aborted on SIGINT / SIGTERM: the command stops, cleans up, and we exit 130. */
  signal?: AbortSignal
}

const EXIT_CODES_HELP = `
Exit codes:
  0    ok
  1    the operation failed (unreachable database, SQL error, not built yet)
  2    usage error (unknown command or flag, bad input)
  3    refused by a safety precondition (needs --yes, --force, a conclusive evaluation)
  4    integrity failure (migration checksum drift, broken chain, bad backup)
  5    conflict (a lock is held, an idempotency key reused with other parameters)
  124  timed out (see --timeout)
  130  interrupted`

/** Under every command's own --help; `shieldx --help` explains each code. */
const EXIT_CODES_LINE = `
Exit codes: 0 ok, 1 failed, 2 usage, 3 refused, 4 integrity, 5 conflict,
  124 timed out, 130 interrupted (shieldx --help says what each means).`

const ENV_HELP = `
Environment:
  CREDITS_DATABASE_URL   credits database (default: embedded PGlite under $SHIELDX_HOME/data)
  SHADOW_DATABASE_URL    shadow database (default: the credits database)
  REDIS_URL | REDIS_ADDR + REDIS_PASSWORD   balance cache (default: off)
  AUDIT_HMAC_KEY[_FILE]  ENCRYPT_KEY[_FILE]  BACKUP_KEY[_FILE]   keys: never flags
  BACKUP_DIR  BACKUP_RETENTION_DAYS  SHIELDX_HOME  SHIELDX_PROFILE  SHIELDX_TIMEOUT
  Run 'shieldx locate' to see what this invocation would use, and why.`

function examples(...lines: string[]): string {
  return `\nExamples:\n${lines.map((l) => `  $ ${l}`).join('\n')}`
}

type Loader<M> = () => Promise<M>

export async function run(argv: string[], io: Io, options: RunOptions = {}): Promise<number> {
  const signal = options.signal ?? new AbortController().signal
  let ctx: Context | undefined
  const fallbackOut = () =>
    new Output(io, {
      json: argv.includes('--json'),
      color: !argv.includes('--no-color'),
      verbose: argv.includes('--verbose') || argv.includes('-v'),
    })

  const program = buildProgram(io, async (globals) => {
    // Loaded here, not at the top: --help should load commander only.
    const { Context } = await import('./context.js')
    ctx = new Context(io, globals, signal)
    return ctx
  })

  try {
    if (signal.aborted) throw new InterruptedError()
    // On Ctrl-C the command is not abandoned: its running statements are cancelled (Context) and
    // it stops at its next check, so nothing is left half-done and no result is printed after.
    // A second Ctrl-C exits at once (bin/).
    await program.parseAsync(argv, { from: 'user' })
    if (signal.aborted) throw new InterruptedError()
    return ctx?.exitCode ?? EXIT.ok
  } catch (err) {
    const cause = signal.aborted
      ? new InterruptedError('Interrupted; stopped and cleaned up.', { cause: err })
      : err
    const secrets = [...secretValues(io.env, argv), ...(ctx?.secretValues() ?? [])]
    return handleError(cause, ctx?.out ?? fallbackOut(), secrets)
  } finally {
    await ctx?.cleanup()
  }
}

export function buildProgram(io: Io, makeContext: (g: GlobalOptions) => Promise<Context>): Command {
  const program = new Command('shieldx')
  program
    .description(
      'Operations CLI for the ShieldX business core: credits ledger, audit chain, shadow evaluator, backups, migrations and canaries.',
    )
    .version(VERSION, '-V, --version', 'print the version')
    .option('--json', 'print one JSON document on stdout and nothing else')
    .option('--profile <name>', 'use this profile from $SHIELDX_HOME/config.yaml')
    .option('--credits-db <url>', 'credits database URL (env CREDITS_DATABASE_URL)')
    .option('--shadow-db <url>', 'shadow database URL (env SHADOW_DATABASE_URL)')
    .option('--redis <url>', 'Redis URL for the balance cache (env REDIS_URL)')
    .option('--home <dir>', 'shieldx home: profiles and the embedded database (env SHIELDX_HOME)')
    .option('-y, --yes', 'answer yes to confirmations (required without a terminal)')
    .option('--no-input', 'never prompt; fail instead where a question would be asked')
    .option('--no-color', 'no colour (also NO_COLOR=1 or TERM=dumb)')
    .option('-v, --verbose', 'more detail, and stack traces for bugs')
    .option('--timeout <duration>', 'statement, lock and connect timeout, e.g. 30s, 5m (default 30s)')
    .showSuggestionAfterError(true)
    .showHelpAfterError(false)
    // Set before any subcommand is made, so that every one inherits it: a subcommand's --help
    // lists the global flags above (commander 14: Help.showGlobalOptions).
    .configureHelp({
      showGlobalOptions: true,
      // Only shieldx's own: `evaluate show` does not take evaluate's flags (action() refuses them).
      visibleGlobalOptions: (cmd: Command) => (cmd.parent ? program.options.filter((o) => !o.hidden) : []),
    })
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      outputError: (s, write) => write(s),
    })
    .addHelpText(
      'after',
      `${examples('npx shieldx demo', 'shieldx locate', 'shieldx migrate up --dry-run', 'shieldx migrate status --json')}\n${EXIT_CODES_HELP}\n${ENV_HELP}`,
    )

  // Subcommands inherit the output setup and the override of process.exit.
  const sub = (parent: Command, name: string, description: string, example: string[]): Command =>
    parent
      .command(name)
      .description(description)
      .addHelpText('after', `${examples(...example)}\n${EXIT_CODES_LINE}`)
      .exitOverride()
      .configureOutput({
        writeOut: (s) => io.stdout.write(s),
        writeErr: (s) => io.stderr.write(s),
        outputError: (s, write) => write(s),
      })
      .showSuggestionAfterError(true)

  /** Build the context, load the command module, call it. */
  const action =
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- commander's options are untyped; each command declares its shape
    <M>(load: Loader<M>, call: (mod: M, ctx: Context, args: unknown[], opts: any) => Promise<void>) =>
      async (...args: unknown[]) => {
        const cmd = args.at(-1) as Command
        rejectParentFlags(cmd)
        const [ctx, mod] = await Promise.all([makeContext(cmd.optsWithGlobals() as GlobalOptions), load()])
        await call(mod, ctx, args.slice(0, -2), cmd.opts())
      }

  /**
   * A group's own flags given to one of its subcommands (`evaluate show ID --require-approval`):
   * commander lets the group parse them, and the subcommand would ignore them without a word.
   */
  const rejectParentFlags = (cmd: Command): void => {
    for (let p = cmd.parent; p && p !== program; p = p.parent) {
      const given = p.options.filter((o) => p!.getOptionValueSource(o.attributeName()) === 'cli')
      if (given.length > 0) {
        const flags = given.map((o) => o.long ?? o.flags).join(', ')
        throw new UsageError(
          `${flags} ${given.length === 1 ? 'is a flag' : 'are flags'} of 'shieldx ${p.name()}', not of 'shieldx ${p.name()} ${cmd.name()}'.`,
          { hint: `See 'shieldx ${p.name()} ${cmd.name()} --help'.` },
        )
      }
    }
  }

  const notBuilt = (parent: Command, name: string, description: string, example: string[], path = name) =>
    sub(parent, name, `${description} (not built yet)`, example)
      .allowUnknownOption()
      .allowExcessArguments()
      .argument('[args...]')
      .action(() => {
        throw new NotBuiltError(path)
      })

  // --- migrate -------------------------------------------------------------------------------
  const migrate = sub(program, 'migrate', 'versioned SQL migrations for the credits and shadow schemas', [
    'shieldx migrate status',
    'shieldx migrate up --dry-run',
  ])
  const loadMigrate = () => import('./commands/migrate.js')
  const schemaOption = (def: string) =>
    new Option('--schema <schema>', 'which schema').choices(['credits', 'shadow', 'all']).default(def)

  sub(migrate, 'up', 'apply pending migrations (takes a backup first against a server)', [
    'shieldx migrate up',
    'shieldx migrate up --schema credits --to 3 --dry-run',
  ])
    .addOption(schemaOption('all'))
    .option('--to <version>', 'stop at this version', intArg('--to'))
    .option('--dry-run', 'print the plan (versions and SQL) and change nothing')
    .option('--no-backup', 'skip the pre-migration backup against a server')
    .action(action(loadMigrate, (m, ctx, _a, o) => m.up(ctx, o)))

  sub(migrate, 'down', 'revert applied migrations (asks first; --yes without a terminal)', [
    'shieldx migrate down --schema shadow --steps 1',
    'shieldx migrate down --schema credits --to 1 --yes',
  ])
    .addOption(schemaOption('all'))
    .option('--steps <n>', 'revert this many migrations per schema (default 1)', intArg('--steps', 1))
    .option('--to <version>', 'revert every migration above this version', intArg('--to'))
    .option('--dry-run', 'print the plan and change nothing')
    .action(action(loadMigrate, (m, ctx, _a, o) => m.down(ctx, o)))

  sub(migrate, 'status', 'applied and pending migrations per schema; exit 4 on checksum drift', [
    'shieldx migrate status',
    'shieldx migrate status --json',
  ])
    .addOption(schemaOption('all'))
    .action(action(loadMigrate, (m, ctx, _a, o) => m.status(ctx, o)))

  sub(migrate, 'create', 'write the next NNNN_name.up.sql / .down.sql pair', [
    'shieldx migrate create add_invoice_index --schema credits',
  ])
    .argument('<name>', 'lowercase name, e.g. add_invoice_index')
    .addOption(
      new Option('--schema <schema>', 'which schema').choices(['credits', 'shadow']).makeOptionMandatory(),
    )
    .action(action(loadMigrate, (m, ctx, a, o) => m.create(ctx, a[0] as string, o)))

  // --- credits ---------------------------------------------------------------------------------
  const credits = sub(program, 'credits', 'the prepaid credits ledger, with idempotency keys', [
    'shieldx credits topup acme 1000',
    'shieldx credits balance acme --json',
  ])
  const loadCredits = () => import('./commands/credits.js')
  const idem = (c: Command) =>
    c.option(
      '--idempotency-key <key>',
      'makes a retry safe: the same key replays the first result (generated when absent)',
    )

  idem(
    sub(credits, 'topup', 'add credits to a tenant (creates the account if missing)', [
      'shieldx credits topup acme 1000 --idempotency-key order-7731',
      'shieldx credits topup acme 500 --payment-method card --payment-token-file ./token.txt',
    ]),
  )
    .argument('<tenant>', 'tenant id')
    .argument('<amount>', 'whole credits, > 0')
    .option('--description <text>', 'a note kept with the transaction')
    .option('--payment-method <method>', 'e.g. card, invoice')
    .option(
      '--payment-token-file <file>',
      'read the payment token from a file (stored encrypted, shown masked)',
    )
    .option('--payment-token-stdin', 'read the payment token from standard input')
    .action(action(loadCredits, (m, ctx, a, o) => m.topup(ctx, a[0] as string, a[1] as string, o)))

  idem(
    sub(credits, 'consume', 'spend credits; never below zero', [
      'shieldx credits consume acme 25 --description "scan 9912"',
    ]),
  )
    .argument('<tenant>', 'tenant id')
    .argument('<amount>', 'whole credits, > 0')
    .option('--description <text>', 'a note kept with the transaction')
    .action(action(loadCredits, (m, ctx, a, o) => m.consume(ctx, a[0] as string, a[1] as string, o)))

  idem(
    sub(credits, 'reserve', 'hold credits for a later commit; prints the reservation id', [
      'shieldx credits reserve acme 100 --ttl 15m',
    ]),
  )
    .argument('<tenant>', 'tenant id')
    .argument('<amount>', 'whole credits, > 0')
    .option('--ttl <duration>', 'how long the hold lasts before gc releases it', '15m')
    .option('--description <text>', 'a note kept with the transaction')
    .action(action(loadCredits, (m, ctx, a, o) => m.reserve(ctx, a[0] as string, a[1] as string, o)))

  idem(
    sub(credits, 'commit', 'spend a reservation, whole or in part (the rest is released)', [
      'shieldx credits commit 5d0c2f9e-1b7a-4f7e-9d7a-2b1c3d4e5f60 --amount 60',
    ]),
  )
    .argument('<reservation>', 'reservation id, as printed by reserve')
    .option('--amount <n>', 'commit only this much; the rest of the hold is released')
    .action(action(loadCredits, (m, ctx, a, o) => m.commit(ctx, a[0] as string, o)))

  idem(
    sub(credits, 'cancel', 'release a reservation without spending it', [
      'shieldx credits cancel 5d0c2f9e-1b7a-4f7e-9d7a-2b1c3d4e5f60',
    ]),
  )
    .argument('<reservation>', 'reservation id')
    .action(action(loadCredits, (m, ctx, a, o) => m.cancel(ctx, a[0] as string, o)))

  sub(credits, 'balance', 'balance, reserved and available (from the cache when fresh enough)', [
    'shieldx credits balance acme',
    'shieldx credits balance acme --fresh --json',
  ])
    .argument('<tenant>', 'tenant id')
    .option('--fresh', 'read the database, not the cache')
    .action(action(loadCredits, (m, ctx, a, o) => m.balance(ctx, a[0] as string, o)))

  sub(credits, 'history', "a tenant's transactions, newest first", [
    'shieldx credits history acme --limit 20',
    'shieldx credits history acme --since 24h --json',
  ])
    .argument('<tenant>', 'tenant id')
    .option('--limit <n>', 'at most this many', intArg('--limit', 1), 50)
    .option('--since <when>', 'a date, a timestamp, or a duration back from now (24h)')
    .action(action(loadCredits, (m, ctx, a, o) => m.history(ctx, a[0] as string, o)))

  sub(credits, 'apply', 'many operations from JSON lines, one result line each', [
    'shieldx credits apply --file ops.jsonl',
    `echo '{"op":"consume","tenant":"acme","amount":5}' | shieldx credits apply --batch usage-2026-11-23T04`,
  ])
    .option('--file <file>', 'JSON lines to apply (default: standard input)')
    .option(
      '--batch <id>',
      "names the input in the keys of lines without idempotency_key (default: the file's SHA-256; needed on standard input)",
    )
    .option(
      '--chunk-size <n>',
      'lines handed to each lane at a time, one transaction per lane (default 500)',
      intArg('--chunk-size', 1),
    )
    .addHelpText(
      'after',
      [
        '',
        'Each line is one JSON object with the fields of its op, and no others (a misspelt field fails the line):',
        '  topup, consume  op, tenant, amount, description, idempotency_key',
        '  reserve         op, tenant, amount, description, ttl (default 15m), idempotency_key',
        '  commit          op, reservation, amount (optional: the rest is released), idempotency_key',
        '  cancel          op, reservation, idempotency_key',
        'amount is a JSON number of whole credits. A line without idempotency_key gets one from the batch',
        '(the file contents, or --batch), its line number and content: re-running a file, or a batch ID,',
        "replays it; another file or ID is applied anew. A derived key counts the line's number: a service that",
        'resends lines from the middle of a batch must give each line its own idempotency_key.',
        'Lines read are applied once the input is quiet for 100 ms, or a second after the first of them came:',
        'a pipe gets its results as it goes, not when 2,000 lines have come or it closes.',
      ].join('\n'),
    )
    .action(action(loadCredits, (m, ctx, _a, o) => m.apply(ctx, o)))

  sub(credits, 'gc', 'purge expired idempotency keys; release overdue reservations', [
    'shieldx credits gc --json',
  ]).action(action(loadCredits, (m, ctx) => m.gc(ctx)))

  sub(program, 'verify-chain', 'recompute the audit hash chain; exit 4 on any break', [
    'shieldx verify-chain',
    'shieldx verify-chain --checkpoint --checkpoint-file /secure/shieldx-checkpoint.json --json',
  ])
    .option('--tenant <tenant>', 'only this tenant')
    .option(
      '--workers <n>',
      'threads verifying, this one included (default: one per core)',
      intArg('--workers', 1, 64),
    )
    .option('--checkpoint', 'after a clean run, record every chain head, signed')
    .option(
      '--checkpoint-file <file>',
      'check against, and with --checkpoint write, a checkpoint outside the database',
    )
    .action(
      action(
        () => import('./commands/verify-chain.js'),
        (m, ctx, _a, o) => m.verify(ctx, o),
      ),
    )

  // --- backup & restore --------------------------------------------------------------------------
  const backup = sub(program, 'backup', 'streamed, compressed, encrypted dumps with a manifest', [
    'shieldx backup create',
    'shieldx backup list',
  ])
  const loadBackup = () => import('./commands/backup.js')
  const dirOption = (c: Command) =>
    c.option('--dir <dir>', 'backup directory (env BACKUP_DIR; default $SHIELDX_HOME/backups)')

  dirOption(
    sub(backup, 'create', 'dump, compress and encrypt a database, with a manifest beside it', [
      'shieldx backup create --label nightly',
      'shieldx backup create --db all --dir /var/backups/shieldx --json',
    ]),
  )
    .addOption(
      new Option('--db <db>', 'which database').choices(['credits', 'shadow', 'all']).default('credits'),
    )
    .option('--label <label>', 'a name kept in the file name and the manifest')
    .action(action(loadBackup, (m, ctx, _a, o) => m.create(ctx, o)))

  dirOption(
    sub(backup, 'list', 'backups in the backup directory, newest first', ['shieldx backup list --json']),
  ).action(action(loadBackup, (m, ctx, _a, o) => m.list(ctx, o)))

  sub(
    backup,
    'verify',
    'check a backup: manifest, checksum, every chunk, the dump; --restore-test restores it',
    [
      'shieldx backup verify ~/.shieldx/backups/shieldx-credits-20261122T020000Z-nightly.shxb',
      'shieldx backup verify FILE --restore-test --json',
    ],
  )
    .argument('<file>', 'the .shxb file')
    .option(
      '--restore-test',
      'restore into a scratch database, compare with the manifest, verify the chain, drop it',
    )
    .action(action(loadBackup, (m, ctx, a, o) => m.verify(ctx, a[0] as string, o)))

  dirOption(
    sub(backup, 'prune', 'delete backups past the retention policy (asks first; --yes without a terminal)', [
      'shieldx backup prune --dry-run',
      'shieldx backup prune --retention-days 14 --keep-last 7 --yes',
    ]),
  )
    .option('--retention-days <n>', 'keep backups younger than this (env BACKUP_RETENTION_DAYS; default 30)')
    .option('--keep-last <n>', 'always keep this many newest per database', intArg('--keep-last'), 3)
    .option('--dry-run', 'show what would be deleted')
    .action(action(loadBackup, (m, ctx, _a, o) => m.prune(ctx, o)))

  sub(
    program,
    'restore',
    'restore a backup into a database, then check it against its manifest and verify the chain',
    [
      'shieldx restore ./shieldx-credits-20261122T020000Z.shxb --target postgres://ops@db-restore:5432/credits_check --create',
    ],
  )
    .argument('<file>', 'the .shxb file')
    .option('--target <url>', 'the database to restore into (required)')
    .option('--create', 'create the target database if it does not exist')
    .option('--force', 'restore over a non-empty target or one with other connections')
    .action(action(loadBackup, (m, ctx, a, o) => m.restore(ctx, a[0] as string, o)))

  // --- synthetic traffic ---------------------------------------------------------------------------
  const traffic = sub(program, 'traffic', 'synthetic labelled HTTP traffic for the shadow evaluator', [
    'shieldx traffic generate --events 100000 --attack-rate 0.2 --seed 7 --out traffic.jsonl.gz',
  ])
  sub(
    traffic,
    'generate',
    'write deterministic synthetic traffic as JSON lines (users, bots, scanners, credential stuffing)',
    [
      'shieldx traffic generate --events 100000 --attack-rate 0.2 --seed 7 --out traffic.jsonl',
      'shieldx traffic generate --events 1000000 --seed 7 --out traffic.jsonl.gz --force --json',
      'shieldx traffic generate --events 20 --ts-format epoch-ms --out - | head -3',
    ],
  )
    .requiredOption('--events <n>', 'how many requests (lines) to write')
    .option('--attack-rate <r>', 'share of attack lines, from 0 to 1', '0.2')
    .option('--seed <n>', 'the same --events, --attack-rate and --seed give the same bytes', '1')
    .requiredOption('--out <file>', "FILE, FILE.gz (gzipped), or '-' for stdout")
    .addOption(
      new Option('--ts-format <format>', 'ts as ISO-8601 or epoch milliseconds')
        .choices(['iso', 'epoch-ms'])
        .default('iso'),
    )
    .option('--force', 'replace an existing FILE')
    .addHelpText(
      'after',
      '\nEach line: {"ts","ip","tenant_id","method","path","status","latency_ms","bytes","user_agent","label":"attack|benign"}.\nFrom 2026-01-01T00:00:00.000Z at about 200 requests/s, in time order except about 0.2% of lines, written up to 2 s late.',
    )
    .action(
      action(
        () => import('./commands/traffic.js'),
        (m, ctx, _a, o) => m.generate(ctx, o),
      ),
    )

  // --- rules and the shadow evaluator -------------------------------------------------------------
  const rules = sub(program, 'rules', 'security rules, stored as immutable versions', [
    'shieldx rules add fixtures/rules/ip-burst.json',
    'shieldx rules list',
  ])
  const loadRules = () => import('./commands/rules.js')
  sub(rules, 'add', 'validate and store rule versions from JSON files', [
    'shieldx rules add fixtures/rules/ip-burst.json fixtures/rules/status-errors.json',
  ])
    .argument('<files...>', 'rule files: { "id", "version", "name", "type", ... }')
    .addHelpText(
      'after',
      '\nTypes: rate_limit {key: ip|tenant_id|path, window_s, threshold}, threshold {field, op: >= > <= <, value},\nmatch {field, pattern [, flags]} or {field, values: [...]}, all / any {rules: [...]}.\nA stored version never changes: store a change as a new version.',
    )
    .action(action(loadRules, (m, ctx, a) => m.add(ctx, a[0] as string[])))
  sub(rules, 'list', 'every rule: newest version, and what is deployed', [
    'shieldx rules list --json',
  ]).action(action(loadRules, (m, ctx) => m.list(ctx)))
  sub(rules, 'show', 'one rule version (the newest without @VERSION)', ['shieldx rules show ip-burst@2'])
    .argument('<rule>', 'RULE or RULE@VERSION')
    .action(action(loadRules, (m, ctx, a) => m.show(ctx, a[0] as string)))

  const loadEvaluate = () => import('./commands/evaluate.js')
  const evaluate = sub(
    program,
    'evaluate',
    'replay labelled traffic through the control and a candidate rule: metrics, significance, Bayes, verdict',
    [
      'shieldx evaluate --candidate ip-burst@1 --control status-errors@1 --traffic traffic.jsonl.gz',
      'shieldx evaluate --candidate ip-burst --control active --traffic t.jsonl --fp-cost 5 --fn-cost 50 --json',
    ],
  )
    .option('--candidate <rule>', 'the rule to judge: RULE or RULE@VERSION (newest without)')
    .option(
      '--control <rule>',
      "the rule to beat: RULE@VERSION, or 'active' (the deployed version of the candidate's rule)",
      'active',
    )
    .option('--traffic <file>', "labelled traffic, JSON lines (.gz too); '-' reads standard input")
    .option('--sample-size <n>', 'score only the first N events in time order', intArg('--sample-size'))
    .option('--min-sample-size <n>', 'below this, NEED_MORE_DATA (default 1000)', intArg('--min-sample-size'))
    .option(
      '--min-attacks <n>',
      'fewer attacks (or benign requests) than this: NEED_MORE_DATA (default 30)',
      intArg('--min-attacks'),
    )
    .option('--min-precision <p>', 'the candidate needs at least this precision (default 0.9)')
    .option('--min-recall <r>', 'the candidate needs at least this recall (default 0.5)')
    .option('--confidence <c>', 'required probability that the candidate is better (default 0.95)')
    .option(
      '--fp-cost <c>',
      'cost of blocking one benign request: adds the expected cost per 10,000 requests',
    )
    .option('--fn-cost <c>', 'cost of missing one attack')
    .option(
      '--workers <n>',
      'threads replaying the traffic, the one reading it included (default: one per core, at most 64)',
      intArg('--workers', 1, 64),
    )
    .option('--seed <n>', 'seed of the Thompson sampling (default 1)', intArg('--seed'))
    .option('--draws <n>', 'Thompson draws (default and minimum 100000)', intArg('--draws'))
    .option('--max-disorder <duration>', 'how far out of time order lines may be (default 60s; 0: sorted)')
    .option('--skip-invalid', 'skip and count bad lines instead of stopping at the first (exit 2)')
    .option('--no-store', 'do not record the evaluation in shadow.evaluations')
    .option('--require-approval', 'exit 3 unless the verdict is APPROVE_* (for CI gates)')
    .addHelpText(
      'after',
      '\nVerdicts: APPROVE_FULL_DEPLOYMENT, APPROVE_CANARY, REJECT, NEED_MORE_DATA (see README, "Shadow evaluation").\nSubcommands: evaluate list, evaluate show ID.',
    )
    .action(
      action(loadEvaluate, (m, ctx, _a, o) => {
        if (!o.candidate) throw new UsageError('evaluate needs --candidate RULE[@VERSION].')
        if (!o.traffic) throw new UsageError('evaluate needs --traffic FILE.')
        return m.run(ctx, o)
      }),
    )
  sub(evaluate, 'list', 'stored evaluations, newest first', ['shieldx evaluate list --rule ip-burst --json'])
    .option('--rule <rule>', 'only evaluations of this rule (as candidate or control)')
    .option('--limit <n>', 'at most this many (default 20)', intArg('--limit', 1))
    .action(action(loadEvaluate, (m, ctx, _a, o) => m.list(ctx, o)))
  sub(evaluate, 'show', 'one stored evaluation, whole', [
    'shieldx evaluate show 0b6f3c1e-8a5d-4f0e-9c51-2f7d1f0c9a11 --json',
  ])
    .argument('<id>', 'evaluation id')
    .action(action(loadEvaluate, (m, ctx, a) => m.show(ctx, a[0] as string)))

  // --- A/B tests and rollout ----------------------------------------------------------------------
  const ab = sub(program, 'ab', 'Bayesian A/B tests (Beta-Binomial, Thompson sampling)', [
    'shieldx ab create --name sqli-v2 --control waf-sqli@1 --test waf-sqli@2',
    'shieldx ab results sqli-v2',
  ])
  const loadAb = () => import('./commands/ab.js')
  sub(ab, 'create', 'start an A/B test of two arms, control and test', [
    'shieldx ab create --name sqli-v2 --control waf-sqli@1 --test waf-sqli@2',
    'shieldx ab create --name sqli-v2 --control waf-sqli@1 --test waf-sqli@2 --confidence 0.99 --min-sample-size 5000 --json',
  ])
    .option('--name <name>', 'unique name of the test')
    .option('--control <label>', 'what the control arm runs, e.g. waf-sqli@1')
    .option('--test <label>', 'what the test arm runs, e.g. waf-sqli@2')
    .option(
      '--confidence <p>',
      'probability of being best that concludes the test, above 0.5 and below 1 (default 0.95)',
    )
    .option('--min-sample-size <n>', 'trials every arm needs before the test can conclude (default 1000)')
    .action(action(loadAb, (m, ctx, _a, o) => m.create(ctx, o)))

  sub(ab, 'record', 'record successes out of trials for one arm, or both arms from an evaluation', [
    'shieldx ab record sqli-v2 --variant test --successes 540 --trials 1000',
    'shieldx ab record sqli-v2 --from-evaluation 5d0c2f9e-1b7a-4f7e-9d7a-2b1c3d4e5f60',
  ])
    .argument('<test>', 'the test name or id')
    .option('--variant <arm>', 'control or test')
    .option('--successes <n>', 'successes in this batch (0 to --trials)')
    .option('--trials <n>', 'trials in this batch (at least 1)')
    .option(
      '--from-evaluation <id>',
      'both arms from a stored evaluation: successes = tp + tn, trials = all events (once per evaluation)',
    )
    .action(action(loadAb, (m, ctx, a, o) => m.record(ctx, a[0] as string, o)))

  sub(ab, 'results', 'posteriors, probability of being best, sample-ratio check, verdict', [
    'shieldx ab results sqli-v2',
    'shieldx ab results sqli-v2 --json --seed 7',
  ])
    .argument('<test>', 'the test name or id')
    .option('--seed <n>', 'seed of the Thompson sampling (default 1, so results are reproducible)')
    .addHelpText(
      'after',
      '\nConclusive when every arm has at least --min-sample-size trials and one arm is best with at least\nthe --confidence probability; the verdict is then stored on the test. A sample ratio mismatch\nis a warning: p < 0.001 against 50/50, or, when ab assign gave out the units, an arm with more\ntrials than units.',
    )
    .action(action(loadAb, (m, ctx, a, o) => m.results(ctx, a[0] as string, o)))

  sub(ab, 'assign', 'pick the arm for the next unit: one Thompson draw per arm', [
    'shieldx ab assign sqli-v2',
    'shieldx ab assign sqli-v2 --seed 42 --json',
    'shieldx ab assign sqli-v2 --dry-run',
  ])
    .argument('<test>', 'the test name or id')
    .option('--seed <n>', 'make the draw reproducible (default: random)')
    .option(
      '--dry-run',
      'draw without counting the unit (the counts are the split the sample-ratio check expects)',
    )
    .addHelpText(
      'after',
      '\nEach assignment is counted on its arm: ab results checks that no arm has more trials than units.\nPrints the variant; --json adds the draws, the seed and the units given to each arm so far.',
    )
    .action(action(loadAb, (m, ctx, a, o) => m.assign(ctx, a[0] as string, o)))
  notBuilt(program, 'deploy-canary', 'staged rollout of a rule gated on a conclusive evaluation', [
    'shieldx deploy-canary waf-sqli --version 2',
  ])
  sub(
    program,
    'rollback',
    'return the database to its newest pre-migration backup (a rule: with deploy-canary)',
    [
      'shieldx rollback --migration',
      'shieldx rollback --migration --backup ~/.shieldx/backups/shieldx-credits-20261122T020000Z-pre-migrate-credits-0002.shxb --yes',
    ],
  )
    .option('--migration', 'restore the newest pre-migration backup')
    .option('--backup <file>', 'restore this backup instead')
    .addOption(
      new Option('--schema <schema>', 'which schema').choices(['credits', 'shadow', 'all']).default('all'),
    )
    .option(
      '--force',
      'go ahead although other connections are open, or --backup was taken from another database (exit 3 otherwise)',
    )
    .option('--dry-run', 'say what would be restored, and change nothing')
    .action(action(loadBackup, (m, ctx, _a, o) => m.rollbackMigration(ctx, o)))

  // --- diagnostics --------------------------------------------------------------------------------
  sub(
    program,
    'locate',
    'which Postgres / Redis / keys this invocation would use, and where each setting came from',
    ['shieldx locate', 'shieldx --profile prod locate --json'],
  ).action(
    action(
      () => import('./commands/locate.js'),
      (m, ctx) => m.locate(ctx),
    ),
  )

  sub(
    program,
    'status',
    'the P0 invariants: negative balances, chain errors and unguarded deployments must be 0 (exit 4 otherwise; exit 1 when one cannot be known)',
    ['shieldx status', 'shieldx status --json'],
  ).action(
    action(
      () => import('./commands/status.js'),
      (m, ctx) => m.status(ctx),
    ),
  )

  sub(program, 'demo', 'the whole flow end to end on the embedded database: run this first', [
    'npx shieldx demo',
    'shieldx demo --json',
  ])
    .option('--reset', 'start over with an empty demo database')
    .action(
      action(
        () => import('./commands/demo.js'),
        (m, ctx, _a, o) => m.demo(ctx, o),
      ),
    )

  // --- later (DESIGN.md) ----------------------------------------------------------------------------
  const k8s = sub(program, 'k8s', 'Kubernetes manifests for shieldx Jobs and services', [
    'shieldx k8s render',
  ])
  notBuilt(
    k8s,
    'render',
    'render the manifests in templates/k8s',
    ['shieldx k8s render --out k8s/'],
    'k8s render',
  )
  notBuilt(program, 'serve', 'the credits and shadow HTTP APIs (ports 5004 and 5005)', ['shieldx serve'])

  // Commander's own help command reads one name only, so `help ab create` showed the help of
  // `ab`. A command named help takes its place (commander then adds none) and follows the path.
  sub(program, 'help', "a command's help: the same as COMMAND [SUBCOMMAND] --help", [
    'shieldx help ab create',
    'shieldx help status',
  ])
    .argument('[command...]', 'a command and its subcommand, e.g. ab create')
    .action((path: string[], _opts: unknown, self: Command) => {
      let target = program
      for (const [i, name] of path.entries()) {
        const next = target.commands.find((c) => c.name() === name || c.aliases().includes(name))
        if (!next) {
          const parent = ['shieldx', ...path.slice(0, i)].join(' ')
          self.error(
            `error: unknown command '${path.slice(0, i + 1).join(' ')}'; '${parent} --help' lists the commands.`,
            { code: 'commander.unknownCommand', exitCode: EXIT.usage },
          )
        }
        target = next
      }
      target.help()
    })

  return program
}

/**
 * A whole-number flag. `min` where 0 would quietly do nothing (a --limit of 0 lists nothing);
 * `max` where a huge value is a mistake, not a wish (--workers).
 */
function intArg(flag: string, min = 0, max = Infinity) {
  const bounded = Number.isFinite(max)
  const expected = bounded ? `from ${min} to ${max}` : `a whole number${min > 0 ? ` of ${min} or more` : ''}`
  return (value: string): number => {
    const n = /^\d+$/.test(value) ? Number(value) : NaN
    if (!(n >= min && n <= max))
      throw new InvalidArgumentError(`${flag} must be ${expected}${bounded ? `; got ${value}` : ''}.`)
    return n
  }
}
