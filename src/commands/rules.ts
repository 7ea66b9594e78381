import type { Context } from '../context.js'
import { transaction } from '../core/db/tx.js'
import { addRule, getRule, listRules } from '../core/shadow/rule-store.js'
import { formatRef, parseRuleRef, readRuleFile } from '../core/shadow/rules.js'
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
  if (ctx.out.json) {
    return ctx.out.document(
      results.map((r) => ({
        id: r.rule.id,
        version: r.rule.version,
        created: r.created,
        created_at: r.rule.created_at,
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
