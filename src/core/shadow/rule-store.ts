/**
 * Rule versions in shadow.rules: immutable once stored (a trigger refuses UPDATE and DELETE), so
 * an evaluation's "candidate waf-sqli@3" means the same rule forever.
 */
import type pg from 'pg'
import { isDeepStrictEqual } from 'node:util'
import { ConflictError, OperationError } from '../errors.js'
import { formatRef, parseRule, type RuleDefinition, type RuleRef } from './rules.js'

export interface StoredRule {
  id: string
  version: number
  definition: RuleDefinition
  created_at: string
}

export interface RuleSummary {
  id: string
  latest_version: number
  versions: number
  name: string
  type: string
  active_version: number | null
  canary_version: number | null
  canary_percent: number
  updated_at: string
}

type Queryable = Pick<pg.Pool, 'query'>

/** Store a new version. The same version again with the same definition is a no-op. */
export async function addRule(
  db: Queryable,
  def: RuleDefinition,
): Promise<{ rule: StoredRule; created: boolean }> {
  const inserted = await db.query<{ created_at: Date }>(
    `insert into shadow.rules (id, version, definition, description) values ($1, $2, $3, $4)
     on conflict (id, version) do nothing returning created_at`,
    [def.id, def.version, JSON.stringify(def), def.name],
  )
  if (inserted.rows[0]) {
    return {
      rule: {
        id: def.id,
        version: def.version,
        definition: def,
        created_at: inserted.rows[0].created_at.toISOString(),
      },
      created: true,
    }
  }
  const existing = await getRule(db, { id: def.id, version: def.version })
  if (!isDeepStrictEqual(existing.definition, def)) {
    throw new ConflictError(
      `${formatRef(def)} is already stored with a different definition; versions are immutable.`,
      {
        code: 'RULE_VERSION_EXISTS',
        hint: `Store the change as a new version (e.g. "version": ${await nextVersion(db, def.id)}).`,
      },
    )
  }
  return { rule: existing, created: false }
}

async function nextVersion(db: Queryable, id: string): Promise<number> {
  const { rows } = await db.query<{ v: number }>(
    'select coalesce(max(version), 0) + 1 as v from shadow.rules where id = $1',
    [id],
  )
  return rows[0]!.v
}

/** One rule version; `version: null` is the newest. Unknown → exit 1 with one sentence. */
export async function getRule(db: Queryable, ref: RuleRef): Promise<StoredRule> {
  const { rows } = await db.query<{ id: string; version: number; definition: unknown; created_at: Date }>(
    ref.version === null
      ? 'select id, version, definition, created_at from shadow.rules where id = $1 order by version desc limit 1'
      : 'select id, version, definition, created_at from shadow.rules where id = $1 and version = $2',
    ref.version === null ? [ref.id] : [ref.id, ref.version],
  )
  const row = rows[0]
  if (!row) {
    throw new OperationError(
      ref.version === null ? `There is no rule "${ref.id}".` : `There is no rule ${ref.id}@${ref.version}.`,
      { code: 'RULE_NOT_FOUND', hint: "See 'shieldx rules list'; store one with 'shieldx rules add FILE'." },
    )
  }
  return {
    id: row.id,
    version: row.version,
    // Stored rules were validated on the way in; parse again so a hand-edited row cannot slip by.
    definition: parseRule(row.definition, `shadow.rules ${row.id}@${row.version}`),
    created_at: row.created_at.toISOString(),
  }
}

/** The version the services run for this rule id, or null when it was never deployed. */
export async function activeVersion(db: Queryable, id: string): Promise<number | null> {
  const { rows } = await db.query<{ active_version: number }>(
    'select active_version from shadow.rule_deployments where rule_id = $1',
    [id],
  )
  return rows[0]?.active_version ?? null
}

export async function listRules(db: Queryable): Promise<RuleSummary[]> {
  const { rows } = await db.query<{
    id: string
    latest_version: number
    versions: string
    definition: { name: string; type: string }
    active_version: number | null
    canary_version: number | null
    canary_percent: number | null
    updated_at: Date
  }>(
    `select r.id, r.version as latest_version, c.versions, r.definition, r.created_at as updated_at,
            d.active_version, d.canary_version, d.canary_percent
       from (select id, max(version) as version, count(*) as versions from shadow.rules group by id) c
       join shadow.rules r on r.id = c.id and r.version = c.version
       left join shadow.rule_deployments d on d.rule_id = r.id
      order by r.id`,
  )
  return rows.map((r) => ({
    id: r.id,
    latest_version: r.latest_version,
    versions: Number(r.versions),
    name: r.definition.name,
    type: r.definition.type,
    active_version: r.active_version,
    canary_version: r.canary_version,
    canary_percent: r.canary_percent ?? 0,
    updated_at: r.updated_at.toISOString(),
  }))
}
