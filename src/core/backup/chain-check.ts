/**
 * The audit chains of a backup, verified from the file: every chunk authenticated on the way, a
 * second `pg_restore --data-only` turns the audit table into COPY text, and TextChainChecker checks
 * it against the manifest's heads. `restore` runs this in a process of its own at the lowest CPU
 * priority (src/chain-check-process.ts), beside the restore.
 *
 * The whole file is hashed and must match the manifest's SHA-256, as the restore's own read must:
 * so the bytes checked here are the bytes restored, even though the two read the file apart. Only
 * as much of it is decrypted as pg_restore needs to write the table.
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import { notIntact, TextChainChecker, type TextChainResult } from '../audit/copy-text.js'
import { type Keyring, keysFromWire, type WireKeys } from '../config/secrets.js'
import { createDecryptStream } from './envelope.js'
import type { Manifest } from './manifest.js'

export interface ChainCheckInput {
  file: string
  manifest: Manifest
  backupKeys: WireKeys
  auditKeys: WireKeys
  pgRestore: string
}

export const AUDIT_TABLE = { schema: 'credits', table: 'audit_logs' }

/** pg_restore's output between two calls of `collect`. */
const COLLECT_EVERY = 16 << 20

/**
 * `signal`: stop (the restore failed or was interrupted); pg_restore is killed and waited for.
 * `collect`: a full garbage collection, called every 16 MiB of pg_restore's output. Every read of
 * its pipe is a new buffer, and V8 lets some 64 MB of them pile up before it collects: without
 * this, memory would grow with the table up to that much.
 */
export async function checkChains(
  input: ChainCheckInput,
  options: { signal?: AbortSignal; collect?: () => void } = {},
): Promise<TextChainResult> {
  const { signal, collect } = options
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
  const exited = new Promise<number | null>((resolve) => {
    child.on('error', () => resolve(-1))
    child.on('close', (code) => resolve(code))
  })
  let running = true
  void exited.then(() => (running = false))
  const stop = () => child.kill('SIGKILL')
  signal?.addEventListener('abort', stop, { once: true })
  child.stdin.on('error', () => {}) // EPIPE: it has what it needs
  let uncollected = 0
  child.stdout.on('data', (chunk: Buffer) => {
    checker.write(chunk)
    if (checker.gaveUp) stop()
    uncollected += chunk.length
    if (collect && uncollected >= COLLECT_EVERY) {
      uncollected = 0
      collect()
    }
  })

  // The plaintext goes to pg_restore while it runs; the raw file is hashed to its end either way.
  const decrypt = createDecryptStream(backupKeys)
  const fed = pipeline(decrypt, zlib.createGunzip({ chunkSize: 1 << 20 }), child.stdin).catch(() => {
    // A chunk that does not authenticate ends pg_restore's input early: it fails, and so does this.
    stop()
  })
  const hash = createHash('sha256')
  // One buffer for every read: once pg_restore is done, the rest of the file is only hashed, and
  // a new buffer per read would only be garbage the size of the file.
  const buf = Buffer.alloc(1 << 20)
  try {
    const file = await fs.promises.open(input.file, 'r')
    try {
      for (;;) {
        const { bytesRead } = await file.read(buf, 0, buf.length, null)
        if (bytesRead === 0) break
        const chunk = buf.subarray(0, bytesRead)
        hash.update(chunk)
        if (!running || decrypt.destroyed) continue
        // A copy: the decryption holds on to what it is given.
        if (!decrypt.write(Buffer.from(chunk))) {
          await new Promise<void>((resolve) => {
            decrypt.once('drain', resolve)
            decrypt.once('close', resolve)
            void exited.then(() => resolve())
          })
        }
      }
    } finally {
      await file.close()
    }
  } catch (err) {
    stop()
    await exited
    return notIntact(`cannot read the backup: ${(err as Error).message}`)
  }
  if (running) decrypt.end()
  else decrypt.destroy()
  const code = await exited
  await fed
  const result = checker.end()
  if (!result.intact) return result
  if (code !== 0) return notIntact(`pg_restore stopped (exit ${code})`, result)
  if (hash.digest('hex') !== input.manifest.sha256)
    return notIntact('the file read does not match its manifest', result)
  return result
}
