/**
 * Load driver for the ledger group (not a group itself): runs in a process of its own, as pgbench
 * does, so that the harness's own work never shares its event loop. Configured by one JSON
 * argument, prints one JSON document on stdout.
 *
 *   mode 'fund':    a topup of `amount` for every tenant (idempotent: fixed keys), `clients` at a time.
 *   mode 'consume': `clients` loops, each on a connection of its own (one pool, max = clients),
 *                   each applying consume 1 to a random tenant with a fresh idempotency key until
 *                   `seconds` have passed. Connections are opened before the clock starts (as
 *                   pgbench reports tps without the initial connection time).
 *
 * It drives the compiled ledger (dist/), exactly the code `shieldx credits consume` runs.
 */
import { randomBytes } from 'node:crypto'
import { parseKeyring } from '../dist/core/config/secrets.js'
import { openServer } from '../dist/core/db/pool.js'
import { applyOperation } from '../dist/core/ledger/operations.js'

const cfg = JSON.parse(process.argv[2])
const TIMEOUT_MS = 60_000
const keys = { audit: parseKeyring(cfg.auditKey, { envName: 'AUDIT_HMAC_KEY', bytes: { min: 32 } }, 'bench') }
const db = await openServer(cfg.url, 'bench', { timeoutMs: TIMEOUT_MS, env: {}, max: cfg.clients })

try {
  // Every connection opened now, not inside the timed window.
  const held = await Promise.all(Array.from({ length: cfg.clients }, () => db.pool.connect()))
  for (const c of held) c.release()

  if (cfg.mode === 'fund') {
    let next = 0
    const worker = async () => {
      while (next < cfg.tenants.length) {
        const tenantId = cfg.tenants[next++]
        await applyOperation(
          db.pool,
          { kind: 'topup', tenantId, amount: cfg.amount },
          `bench-fund:${tenantId}`,
          keys,
          {
            timeoutMs: TIMEOUT_MS,
          },
        )
      }
    }
    await Promise.all(Array.from({ length: cfg.clients }, worker))
    process.stdout.write(`${JSON.stringify({ funded: cfg.tenants.length })}\n`)
  } else if (cfg.mode === 'consume') {
    const nonce = randomBytes(6).toString('hex')
    const tenants = cfg.tenants
    let ops = 0
    let errors = 0
    let lastError = null
    const cpuAtStart = process.cpuUsage()
    const start = performance.now()
    const end = start + cfg.seconds * 1000
    const client = async (i) => {
      let n = 0
      while (performance.now() < end) {
        const tenantId = tenants[Math.floor(Math.random() * tenants.length)]
        try {
          await applyOperation(
            db.pool,
            { kind: 'consume', tenantId, amount: 1 },
            `bench:${nonce}:${i}:${n++}`,
            keys,
            {
              timeoutMs: TIMEOUT_MS,
            },
          )
          ops++
        } catch (err) {
          errors++
          lastError = err.message
        }
      }
    }
    await Promise.all(Array.from({ length: cfg.clients }, (_, i) => client(i)))
    // Like pgbench: everything completed, over the time until the last client stopped.
    const seconds = (performance.now() - start) / 1000
    // This process's CPU (user + system) per operation: the client's share of the machine.
    const cpu = process.cpuUsage(cpuAtStart)
    const cpuMsPerOp = (cpu.user + cpu.system) / 1000 / Math.max(1, ops)
    process.stdout.write(
      `${JSON.stringify({ ops, errors, lastError, seconds, rate: ops / seconds, cpuMsPerOp })}\n`,
    )
  } else {
    throw new Error(`unknown mode ${cfg.mode}`)
  }
} finally {
  await db.close()
}
