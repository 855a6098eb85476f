import type { Command } from 'commander';
import { createProgress } from '../progress.js';
import { formatEstimate, type MemoryEstimate } from '../../runtime/memory.js';
import { runRecipe, type RunReport } from '../../recipe/run.js';

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

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('run a recipe: chained stages (e.g. prune -> quantize), resumable, one report')
    .argument('<recipe>', 'recipe file (.yaml, .yml or .json)')
    .option('--model <dir>', 'input checkpoint (overrides the recipe)')
    .option('--out <dir>', 'output checkpoint (overrides the recipe)')
    .option('--dry-run', 'validate the whole recipe and plan the first stage, write nothing')
    .option('--force', 'replace an existing output')
    .option('--json', 'print the JSON report on stdout')
    .option('--quiet', 'no progress output')
    .addHelpText(
      'after',
      `
Example recipe (paths relative to the recipe file):
  model: ./mixtral
  out: ./mixtral-6e-2.5bit
  calib: ./calib.txt
  calib_tokens: 16384
  stages:
    - prune: { ratio: 0.75, method: reap }
    - quantize: { bits: 2.5 }
  eval: { data: ./heldout.txt }

A killed run restarted with the same command skips the stages it already finished.`,
    )
    .action(async (recipe: string, o: Record<string, any>) => {
      const progress = createProgress({ quiet: o.quiet, json: o.json });
      const report = await runRecipe({ recipe, model: o.model, out: o.out, force: !!o.force, dryRun: !!o.dryRun, progress });
      if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
      else if (!o.quiet) process.stdout.write(summary(report) + '\n');
    });
}
