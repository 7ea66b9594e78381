import type { Context } from '../context.js'
import { scrubSecrets } from '../core/config/redact.js'
import { checkSettings, describeSettings } from '../core/config/settings.js'
import { EXIT } from '../core/errors.js'
import { renderTable } from '../ui/table.js'

/**
 * `shieldx locate`: every setting, redacted, where it came from, and what is wrong with it as far
 * as can be told offline (exit 2 if anything is). Connects to nothing, writes nothing.
 */
export async function locate(ctx: Context): Promise<void> {
  const resolved = ctx.settings()
  const scrub = (s: string) => scrubSecrets(s, ctx.secretValues())
  const problems = (await checkSettings(resolved)).map((p) => ({
    ...p,
    message: scrub(p.message),
    ...(p.hint ? { hint: scrub(p.hint) } : {}),
  }))
  const settings = describeSettings(resolved, ctx.io.env).map((s) => {
    const own = problems.filter((p) => p.setting === s.name).map((p) => p.message)
    return own.length > 0 ? { ...s, problems: own } : s
  })
  if (problems.length > 0) ctx.exitCode = EXIT.usage
  if (ctx.out.json) {
    ctx.out.document({ settings })
  } else {
    ctx.out.result(
      renderTable(
        ['setting', 'value', 'source'],
        settings.map((s) => [s.name, s.value, ctx.out.style('gray', s.source)]),
      ),
    )
  }
  for (const p of problems) {
    ctx.out.error(`${p.setting}: ${p.message}`)
    if (p.hint) ctx.out.info(`  ${p.hint}`)
  }
}
