import { z } from 'zod';
import { command } from '../../pipeline/descriptor.js';
import { common, field } from '../../pipeline/fields.js';
import { parseOptions } from '../../pipeline/validate.js';
import type { RunReport } from '../../recipe/run.js';
import { formatEstimate, type MemoryEstimate } from '../../runtime/memory.js';

const RUN_OPTIONS = z.object({
  model: field(z.string().min(1).optional(), { help: 'input checkpoint (overrides the recipe)', arg: 'dir', recipe: false }),
  out: field(z.string().min(1).optional(), { help: 'output checkpoint (overrides the recipe)', arg: 'dir', recipe: false }),
  dryRun: common.dryRun('validate every stage as the real run will (options, ranges, combinations, paths, output) and plan the first, write nothing'),
  force: common.force('replace an existing output'),
});

function summary(r: RunReport): string {
  const lines = [`${r.dryRun ? 'plan' : 'ran'} ${r.stages.length} stage(s): ${r.model} -> ${r.out} (${r.seconds.toFixed(1)}s)`];
  for (const s of r.stages) {
    lines.push(`  ${s.index + 1}. ${s.kind}${s.resumed ? ' (resumed: finished earlier)' : ''} ${s.seconds ? `${s.seconds.toFixed(1)}s` : ''}`);
  }
  const first = r.stages[0]?.report as { memory?: MemoryEstimate } | undefined;
  if (r.dryRun && first?.memory) lines.push(`  stage 1: ${formatEstimate(first.memory)} (later stages are estimated when their input exists)`);
  const ev = r.eval as { perplexity?: number; base?: { perplexity: number; meanKl: number } } | undefined;
  if (ev?.perplexity !== undefined) {
    lines.push(`  eval: perplexity ${ev.perplexity.toFixed(3)}${ev.base ? ` (base ${ev.base.perplexity.toFixed(3)}, KL ${ev.base.meanKl.toFixed(4)})` : ''}`);
  }
  return lines.join('\n');
}

export const RUN_COMMAND = command({
  name: 'run',
  summary: 'run a recipe: chained stages (e.g. prune -> quantize), resumable, one report',
  args: [{ name: 'recipe', help: 'recipe file (.yaml, .yml or .json)' }],
  options: RUN_OPTIONS,
  examples: ['moe run recipe.yaml', 'moe run recipe.yaml --dry-run    # every stage validated before anything runs'],
  notes: `Example recipe (paths relative to the recipe file; a stage takes the options of its command, snake_case):
  model: ./mixtral
  out: ./mixtral-6e-2.5bit
  calib: ./calib.txt
  calib_tokens: 16384
  stages:
    - prune: { ratio: 0.75, method: reap }
    - quantize: { bits: 2.5, group_size: 64 }
  eval: { data: ./heldout.txt }

A killed run restarted with the same command skips the stages it already finished.`,
  async run(raw, { args, progress }) {
    const o = parseOptions({ options: RUN_OPTIONS }, raw);
    const { runRecipe } = await import('../../recipe/run.js');
    return runRecipe({
      recipe: args[0]!,
      ...(o.model !== undefined ? { model: o.model } : {}),
      ...(o.out !== undefined ? { out: o.out } : {}),
      force: o.force,
      dryRun: o.dryRun,
      ...(progress ? { progress } : {}),
    });
  },
  print: (r, o) => (o.quiet ? undefined : summary(r)),
});
