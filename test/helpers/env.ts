/** Where the suite's real services are. Tests never use these databases directly: see db.ts. */
export function adminUrl(): string {
  return process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
}

export function redisUrl(): string {
  return process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'
}

/** An environment with nothing of the developer's own shieldx or database settings in it. */
export function cleanEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (
      /^(CREDITS_|SHADOW_|REDIS_|AUDIT_|ENCRYPT_|BACKUP_|SHIELDX_|PG[A-Z]*$|NO_COLOR|FORCE_COLOR)/.test(k) ||
      k === 'TERM'
    ) {
      continue
    }
    env[k] = v
  }
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k]
    else env[k] = v
  }
  return env
}
