import { type Command, Option } from 'commander';
import { createProgress } from '../progress.js';
import { MODES } from '../../decompose/format.js';
import { DEFAULT_MODE, decompose, type DecomposeReport } from '../../decompose/pipeline.js';
import { parseBackendOption } from '../../runtime/backend.js';
import { formatEstimate } from '../../runtime/memory.js';
import { DEFAULT_SVD_SEED } from '../../../kernels/linalg/svd.js';
import { number, shard, wholeNumber } from '../options.js';

export function summary(r: DecomposeReport): string {
  const how = r.allocation === 'uniform' ? 'uniform ranks' : `ranks allocated (${r.optimal ? 'optimal' : 'time limit'}, ${r.solveMs.toFixed(0)} ms)`;
  const lines = [
    `${r.dryRun ? 'plan' : 'decomposed'}: ${r.family}, mode ${r.mode}, ${how}${r.plan?.source === 'file' ? ` from ${r.plan.path}` : ''}${r.shard ? `, shard ${r.shard.index}/${r.shard.count} (layers ${r.shard.layers.join(', ')})` : ''}`,
  ];
  const byLayer = new Map<number, DecomposeReport['units']>();
  for (const u of r.units) byLayer.set(u.layer, [...(byLayer.get(u.layer) ?? []), u]);
  const rms = (xs: number[]) => Math.sqrt(xs.reduce((a, x) => a + x * x, 0) / xs.length);
  for (const [layer, us] of byLayer) {
    const parts = us.map((u) => `${u.id.split('.').slice(1).join('.')}:${u.rank}`);
    let err = '';
    if (us.every((u) => u.relativeError !== undefined)) err = `  rms rel. error ${rms(us.map((u) => u.relativeError!)).toExponential(3)}`;
    else if (us.every((u) => u.predictedError !== undefined)) err = `  rms predicted error ${rms(us.map((u) => u.predictedError!)).toExponential(3)}`;
    lines.push(`  layer ${layer}: ranks ${parts.join(' ')}${err}`);
  }
  const p = r.params;
  lines.push(
    `expert params ${p.expertBefore} -> ${p.expertAfter} (ratio ${p.achievedRatio.toFixed(4)}, budget ${p.budget})${r.output ? `; wrote ${r.output.tensors} tensors, ${(r.output.bytes / 2 ** 20).toFixed(2)} MiB` : ''}`,
  );
  if (r.plan?.saved) lines.push(`plan saved to ${r.plan.saved}`);
  if (r.dryRun) lines.push(formatEstimate(r.memory));
  return lines.join('\n');
}

export function registerDecompose(program: Command): void {
  program
    .command('decompose')
    .description('low-rank experts: SVD factors (plain, whitened by routed activations, shared bases, base + deltas) under a parameter budget')
    .requiredOption('--model <dir>', 'input checkpoint directory')
    .option('--out <dir>', 'output checkpoint directory')
    .requiredOption('--ratio <r>', 'fraction of expert parameters kept, in (0, 1]', number('--ratio'))
    .addOption(
      new Option('--mode <mode>', 'svd (plain), whitened (SVD-LLM, per expert), shared-input, shared-output, base-delta (D²-MoE)')
        .choices([...MODES])
        .default(DEFAULT_MODE),
    )
    .option('--uniform', 'the same parameter fraction in every linear, k = floor(m n R / (m + n)), instead of allocating ranks by truncation loss')
    .option('--materialize', 'write dense weights in the input dtype (an ordinary checkpoint of the family) instead of factors')
    .option('--calib <file>', 'calibration text (needed by every mode but svd)')
    .option('--calib-tokens <n>', 'calibration tokens to use from --calib', wholeNumber('--calib-tokens'))
    .option('--stats <dir>', 'saved calibration statistics (not enough for decompose: it needs Gram matrices)')
    .option('--seed <n>', 'seed of the randomized SVD (used for matrices above 2048 on both sides)', wholeNumber('--seed'), DEFAULT_SVD_SEED)
    .option('--save-plan <file>', 'save the rank plan (rank per unit, tied to this model and these flags); works with --dry-run')
    .option('--plan <file>', 'apply a saved rank plan: no scoring, no allocation (same model and flags as the run that saved it)')
    .option(
      '--shard <i/n>',
      'layer-parallel job i of n: factorise and write only layers l with l % n = i (join the parts with moe assemble); needs --plan unless --uniform',
      shard('--shard'),
    )
    .option('--backend <name>', 'tensor backend: auto | tensorflow | wasm | cpu', parseBackendOption, 'auto')
    .option('--alloc-seconds <s>', 'time limit of the rank allocation solver', number('--alloc-seconds'))
    .option('--dry-run', 'print the plan and the estimated peak memory, write nothing (no factorisation at the planned ranks)')
    .option('--force', 'replace an existing --out')
    .option('--json', 'print the JSON report on stdout')
    .option('--quiet', 'no progress output')
    .action(async (o: Record<string, any>) => {
      const progress = createProgress({ quiet: o.quiet, json: o.json });
      const { initBackend } = await import('../../runtime/backend.js');
      await initBackend(o.backend);
      const report = await decompose({
        model: o.model,
        out: o.out,
        ratio: o.ratio,
        mode: o.mode,
        uniform: !!o.uniform,
        materialize: !!o.materialize,
        calib: o.calib,
        calibTokens: o.calibTokens,
        stats: o.stats,
        force: !!o.force,
        dryRun: !!o.dryRun,
        allocSeconds: o.allocSeconds,
        seed: o.seed,
        plan: o.plan,
        savePlan: o.savePlan,
        shard: o.shard,
        progress,
      });
      if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
      else if (!o.quiet || o.dryRun) process.stdout.write(summary(report) + '\n');
    });
}
