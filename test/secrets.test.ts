/**
 * Loading keys (src/core/config/secrets.ts): key rings `kid:base64[,kid:base64...]`, bare keys
 * with a fingerprint kid, strict lengths, and the embedded-mode key that is generated once,
 * mode 0600, under $SHIELDX_HOME, and never invented against a server.
 *
 * Concurrency is tested with real processes (loadKeyring is synchronous: two calls in one
 * process cannot overlap). Those processes load the built dist/, which the global setup builds.
 */
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { fingerprintKid, type KeySpec, loadKeyring, parseKeyring } from '../src/core/config/secrets.js'
import { resolveSettings, type SecretRef } from '../src/core/config/settings.js'
import { UsageError } from '../src/core/errors.js'
import { ROOT } from './helpers/cli.js'
import { cleanEnv } from './helpers/env.js'

const made: string[] = []
afterAll(() => {
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true })
})

function tempDir(label: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `shx-sec-${label}-`))
  made.push(dir)
  return dir
}

const AES: KeySpec = { envName: 'ENCRYPT_KEY', bytes: { exact: 32 } }
const HMAC: KeySpec = { envName: 'AUDIT_HMAC_KEY', bytes: { min: 32 } }

const b64 = (bytes: Buffer) => bytes.toString('base64')
const key32a = randomBytes(32)
const key32b = randomBytes(32)
const key32c = randomBytes(32)

/** What parseKeyring throws, or fails the test if it does not throw. */
function parseError(text: string, spec: KeySpec, origin = 'env ENCRYPT_KEY'): UsageError {
  try {
    parseKeyring(text, spec, origin)
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError)
    expect((err as UsageError).exitCode).toBe(2)
    return err as UsageError
  }
  return expect.unreachable(`parseKeyring accepted ${JSON.stringify(text)}`)
}

const generated = (file: string) => ({
  value: { kind: 'generated', path: file } as SecretRef,
  source: 'default',
})

// --- parseKeyring ----------------------------------------------------------------------------------------

