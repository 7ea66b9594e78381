#!/usr/bin/env node
/**
 * The evaluate benchmark's baseline: read a JSON-lines file in 1 MiB chunks and JSON.parse every
 * line on one thread, nothing else (the same splitting the evaluator's workers do, so the
 * comparison is of the work on top). Prints { "lines", "elapsed_ms" }.
 */
import fs from 'node:fs'

const started = performance.now()
const decoder = new TextDecoder()
let lines = 0
let rest = ''
for await (const chunk of fs.createReadStream(process.argv[2], { highWaterMark: 1 << 20 })) {
  const text = rest + decoder.decode(chunk, { stream: true })
  let start = 0
  for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n', start)) {
    if (nl > start) {
      JSON.parse(text.slice(start, nl))
      lines++
    }
    start = nl + 1
  }
  rest = text.slice(start)
}
if (rest.trim() !== '') {
  JSON.parse(rest)
  lines++
}
process.stdout.write(JSON.stringify({ lines, elapsed_ms: performance.now() - started }) + '\n')
