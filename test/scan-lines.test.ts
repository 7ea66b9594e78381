/**
 * The replay reads traffic lines with a WebAssembly scanner (scan-lines) and falls back to
 * JSON.parse for any line it is not sure of. A line must come out exactly as JSON.parse reads it:
 * the same verdict (event, blank, invalid and its reason), time, label, rule fields and keys,
 * whatever the line holds: generated traffic, mangled bytes, escapes, odd numbers, nesting,
 * duplicate names, blanks, non-ASCII and invalid UTF-8.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { trafficEvents } from '../src/core/shadow/generate.js'
import { LineScanner } from '../src/core/shadow/scan-lines.js'
import { fastIsoUtc, parseTimestamp, TrafficLineReader } from '../src/core/shadow/traffic.js'

const RULE_FIELDS = ['status', 'latency_ms', 'user_agent', 'bytes', 'ts', 'label', 'flag', 'constructor']
const KEYS = ['ip', 'tenant_id', 'path']
const decoder = () => new TextDecoder('utf-8', { fatal: false, ignoreBOM: true })

/** Scanned where it can be, and the reference: a nested rule field sends every line to JSON.parse. */
const scanner = new TrafficLineReader(RULE_FIELDS, KEYS, decoder())
const parser = new TrafficLineReader([...RULE_FIELDS, 'nested.field'], KEYS, decoder())
const scanning = () => scanner
const parsing = () => parser

interface Seen {
  kind: string
  error?: string
  ts?: number
  attack?: boolean
  keys?: Array<string | undefined>
  fields?: unknown[]
}

function readAll(reader: TrafficLineReader, bytes: Buffer): Seen[] {
  const out: Seen[] = []
  reader.begin(bytes, 0)
  while (reader.next()) {
    if (reader.kind === 'blank') out.push({ kind: 'blank' })
    else if (reader.kind === 'invalid') out.push({ kind: 'invalid', error: reader.error })
    else {
      const own = (f: string) => (Object.hasOwn(reader.event, f) ? reader.event[f] : undefined)
      out.push({
        kind: 'event',
        ts: reader.ts,
        attack: reader.attack,
        keys: [...reader.keys],
        fields: RULE_FIELDS.map(own),
      })
    }
  }
  return out
}

function expectSame(bytes: Buffer): void {
  expect(readAll(scanning(), bytes)).toEqual(readAll(parsing(), bytes))
}

const BASE = {
  ts: '2026-01-01T00:00:00.123Z',
  ip: '10.0.0.1',
  tenant_id: 't-1',
  method: 'GET',
  path: '/login',
  status: 200,
  latency_ms: 12,
  user_agent: 'curl/8.0',
  label: 'benign',
}
const line = (o: Record<string, unknown>) => JSON.stringify({ ...BASE, ...o })

