/**
 * `npm run bench [-- GROUP...] [--write]`: build if needed, run the benchmark groups, print a
 * table per group and write BENCHMARKS.md.
 *
 * A group is a module exporting name, title, about and run({ progress }) -> rows (see startup.js);
 * add one by writing the module and listing it in GROUPS. BENCHMARKS.md records full runs only:
 * a run of some groups prints its tables and leaves the file alone unless --write is given.
 */
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import * as backup from './backup.js'
import * as embedded from './embedded.js'
import * as evaluate from './evaluate.js'
import { cleanupAll, ROOT } from './lib.js'
import * as ledger from './ledger.js'
import * as migrate from './migrate.js'
import { document, groupSection, loadavg, machineFacts, parallelCapacity } from './report.js'
import * as startup from './startup.js'

const GROUPS = [startup, migrate, embedded, ledger, backup, evaluate]

function newestMtime(p) {
  const st = fs.statSync(p)
  if (!st.isDirectory()) return st.mtimeMs
  return Math.max(0, ...fs.readdirSync(p).map((f) => newestMtime(path.join(p, f))))
}

/** Measure the current code: rebuild when dist/cli.js is missing or older than any source. */
async function ensureBuilt() {
  const cli = path.join(ROOT, 'dist', 'cli.js')
  const sources = [
    path.join(ROOT, 'src'),
    ...['tsconfig.json', 'tsconfig.build.json'].map((f) => path.join(ROOT, f)),
  ]
  const newest = Math.max(...sources.filter((p) => fs.existsSync(p)).map(newestMtime))
  if (fs.existsSync(cli) && fs.statSync(cli).mtimeMs >= newest) return
  process.stderr.write('dist/ is missing or older than src/: running npm run build\n')
  await execa('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' })
}

async function main(argv) {
  const write = argv.includes('--write')
  const wanted = argv.filter((a) => a !== '--write')
  const unknown = wanted.filter((w) => !GROUPS.some((g) => g.name === w))
  if (unknown.length) {
    process.stderr.write(
      `unknown benchmark group or flag: ${unknown.join(', ')} (groups: ${GROUPS.map((g) => g.name).join(', ')}; flag: --write)\n`,
    )
    return 2
  }
  const groups = wanted.length ? GROUPS.filter((g) => wanted.includes(g.name)) : GROUPS

  await ensureBuilt()
  // Someone rebuilding mid-run (another terminal, a test run) would mix two builds in one table.
  const distAtStart = newestMtime(path.join(ROOT, 'dist'))
  const facts = await machineFacts()
  const sections = []
  let failed = false
  for (const group of groups) {
    const started = Date.now()
    // A live counter on a terminal; elsewhere (CI logs) just the line below when the group ends.
    const progress = (done, total) => {
      if (process.stderr.isTTY) process.stderr.write(`\r${group.name}: round ${done}/${total}`)
    }
    if (!process.stderr.isTTY) process.stderr.write(`${group.name}: running`)
    const rows = await group.run({ progress })
    process.stderr.write(` (${((Date.now() - started) / 1000).toFixed(0)} s)\n`)
    const section = groupSection(group, rows)
    process.stdout.write(`\n${section}\n`)
    sections.push(section)
    failed ||= rows.some((r) => r.pass === false)
  }
  facts['load average at end (1 / 5 / 15 min)'] = loadavg()
  facts['parallel capacity at end'] = await parallelCapacity()
  if (newestMtime(path.join(ROOT, 'dist')) !== distAtStart) {
    facts.warning = 'dist/ was rebuilt during the run: the figures may mix two builds'
    process.stderr.write(`warning: ${facts.warning}\n`)
  }

  if (groups.length === GROUPS.length || write) {
    fs.writeFileSync(path.join(ROOT, 'BENCHMARKS.md'), document(facts, sections))
    process.stderr.write('wrote BENCHMARKS.md\n')
  } else {
    process.stderr.write('some groups only: BENCHMARKS.md left as it was (pass --write to replace it)\n')
  }
  // A missed goal fails the run, so that CI or a script can act on it.
  return failed ? 1 : 0
}

// Ctrl-C or a kill: stop the child and drop the scratch databases and directories before leaving.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    cleanupAll().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143))
  })
}

try {
  process.exitCode = await main(process.argv.slice(2))
} catch (err) {
  process.stderr.write(`\nbenchmark failed: ${err.stack ?? err}\n`)
  process.exitCode = 1
} finally {
  await cleanupAll()
}
