/**
 * The options of `moe prune`, declared once (src/pipeline/fields.ts): the command line, recipe stages and
 * library calls are all validated by this schema and `checkPrune`.
 */
import { z } from 'zod';
import { KEEP_PER_LAYER } from '../merge/allocate.js';
import { fail } from '../errors.js';
import type { OptionSpec } from '../pipeline/descriptor.js';
import { common, field, int } from '../pipeline/fields.js';
import { getMethod, PRUNE_METHODS } from './methods.js';

export const DEFAULT_METHOD = 'reap';
/** reconstruct's search: tokens sampled per layer, exhaustive-search limit, beam width, ... (src/prune/reconstruct.ts) */
export const RECONSTRUCT_DEFAULTS = { maxTokens: 2048, exactLimit: 5000, beam: 2, searchTokens: 512, swapRounds: 1 } as const;

const names = PRUNE_METHODS.map((m) => m.name) as [string, ...string[]];

export const PRUNE_OPTIONS = z.object({
  model: common.model(),
  out: common.out(),
  keep: field(int(1).optional(), { help: 'experts kept per MoE layer (or --ratio)', arg: 'n' }),
  ratio: field(z.number().gt(0).max(1).optional(), { help: 'fraction of experts kept, round(R x experts) (0.75 removes a quarter)', arg: 'r' }),
  method: field(z.enum(names).default(DEFAULT_METHOD), { help: 'expert score (see Methods below)', arg: 'name' }),
  calib: common.calib('calibration text, one document or sentence per line (data-driven methods)'),
  calibIds: common.calibIds(),
  calibTokens: common.calibTokens(),
  seqLen: common.seqLen(),
  stats: common.stats(),
  seed: field(z.number().int().default(0), { help: 'seed of --method random', arg: 'n' }),
  sampleTokens: field(int(1).default(RECONSTRUCT_DEFAULTS.maxTokens), { help: 'reconstruct: calibration tokens sampled per layer', arg: 'n' }),
  beam: field(int(1).default(RECONSTRUCT_DEFAULTS.beam), { help: 'reconstruct: beam width when subsets are too many to enumerate', arg: 'n' }),
  refitRouter: field(z.boolean().default(false), {
    help: "refit the kept experts' router rows by least squares on calibration hidden states so they receive the removed experts' routing mass; kept per layer only where it lowers the layer's output error (needs --calib)",
  }),
  keepPerLayer: field(z.enum(KEEP_PER_LAYER).default('uniform'), {
    help: "auto: also report how the same total of experts would be spread over the layers (knapsack over each layer's output-error curve when keeping its best experts by the method's score); the checkpoint keeps the same count in every layer unless --write-per-layer (needs --calib)",
    arg: 'm',
  }),
  writePerLayer: field(z.boolean().default(false), {
    help: "with --keep-per-layer auto: write the allocated counts (layer l keeps its n_l best experts) in moe's own per-layer format (model_type moe_perlayer_<family>), which stock loaders refuse; moe eval and the other moe commands read it",
  }),
  backend: common.backend('tensor backend for data-driven methods'),
  threads: common.threads(),
  savePlan: common.savePlan('also write the kept sets to this plan file (with --dry-run: only the plan)'),
  plan: common.plan('apply the kept sets of a saved plan (--save-plan) instead of scoring: every --shard job of one run takes the same file'),
  shard: common.shard(
    'layer-parallel job i of n: write only layers l with l % n = i (join the parts with moe assemble; use the same --stats, --plan or --seed in every job)',
  ),
  dropMtp: common.dropMtp(),
  dryRun: common.dryRun('print the plan, write nothing'),
  force: common.force(),
});

export type PruneOptions = z.output<typeof PRUNE_OPTIONS>;

/** Combinations, before any file is read. */
export function checkPrune(o: PruneOptions): void {
  const method = getMethod(o.method);
  if ((o.keep === undefined) === (o.ratio === undefined)) fail('Usage', 'give exactly one of --keep N or --ratio R');
  if (o.calib && o.stats) fail('Usage', 'give --calib FILE or --stats DIR, not both');
  if (o.plan && o.savePlan) fail('Usage', 'give --plan FILE (apply a saved plan) or --save-plan FILE, not both');
  if (o.plan && (o.calib || o.stats)) fail('Usage', '--plan applies saved kept sets: --calib and --stats are not used with it');
  if (!o.plan) {
    if (method.needs !== 'none' && !o.calib && !o.stats) {
      fail('Usage', `method ${method.name} is data-driven: give calibration text (--calib FILE) or saved statistics (--stats DIR)`);
    }
    if (method.needs === 'sequential' && !o.calib) {
      fail('Usage', `method ${method.name} re-runs the forward pass on calibration hidden states: give --calib FILE (--stats is not enough)`);
    }
  }
  if (o.keepPerLayer === 'auto' && (o.plan || !o.calib))
    fail('Usage', '--keep-per-layer auto measures each layer on calibration hidden states: give --calib FILE (not --stats or --plan)');
  if (o.writePerLayer && o.keepPerLayer !== 'auto')
    fail('Usage', '--write-per-layer writes the counts --keep-per-layer auto allocates: give --keep-per-layer auto');
  // the refit and the saved plan are made for the uniform kept sets, before the allocation
  if (o.writePerLayer && o.refitRouter) fail('Usage', '--write-per-layer and --refit-router cannot be combined (the refit is fitted to the uniform kept sets)');
  if (o.writePerLayer && o.savePlan) fail('Usage', '--write-per-layer and --save-plan cannot be combined (a plan keeps the same count in every layer)');
  if (o.refitRouter && (o.plan || !o.calib))
    fail('Usage', '--refit-router fits router rows on calibration hidden states in a forward pass: give --calib FILE (not --stats or --plan)');
  if (!o.dryRun && !o.out) fail('Usage', '--out DIR is required (or use --dry-run)');
}

export const PRUNE_SPEC: OptionSpec<typeof PRUNE_OPTIONS> = { options: PRUNE_OPTIONS, check: checkPrune };
