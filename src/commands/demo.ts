import fs from 'node:fs'
import path from 'node:path'
import type { Context } from '../context.js'
import { defaultHome, tildify } from '../core/config/paths.js'
import { embeddedDataDir, resolveSettings, type Settings } from '../core/config/settings.js'
import type { Databases } from '../core/db/pool.js'
import { migrateUp, migrationStatus, type SchemaTarget } from '../core/migrations/runner.js'
import { runSteps } from '../ui/tasks.js'

/** Settings the demo may not take from the environment: it never touches a real database or cache. */
const IGNORED_ENV = [
  'CREDITS_DATABASE_URL',
  'SHADOW_DATABASE_URL',
  'REDIS_URL',
  'REDIS_ADDR',
  'REDIS_PASSWORD',
  'AUDIT_HMAC_KEY',
  'AUDIT_HMAC_KEY_FILE',
  'ENCRYPT_KEY',
  'ENCRYPT_KEY_FILE',
  'BACKUP_KEY',
  'BACKUP_KEY_FILE',
  'BACKUP_DIR',
  'SHIELDX_PROFILE',
]

interface DemoState {
  settings: Settings
  dbs?: Databases
  applied: string[]
  versions: Record<string, number>
}

function userHome(ctx: Context): string {
  const fromEnv = ctx.io.env.SHIELDX_HOME
  if (ctx.globals.home) return path.resolve(ctx.globals.home)
  if (fromEnv !== undefined && fromEnv.trim() !== '') return path.resolve(fromEnv)
  return defaultHome(ctx.io.env)
}

/**
 * `shieldx demo`: the whole flow on an embedded database of its own ($SHIELDX_HOME/demo), so it
 * runs on a bare machine and can never touch the database a profile or the environment points at.
 * Each capability adds its step here as it lands.
 */
export async function demo(ctx: Context, opts: { reset?: boolean }): Promise<void> {
  // Only the home, resolved as the locator does (flag > SHIELDX_HOME > default): the demo ignores
  // profiles, so a broken config.yaml must not stop it.
  const demoHome = path.join(userHome(ctx), 'demo')
  if (opts.reset) fs.rmSync(demoHome, { recursive: true, force: true })
  const env = { ...ctx.io.env }
  for (const name of IGNORED_ENV) delete env[name]
  const settings = resolveSettings({ env, flags: { home: demoHome, timeout: ctx.globals.timeout } })
  const where = tildify(embeddedDataDir(demoHome), ctx.io.env)
  const state: DemoState = { settings, applied: [], versions: {} }
  const targets = (dbs: Databases): SchemaTarget[] => [
    { schema: 'credits', db: dbs.credits },
    { schema: 'shadow', db: dbs.shadow },
  ]

  ctx.out.info(
    `shieldx demo: an embedded database of its own in ${where} (your configured databases are not touched).`,
  )
  await runSteps(ctx.out, state, [
    {
      title: 'Start the embedded PostgreSQL (PGlite)',
      run: async (s) => {
        s.dbs = await ctx.databases(s.settings)
        return s.dbs.credits.createdEmbedded ? `created in ${where}` : `reused ${where}`
      },
    },
    {
      title: 'Apply the credits and shadow migrations',
      run: async (s) => {
        const result = await migrateUp(targets(s.dbs!), {
          migrationsDir: s.settings.migrationsDir.value,
          timeoutMs: s.settings.timeoutMs.value,
        })
        s.applied = result.steps.map((st) => `${st.schema}/${String(st.version).padStart(4, '0')}_${st.name}`)
        return s.applied.length ? `applied ${s.applied.length}` : 'already up to date'
      },
    },
    {
      title: 'Check the schema versions',
      run: async (s) => {
        const statuses = await migrationStatus(targets(s.dbs!), s.settings.migrationsDir.value)
        for (const st of statuses) s.versions[st.schema] = st.current
        return statuses.map((st) => `${st.schema} at ${st.current}`).join(', ')
      },
    },
  ])

  if (ctx.out.json) {
    ctx.out.document({ database: where, migrations_applied: state.applied, schema_versions: state.versions })
    return
  }
  ctx.out.result(`Embedded database: ${where}`)
  ctx.out.result(
    state.applied.length
      ? `Migrations applied: ${state.applied.join(', ')}`
      : 'Migrations: already up to date',
  )
  ctx.out.result(
    `Schema versions: ${Object.entries(state.versions)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  )
  ctx.out.result('')
  ctx.out.result('Next: shieldx locate   (what a command would touch, and why)')
  ctx.out.result('      shieldx migrate status')
}
