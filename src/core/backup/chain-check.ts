/**
 * The audit chains of a backup, verified from the file: every chunk authenticated on the way, a
 * second `pg_restore --data-only` turns the audit table into COPY text, and TextChainChecker checks
 * it against the manifest's heads. `restore` runs this in a process of its own at the lowest CPU
 * priority (src/chain-check-process.ts), beside the restore.
 */
import { spawn } from 'node:child_process'
import { TextChainChecker, type TextChainResult } from '../audit/copy-text.js'
import { type Keyring, keysFromWire, type WireKeys } from '../config/secrets.js'
import type { Manifest } from './manifest.js'
import { streamDump } from './restore.js'

export interface ChainCheckInput {
  file: string
  manifest: Manifest
  backupKeys: WireKeys
  auditKeys: WireKeys
  pgRestore: string
}

export const AUDIT_TABLE = { schema: 'credits', table: 'audit_logs' }

/** `signal`: stop (the restore failed or was interrupted); pg_restore is killed and waited for. */
export async function checkChains(input: ChainCheckInput, signal?: AbortSignal): Promise<TextChainResult> {
  const byId = keysFromWire(input.backupKeys)
  const backupKeys: Keyring = { current: [...byId.values()][0]!, byId }
  const checker = new TextChainChecker(
    keysFromWire(input.auditKeys),
    `${AUDIT_TABLE.schema}.${AUDIT_TABLE.table}`,
    input.manifest.chains,
  )
  const child = spawn(
    input.pgRestore,
    ['--data-only', `--schema=${AUDIT_TABLE.schema}`, `--table=${AUDIT_TABLE.table}`, '--file=-'],
    { stdio: ['pipe', 'pipe', 'ignore'] },
  )
  // It stops reading once it has written the table: the rest of the dump need not be decrypted.
  child.stdin.on('error', () => {})
  child.stdout.on('data', (chunk: Buffer) => {
    checker.write(chunk)
    if (checker.gaveUp) child.kill('SIGKILL')
  })
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
  signal?.addEventListener('abort', () => child.kill('SIGKILL'), { once: true })
  // Every byte pg_restore sees was authenticated first; once it has exited, what is left unread
  // does not matter here (the restore itself checks the whole file).
  void streamDump(input.file, input.manifest, backupKeys, child.stdin).catch(() => {})
  const code = await exited
  const result = checker.end()
  return result.intact && code !== 0
    ? { ...result, intact: false, why: `pg_restore stopped (exit ${code})` }
    : result
}
