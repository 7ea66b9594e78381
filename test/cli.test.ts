/**
 * The CLI frame: help, version, unknown commands and flags, the exit code of every error class,
 * JSON errors, colour rules, interruption. In-process, plus a few runs of the real binary.
 */

import { PassThrough } from 'node:stream'
import { execa } from 'execa'
import { describe, expect, it } from 'vitest'
import { handleError } from '../src/boundary.js'
import { buildProgram } from '../src/cli.js'
import type { Context } from '../src/context.js'
import {
  ConflictError,
  errorFromData,
  errorToData,
  EXIT,
  IntegrityError,
  InterruptedError,
  OperationError,
  SafetyError,
  TimeoutError,
  UsageError,
} from '../src/core/errors.js'
import { Output } from '../src/ui/output.js'
import { BIN, capturedStreams, runCli, spawnCli, tempHome } from './helpers/cli.js'
import { cleanEnv } from './helpers/env.js'

function capture(json = false, verbose = false) {
  const streams = capturedStreams()
  const output = new Output({ ...streams, env: {} }, { json, color: false, verbose })
  return {
    output,
    get stdout() {
      return streams.out
    },
    get stderr() {
      return streams.err
    },
  }
}

/** Every command path in the program, e.g. ['migrate', 'up']. */
function commandPaths(): string[][] {
  const io = { stdout: new PassThrough(), stderr: new PassThrough(), stdin: new PassThrough(), env: {} }
  const program = buildProgram(io, async () => ({}) as Context)
  const out: string[][] = []
  const walk = (cmd: typeof program, prefix: string[]) => {
    for (const c of cmd.commands) {
      if (c.name() === 'help') continue
      out.push([...prefix, c.name()])
      walk(c, [...prefix, c.name()])
    }
  }
  walk(program, [])
  return out
}

