/** Replacement shown wherever a secret would be. */
export const REDACTED = '****'

// Leading whitespace (a value pasted with a space) is part of the prefix: the password is still found.
const SCHEME = /^(\s*[a-z][a-z0-9+.-]*:\/\/)(.*)$/is
const SECRET_PARAMS = /([?&;\s](?:password|sslpassword|sslkey)\s*=\s*)('[^']*'|[^&#\s]*)/gi

/**
 * The user and password of a URL, read by hand rather than with `new URL()`: a password with an
 * unencoded '/', '@' or ':' (common in generated secrets) makes the URL parser read it as a host,
 * port or path, and then the password would be printed. The userinfo is everything up to the
 * *last* '@'; over-reading into a path only redacts more.
 */
export function urlUserinfo(
  url: string,
): { prefix: string; user: string; password: string | null; rest: string } | null {
  const m = SCHEME.exec(url)
  if (!m) return null
  const afterScheme = m[2]!
  const at = afterScheme.lastIndexOf('@')
  if (at === -1) return null
  const userinfo = afterScheme.slice(0, at)
  const colon = userinfo.indexOf(':')
  return {
    prefix: m[1]!,
    user: colon === -1 ? userinfo : userinfo.slice(0, colon),
    password: colon === -1 ? null : userinfo.slice(colon + 1),
    rest: afterScheme.slice(at),
  }
}

/**
 * A connection setting as `locate` shows it: a URL or a keyword DSN redacted (redactUrl), anything
 * else not at all, since a value that is neither may be a password put in the wrong place.
 */
export function redactSetting(value: string): string {
  return SCHEME.test(value) || /^\s*\w+\s*=/.test(value) ? redactUrl(value) : `${REDACTED} (not a URL)`
}

/**
 * A connection string with its password, and password-like parameters (`?password=`,
 * `sslpassword=`, keyword DSNs), replaced by ****.
 */
export function redactUrl(url: string): string {
  const info = urlUserinfo(url)
  const out = info && info.password !== null ? `${info.prefix}${info.user}:${REDACTED}${info.rest}` : url
  return (/^\s*\w+\s*=/.test(out) ? ` ${out}` : out).replace(SECRET_PARAMS, `$1${REDACTED}`).replace(/^ /, '')
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
    const password = match ? urlUserinfo(match[0])?.password : null
    if (password) {
      out.push(password)
      try {
        out.push(decodeURIComponent(password))
      } catch {
        // not percent-encoded: the raw form is enough
      }
    }
    for (const m of text.matchAll(SECRET_PARAMS)) if (m[2]) out.push(m[2].replace(/^'|'$/g, ''))
  }
  return out.filter((s) => s.length >= 4)
}
