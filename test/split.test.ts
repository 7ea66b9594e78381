/** The statement splitter used for migrations that run without a transaction. */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { splitStatements } from '../src/core/migrations/split.js'

describe('splitStatements', () => {
  it('splits on semicolons outside quotes, dollar quotes and comments', () => {
    const sql = [
      "insert into t values ('a;b', 'it''s; fine');",
      'select "odd;name" from t;',
      '-- a comment; with a semicolon',
      '/* block; /* nested; */ still comment; */ select 2;',
      'create function f() returns int language sql as $$ select 1; $$;',
      'create function g() returns int language plpgsql as $body$ begin return 1; end $body$;',
      "select E'back\\'slash;';",
      'select 3',
    ].join('\n')
    const parts = splitStatements(sql)
    expect(parts).toHaveLength(7)
    expect(parts[0]).toBe("insert into t values ('a;b', 'it''s; fine')")
    expect(parts[1]).toBe('select "odd;name" from t')
    expect(parts[2]).toContain('select 2')
    expect(parts[3]).toContain('$$ select 1; $$')
    expect(parts[4]).toContain('$body$ begin return 1; end $body$')
    expect(parts[5]).toBe("select E'back\\'slash;'")
    expect(parts[6]).toBe('select 3')
  })

  it('drops empty statements and comment-only tails', () => {
    expect(splitStatements(';;\n-- only a comment\n')).toEqual([])
    expect(splitStatements('-- shieldx:no-transaction\ncreate index concurrently i on t (a);\n')).toEqual([
      '-- shieldx:no-transaction\ncreate index concurrently i on t (a)',
    ])
  })

  it('never loses or invents text: joining the parts gives back every statement', () => {
    const stmt = fc.stringMatching(/^[a-z ]{1,12}$/).filter((s) => s.trim() !== '')
    const quoted = fc.stringMatching(/^[a-z;]{0,6}$/).map((s) => `'${s}'`)
    fc.assert(
      fc.property(fc.array(fc.tuple(stmt, quoted), { minLength: 1, maxLength: 8 }), (items) => {
        const statements = items.map(([a, q]) => `${a.trim()} ${q}`)
        expect(splitStatements(statements.join(';\n') + ';')).toEqual(statements)
      }),
    )
  })
})
