import type { Context } from '../context.js'
import { describeSettings } from '../core/config/settings.js'
import { renderTable } from '../ui/table.js'

/** `shieldx locate`: every setting, redacted, and where it came from. Connects to nothing. */
export async function locate(ctx: Context): Promise<void> {
  const settings = describeSettings(ctx.settings(), ctx.io.env)
  if (ctx.out.json) {
    ctx.out.document({ settings })
    return
  }
  ctx.out.result(
    renderTable(
      ['setting', 'value', 'source'],
      settings.map((s) => [s.name, s.value, ctx.out.style('gray', s.source)]),
    ),
  )
}
