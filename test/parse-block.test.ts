/**
 * A block parser (parse-block.ts) numbers the rate-limit keys it sees and sends each new one once,
 * in the block that first has it; the coordinator (replay.ts) turns ids back into keys with those
 * lists. Over many blocks, a block that starts with the rest of a line, and the dictionary's start
 * over past its limit, every event's id must still name its own key.
 */
import { describe, expect, it } from 'vitest'
import { type BlockTask, blockParser } from '../src/core/shadow/parse-block.js'
import type { RulePart } from '../src/core/shadow/rules.js'

const control: RulePart = { type: 'threshold', field: 'status', op: '>=', value: 401 }
const candidate: RulePart = { type: 'rate_limit', key: 'ip', window_s: 10, threshold: 20 }

const T0 = Date.UTC(2026, 0, 1)
const line = (ts: number, ip: string | null, status = 200) =>
  JSON.stringify({ ts: T0 + ts, ...(ip === null ? {} : { ip }), status, label: 'benign' }) + '\n'

let seq = 0
const task = (text: string, head?: string): BlockTask => ({
  seq: seq++,
  head: head === undefined ? null : new Uint8Array(Buffer.from(head)),
  bytes: new Uint8Array(Buffer.from(text)),
})

/** What the coordinator keeps per parser: the key of each id, started over on dictReset. */
function decode(blocks: ReturnType<ReturnType<typeof blockParser>>[]): Array<Array<string | null>> {
  let names: string[] = []
  return blocks.map((b) => {
    const c = b.columns!
    if (c.dictReset) names = []
    names.push(...c.dicts[0]!)
    return Array.from(c.keyIds.subarray(0, c.n), (id) => (id < 0 ? null : names[id]!))
  })
}

describe('block parser key dictionary', () => {
  it('names every event by its own key across blocks, a split line and restarts of the dictionary', () => {
    seq = 0
    const parse = blockParser({ control, candidate, mode: 'columns', dictLimit: 3 })
    const ips = [
      ['10.0.0.1', '10.0.0.2', '10.0.0.1'],
      ['10.0.0.2', '10.0.0.3', null, '10.0.0.4'],
      // past the limit (4 keys > 3): the dictionary starts over, and 10.0.0.1 is sent again
      ['10.0.0.1', '10.0.0.4', '10.0.0.5'],
      ['10.0.0.5', '10.0.0.6', '10.0.0.1', '10.0.0.7'],
      // after the second start over
      ['10.0.0.7', '10.0.0.7'],
    ]
    let ts = 1_000
    const texts = ips.map((block) => block.map((ip) => line(ts++, ip)).join(''))
    // the third block's first line arrives split: its start is the head
    const cut = 10
    const blocks = [
      parse(task(texts[0]!)),
      parse(task(texts[1]!)),
      parse(task(texts[2]!.slice(cut), texts[2]!.slice(0, cut))),
      parse(task(texts[3]!)),
      parse(task(texts[4]!)),
    ]
    expect(decode(blocks)).toEqual(ips)
    expect(blocks.map((b) => b.columns!.dictReset)).toEqual([false, false, true, false, true])
    // each key is sent once per life of the dictionary, in the block that first has it
    expect(blocks.map((b) => b.columns!.dicts[0])).toEqual([
      ['10.0.0.1', '10.0.0.2'],
      ['10.0.0.3', '10.0.0.4'],
      ['10.0.0.1', '10.0.0.4', '10.0.0.5'],
      ['10.0.0.6', '10.0.0.7'],
      ['10.0.0.7'],
    ])
    // the line without an ip is counted missing for the key, in its block only
    expect(blocks.map((b) => b.missing)).toEqual([
      [0, 0],
      [0, 1],
      [0, 0],
      [0, 0],
      [0, 0],
    ])
    expect(Array.from(blocks[2]!.columns!.ts)).toEqual([T0 + 1_007, T0 + 1_008, T0 + 1_009])
    expect(blocks.map((b) => b.lines)).toEqual([3, 4, 3, 4, 2])
  })

  it('keeps one dictionary per parser: a second parser numbers the same keys from 0', () => {
    seq = 0
    const a = blockParser({ control, candidate, mode: 'columns' })
    const b = blockParser({ control, candidate, mode: 'columns' })
    const text = line(1, 'x') + line(2, 'y')
    a(task(line(0, 'y')))
    const fromA = a(task(text)).columns!
    const fromB = b(task(text)).columns!
    expect([Array.from(fromA.keyIds), fromA.dicts[0]]).toEqual([[1, 0], ['x']])
    expect([Array.from(fromB.keyIds), fromB.dicts[0]]).toEqual([
      [0, 1],
      ['x', 'y'],
    ])
  })
})
