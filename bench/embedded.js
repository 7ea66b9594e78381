/**
 * The embedded database (PGlite): the first start on an empty home runs initdb (seconds), a
 * warm start opens the existing data directory. Measured with `migrate status`, the lightest
 * command that opens the database.
 */
import { execa } from 'execa'
import { bareNode, command, compare, goals, measure, ROOT, scratchDir, shieldx } from './lib.js'

export const name = 'embedded'
export const title = 'Embedded database start'
export const about =
  '`shieldx migrate status` with `SHIELDX_HOME` set to an empty directory and no database URL (cold: ' +
  'PGlite initdb, a new home every run) and again on a home that already has its data (warm), ' +
  'interleaved with `node -e 0` (3 rounds after 1 warmup round). No goal yet: the figures are recorded.'

export async function run({ progress }) {
  const node = bareNode()

  const cold = command('migrate status, empty home', async () => {
    const home = scratchDir('cold')
    return {
      ...shieldx(['migrate', 'status'], { SHIELDX_HOME: home.dir }),
      expect: /Created the embedded database/,
      cleanup: home.remove,
    }
  })

  // One home for every warm run, created (untimed) before the first one.
  let warmHome
  const warm = command('migrate status, existing home', async () => {
    if (!warmHome) {
      warmHome = scratchDir('warm')
      const init = shieldx(['migrate', 'status'], { SHIELDX_HOME: warmHome.dir })
      await execa(init.file, init.args, { env: init.env, extendEnv: false, cwd: ROOT, stdin: 'ignore' })
    }
    // The notice must not appear: a warm run that ran initdb again would be a cold run.
    return {
      ...shieldx(['migrate', 'status'], { SHIELDX_HOME: warmHome.dir }),
      expect: /^(?![\s\S]*Created)/,
    }
  })

  try {
    const samples = await measure([node, cold, warm], { runs: 3, warmup: 1, progress })
    return [
      compare('first start (initdb)', samples, cold, node, goals.report('diff')),
      compare('warm start', samples, warm, node, goals.report('diff')),
    ]
  } finally {
    warmHome?.remove()
  }
}