describe('parseKeyring', () => {
  it('kid:base64,kid2:base64: the first key is current, every key is in byId', () => {
    const ring = parseKeyring(`k2025:${b64(key32a)},k2024:${b64(key32b)},k2023:${b64(key32c)}`, AES, 'test')
    expect(ring.current.kid).toBe('k2025')
    expect(ring.current.bytes.equals(key32a)).toBe(true)
    expect([...ring.byId.keys()]).toEqual(['k2025', 'k2024', 'k2023'])
    expect(ring.byId.get('k2024')!.bytes.equals(key32b)).toBe(true)
    expect(ring.byId.get('k2023')!.bytes.equals(key32c)).toBe(true)
    expect(ring.byId.get('k2025')).toBe(ring.current)
  })

  it('a single bare base64 key gets the kid "k" + the first 8 hex digits of its SHA-256', () => {
    const ring = parseKeyring(b64(key32a), AES, 'test')
    const expected = 'k' + createHash('sha256').update(key32a).digest('hex').slice(0, 8)
    expect(ring.current.kid).toBe(expected)
    expect(fingerprintKid(key32a)).toBe(expected)
    expect(ring.current.bytes.equals(key32a)).toBe(true)
    expect([...ring.byId.keys()]).toEqual([expected])
    // The kid is stable: the same key read again (another process, another day) has the same id.
    expect(parseKeyring(b64(key32a), AES, 'again').current.kid).toBe(expected)
    expect(fingerprintKid(key32b)).not.toBe(expected)
  })

  it('bare and named keys mix; newlines, blank lines, # comments, CRLF and spaces are allowed', () => {
    const text = `# rotated 2025-01\r\nnew:${b64(key32a)}\r\n\r\n  ${b64(key32b)}  \n# old one\n,old:${b64(key32c)}\n`
    const ring = parseKeyring(text, AES, 'file')
    expect(ring.current.kid).toBe('new')
    expect([...ring.byId.keys()]).toEqual(['new', fingerprintKid(key32b), 'old'])
  })

  it('HMAC keys have a minimum, not an exact length', () => {
    const long = randomBytes(64)
    expect(parseKeyring(b64(long), HMAC, 'test').current.bytes.length).toBe(64)
    const e = parseError(b64(randomBytes(16)), HMAC, 'env AUDIT_HMAC_KEY')
    expect(e.message).toContain('AUDIT_HMAC_KEY')
    expect(e.message).toContain('at least 32 bytes')
    expect(e.message).toContain('it is 16')
  })

  it.each([16, 31, 33, 64])(
    'a %i-byte key where exactly 32 are needed names the env var and the lengths',
    (n) => {
      const bytes = randomBytes(n)
      const e = parseError(`good:${b64(key32a)},bad:${b64(bytes)}`, AES)
      expect(e.message).toMatch(/^ENCRYPT_KEY \(env ENCRYPT_KEY\) key 2 must be 32 bytes/)
      expect(e.message).toContain(`it is ${n}`)
      expect(e.message).not.toContain(b64(bytes))
      expect(e.message).not.toContain(b64(key32a))
    },
  )

  it.each([
    ['punctuation', 'not base64!!'],
    ['a space inside', 'abcd efgh'],
    ['base64url alphabet', '-_-_abcd'],
    ['too much padding', 'QUJD==='],
    ['a quoted value', `"${b64(key32a)}"`],
  ])('rejects %s as not base64, naming the env var and the key number', (_what, bad) => {
    const e = parseError(`k1:${b64(key32a)},k2:${bad}`, AES)
    expect(e.message).toBe('ENCRYPT_KEY (env ENCRYPT_KEY) key 2 is not base64.')
  })

  it('a kid listed twice is refused', () => {
    const e = parseError(`k1:${b64(key32a)},k1:${b64(key32b)}`, AES)
    expect(e.message).toContain("lists key id 'k1' twice")
    expect(e.message).toContain('ENCRYPT_KEY')
  })

  it('the same bare key twice is a duplicate too (same fingerprint kid)', () => {
    const e = parseError(`${b64(key32a)}\n${b64(key32a)}`, AES)
    expect(e.message).toContain(`'${fingerprintKid(key32a)}' twice`)
  })

  it.each(['bad kid', 'k/1', 'ключ', 'x'.repeat(65)])('an invalid kid (%j) is refused', (kid) => {
    const e = parseError(`${kid}:${b64(key32a)}`, AES)
    expect(e.message).toContain('key 1 has an invalid key id')
  })

  it.each(['', '   ', '\n\n', '# only a comment\n', ',,'])('an empty value (%j) is refused', (text) => {
    expect(parseError(text, AES).message).toBe('ENCRYPT_KEY (env ENCRYPT_KEY) is empty.')
  })

  it('errors name where the key came from (the origin) and never contain key material', () => {
    const secret = b64(randomBytes(20))
    const e = parseError(`k1:${secret}`, AES, '/etc/shieldx/encrypt.key')
    expect(e.message).toContain('/etc/shieldx/encrypt.key')
    expect(e.message).not.toContain(secret)
  })
})

// --- loadKeyring ---------------------------------------------------------------------------------------

