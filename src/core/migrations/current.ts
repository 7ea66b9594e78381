/**
 * Code and schema must agree: a command refuses to run against a schema older than the newest
 * migration this shieldx ships (a newer one is caught by `migrate`, exit 3).
 */
import type pg from 'pg'
import { OperationError } from '../errors.js'
import { discoverMigrations, type SchemaName } from './files.js'

export async function assertSchemaCurrent(
  pool: pg.Pool,
  migrationsDir: string,
  schema: SchemaName = 'credits',
): Promise<void> {
  const lag = await schemaLag(pool, migrationsDir, schema)
  if (lag) {
    throw new OperationError(
      lag.current === 0
        ? `The ${schema} schema has not been created in this database yet.`
        : `The ${schema} schema is at version ${lag.current}; this shieldx needs ${lag.wanted}.`,
      { code: 'SCHEMA_NOT_CURRENT', hint: "Run 'shieldx migrate up' first." },
    )
  }
}

/**
 * How far a schema is behind the newest migration this shieldx ships: null when it is not
 * (current 0: never migrated). For a caller that reports it rather than refusing (`status`).
 */
export async function schemaLag(
  pool: pg.Pool,
  migrationsDir: string,
  schema: SchemaName = 'credits',
): Promise<{ current: number; wanted: number } | null> {
  const wanted = discoverMigrations(migrationsDir, schema).at(-1)?.version ?? 0
  const current = await schemaVersion(pool, schema)
  return current < wanted ? { current, wanted } : null
}

/** The newest migration applied to a schema in this database; 0 when it has none. */
export async function schemaVersion(pool: pg.Pool, schema: SchemaName): Promise<number> {
  const { rows: exists } = await pool.query<{ t: string | null }>(`select to_regclass($1)::text as t`, [
    `${schema}.schema_migrations`,
  ])
  if (!exists[0]?.t) return 0
  const { rows } = await pool.query<{ v: number | null }>(
    `select max(version) as v from ${schema}.schema_migrations`,
  )
  return Number(rows[0]?.v ?? 0)
}