describe('the traffic line scanner', () => {
  it('loads its WebAssembly (the build made it) and scans generated traffic as JSON.parse reads it', () => {
    const text = [...trafficEvents({ events: 3000, attackRate: 0.3, seed: 7 })]
      .map((e) => JSON.stringify(e) + '\n')
      .join('')
    const bytes = Buffer.from(text)
    // Every generated line is the scanner's, not JSON.parse's.
    const direct = LineScanner.create(['ts', 'label'], decoder())!
    expect(direct).not.toBeNull()
    direct.load(bytes, 0)
    let lines = 0
    for (let n; (n = direct.scan()) > 0; lines += n)
      for (let l = 0; l < n; l++) expect(direct.ok(l)).toBe(true)
    expect(lines).toBe(3000)
    const scanned = readAll(scanning(), bytes)
    expect(scanned).toHaveLength(3000)
    expect(scanned.every((s) => s.kind === 'event')).toBe(true)
    expect(scanned).toEqual(readAll(parsing(), bytes))
  })

  it('matches JSON.parse on hand-picked odd lines, line by line and all in one buffer', () => {
    const odd = [
      line({}),
      line({ label: 'attack' }),
      '',
      '   ',
      '\t\r',
      '\ufeff' + line({}),
      ' ' + line({}) + ' \t',
      line({}) + '\r',
      line({}) + ' x',
      line({}).slice(0, -1),
      line({}) + '}',
      '{}',
      '[]',
      '"text"',
      'null',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack"}',
      '{"ts":1767225600000,"label":"attack"}',
      '{"ts":1767225600,"label":"attack"}',
      '{"ts":1.7672256e12,"label":"benign"}',
      '{"ts":"2026-01-01 00:00:00+01:00","label":"benign"}',
      '{"ts":"2026-02-30T00:00:00Z","label":"benign"}',
      '{"ts":"2026-01-01T00:00:00","label":"benign"}',
      '{"ts":"2026-01-01T00:00:00.1Z","label":"benign"}',
      '{"ts":"2026-01-01T00:00:00.123456789Z","label":"benign"}',
      '{"ts":"2026-01-01T24:00:00Z","label":"benign"}',
      '{"ts":"2026-01-01T00:00:00.Z","label":"benign"}',
      '{"ts":"2024-02-29T23:59:59.999Z","label":"benign"}',
      '{"ts":"2023-02-29T00:00:00Z","label":"benign"}',
      '{"ts":"\\u0032026-01-01T00:00:00Z","label":"benign"}',
      '{"\\u0074s":"2026-01-01T00:00:00Z","label":"benign"}',
      '{"ts":"2026-01-01T00:00:00Z","\\u0074s":"2026-01-02T00:00:00Z","label":"benign"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"\\u0061ttack"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"Attack"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","label":"benign"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","ts":"2026-01-02T00:00:00Z"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":"200"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":null,"ip":null}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":1e400}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","bytes":1e400}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":-0}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":0.1,"bytes":123456789012345678}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":1E2,"bytes":-12.5e-3}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":01}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":1.}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":-}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","status":+1}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","flag":true,"bytes":false}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","flag":tru}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","flag":nulll}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","ip":["a"]}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","flag":{"a":[1,2,{"b":null}]}}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","other":{"a":[1,2,{"b":null}],"c":"\\"}"}}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","other":{"a":[1,2,]}}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","other":' + '['.repeat(40) + ']'.repeat(40) + '}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack",}',
      '{"ts":"2026-01-01T00:00:00Z" "label":"attack"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","path":"/caf\u00e9/\u2603"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","path":"/a\\nb\\t\\"c\\"\\\\\\/\\u00e9\\ud83d\\ude00"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","path":"/a\\x"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","path":"/a\\u00g0"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","path":"tab\there"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","user_agent":"' +
        'x'.repeat(70) +
        '\\"' +
        'y'.repeat(17) +
        '"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","caf\u00e9":1,"constructor":"c"}',
      '{"ts":"2026-01-01T00:00:00Z","label":"attack","__proto__":{"status":500}}',
      '{ "ts" : "2026-01-01T00:00:00Z" ,\t"label" :"benign" }',
    ]
    for (const l of odd) expectSame(Buffer.from(l))
    expectSame(Buffer.from(odd.join('\n')))
    expectSame(Buffer.from(odd.join('\r\n') + '\n'))
    // Invalid UTF-8 decodes to U+FFFD in both, in a rule field and in a key.
    expectSame(
      Buffer.concat([
        Buffer.from('{"ts":"2026-01-01T00:00:00Z","label":"attack","user_agent":"a'),
        Buffer.from([0xc3, 0x28, 0xff, 0xe2, 0x82]),
        Buffer.from('","ip":"'),
        Buffer.from([0xf0, 0x9f, 0x98]),
        Buffer.from('"}\n'),
      ]),
    )
  })

  it('matches JSON.parse on generated lines with bytes changed, cut or inserted anywhere', () => {
    const lines = [...trafficEvents({ events: 50, attackRate: 0.5, seed: 3 })].map((e) => JSON.stringify(e))
    const alphabet = Buffer.from('{}[]":,\\/-+.0123456789eEtfnu \t\r\nabTZ')
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: lines.length - 1 }),
        fc.array(
          fc.record({
            at: fc.nat(),
            op: fc.constantFrom('set', 'cut', 'insert'),
            byte: fc.oneof(fc.constantFrom(...alphabet), fc.integer({ min: 0, max: 255 })),
          }),
          { minLength: 1, maxLength: 4 },
        ),
        (i, edits) => {
          let bytes = Buffer.from(lines[i]!)
          for (const { at, op, byte } of edits) {
            const p = at % (bytes.length + 1)
            if (op === 'set' && p < bytes.length) bytes[p] = byte
            else if (op === 'cut') bytes = Buffer.concat([bytes.subarray(0, p), bytes.subarray(p + 1)])
            else bytes = Buffer.concat([bytes.subarray(0, p), Buffer.of(byte), bytes.subarray(p)])
          }
          expectSame(bytes)
        },
      ),
      { numRuns: 3000 },
    )
  })

  it('matches JSON.parse on random JSON objects, whatever their values', () => {
    const value = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 40 }),
      fc.double(),
      fc.integer(),
      fc.boolean(),
      fc.constant(null),
      fc.array(fc.integer(), { maxLength: 3 }),
      fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 }), { maxKeys: 2 }),
    )
    const names = fc.constantFrom(...RULE_FIELDS, ...KEYS, 'method', 'other', 'x')
    fc.assert(
      fc.property(fc.array(fc.tuple(names, value), { maxLength: 12 }), fc.boolean(), (members, valid) => {
        const o: Record<string, unknown> = valid ? { ...BASE } : {}
        for (const [k, v] of members) if (!(valid && (k === 'ts' || k === 'label'))) o[k] = v
        expectSame(Buffer.from(JSON.stringify(o)))
      }),
      { numRuns: 2000 },
    )
  })

  it('reads every ISO-8601 UTC time as parseTimestamp does, in WebAssembly and in JavaScript', () => {
    const times = fc.tuple(
      fc.integer({ min: 0, max: 9999 }),
      fc.integer({ min: 0, max: 13 }),
      fc.integer({ min: 0, max: 32 }),
      fc.integer({ min: 0, max: 25 }),
      fc.integer({ min: 0, max: 60 }),
      fc.integer({ min: 0, max: 60 }),
      fc.option(fc.stringMatching(/^[0-9]{1,9}$/)),
    )
    const pad = (n: number, w: number) => String(n).padStart(w, '0')
    fc.assert(
      fc.property(times, ([y, mo, d, h, mi, s, frac]) => {
        const ts = `${pad(y, 4)}-${pad(mo, 2)}-${pad(d, 2)}T${pad(h, 2)}:${pad(mi, 2)}:${pad(s, 2)}${frac === null ? '' : '.' + frac}Z`
        const want = Number.isNaN(Date.parse(ts)) ? NaN : parseTimestamp(ts)
        if (!Number.isNaN(fastIsoUtc(ts))) expect(fastIsoUtc(ts)).toBe(want)
        const seen = readAll(scanning(), Buffer.from(JSON.stringify({ ts, label: 'benign' })))[0]!
        expect(seen.kind === 'event' ? seen.ts : NaN).toBe(parseTimestamp(ts))
        expectSame(Buffer.from(JSON.stringify({ ts, label: 'benign' })))
      }),
      { numRuns: 3000 },
    )
  })

  it('takes a line longer than its input area, and more lines than one scan holds', () => {
    const long = line({ user_agent: 'u'.repeat(1_500_000) })
    const short = Array.from({ length: 10_000 }, (_, i) => line({ status: i })).join('\n')
    const bytes = Buffer.from(`${short}\n${long}\n${short}`)
    const scanned = readAll(scanning(), bytes)
    expect(scanned).toHaveLength(20_001)
    expect(scanned[10_000]!.fields![2]).toHaveLength(1_500_000)
    expect(scanned[20_000]!.fields![0]).toBe(9999)
    expect(scanned).toEqual(readAll(parsing(), bytes))
  })
})