describe('loadKeyring: inline and file', () => {
  it('an inline value is parsed, with the env name as its origin in errors', () => {
    const ring = loadKeyring(
      { value: { kind: 'inline', env: 'ENCRYPT_KEY', value: `a:${b64(key32a)}` }, source: 'env ENCRYPT_KEY' },
      AES,
    )
    expect(ring.generatedAt).toBeUndefined()
    expect(ring.keyring.current.kid).toBe('a')
    expect(ring.keyring.current.bytes.equals(key32a)).toBe(true)

    expect(() =>
      loadKeyring(
        { value: { kind: 'inline', env: 'ENCRYPT_KEY', value: 'short' }, source: 'env ENCRYPT_KEY' },
        AES,
      ),
    ).toThrow(/^ENCRYPT_KEY \(env ENCRYPT_KEY\) key 1 must be 32 bytes/)
  })

  it('a file ref reads the key ring from the file', () => {
    const dir = tempDir('file')
    const file = path.join(dir, 'encrypt.key')
    fs.writeFileSync(file, `# current first\ncur:${b64(key32a)}\nprev:${b64(key32b)}\n`, { mode: 0o600 })
    const { keyring, generatedAt } = loadKeyring(
      { value: { kind: 'file', path: file }, source: 'env X' },
      AES,
    )
    expect(generatedAt).toBeUndefined()
    expect(keyring.current.kid).toBe('cur')
    expect(keyring.current.bytes.equals(key32a)).toBe(true)
    expect(keyring.byId.get('prev')!.bytes.equals(key32b)).toBe(true)
  })

  it('errors in a key file name the file', () => {
    const dir = tempDir('file')
    const file = path.join(dir, 'encrypt.key')
    fs.writeFileSync(file, `${b64(randomBytes(8))}\n`)
    expect(() =>
      loadKeyring({ value: { kind: 'file', path: file }, source: 'env ENCRYPT_KEY_FILE' }, AES),
    ).toThrow(`ENCRYPT_KEY (${file}) key 1 must be 32 bytes`)
  })

  it('a missing key file is a UsageError naming the key, the path and where it was named', () => {
    const file = path.join(tempDir('file'), 'nope.key')
    try {
      loadKeyring(
        { value: { kind: 'file', path: file }, source: 'env BACKUP_KEY_FILE' },
        { ...AES, envName: 'BACKUP_KEY' },
      )
      expect.unreachable('a missing file should throw')
    } catch (err) {
      expect(err).toBeInstanceOf(UsageError)
      expect((err as Error).message).toBe(
        `Cannot read the BACKUP_KEY key file ${file} (from env BACKUP_KEY_FILE): it does not exist (ENOENT).`,
      )
    }
  })

  it('AUDIT_HMAC_KEY_FILE from the environment is read through resolveSettings', () => {
    const dir = tempDir('file')
    const file = path.join(dir, 'audit.key')
    fs.writeFileSync(file, `audit1:${b64(key32c)}\n`)
    const s = resolveSettings({ env: cleanEnv({ HOME: dir, SHIELDX_HOME: dir, AUDIT_HMAC_KEY_FILE: file }) })
    expect(loadKeyring(s.auditHmacKey, HMAC).keyring.current.kid).toBe('audit1')
  })
})

