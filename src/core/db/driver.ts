/**
 * The pg driver's classes, loaded without undici. On Node 20, which has no `navigator` global,
 * pg's lib/stream.js checks for Cloudflare Workers by constructing a fetch Response, and that
 * loads undici: about 20 ms for every command that talks to a server, and again in every
 * verify-chain worker thread. A navigator like the one Node 21 defines is in place only while pg
 * loads. Import the values from here; types may still come from 'pg'.
 */
import { createRequire } from 'node:module'
import type pg from 'pg'

function load(): typeof pg {
  const require = createRequire(import.meta.url)
  if ('navigator' in globalThis) return require('pg') as typeof pg
  Object.defineProperty(globalThis, 'navigator', {
    value: { userAgent: `Node.js/${process.versions.node.split('.')[0]}` },
    configurable: true,
  })
  try {
    return require('pg') as typeof pg
  } finally {
    delete (globalThis as { navigator?: unknown }).navigator
  }
}

export const { Client, Pool } = load()
