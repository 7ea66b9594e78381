/**
 * The shadow database as the evaluator, the rule store and the A/B tests use it: checked to be at
 * the schema version this shieldx ships before anything reads or writes it.
 */
import type { Settings } from '../config/settings.js'
import type { Database } from '../db/pool.js'
import { assertSchemaCurrent } from '../migrations/current.js'

export async function openShadow(settings: Settings, db: Database): Promise<Database> {
  await assertSchemaCurrent(db.pool, settings.migrationsDir.value, 'shadow')
  return db
}
