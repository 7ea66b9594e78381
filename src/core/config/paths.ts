import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The package root: the folder holding package.json, migrations/ and templates/. */
export const PACKAGE_ROOT = fileURLToPath(new URL('../../../', import.meta.url))

export function defaultHome(env: NodeJS.ProcessEnv): string {
  return path.join(env.HOME || os.homedir(), '.shieldx')
}

/** Show a path under the user's home directory as ~/..., which is shorter and leaks less. */
export function tildify(p: string, env: NodeJS.ProcessEnv): string {
  const home = env.HOME || os.homedir()
  return home && (p === home || p.startsWith(home + path.sep)) ? '~' + p.slice(home.length) : p
}
