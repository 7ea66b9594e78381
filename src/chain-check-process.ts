/**
 * A child process of `restore`: it verifies the backup's audit chains at the lowest CPU priority
 * while the restore runs, from the spill file the restore hands it as fd 3
 * (core/backup/chain-check.ts). Its input (the keys, the manifest's heads, how far the file is
 * written) comes on stdin, never on a command line; its result is one JSON document on stdout.
 */
import { notIntact, type TextChainResult } from './core/audit/copy-text.js'
import { checkSpilledChains, readMessages } from './core/backup/chain-check.js'

const SPILL_FD = 3

async function main(): Promise<TextChainResult> {
  try {
    // How far it has read, so that the restore can tell a slow check from one that stands still.
    const onRead = (bytes: number) => process.stdout.write(`{"read":${bytes}}\n`)
    return await checkSpilledChains(SPILL_FD, readMessages(process.stdin), onRead)
  } catch (err) {
    // Not a parser's message: it may quote the input, and the input holds keys.
    return notIntact(err instanceof SyntaxError ? 'unreadable input' : (err as Error).message)
  }
}

const answer = (result: TextChainResult) =>
  // Not waiting for the restore to end its input: the answer is known.
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0))

void main().then(answer)
