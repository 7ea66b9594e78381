import type { Context } from '../context.js'
import { transaction } from '../core/db/tx.js'
import { addRule, getRule, listRules } from '../core/shadow/rule-store.js'
import { formatRef, parseRuleRef, readRuleFile, riskyPatterns } from '../core/shadow/rules.js'
import { renderTable } from '../ui/table.js'

const shadowDb = async (ctx: Context) => (await ctx.shadowDatabase()).pool

export async function add(ctx: Context, files: string[]) {
  const defs = files.map(readRuleFile)
  const db = await shadowDb(ctx)
  // All the files or none: a conflict in the last one leaves the first ones unstored too.
  const results = await transaction(
    db,
    async (client) => {
      const done = []
      for (const def of defs) done.push(await addRule(client, def))
      return done
    },
    { idempotent: true, what: 'storing the rules' },
  )
  const risky = defs.map((d) => riskyPatterns(d))
  risky.forEach((paths, i) => {
    for (const p of paths)
      ctx.out.warn(
        `${formatRef(defs[i]!)} ${p} nests one unbounded repetition in another (as in (a+)+): a crafted input can make it take exponential time, in evaluate and in a WAF running the rule. Rewrite it without the nesting unless a separator makes each repetition unambiguous.`,
      )
  })
  if (ctx.out.json) {
    return ctx.out.document(
      results.map((r, i) => ({
        id: r.rule.id,
        version: r.rule.version,
        created: r.created,
        created_at: r.rule.created_at,
        ...(risky[i]!.length > 0 ? { risky_patterns: risky[i] } : {}),
      })),
    )
  }
  for (const r of results) {
    ctx.out.result(
      r.created
        ? `stored ${formatRef(r.rule)} (${r.rule.definition.type}: ${r.rule.definition.name})`
        : `${formatRef(r.rule)} is already stored with this definition; nothing changed`,
    )
  }
}

export async function list(ctx: Context) {
  const rules = await listRules(await shadowDb(ctx))
  if (ctx.out.json) return ctx.out.document(rules)
  if (rules.length === 0) {
    ctx.out.info("No rules stored yet; add one with 'shieldx rules add FILE'.")
    return
  }
  ctx.out.result(
    renderTable(
      ['rule', 'latest', 'versions', 'type', 'active', 'canary', 'name'],
      rules.map((r) => [
        r.id,
        String(r.latest_version),
        String(r.versions),
        r.type,
        r.active_version === null ? '-' : String(r.active_version),
        r.canary_version === null ? '-' : `${r.canary_version} (${r.canary_percent}%)`,
        r.name,
      ]),
    ),
  )
}

export async function show(ctx: Context, ref: string) {
  const rule = await getRule(await shadowDb(ctx), parseRuleRef(ref, 'RULE'))
  if (ctx.out.json) return ctx.out.document({ ...rule })
  ctx.out.info(`${formatRef(rule)}, stored ${rule.created_at}`)
  ctx.out.result(JSON.stringify(rule.definition, null, 2))
}
