/**
 * Once per test run: build dist/ (the end-to-end tests spawn bin/shieldx.js, which runs it) and
 * check that the real PostgreSQL and Redis the suite needs are there, with one clear sentence if not.
 */
import { execFileSync } from 'node:child_process'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { adminUrl, redisUrl } from './env.js'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

function reachable(url: string, defaultPort: number): Promise<boolean> {
  const u = new URL(url)
  return new Promise((resolve) => {
    const socket = net.connect({ host: u.hostname, port: Number(u.port || defaultPort) })
    socket.setTimeout(2000)
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
    socket.once('timeout', () => {
      socket.destroy()
      resolve(false)
    })
  })
}

export default async function setup(): Promise<void> {
  if (!(await reachable(adminUrl(), 5432))) {
    throw new Error(
      `PostgreSQL is not reachable at ${new URL(adminUrl()).host}: start it (see README, "Develop").`,
    )
  }
  if (!(await reachable(redisUrl(), 6379))) {
    throw new Error(
      `Redis is not reachable at ${new URL(redisUrl()).host}: start it (see README, "Develop").`,
    )
  }
  execFileSync(
    process.execPath,
    [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
    {
      cwd: root,
      stdio: 'inherit',
    },
  )
}
