/** `moe prune` as a command descriptor: its options (options.ts), methods, worked examples, run and report text. */
import { command } from '../pipeline/descriptor.js';
import { formatEstimate } from '../runtime/memory.js';
import { PRUNE_METHODS } from './methods.js';
import { checkPrune, PRUNE_OPTIONS } from './options.js';
import type { PruneReport } from './pipeline.js';

const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(2)} MiB`;

export function pruneSummary(r: PruneReport): string {
  const kept = r.keepPerLayer?.written
    ? `keep ${r.keepPerLayer.counts.join(' ')} of ${r.numExperts} experts by layer (${r.keep} on average)`
    : `keep ${r.keep} of ${r.numExperts} experts per layer`;
  const lines = [`${r.dryRun ? 'plan' : 'pruned'}: ${r.family}, ${r.method}, ${kept} (top-k ${r.topK})`];
  for (const l of r.layers) {
    const err = l.relError !== undefined ? `  rel. error ${l.relError.toExponential(3)} (${l.search})` : '';
    const f = l.refit;
    const refit = f
      ? `  router ${f.applied ? `refit (alpha ${f.alpha})` : 'own rows'}: error ${f.errorRefit.toFixed(4)}${f.applied ? ` (own rows ${f.errorOwnRows.toFixed(4)})` : ''}`
      : '';
    lines.push(`  layer ${l.layer}: keep [${l.kept.join(' ')}] remove [${l.removed.join(' ')}]${err}${refit}`);
  }
  const k = r.keepPerLayer;
  if (k) {
    lines.push(
      `keep-per-layer auto (${k.written ? 'written' : 'report only'}): counts ${k.counts.join(' ')} for the same ${k.total} experts; summed layer error ${k.errorAllocated.toFixed(4)} vs ${k.errorUniform.toFixed(4)} at ${k.uniform} per layer`,
    );
  }
  const { before, after, predicted } = r.sizes;
  lines.push(
    `size ${mib(before.bytes)} -> ${mib(after.bytes)}${predicted ? ' (predicted)' : ''}; expert params ${before.expertParams} -> ${after.expertParams}`,
  );
  if (r.dryRun) lines.push(formatEstimate(r.memory));
  return lines.join('\n');
}

export const PRUNE_COMMAND = command({
  name: 'prune',
  summary: "remove experts: the same count in every MoE layer, written in the family's own format",
  options: PRUNE_OPTIONS,
  check: checkPrune,
  stage: true,
  methods: [{ option: '--method', title: 'Methods', methods: PRUNE_METHODS }],
  examples: [
    'moe prune --model ./mixtral --calib calib.txt --ratio 0.75 --out ./mixtral-6e        # REAP scores, 8 -> 6 experts',
    'moe prune --model ./mixtral --stats ./stats --keep 6 --method frequency --out ./m-6e  # from moe calibrate --out ./stats',
    'moe prune --model ./mixtral --calib calib.txt --keep 6 --dry-run --save-plan plan.json  # then: --plan plan.json --shard i/n',
  ],
  async run(o) {
    const { prune } = await import('./pipeline.js');
    return prune(o);
  },
  print: (r, o) => (!o.quiet || o.dryRun ? pruneSummary(r) : undefined),
});
