/**
 * What every command receives: its streams and output rules, the global flags, the resolved
 * settings, and a place to register cleanup (pools, the embedded server) that the CLI runs
 * however the command ends.
 */
import { urlUserinfo } from './core/config/redact.js'
import { type CommandFlags, resolveSettings, type Settings } from './core/config/settings.js'
import type { Database, Databases, DbRole } from './core/db/pool.js'
import type { Io } from './ui/io.js'
import { Output } from './ui/output.js'

export interface GlobalOptions {
  json?: boolean
  profile?: string
  creditsDb?: string
  shadowDb?: string
  redis?: string
  home?: string
  yes?: boolean
  /** false with --no-input */
  input?: boolean
  /** false with --no-color */
  color?: boolean
  verbose?: boolean
  timeout?: string
}

export class Context {
  /** The streams, with the run's signal: a prompt (ui/prompt.ts) stops on Ctrl-C. */
  readonly io: Io
  readonly out: Output
  /** A command that prints its result and still has to fail (e.g. status finding drift) sets this. */
  exitCode: number | undefined
  private readonly cleanups: Array<() => Promise<void>> = []
  private cached: Settings | undefined

  constructor(
    io: Io,
    readonly globals: GlobalOptions,
    readonly signal: AbortSignal,
  ) {
    this.io = { ...io, signal }
    this.out = new Output(this.io, {
      json: globals.json === true,
      color: globals.color !== false,
      verbose: globals.verbose === true,
      // After Ctrl-C, results are not printed: the run ends as interrupted.
      silenced: () => signal.aborted,
    })
  }

  get yes(): boolean {
    return this.globals.yes === true
  }

  get noInput(): boolean {
    return this.globals.input === false
  }

  /** Settings resolved flag > env > profile > default. Command flags (--dir...) join the global ones. */
  settings(commandFlags: CommandFlags = {}): Settings {
    if (!this.cached || Object.keys(commandFlags).length > 0) {
      const g = this.globals
      this.cached = resolveSettings({
        env: this.io.env,
        flags: {
          home: g.home,
          profile: g.profile,
          creditsDb: g.creditsDb,
          shadowDb: g.shadowDb,
          redis: g.redis,
          timeout: g.timeout,
          ...commandFlags,
        },
      })
    }
    return this.cached
  }

  /** Open the credits and shadow databases; closed automatically when the command ends. */
  async databases(settings: Settings = this.settings()): Promise<Databases> {
    const { openDatabases } = await import('./core/db/pool.js')
    return this.tracked(await openDatabases(settings, this.openOptions(settings)))
  }

  /**
   * One database, for a command that goes on without the other (status): the credits one, or a
   * shadow database of its own. Closed automatically when the command ends.
   */
  async database(role: DbRole, settings: Settings = this.settings()): Promise<Database> {
    const { openDatabase } = await import('./core/db/pool.js')
    return this.tracked(await openDatabase(settings, role, this.openOptions(settings)))
  }

  private openOptions(settings: Settings) {
    return {
      timeoutMs: settings.timeoutMs.value,
      env: this.io.env,
      onNotice: (m: string) => this.out.info(m),
    }
  }

  /** Closed when the command ends; Ctrl-C cancels its running statements. */
  private tracked<T extends Pick<Database, 'close' | 'cancelActive'>>(db: T): T {
    this.onCleanup(() => db.close())
    this.signal.addEventListener('abort', () => void db.cancelActive().catch(() => {}), { once: true })
    return db
  }

  /** The shadow database (rules, evaluations, A/B tests), checked to be at the shipped schema version. */
  async shadowDatabase(): Promise<Database> {
    const settings = this.settings()
    const dbs = await this.databases(settings)
    const { openShadow } = await import('./core/shadow/store.js')
    return openShadow(settings, dbs.shadow)
  }

  /** Passwords in the resolved database and Redis URLs (a profile's too): scrubbed from errors. */
  secretValues(): string[] {
    if (!this.cached) return []
    const urls = [this.cached.creditsDb.value, this.cached.shadowDb.value, this.cached.redis.value]
    return urls.flatMap((u) => {
      const password = u ? urlUserinfo(u)?.password : null
      return password ? [password] : []
    })
  }

  onCleanup(fn: () => Promise<void>): void {
    this.cleanups.push(fn)
  }

  async cleanup(): Promise<void> {
    while (this.cleanups.length > 0) {
      const fn = this.cleanups.pop()!
      await fn().catch((err) => this.out.debug(`cleanup failed: ${(err as Error).message}`))
    }
  }
}
