/**
 * `migrate up` of every migration on an empty server database, against applying the same SQL
 * files bare with psql. The difference is what the runner adds: node and pg start-up, the
 * advisory lock, checksums, one transaction per file and the schema_migrations bookkeeping.
 */
import fs from 'node:fs'
import path from 'node:path'
import {
  cleanEnv,
  command,
  compare,
  goals,
  measure,
  ROOT,
  scratchDatabase,
  scratchDir,
  shieldx,
} from './lib.js'

export const name = 'migrate'
export const title = 'Migrations on a server'
export const about =
  '`shieldx migrate up --no-backup` on a freshly created empty database against `psql` running the ' +
  'same `*.up.sql` files (after `create schema` for each), a new database for every run (5 rounds after ' +
  '1 warmup round; creating and dropping the database is not timed). No goal yet: the ratio is recorded.'

// The schemas in the order the runner applies them (src/commands/migrate.ts).
const SCHEMAS = ['credits', 'shadow']

function upFiles(schema) {
  const dir = path.join(ROOT, 'migrations', schema)
  // NNNN_ prefixes make the lexical order the version order.
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.up.sql'))
    .sort()
    .map((f) => path.join(dir, f))
}

/** A command that gets a new empty database before each run and drops it after. */
function onFreshDatabase(label, spec) {
  return command(label, async () => {
    const db = await scratchDatabase()
    return { ...spec(db.url), cleanup: db.drop }
  })
}

export async function run({ progress }) {
  const files = SCHEMAS.flatMap(upFiles)
  // An empty home of our own, so no profile in ~/.shieldx can redirect or slow the CLI.
  const home = scratchDir('home')
  try {
    const cli = onFreshDatabase('shieldx migrate up', (url) => ({
      ...shieldx(['migrate', 'up', '--no-backup'], { CREDITS_DATABASE_URL: url, SHIELDX_HOME: home.dir }),
      expect: new RegExp(`Applied ${files.length} migration\\(s\\)`),
    }))
    const psql = onFreshDatabase('psql -f *.up.sql', (url) => ({
      file: 'psql',
      args: [
        '-X', // no ~/.psqlrc
        '-d',
        url,
        '-v',
        'ON_ERROR_STOP=1',
        '-q',
        ...SCHEMAS.flatMap((s) => ['-c', `create schema ${s}`]),
        ...files.flatMap((f) => ['-f', f]),
      ],
      env: cleanEnv(),
    }))
    const samples = await measure([cli, psql], { runs: 5, warmup: 1, progress })
    return [compare(`\`migrate up\` (${files.length} files)`, samples, cli, psql, goals.report('ratio'))]
  } finally {
    home.remove()
  }
}
