/** `moe merge` as a command descriptor: its options (options.ts), choices, worked examples, run and report text. */
import { command } from '../pipeline/descriptor.js';
import { formatEstimate } from '../runtime/memory.js';
import { MERGE_METHODS } from './methods.js';
import { checkMerge, MERGE_OPTIONS } from './options.js';
import type { MergeReport } from './pipeline.js';

const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(2)} MiB`;

export function mergeSummary(r: MergeReport): string {
  const c = r.choices;
  const lines = [
    `${r.dryRun ? 'plan' : 'merged'}: ${r.family}, ${r.numExperts} -> ${r.groups} experts per layer (top-k ${r.topK}); ` +
      `grouping ${c.grouping}, align ${c.align}, weighting ${c.weighting}, router ${c.router} ` +
      `(${r.mode}, ${r.calibration.tokens} calibration tokens${r.calibration.source === 'plan' ? `, from plan ${r.calibration.path}` : ''})`,
  ];
  for (const l of r.layers) {
    const groups = l.groups.map((g) => (g.members.length === 1 ? `${g.anchor}` : `{${g.members.map((m, i) => `${m}:${g.weights[i]!.toFixed(2)}`).join(' ')}}`));
    const kl = l.router.kl !== undefined ? `  router KL ${l.router.kl.toFixed(4)} (mean rows ${l.router.klMeanRows!.toFixed(4)})` : '';
    const d = l.decision;
    // what --drop auto chose, with the layer's output error of the choice and of the alternatives
    const dec = d
      ? `  ${d.choice} (error ${d.error.toFixed(4)}; merge ${d.errors.merge.toFixed(4)}, REAP ${d.errors.reap.toFixed(4)}, frequency ${d.errors.frequency.toFixed(4)})`
      : '';
    lines.push(`  layer ${l.layer}: ${groups.join(' ')}${kl}${dec}`);
  }
  const k = r.keepPerLayer;
  if (k) {
    lines.push(
      `keep-per-layer auto (report only): counts ${k.counts.join(' ')} for the same ${k.total} experts; summed layer error ${k.errorAllocated.toFixed(4)} vs ${k.errorUniform.toFixed(4)} at ${k.uniform} per layer`,
    );
  }
  const { before, after, predicted } = r.sizes;
  lines.push(
    `size ${mib(before.bytes)} -> ${mib(after.bytes)}${predicted ? ' (predicted)' : ''}; expert params ${before.expertParams} -> ${after.expertParams}`,
  );
  if (r.savedPlan) lines.push(`plan saved to ${r.savedPlan}`);
  if (r.shard) lines.push(`shard ${r.shard.index}/${r.shard.count}: layers l with l % ${r.shard.count} = ${r.shard.index} (join the parts with moe assemble)`);
  if (r.dryRun) lines.push(formatEstimate(r.memory));
  return lines.join('\n');
}

export const MERGE_COMMAND = command({
  name: 'merge',
  summary: "merge experts into N per MoE layer (frequency-weighted, neuron-aligned), written in the family's own format",
  options: MERGE_OPTIONS,
  check: checkMerge,
  stage: true,
  methods: MERGE_METHODS,
  examples: [
    'moe merge --model ./mixtral --calib calib.txt --groups 6 --out ./mixtral-6e               # sequential; merge or drop per group (--drop auto)',
    'moe merge --model ./mixtral --stats ./stats --groups 4 --grouping hierarchical --out ./m-4e  # no forward pass',
    'moe merge --model ./mixtral --calib calib.txt --groups 4 --align activations --router fit --out ./m-4e-fit',
  ],
  async run(o) {
    const { merge } = await import('./pipeline.js');
    return merge(o);
  },
  print: (r, o) => (!o.quiet || o.dryRun ? mergeSummary(r) : undefined),
});
