/**
 * Which database this is, whatever host name or port reached it: the cluster's system identifier
 * (random, made by initdb, the same on its streaming replicas) and the database's OID in it. The
 * balance cache keys by it, so environments sharing one Redis never read each other's balances,
 * and a database restored from another's dump (a new database, a new OID) starts with none.
 */
import type pg from 'pg'

export async function databaseIdentity(pool: Pick<pg.Pool, 'query'>): Promise<string> {
  const { rows } = await pool.query<{ system: string; oid: string }>(
    `select system_identifier::text as system, d.oid::text as oid
       from pg_control_system(), pg_database d
      where d.datname = current_database()`,
  )
  const row = rows[0]
  if (!row) throw new Error('the current database is not in pg_database')
  return `${row.system}.${row.oid}`
}
