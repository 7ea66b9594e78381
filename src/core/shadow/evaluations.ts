/**
 * Stored evaluations (shadow.evaluations): permanent records — a trigger refuses UPDATE and
 * DELETE — because deployments are gated on them. The row keeps the whole result document.
 */
import type pg from 'pg'
import { OperationError, UsageError } from '../errors.js'
import { UUID } from '../uuid.js'
import type { EvaluationDoc } from './evaluate.js'

type Queryable = Pick<pg.Pool, 'query'>

export async function storeEvaluation(db: Queryable, doc: EvaluationDoc): Promise<string> {
  const { rows } = await db.query<{ created_at: Date }>(
    `insert into shadow.evaluations
       (id, rule_id, control_rule_id, control_version, candidate_version, dataset, samples, metrics,
        recommendation, conclusive, traffic_sha256)
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) returning created_at`,
    [
      doc.id,
      doc.candidate.id,
      doc.control.id,
      doc.control.version,
      doc.candidate.version,
      doc.traffic.file,
      doc.sample_size,
      JSON.stringify(doc),
      doc.recommendation.decision,
      doc.conclusive,
      doc.traffic.sha256,
    ],
  )
  return rows[0]!.created_at.toISOString()
}

export interface EvaluationSummary {
  id: string
  candidate: string
  control: string
  decision: string
  conclusive: boolean
  sample_size: number
  traffic_sha256: string | null
  created_at: string
}

export async function listEvaluations(
  db: Queryable,
  filter: { rule?: string; limit: number },
): Promise<EvaluationSummary[]> {
  const { rows } = await db.query<{
    id: string
    rule_id: string
    candidate_version: number
    control_rule_id: string
    control_version: number
    recommendation: string
    conclusive: boolean
    samples: string
    traffic_sha256: string | null
    created_at: Date
  }>(
    `select id, rule_id, candidate_version, control_rule_id, control_version, recommendation, conclusive,
            samples, traffic_sha256, created_at
       from shadow.evaluations
      where $1::text is null or rule_id = $1 or control_rule_id = $1
      order by created_at desc, id
      limit $2`,
    [filter.rule ?? null, filter.limit],
  )
  return rows.map((r) => ({
    id: r.id,
    candidate: `${r.rule_id}@${r.candidate_version}`,
    control: `${r.control_rule_id}@${r.control_version}`,
    decision: r.recommendation,
    conclusive: r.conclusive,
    sample_size: Number(r.samples),
    traffic_sha256: r.traffic_sha256,
    created_at: r.created_at.toISOString(),
  }))
}

/** An evaluation id as a user typed it: a UUID, lowercased; anything else is exit 2. */
export function evaluationId(value: unknown, field = 'ID'): string {
  if (typeof value !== 'string' || !UUID.test(value)) {
    throw new UsageError(
      `${field} must be an evaluation id (a UUID, as printed by 'evaluate'); got ${JSON.stringify(value ?? null)}.`,
    )
  }
  return value.toLowerCase()
}

export async function getEvaluation(db: Queryable, text: string): Promise<EvaluationDoc> {
  const id = evaluationId(text)
  const { rows } = await db.query<{ metrics: EvaluationDoc; created_at: Date }>(
    'select metrics, created_at from shadow.evaluations where id = $1',
    [id],
  )
  if (!rows[0]) {
    throw new OperationError(`There is no evaluation ${id}.`, {
      code: 'EVALUATION_NOT_FOUND',
      hint: "See 'shieldx evaluate list'.",
    })
  }
  return { ...rows[0].metrics, created_at: rows[0].created_at.toISOString() }
}
