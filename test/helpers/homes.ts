/**
 * Scratch shieldx homes for the configuration tests: a SHIELDX_HOME (optionally with a
 * config.yaml) beside a separate, empty user HOME, all removed when the test file ends.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll } from 'vitest'
import { cleanEnv } from './env.js'

export function scratchHomes(prefix: string) {
  const made: string[] = []
  afterAll(() => {
    for (const dir of made) fs.rmSync(dir, { recursive: true, force: true })
  })
  const tempDir = (label: string): string => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-${label}-`))
    made.push(dir)
    return dir
  }
  const setup = (configYaml?: string): { home: string; userHome: string; configFile: string } => {
    const home = tempDir('home')
    const userHome = tempDir('user')
    const configFile = path.join(home, 'config.yaml')
    if (configYaml !== undefined) fs.writeFileSync(configFile, configYaml)
    return { home, userHome, configFile }
  }
  return { tempDir, setup }
}

/** The environment of a run in `home`, with `userHome` as HOME and nothing else inherited. */
export function envFor(home: string, userHome: string, extra: Record<string, string | undefined> = {}) {
  return cleanEnv({ HOME: userHome, SHIELDX_HOME: home, ...extra })
}