describe('help and version', () => {
  it('top-level help lists every command of DESIGN.md, the exit codes and an example', async () => {
    const r = await runCli(['--help'])
    expect(r.code).toBe(0)
    for (const name of [
      'migrate',
      'credits',
      'verify-chain',
      'backup',
      'restore',
      'evaluate',
      'ab',
      'deploy-canary',
      'rollback',
      'locate',
      'status',
      'demo',
    ]) {
      expect(r.stdout).toMatch(new RegExp(`\\n  ${name}\\b`))
    }
    expect(r.stdout).toContain('Exit codes:')
    expect(r.stdout).toContain('124  timed out')
    expect(r.stdout).toContain('$ npx shieldx demo')
    expect(r.stderr).toBe('')
  })

  it('every command has --help with an example and the exit codes', async () => {
    const paths = commandPaths()
    expect(paths.length).toBeGreaterThan(25)
    for (const p of paths) {
      const r = await runCli([...p, '--help'])
      expect(r.code, p.join(' ')).toBe(0)
      expect(r.stdout, p.join(' ')).toMatch(/Examples:\n {2}\$ (npx )?shieldx /)
      expect(r.stdout, p.join(' ')).toMatch(/Exit codes: 0 ok, 1 failed, 2 usage, 3 refused, 4 integrity/)
    }
  })

  it("help COMMAND [SUBCOMMAND] shows that command's own help, as COMMAND [SUBCOMMAND] --help does", async () => {
    const paths = commandPaths()
    // Every group's subcommands are covered, not only ab's.
    const groups = new Set(paths.filter((p) => p.length === 2).map((p) => p[0]))
    for (const g of ['migrate', 'credits', 'backup', 'traffic', 'rules', 'evaluate', 'ab', 'k8s']) {
      expect(groups, g).toContain(g)
    }
    for (const p of paths) {
      const viaHelp = await runCli(['help', ...p])
      const viaFlag = await runCli([...p, '--help'])
      expect(viaHelp.code, p.join(' ')).toBe(0)
      expect(viaHelp.stdout, p.join(' ')).toBe(viaFlag.stdout)
      expect(viaHelp.stdout, p.join(' ')).toMatch(new RegExp(`^Usage: shieldx ${p.join(' ')} `))
      expect(viaHelp.stderr, p.join(' ')).toBe('')
    }
    expect((await runCli(['help'])).stdout).toBe((await runCli(['--help'])).stdout)
    const unknown = await runCli(['help', 'ab', 'nope'])
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toContain("unknown command 'ab nope'")
    expect(unknown.stdout).toBe('')
  })

  it("every command's help lists the global options", async () => {
    const io = { stdout: new PassThrough(), stderr: new PassThrough(), stdin: new PassThrough(), env: {} }
    const globals = buildProgram(io, async () => ({}) as Context).options.map((o) => o.flags)
    for (const f of [
      '--json',
      '--profile <name>',
      '--credits-db <url>',
      '--shadow-db <url>',
      '--timeout <duration>',
    ]) {
      expect(globals).toContain(f)
    }
    for (const p of commandPaths()) {
      const r = await runCli([...p, '--help'])
      const [, global = ''] = r.stdout.split('\nGlobal Options:\n')
      expect(global, p.join(' ')).not.toBe('')
      for (const f of globals) expect(global, `${p.join(' ')}: ${f}`).toMatch(new RegExp(`^  ${f}  `, 'm'))
    }
  })

  it("a group's own flags given to its subcommand are exit 2, not ignored; its help does not offer them", async () => {
    const show = await runCli([
      'evaluate',
      'show',
      '0b6f3c1e-8a5d-4f0e-9c51-2f7d1f0c9a11',
      '--require-approval',
    ])
    expect(show.code).toBe(2)
    expect(show.stderr).toContain(
      "error: --require-approval is a flag of 'shieldx evaluate', not of 'shieldx evaluate show'.",
    )
    const list = await runCli(['evaluate', 'list', '--candidate', 'x', '--traffic', 'y'])
    expect(list.code).toBe(2)
    expect(list.stderr).toContain("error: --candidate, --traffic are flags of 'shieldx evaluate'")
    const help = await runCli(['help', 'evaluate', 'show'])
    expect(help.stdout).toContain('\nGlobal Options:\n')
    expect(help.stdout).not.toContain('--require-approval')
    expect(help.stdout).not.toContain('--candidate')
  })

  it('--version prints the package version', async () => {
    const r = await runCli(['--version'])
    expect(r.code).toBe(0)
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/)
  })
})

