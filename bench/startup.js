/**
 * Startup: what `shieldx --version` and `--help` cost over starting node itself. Commands are
 * imported lazily (DESIGN.md, Architecture) precisely so that this stays small.
 */
import { bareNode, compare, fixed, goals, measure, shieldx } from './lib.js'

export const name = 'startup'
export const title = 'CLI startup'
export const about =
  'Wall time of `node bin/shieldx.js --version` and `--help` against `node -e 0`, the three interleaved ' +
  'in one loop (15 rounds after 2 warmup rounds). Goal: the median within 120 ms of bare node.'

export async function run({ progress }) {
  const node = bareNode()
  const version = fixed('shieldx --version', { ...shieldx(['--version']), expect: /^\d+\.\d+\.\d+/m })
  const help = fixed('shieldx --help', { ...shieldx(['--help']), expect: /Usage: shieldx/ })
  const samples = await measure([node, version, help], { runs: 15, warmup: 2, progress })
  return [
    compare('`shieldx --version`', samples, version, node, goals.maxDiffMs(120)),
    compare('`shieldx --help`', samples, help, node, goals.maxDiffMs(120)),
  ]
}
