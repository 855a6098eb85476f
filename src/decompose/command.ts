/** `moe decompose` as a command descriptor: its options (options.ts), modes, worked examples, run and report text. */
import { command } from '../pipeline/descriptor.js';
import { formatEstimate } from '../runtime/memory.js';
import { MODE_METHODS } from './methods.js';
import { checkDecompose, DECOMPOSE_OPTIONS } from './options.js';
import type { DecomposeReport } from './pipeline.js';

export function decomposeSummary(r: DecomposeReport): string {
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

export const DECOMPOSE_COMMAND = command({
  name: 'decompose',
  summary: 'low-rank experts: SVD factors (plain, whitened by routed activations, shared bases, base + deltas) under a parameter budget',
  options: DECOMPOSE_OPTIONS,
  check: checkDecompose,
  stage: true,
  methods: [{ option: '--mode', title: 'Modes', methods: MODE_METHODS }],
  examples: [
    'moe decompose --model ./mixtral --calib calib.txt --ratio 0.6 --out ./mixtral-lr60          # whitened, ranks allocated',
    'moe decompose --model ./mixtral --ratio 0.5 --mode svd --uniform --materialize --out ./m-svd  # no calibration, dense output',
    'moe decompose --model ./mixtral --calib calib.txt --ratio 0.6 --dry-run --save-plan plan.json  # then: --plan plan.json --shard i/n',
  ],
  async run(o) {
    const { decompose } = await import('./pipeline.js');
    return decompose(o);
  },
  print: (r, o) => (!o.quiet || o.dryRun ? decomposeSummary(r) : undefined),
});