describe('loadKeyring: generated (embedded mode)', () => {
  it('creates the key file with mode 0600 in a 0700 directory, and says so once', () => {
    const home = tempDir('home')
    const file = path.join(home, 'keys', 'audit_hmac.key')

    const first = loadKeyring(generated(file), HMAC)
    expect(first.generatedAt).toBe(file)
    expect(fs.statSync(file).mode & 0o777).toBe(0o600)
    expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700)

    // The file holds what was returned, in the kid:base64 format a user can copy into a secret.
    const text = fs.readFileSync(file, 'utf8')
    expect(text).toBe(`${first.keyring.current.kid}:${b64(first.keyring.current.bytes)}\n`)
    expect(first.keyring.current.kid).toBe(fingerprintKid(first.keyring.current.bytes))

    const second = loadKeyring(generated(file), HMAC)
    expect(second.generatedAt).toBeUndefined()
    expect('generatedAt' in second).toBe(false)
    expect(second.keyring.current.kid).toBe(first.keyring.current.kid)
    expect(second.keyring.current.bytes.equals(first.keyring.current.bytes)).toBe(true)
    expect(fs.readFileSync(file, 'utf8')).toBe(text)
  })

  it('the key stays the same across many calls', () => {
    const file = path.join(tempDir('home'), 'keys', 'encrypt.key')
    const kids = new Set(
      Array.from({ length: 5 }, () => loadKeyring(generated(file), AES).keyring.current.kid),
    )
    expect(kids.size).toBe(1)
  })

  it.each([
    ['an AES key', AES, 32],
    ['an HMAC key with a 16-byte minimum', { envName: 'AUDIT_HMAC_KEY', bytes: { min: 16 } } as KeySpec, 32],
    ['an HMAC key with a 64-byte minimum', { envName: 'AUDIT_HMAC_KEY', bytes: { min: 64 } } as KeySpec, 64],
  ])('generates %s of the right length (%#)', (_what, spec, length) => {
    const file = path.join(tempDir('home'), 'keys', 'k.key')
    expect(loadKeyring(generated(file), spec).keyring.current.bytes.length).toBe(length)
  })

  it('each key is generated separately: audit, encrypt and backup keys differ', () => {
    const home = tempDir('home')
    const s = resolveSettings({ env: cleanEnv({ HOME: tempDir('user'), SHIELDX_HOME: home }) })
    const audit = loadKeyring(s.auditHmacKey, HMAC).keyring.current
    const enc = loadKeyring(s.encryptKey, AES).keyring.current
    const backup = loadKeyring(s.backupKey, { envName: 'BACKUP_KEY', bytes: { exact: 32 } }).keyring.current
    expect(new Set([audit.kid, enc.kid, backup.kid]).size).toBe(3)
    expect(fs.readdirSync(path.join(home, 'keys')).sort()).toEqual([
      'audit_hmac.key',
      'backup.key',
      'encrypt.key',
    ])
  })

  it('through resolveSettings the key is written under $SHIELDX_HOME and nowhere else', () => {
    const home = tempDir('home')
    const userHome = tempDir('user')
    const s = resolveSettings({ env: cleanEnv({ HOME: userHome, SHIELDX_HOME: home }) })
    const { generatedAt } = loadKeyring(s.encryptKey, AES)
    expect(generatedAt).toBe(path.join(home, 'keys', 'encrypt.key'))
    expect(fs.readdirSync(userHome)).toEqual([])
    expect(fs.readdirSync(home)).toEqual(['keys'])
  })

  it('an existing key file is never overwritten, even if it is not one shieldx would generate', () => {
    const file = path.join(tempDir('home'), 'keys', 'encrypt.key')
    fs.mkdirSync(path.dirname(file))
    fs.writeFileSync(file, `mine:${b64(key32a)}\n`, { mode: 0o600 })
    const r = loadKeyring(generated(file), AES)
    expect(r.generatedAt).toBeUndefined()
    expect(r.keyring.current.kid).toBe('mine')
    expect(fs.readFileSync(file, 'utf8')).toBe(`mine:${b64(key32a)}\n`)
  })
})

describe('loadKeyring: missing (server mode)', () => {
  it.each(['AUDIT_HMAC_KEY', 'ENCRYPT_KEY', 'BACKUP_KEY'])(
    '%s missing is a UsageError naming it',
    (envName) => {
      try {
        loadKeyring({ value: { kind: 'missing' }, source: 'default' }, { envName, bytes: { exact: 32 } })
        expect.unreachable('a missing key should throw')
      } catch (err) {
        expect(err).toBeInstanceOf(UsageError)
        const e = err as UsageError
        expect(e.exitCode).toBe(2)
        expect(e.message).toContain(envName)
        expect(e.hint).toContain(`${envName}_FILE`)
      }
    },
  )

  it('against a server (a database URL is set) no key is ever generated', () => {
    const home = tempDir('home')
    const s = resolveSettings({
      env: cleanEnv({
        HOME: tempDir('user'),
        SHIELDX_HOME: home,
        CREDITS_DATABASE_URL: 'postgres://app@db.internal:5432/credits',
      }),
    })
    expect(s.encryptKey).toEqual({ value: { kind: 'missing' }, source: 'default' })
    expect(() => loadKeyring(s.encryptKey, AES)).toThrow(/ENCRYPT_KEY is not set/)
    expect(fs.readdirSync(home)).toEqual([])
  })
})

// --- concurrency: real processes -------------------------------------------------------------------------

const SECRETS_JS = pathToFileURL(path.join(ROOT, 'dist/core/config/secrets.js')).href

interface ChildResult {
  kid?: string
  generated?: boolean
  error?: string
}

/**
 * A node process that waits until `startAt` (so several start loading at the same moment), then
 * calls loadKeyring on a generated ref, and prints what it got.
 */
