/**
 * Progress of a long operation: a counter redrawn on a terminal, a JSON line every few seconds
 * otherwise (CronJobs and CI read those). The caller reports increments; this decides when to show.
 */
import type { Output } from './output.js'
import { thousands } from '../core/thousands.js'

export interface Progress {
  add(n: number): void
  /** Set the running total (for callers that know it). */
  set(total: number): void
  done(): void
}

export function progress(out: Output, what: string, unit: 'rows' | 'bytes'): Progress {
  let total = 0
  const started = Date.now()
  let last = started
  const tty = out.interactive
  const fmt = (n: number) => (unit === 'bytes' ? `${(n / 1_048_576).toFixed(1)} MB` : `${thousands(n)} rows`)
  const show = (force: boolean) => {
    const now = Date.now()
    if (!force && now - last < (tty ? 200 : 5000)) return
    last = now
    const seconds = Math.max(0.001, (now - started) / 1000)
    const rate = total / seconds
    if (tty) {
      out.io.stderr.write(
        `\r${what}: ${fmt(total)} (${unit === 'bytes' ? `${(rate / 1_048_576).toFixed(1)} MB/s` : `${thousands(Math.round(rate))}/s`})   `,
      )
    } else {
      out.log(`${what.replace(/\s+/g, '_')}.progress`, { [unit]: total, per_second: Math.round(rate) })
    }
  }
  return {
    add(n) {
      total += n
      show(false)
    },
    set(n) {
      total = n
      show(false)
    },
    done() {
      if (tty && last > started)
        out.io.stderr.write(`\r${what}: ${fmt(total)} in ${((Date.now() - started) / 1000).toFixed(1)}s\n`)
    },
  }
}

/** "12.3 MB, 45.1 MB/s": for a step's live progress. */
export function byteRate(started: number): (bytes: number) => string {
  return (bytes) => {
    const seconds = Math.max(0.001, (Date.now() - started) / 1000)
    return `${(bytes / 1_048_576).toFixed(1)} MB, ${(bytes / 1_048_576 / seconds).toFixed(1)} MB/s`
  }
}

export interface Bar {
  /** bytes done of the total, and a count to show beside it */
  update(done: number, count: number): void
  done(): void
}

/**
 * A bar over a known total (a file's bytes) with a count beside it, redrawn on a terminal;
 * a JSON line every few seconds otherwise. A total of 0 (a pipe) shows the count only.
 */
export function progressBar(out: Output, what: string, total: number, unit: string): Bar {
  const started = Date.now()
  let last = 0
  let drawn = false
  const tty = out.interactive
  const draw = (done: number, count: number, force: boolean) => {
    const now = Date.now()
    if (!force && now - last < (tty ? 100 : 5000)) return
    last = now
    const frac = total > 0 ? Math.min(1, done / total) : null
    const rate = Math.round(count / Math.max(0.001, (now - started) / 1000))
    if (tty) {
      const width = 30
      const full = Math.round((frac ?? 0) * width)
      const bar =
        frac === null
          ? ''
          : `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${(frac * 100).toFixed(0).padStart(3)}%  `
      out.io.stderr.write(`\r${what} ${bar}${thousands(count)} ${unit} (${thousands(rate)}/s)  `)
      drawn = true
    } else {
      out.log(`${what.replace(/\s+/g, '_')}.progress`, {
        ...(frac === null ? {} : { percent: Math.round(frac * 100) }),
        [unit]: count,
        per_second: rate,
      })
    }
  }
  let lastCount = 0
  return {
    update(done, count) {
      lastCount = count
      draw(done, count, false)
    },
    done() {
      if (tty && drawn) {
        draw(total, lastCount, true)
        out.io.stderr.write('\n')
      }
    },
  }
}