describe('usage errors: exit 2, with a suggestion, never a stack', () => {
  it('unknown command', async () => {
    const r = await runCli(['migrat'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain("unknown command 'migrat'")
    expect(r.stderr).toContain('Did you mean migrate?')
  })

  it('unknown subcommand', async () => {
    const r = await runCli(['migrate', 'upp'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('Did you mean up?')
  })

  it('unknown flag', async () => {
    const r = await runCli(['migrate', 'up', '--dry-runn'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain("unknown option '--dry-runn'")
    expect(r.stderr).toContain('Did you mean --dry-run?')
  })

  it('bad choice and bad number', async () => {
    const choice = await runCli(['migrate', 'up', '--schema', 'billing'])
    expect(choice.code).toBe(2)
    expect(choice.stderr).toContain('credits, shadow, all')
    const num = await runCli(['migrate', 'up', '--to', 'latest'])
    expect(num.code).toBe(2)
    expect(num.stderr).toContain('--to must be a whole number')
  })

  it('--json: every usage error is exactly one JSON document on stdout', async () => {
    const cases: Array<[string[], string]> = [
      [['--json', 'migrat'], "unknown command 'migrat'"],
      [['--json', 'migrate', 'up', '--dry-runn'], "unknown option '--dry-runn'"],
      [['--json', 'migrate', 'up', '--schema', 'billing'], 'credits, shadow, all'],
      [['--json', 'migrate', 'up', '--to', 'latest'], '--to must be a whole number'],
      [['--json', 'migrate', 'create', '--schema', 'credits'], "missing required argument 'name'"],
      [['--json', 'migrate'], 'A subcommand is required'],
    ]
    for (const [argv, text] of cases) {
      const r = await runCli(argv)
      expect(r.code, argv.join(' ')).toBe(2)
      const doc = JSON.parse(r.stdout) // throws unless stdout is exactly one document
      expect(doc, argv.join(' ')).toEqual({
        ok: false,
        error: { code: 'USAGE', message: expect.stringContaining(text), exit_code: 2 },
      })
      expect(doc.error.message).not.toMatch(/^error: /)
    }
  })

  it('--json with --help or --version prints no error document', async () => {
    const v = await runCli(['--json', '--version'])
    expect(v.code).toBe(0)
    expect(v.stdout).not.toContain('"ok"')
  })

  it('a group without a subcommand shows its help and exits 2', async () => {
    const r = await runCli(['migrate'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('Usage: shieldx migrate')
  })
})

describe('database URLs', () => {
  it('a malformed %-escape is a usage error naming where the URL came from, not a bug', async () => {
    const flag = await runCli(['--credits-db', 'postgres://us%zzer:pw@127.0.0.1/x', 'migrate', 'status'], {
      env: cleanEnv({ SHIELDX_HOME: tempHome() }),
    })
    expect(flag.code).toBe(2)
    expect(flag.stderr).toContain('The user name in the database URL from flag --credits-db')
    expect(flag.stderr).not.toContain('bug')
    const env = await runCli(['migrate', 'status'], {
      env: cleanEnv({ SHIELDX_HOME: tempHome(), CREDITS_DATABASE_URL: 'postgres://app:pw@127.0.0.1/led%g' }),
    })
    expect(env.code).toBe(2)
    expect(env.stderr).toContain('The database name in the database URL from env CREDITS_DATABASE_URL')
  })

  it('no part of a password with @, / and : in it appears in the error', async () => {
    const password = 'hunter@secret99/zz:q7'
    const r = await runCli(['migrate', 'status'], {
      env: cleanEnv({
        SHIELDX_HOME: tempHome(),
        CREDITS_DATABASE_URL: `postgres://app:${password}@127.0.0.1:1/credits`,
      }),
    })
    expect(r.code).toBe(1)
    expect(r.stderr.trim()).toBe('error: Cannot connect to PostgreSQL at 127.0.0.1:1: connection refused.')
    for (let i = 0; i + 3 <= password.length; i++) {
      expect(r.stderr + r.stdout, password.slice(i, i + 3)).not.toContain(password.slice(i, i + 3))
    }
  })
})

describe('commands not built yet', () => {
  it('say so in one sentence and exit 1, with no fake output', async () => {
    for (const argv of [['deploy-canary', 'x'], ['serve'], ['k8s', 'render']]) {
      const r = await runCli(argv)
      expect(r.code, argv.join(' ')).toBe(1)
      expect(r.stderr).toContain(`'shieldx ${argv[0]}`)
      expect(r.stderr).toContain('is not built yet')
      expect(r.stdout).toBe('')
    }
  })

  it('--json gives a JSON error document on stdout', async () => {
    const r = await runCli(['--json', 'serve'])
    expect(r.code).toBe(1)
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, error: { code: 'NOT_BUILT', exit_code: 1 } })
  })
})

describe('the error boundary', () => {
  it('maps each typed error to its exit code', () => {
    const cases: Array<[Error, number]> = [
      [new OperationError('x'), 1],
      [new UsageError('x'), 2],
      [new SafetyError('x'), 3],
      [new IntegrityError('x'), 4],
      [new ConflictError('x'), 5],
      [new TimeoutError('x'), 124],
      [new InterruptedError('x'), 130],
    ]
    for (const [err, code] of cases) {
      const c = capture()
      expect(handleError(err, c.output)).toBe(code)
      expect(c.stderr).toContain('error: x')
    }
  })

  it('keeps exit code, code, hint, data and cause across a worker-thread boundary; a bug stays a bug', () => {
    const across = (err: unknown) => errorFromData(structuredClone(errorToData(err)))
    const cause = new Error('EIO: i/o error, read')
    const sent = new UsageError('--traffic: cannot read x.jsonl.', {
      code: 'INVALID_TRAFFIC',
      hint: 'Fix the line.',
      data: { line: 7 },
      cause,
    })
    const got = across(sent) as UsageError
    expect(got).toBeInstanceOf(UsageError)
    expect([got.message, got.exitCode, got.code, got.hint, got.data]).toEqual([
      sent.message,
      EXIT.usage,
      'INVALID_TRAFFIC',
      'Fix the line.',
      { line: 7 },
    ])
    expect((got.cause as Error).stack).toBe(cause.stack)
    for (const [err, code] of [
      [new IntegrityError('x'), 4],
      [new ConflictError('x'), 5],
      [new InterruptedError(), 130],
    ] as const) {
      const c = capture()
      expect(handleError(across(err), c.output)).toBe(code)
    }
    const bug = across(new TypeError('undefined is not a function'))
    const c = capture()
    expect(handleError(bug, c.output)).toBe(EXIT.failed)
    expect(c.stderr).toContain('bug')
  })

  it('a lost database connection or a statement past its time limit is not called a bug', () => {
    const lost = Object.assign(new Error('terminating connection due to administrator command'), {
      code: '57P01',
    })
    const c = capture(true)
    expect(handleError(lost, c.output)).toBe(EXIT.failed)
    expect(c.stderr).toContain(
      'error: The connection to the database was lost (terminating connection due to administrator command).',
    )
    expect(c.stderr).not.toContain('bug')
    expect(JSON.parse(c.stdout).error).toMatchObject({ code: 'DB_CONNECTION_LOST', exit_code: 1 })
    // As pg says it when the socket closes, and as it arrives from a worker thread (message only).
    const closed = capture()
    expect(handleError(new Error('Connection terminated unexpectedly'), closed.output)).toBe(EXIT.failed)
    expect(closed.stderr).not.toContain('bug')
    for (const [message, code] of [
      ['database "r1" does not exist', '3D000'],
      ['could not extend file "base/16384/2619": No space left on device', '53100'],
      // ALTER DATABASE ... ALLOW_CONNECTIONS false while a command runs
      ['database "r1" is not currently accepting connections', '55000'],
    ]) {
      const refused = capture()
      expect(handleError(Object.assign(new Error(message), { code }), refused.output)).toBe(EXIT.failed)
      expect(refused.stderr).toContain(`error: The database server refused: ${message} [SQLSTATE ${code}].`)
      expect(refused.stderr).not.toContain('bug')
    }
    // Our own SQL going wrong is still a bug, 55000 included.
    const state = capture()
    const inUse = Object.assign(new Error('cannot refresh materialized view concurrently'), { code: '55000' })
    expect(handleError(inUse, state.output)).toBe(EXIT.failed)
    expect(state.stderr).toContain('This is a bug in shieldx')
    const ours = capture()
    const syntax = Object.assign(new Error('syntax error at or near "selct"'), { code: '42601' })
    expect(handleError(syntax, ours.output)).toBe(EXIT.failed)
    expect(ours.stderr).toContain('This is a bug in shieldx')
    const slow = Object.assign(new Error('canceling statement due to statement timeout'), { code: '57014' })
    const t = capture()
    expect(handleError(slow, t.output)).toBe(EXIT.timeout)
    expect(t.stderr).toContain('--timeout')
  })

  it('an unexpected error is called a bug; the stack only with --verbose', () => {
    const quiet = capture()
    expect(handleError(new TypeError('undefined is not a function'), quiet.output)).toBe(EXIT.failed)
    expect(quiet.stderr).toContain('This is a bug in shieldx')
    expect(quiet.stderr).not.toMatch(/\n\s+at /)
    const loud = capture(false, true)
    handleError(new TypeError('undefined is not a function'), loud.output)
    expect(loud.stderr).toMatch(/\n\s+at /)
  })

  it('scrubs known secrets from any message', () => {
    const c = capture(true)
    handleError(new OperationError('failed with key s3cr3t-key-value inside'), c.output, ['s3cr3t-key-value'])
    expect(c.stderr).not.toContain('s3cr3t-key-value')
    expect(c.stdout).not.toContain('s3cr3t-key-value')
    expect(c.stderr).toContain('****')
  })

  it('an aborted run (SIGINT) exits 130', async () => {
    const ac = new AbortController()
    ac.abort()
    const r = await runCli(['locate'], { signal: ac.signal })
    expect(r.code).toBe(130)
  })
})

describe('output rules', () => {
  it('--json prints exactly one JSON document on stdout', async () => {
    const r = await runCli(['--json', 'locate'], { env: cleanEnv({ SHIELDX_HOME: tempHome() }) })
    expect(r.code).toBe(0)
    expect(() => JSON.parse(r.stdout)).not.toThrow()
  })

  it('colour only on a TTY, and never with NO_COLOR or --no-color', async () => {
    const home = tempHome()
    const esc = '\u001b['
    const tty = await runCli(['locate'], { tty: true, env: cleanEnv({ SHIELDX_HOME: home, TERM: 'xterm' }) })
    expect(tty.stdout).toContain(esc)
    const pipe = await runCli(['locate'], { env: cleanEnv({ SHIELDX_HOME: home }) })
    expect(pipe.stdout).not.toContain(esc)
    const noColor = await runCli(['locate'], {
      tty: true,
      env: cleanEnv({ SHIELDX_HOME: home, NO_COLOR: '1' }),
    })
    expect(noColor.stdout).not.toContain(esc)
    const flag = await runCli(['--no-color', 'locate'], { tty: true, env: cleanEnv({ SHIELDX_HOME: home }) })
    expect(flag.stdout).not.toContain(esc)
    const dumb = await runCli(['locate'], { tty: true, env: cleanEnv({ SHIELDX_HOME: home, TERM: 'dumb' }) })
    expect(dumb.stdout).not.toContain(esc)
  })
})

describe('the built binary', () => {
  it('runs --version, and maps an unknown command to exit 2', async () => {
    const v = await spawnCli(['--version'])
    expect(v.code).toBe(0)
    expect(v.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/)
    const bad = await spawnCli(['frobnicate'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain("unknown command 'frobnicate'")
  })

  it('a reader that goes away (| head) is not a crash: no bug message, the exit code of the command', async () => {
    // `true` exits at once, so every write to stdout hits a closed pipe (EPIPE).
    const r = await execa(
      'bash',
      ['-c', `"${process.execPath}" "${BIN}" --json locate | true; echo "code=\${PIPESTATUS[0]}" >&2`],
      { env: cleanEnv({ SHIELDX_HOME: tempHome() }), extendEnv: false, reject: false },
    )
    expect(r.stderr).not.toContain('EPIPE')
    expect(r.stderr).not.toContain('bug')
    expect(r.stderr.trim()).toBe('code=0')
  })

  it('an unreachable database is one sentence naming host and port, exit 1', async () => {
    const r = await spawnCli(['migrate', 'status'], {
      env: cleanEnv({
        CREDITS_DATABASE_URL: 'postgres://app:hunter22@127.0.0.1:1/ledger',
        SHIELDX_HOME: tempHome(),
      }),
    })
    expect(r.code).toBe(1)
    expect(r.stderr.trim()).toBe('error: Cannot connect to PostgreSQL at 127.0.0.1:1: connection refused.')
    expect(r.stderr + r.stdout).not.toContain('hunter22')
  })
})
