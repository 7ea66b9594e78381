/**
 * The shadow P0 invariant for `status`: every deployed rule version (active or in canary) has a
 * stored, conclusive evaluation that approved it. The canary issue enforces it on the way in;
 * this catches whatever got past (a hand-edited pointer, a deployment from before the gate).
 */
import type pg from 'pg'

export interface UnguardedDeployment {
  rule_id: string
  version: number
  role: 'active' | 'canary'
}

export async function unguardedDeployments(pool: Pick<pg.Pool, 'query'>): Promise<UnguardedDeployment[]> {
  const { rows } = await pool.query<UnguardedDeployment>(
    `select d.rule_id, v.version, v.role
       from shadow.rule_deployments d
       cross join lateral (values (d.active_version, 'active'), (d.canary_version, 'canary')) v(version, role)
      where v.version is not null
        and not exists (
          select 1 from shadow.evaluations e
           where e.rule_id = d.rule_id and e.candidate_version = v.version and e.conclusive
             and e.recommendation in ('APPROVE_FULL_DEPLOYMENT', 'APPROVE_CANARY'))
      order by d.rule_id, v.role`,
  )
  return rows
}
