/**
 * Verifying one partition of the tenants (those whose hashtext(tenant_id) falls in it): stream
 * its audit rows in (tenant, seq) order through a cursor, never the whole table in memory, and
 * check each tenant's chain. A worker thread runs one of these on its own connection.
 */
import type pg from 'pg'
import Cursor from 'pg-cursor'
import type { Key } from '../config/secrets.js'
import { type Broken, type Head, type StoredRow, TenantChecker } from './checker.js'

export interface PartitionSpec {
  index: number
  count: number
  tenant?: string
}

export interface PartitionResult {
  tenants: number
  rows: number
  broken: Broken[]
  /** Every intact tenant's verified head: what a checkpoint records. */
  heads: Record<string, Head>
}

const BATCH = 5000

function partitionFilter(spec: PartitionSpec, params: unknown[]): string {
  const where: string[] = []
  if (spec.count > 1) {
    params.push(spec.count, spec.index)
    where.push(`mod(abs(hashtext(tenant_id)::bigint), $${params.length - 1}) = $${params.length}`)
  }
  if (spec.tenant) {
    params.push(spec.tenant)
    where.push(`tenant_id = $${params.length}`)
  }
  return where.length ? `where ${where.join(' and ')}` : ''
}

interface Row extends StoredRow {
  acct_seq: string | null
  acct_head: Buffer | null
}

export async function verifyPartition(
  client: pg.ClientBase,
  spec: PartitionSpec,
  keys: ReadonlyMap<string, Key>,
  checkpoint: Record<string, Head> | null,
  onProgress?: (rows: number) => void,
): Promise<PartitionResult> {
  const result: PartitionResult = { tenants: 0, rows: 0, broken: [], heads: {} }
  const done = (checker: TenantChecker, account: { seq: number; head: Buffer | null } | null) => {
    const broken = checker.finish(account)
    result.tenants++
    if (broken) result.broken.push(broken)
    else result.heads[checker.tenantId] = checker.head
  }

  const params: unknown[] = []
  const filter = partitionFilter(spec, params)
  const cursor = client.query(
    new Cursor<Row>(
      `select l.tenant_id, l.seq, l.transaction_id, l.action, l.amount, l.balance_after, l.reserved_after, l.key_id,
              l.prev_hash, l.hash, l.created_at, a.chain_seq as acct_seq, a.chain_head as acct_head
         from (select * from credits.audit_logs ${filter}) l
         left join credits.credit_accounts a on a.tenant_id = l.tenant_id
        order by l.tenant_id, l.seq`,
      params,
    ),
  )
  let current: TenantChecker | null = null
  let account: { seq: number; head: Buffer | null } | null = null
  try {
    for (;;) {
      const rows = await cursor.read(BATCH)
      if (rows.length === 0) break
      for (const r of rows) {
        if (current === null || current.tenantId !== r.tenant_id) {
          if (current) done(current, account)
          current = new TenantChecker(r.tenant_id, keys, checkpoint?.[r.tenant_id])
          account = r.acct_seq === null ? null : { seq: Number(r.acct_seq), head: r.acct_head }
        }
        current.push({
          ...r,
          seq: Number(r.seq),
          amount: Number(r.amount),
          balance_after: Number(r.balance_after),
          reserved_after: Number(r.reserved_after),
        })
      }
      result.rows += rows.length
      onProgress?.(rows.length)
    }
    if (current) done(current, account)
  } finally {
    await cursor.close()
  }

  // Accounts whose chain has rows on record but none left in the table: cut off entirely.
  const orphanParams: unknown[] = []
  const orphanFilter = partitionFilter(spec, orphanParams)
  const { rows: orphans } = await client.query<{ tenant_id: string; chain_seq: string }>(
    `select tenant_id, chain_seq from (select * from credits.credit_accounts ${orphanFilter}) a
      where chain_seq > 0 and not exists (select 1 from credits.audit_logs l where l.tenant_id = a.tenant_id)`,
    orphanParams,
  )
  for (const o of orphans) {
    result.tenants++
    result.broken.push({ tenant_id: o.tenant_id, seq: 1, reason: 'truncated' })
  }
  return result
}