function loadInChild(file: string, startAt: number, preload?: string): Promise<ChildResult> {
  const code = `
    const { loadKeyring } = await import(${JSON.stringify(SECRETS_JS)})
    while (Date.now() < ${startAt}) {}
    try {
      const r = loadKeyring({ value: { kind: 'generated', path: ${JSON.stringify(file)} }, source: 'default' },
        { envName: 'AUDIT_HMAC_KEY', bytes: { min: 32 } })
      console.log(JSON.stringify({ kid: r.keyring.current.kid, generated: r.generatedAt !== undefined }))
    } catch (err) {
      console.log(JSON.stringify({ error: err.message }))
    }`
  const args = [
    ...(preload ? ['--import', pathToFileURL(preload).href] : []),
    '--input-type=module',
    '-e',
    code,
  ]
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => {
      out += d
    })
    child.stderr.on('data', (d) => {
      err += d
    })
    child.on('error', reject)
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`child exited ${code}: ${err}`))
      else resolve(JSON.parse(out) as ChildResult)
    })
  })
}

/** The message a reader gets when it reads the key file between another process's create and write. */

describe('loadKeyring: concurrent first use', () => {
  it('processes that start together never end up with two different keys', async () => {
    expect(fs.existsSync(new URL(SECRETS_JS)), 'dist/ is built by the global setup').toBe(true)
    for (let round = 0; round < 3; round++) {
      const file = path.join(tempDir('race'), 'keys', 'audit_hmac.key')
      const startAt = Date.now() + 700
      const results = await Promise.all(Array.from({ length: 4 }, () => loadInChild(file, startAt)))

      const ok = results.filter((r) => r.kid !== undefined)
      // Every process gets the key: none sees a half-written file (see the slow-disk test below).
      expect(results.map((r) => r.error)).toEqual(results.map(() => undefined))

      const onDisk = fs.readFileSync(file, 'utf8').trim()
      expect(new Set(ok.map((r) => r.kid))).toEqual(new Set([onDisk.split(':')[0]]))
      // Exactly one process created the key and would tell the user so.
      expect(results.filter((r) => r.generated).length).toBe(1)
      expect(fs.statSync(file).mode & 0o777).toBe(0o600)
    }
  })

  // Was a bug (src/core/config/secrets.ts, ensureGeneratedKey), fixed by writing a temp file and link()ing it: the key file is created with
  // writeFileSync(file, ..., { flag: 'wx' }), i.e. open(O_CREAT|O_EXCL) and then write(). Between
  // the two, the file exists but is empty. A second process that starts then gets EEXIST, reads the
  // empty file, and fails with "AUDIT_HMAC_KEY (<home>/keys/audit_hmac.key) is empty." (exit 2).
  // Observed without any fault injection: 8 processes started together on a fresh home, 7 of 120
  // rounds had one process fail this way. (A crash between open and write also leaves an empty
  // key file that fails every later run.) Writing a temp file and link()ing it into place would
  // make the key appear whole or not at all. Here a slow disk is simulated in the first process
  // (a pause between open and write) so the window is wide enough to hit every time.
  it('a process that starts while another is writing the key gets that key, not an error', async () => {
    const dir = tempDir('slow')
    const file = path.join(dir, 'keys', 'audit_hmac.key')
    const preload = path.join(dir, 'slow-disk.mjs')
    fs.writeFileSync(
      preload,
      `import fs from 'node:fs'
      // A slow disk: the file exists for a while before its bytes land.
      fs.writeFileSync = (file, data, options) => {
        const fd = fs.openSync(file, options?.flag ?? 'w', options?.mode)
        try {
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2500)
          fs.writeSync(fd, data)
        } finally {
          fs.closeSync(fd)
        }
      }
      `,
    )
    const slow = loadInChild(file, 0, preload)
    // Start the second process once the key file is visible.
    const deadline = Date.now() + 15_000
    while (!fs.existsSync(file)) {
      if (Date.now() > deadline) throw new Error('the first process never created the key file')
      await new Promise((r) => setTimeout(r, 5))
    }
    const [first, second] = await Promise.all([slow, loadInChild(file, 0)])
    expect(first.error).toBeUndefined()
    expect(second.error).toBeUndefined()
    expect(second.kid).toBe(first.kid)
  })
})
