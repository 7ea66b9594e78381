/**
 * Split a SQL script into statements, for migrations that run without a transaction: Postgres
 * runs a multi-statement simple query as one implicit transaction, which CREATE INDEX
 * CONCURRENTLY refuses. Hand-written because the job is small (quotes, dollar quotes, comments)
 * and the libraries that do it are whole SQL parsers.
 */
export function splitStatements(sql: string): string[] {
  const out: string[] = []
  let start = 0
  let i = 0
  const n = sql.length
  while (i < n) {
    const c = sql[i]!
    const next = sql[i + 1]
    if (c === '-' && next === '-') {
      const end = sql.indexOf('\n', i)
      i = end === -1 ? n : end + 1
    } else if (c === '/' && next === '*') {
      // Postgres block comments nest.
      let depth = 1
      i += 2
      while (i < n && depth > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') {
          depth++
          i += 2
        } else if (sql[i] === '*' && sql[i + 1] === '/') {
          depth--
          i += 2
        } else i++
      }
    } else if (c === "'" || c === '"') {
      // Inside E'...' a backslash escapes the next character.
      const escapes = c === "'" && (sql[i - 1] === 'E' || sql[i - 1] === 'e')
      i++
      while (i < n) {
        if (sql[i] === c) {
          if (sql[i + 1] === c)
            i += 2 // doubled quote is an escaped quote
          else break
        } else if (escapes && sql[i] === '\\') i += 2
        else i++
      }
      i++
    } else if (c === '$') {
      const tag = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(sql.slice(i))
      if (tag) {
        const end = sql.indexOf(tag[0], i + tag[0].length)
        i = end === -1 ? n : end + tag[0].length
      } else i++
    } else if (c === ';') {
      push(out, sql.slice(start, i))
      start = ++i
    } else i++
  }
  push(out, sql.slice(start))
  return out
}

function push(out: string[], stmt: string): void {
  if (stripComments(stmt).trim() !== '') out.push(stmt.trim())
}

function stripComments(s: string): string {
  return s.replace(/--[^\n]*/g, '').replace(/\/\*[\s\S]*?\*\//g, '')
}
