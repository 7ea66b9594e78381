/**
 * Output rules in one place (after Shopify CLI's output.ts): results on stdout, everything else
 * on stderr; --json prints one JSON document on stdout and nothing else; colour only on a TTY
 * and never with NO_COLOR, TERM=dumb or --no-color.
 */
import type { Io, OutStream } from './io.js'

export interface OutputOptions {
  json: boolean
  color: boolean
  verbose: boolean
  /** When true, results are no longer printed (the run was interrupted). */
  silenced?: () => boolean
}

export function colorEnabled(stream: OutStream, env: NodeJS.ProcessEnv, flag: boolean): boolean {
  if (!flag) return false
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false
  if (env.TERM === 'dumb') return false
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== '0') return true
  return stream.isTTY === true
}

const CODES = { red: 31, green: 32, yellow: 33, blue: 34, cyan: 36, gray: 90, bold: 1 } as const
export type Style = keyof typeof CODES

export class Output {
  readonly json: boolean
  readonly verbose: boolean
  private readonly silenced: () => boolean
  private readonly colorOut: boolean
  private readonly colorErr: boolean

  constructor(
    readonly io: Io,
    options: OutputOptions,
  ) {
    this.json = options.json
    this.verbose = options.verbose
    this.silenced = options.silenced ?? (() => false)
    this.colorOut = colorEnabled(io.stdout, io.env, options.color)
    this.colorErr = colorEnabled(io.stderr, io.env, options.color)
  }

  /** Is a person watching stderr? Then progress is drawn; otherwise it is logged as JSON lines. */
  get interactive(): boolean {
    return this.io.stderr.isTTY === true && this.io.env.TERM !== 'dumb'
  }

  /** Style text for stdout. */
  style(style: Style, text: string): string {
    return this.colorOut ? paint(style, text) : text
  }

  /** Style text for stderr. */
  styleErr(style: Style, text: string): string {
    return this.colorErr ? paint(style, text) : text
  }

  /** A line of the result, for people. Suppressed under --json, where the document is the result. */
  result(line = ''): void {
    if (!this.json && !this.silenced()) this.io.stdout.write(line + '\n')
  }

  /** The one JSON document of a --json run. */
  document(doc: unknown): void {
    if (this.silenced() && !isErrorDocument(doc)) return
    this.io.stdout.write(JSON.stringify(doc, jsonReplacer, 2) + '\n')
  }

  /** One JSON line on stdout, for streaming results (--json on a stream). */
  jsonLine(doc: unknown): void {
    if (this.silenced()) return
    this.io.stdout.write(JSON.stringify(doc, jsonReplacer) + '\n')
  }

  /**
   * Several JSON lines in one write (a stream's results as they become ready). Written after
   * Ctrl-C too: each reports something already done (credits apply: an operation committed while
   * the run was stopping), and a caller that is not told would not know it happened.
   */
  jsonLines(docs: unknown[]): void {
    if (docs.length === 0) return
    let text = ''
    for (const doc of docs) {
      let line: string
      try {
        // Without the replacer (a function call per value) unless there is a bigint to convert.
        line = JSON.stringify(doc)
      } catch {
        line = JSON.stringify(doc, jsonReplacer)
      }
      text += line + '\n'
    }
    this.io.stdout.write(text)
  }

  info(message: string): void {
    this.io.stderr.write(message + '\n')
  }

  success(message: string): void {
    this.io.stderr.write(`${this.styleErr('green', '✔')} ${message}\n`)
  }

  warn(message: string): void {
    this.io.stderr.write(`${this.styleErr('yellow', 'warning:')} ${message}\n`)
  }

  error(message: string): void {
    this.io.stderr.write(`${this.styleErr('red', 'error:')} ${message}\n`)
  }

  debug(message: string): void {
    if (this.verbose) this.io.stderr.write(this.styleErr('gray', message) + '\n')
  }

  /** A structured log line on stderr, for CronJobs and CI (no TTY). */
  log(event: string, fields: Record<string, unknown> = {}): void {
    this.io.stderr.write(
      JSON.stringify({ ts: new Date().toISOString(), event, ...fields }, jsonReplacer) + '\n',
    )
  }
}

function isErrorDocument(doc: unknown): boolean {
  return typeof doc === 'object' && doc !== null && (doc as { ok?: unknown }).ok === false
}

function paint(style: Style, text: string): string {
  return `\u001b[${CODES[style]}m${text}\u001b[0m`
}

/** bigint as number when it is safe, as string otherwise: amounts stay integers in JSON. */
function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') {
    return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER)
      ? Number(value)
      : value.toString()
  }
  return value
}
