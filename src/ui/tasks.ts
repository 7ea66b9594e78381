/**
 * A list of steps with live status: a listr2 task list on a terminal, one JSON line per step
 * on stderr otherwise (CronJobs and CI read those). Either way the results come back to the
 * command, which prints its summary on stdout.
 */
import type { Output } from './output.js'

export interface Step<C> {
  title: string
  /**
   * Returns a short note shown beside the title when done, e.g. "2 migrations applied".
   * `report` shows live progress ("12.3 MB, 45.1 MB/s"): in the title on a terminal, as a JSON
   * line every few seconds otherwise.
   */
  run: (ctx: C, report: (text: string) => void) => Promise<string | undefined>
}

export async function runSteps<C>(out: Output, ctx: C, steps: Step<C>[]): Promise<void> {
  if (out.interactive && !out.json) {
    const { Listr, ListrLogger, ProcessOutput, PRESET_TIMER } = await import('listr2')
    const stderr = out.io.stderr as NodeJS.WriteStream
    const list = new Listr(
      steps.map((s) => ({
        title: s.title,
        task: async (_: unknown, task: { title: string }) => {
          const note = await s.run(ctx, (text) => (task.title = `${s.title}: ${text}`))
          if (note) task.title = `${s.title}: ${note}`
        },
      })),
      {
        concurrent: false,
        exitOnError: true,
        registerSignalListeners: false,
        renderer: 'default',
        // We decided above that a person is watching stderr; listr2 would look at stdout.
        fallbackRendererCondition: false,
        rendererOptions: {
          collapseErrors: false,
          showErrorMessage: false,
          timer: PRESET_TIMER,
          // Progress on stderr: stdout is for results.
          logger: new ListrLogger({ processOutput: new ProcessOutput(stderr, stderr) }),
        },
      },
    )
    await list.run()
    return
  }
  for (const s of steps) {
    const started = performance.now()
    out.log('step.start', { step: s.title })
    let last = started
    const report = (text: string) => {
      const now = performance.now()
      if (now - last < 5000) return
      last = now
      out.log('step.progress', { step: s.title, progress: text })
    }
    try {
      const note = await s.run(ctx, report)
      out.log('step.done', {
        step: s.title,
        ms: Math.round(performance.now() - started),
        ...(note ? { note } : {}),
      })
    } catch (err) {
      out.log('step.failed', { step: s.title, ms: Math.round(performance.now() - started) })
      throw err
    }
  }
}
