/**
 * A child process of `restore`: it verifies the backup's audit chains (core/backup/chain-check.ts)
 * at the lowest CPU priority while the restore runs, so that it uses what the restore leaves idle.
 * Its input (the file, the manifest, the keys) comes on stdin, never on a command line; its result
 * is one JSON document on stdout.
 */
import { notIntact, type TextChainResult } from './core/audit/copy-text.js'
import { type ChainCheckInput, checkChains } from './core/backup/chain-check.js'

async function main(): Promise<TextChainResult> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  // SIGTERM from restore when it fails or is interrupted: pg_restore is stopped and reaped first.
  const stop = new AbortController()
  process.once('SIGTERM', () => stop.abort())
  let input: ChainCheckInput
  try {
    input = JSON.parse(Buffer.concat(chunks).toString('utf8')) as ChainCheckInput
  } catch {
    // Not the parser's message: it may quote the input, and the input holds keys.
    return notIntact('unreadable input')
  }
  // Started with --expose-gc for this: see checkChains.
  const collect = (globalThis as { gc?: () => void }).gc
  return checkChains(input, { signal: stop.signal, ...(collect ? { collect } : {}) })
}

const answer = (result: TextChainResult) =>
  // Not waiting for the rest of the file to be read: the answer is known.
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0))

main().then(answer, (err: Error) => answer(notIntact(err.message)))
