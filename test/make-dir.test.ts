/** Directories the user names (--dir, BACKUP_DIR): made level by level, refused in one sentence. */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { makeDir } from '../src/core/fs/make-dir.js'

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'shx-make-dir-'))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

describe('makeDir', () => {
  it('makes every missing level, 0700, and is content with a directory already there', () => {
    const dir = path.join(root, 'a', 'b', 'c')
    makeDir(dir, '--dir')
    expect(fs.statSync(dir).isDirectory()).toBe(true)
    for (const d of [path.join(root, 'a'), path.join(root, 'a', 'b'), dir])
      expect(fs.statSync(d).mode & 0o777).toBe(0o700)
    makeDir(dir, '--dir')
    expect(fs.readdirSync(path.join(root, 'a', 'b'))).toEqual(['c'])
  })

  it('refuses a file, or a path through a file, naming the setting: exit 2 (a UsageError)', () => {
    const file = path.join(root, 'plain')
    fs.writeFileSync(file, 'x')
    expect(() => makeDir(file, '--dir')).toThrow(
      `--dir: cannot use ${file} as a directory (it is a file, not a directory).`,
    )
    expect(() => makeDir(path.join(file, 'sub'), 'BACKUP_DIR')).toThrow(
      /^BACKUP_DIR: cannot use .*plain\/sub as a directory \(a part of the path is a file, not a directory\)\.$/,
    )
    const thrown = (() => {
      try {
        makeDir(file, '--dir')
      } catch (err) {
        return err
      }
    })()
    expect(thrown).toMatchObject({ exitCode: 2, code: 'BAD_DIRECTORY' })
  })

  it('gives up at once where no directory can be made (/proc), where recursive mkdir loops for ever', () => {
    const started = Date.now()
    expect(() => makeDir('/proc/shieldx-nope/x', '--dir')).toThrow(
      /^--dir: cannot use \/proc\/shieldx-nope\/x as a directory \(/,
    )
    expect(Date.now() - started).toBeLessThan(1000)
    expect(fs.existsSync('/proc/shieldx-nope')).toBe(false)
  })
})
