#!/usr/bin/env node
// Launcher: the error boundary around the whole CLI. It loads the compiled program, runs it,
// and turns SIGINT / SIGTERM into a clean stop with exit 130.
const controller = new AbortController()
let interrupts = 0
const onSignal = () => {
  interrupts += 1
  if (interrupts > 1) process.exit(130) // a second Ctrl-C means now
  controller.abort()
}
process.on('SIGINT', onSignal)
process.on('SIGTERM', onSignal)

// Last resort for errors outside any await chain (a library's stray promise): still one sentence,
// still "this is a bug", the stack only with --verbose, never a raw crash dump.
const verbose = process.argv.includes('--verbose') || process.argv.includes('-v')
const crash = (err) => {
  process.stderr.write(`error: Unexpected error: ${err && err.message ? err.message : String(err)}\n`)
  process.stderr.write(
    '  This is a bug in shieldx. Run again with --verbose for details, and report it with that output.\n',
  )
  if (verbose && err && err.stack) process.stderr.write(`${err.stack}\n`)
  process.exit(1)
}
process.on('unhandledRejection', crash)
process.on('uncaughtException', crash)

// A reader that went away (`shieldx ... --json | head -c 10`) is not a bug: whatever we still
// write to that stream is dropped, the command finishes (a migration is not cut off halfway),
// and the exit code is the command's own. Without a listener, the EPIPE would reach crash().
const dropWhenClosed = (err) => {
  if (err && (err.code === 'EPIPE' || err.code === 'ERR_STREAM_DESTROYED')) return
  crash(err)
}
process.stdout.on('error', dropWhenClosed)
process.stderr.on('error', dropWhenClosed)

let cli
try {
  cli = await import('../dist/cli.js')
} catch (err) {
  const missing = err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/cli.js')
  process.stderr.write(
    missing
      ? 'error: shieldx is not built: run `npm run build` (npm ci does it for you).\n'
      : `error: shieldx failed to start: ${err?.message}\n`,
  )
  process.exit(1)
}

const { processIo } = await import('../dist/ui/io.js')
const code = await cli.run(process.argv.slice(2), processIo(), { signal: controller.signal })
process.exitCode = code
// Everything is closed by now; if some handle still holds the loop, do not hang a CronJob on it.
setTimeout(() => process.exit(code), 2000).unref()
