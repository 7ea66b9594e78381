/** Replacement shown wherever a secret would be. */
export const REDACTED = '****'

const SECRET_QUERY_PARAMS = ['password', 'sslpassword', 'sslkey']

/**
 * A connection string with its password (and password-like query parameters) replaced.
 * Falls back to a pattern replace for strings the URL parser rejects, so that a malformed
 * URL in an error message still never shows its password.
 */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password) parsed.password = REDACTED
    for (const param of SECRET_QUERY_PARAMS) {
      if (parsed.searchParams.has(param)) parsed.searchParams.set(param, REDACTED)
    }
    // URL keeps the scheme's own spelling; decode so "****" is not shown as "%2A%2A%2A%2A".
    return decodeURIComponent(parsed.toString())
  } catch {
    return url
      .replace(/(\/\/[^:/@]*:)[^@]*@/, `$1${REDACTED}@`)
      .replace(/(password=)[^&\s]*/gi, `$1${REDACTED}`)
  }
}

/** Remove every occurrence of the given secret strings from a text (error messages, logs). */
export function scrubSecrets(text: string, secrets: readonly string[]): string {
  let out = text
  for (const secret of secrets) {
    if (secret.length >= 4) out = out.split(secret).join(REDACTED)
  }
  return out
}

const SECRET_ENV = ['AUDIT_HMAC_KEY', 'ENCRYPT_KEY', 'BACKUP_KEY', 'REDIS_PASSWORD'] as const
const URL_ENV = ['CREDITS_DATABASE_URL', 'SHADOW_DATABASE_URL', 'REDIS_URL'] as const

/**
 * Every secret value this invocation can see (keys, and passwords inside URLs from the
 * environment or flags), so the error boundary can scrub them from any message as a last line.
 */
export function secretValues(env: NodeJS.ProcessEnv, argv: readonly string[]): string[] {
  const out: string[] = []
  for (const name of SECRET_ENV) {
    const v = env[name]
    if (v) out.push(v, ...v.split(/[,\n]/).map((part) => part.slice(part.indexOf(':') + 1).trim()))
  }
  // URLs from the environment and from flags, including the --flag=url form.
  for (const text of [...URL_ENV.map((n) => env[n] ?? ''), ...argv]) {
    const match = /[a-z][a-z0-9+.-]*:\/\/\S+/i.exec(text)
    if (!match) continue
    try {
      const { password } = new URL(match[0])
      if (password) out.push(password, decodeURIComponent(password))
    } catch {
      // not a URL: nothing to extract
    }
  }
  return out.filter((s) => s.length >= 4)
}
