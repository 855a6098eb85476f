/**
 * The options of `moe merge`, declared once (src/pipeline/fields.ts): the command line, recipe stages and library
 * calls are all validated by this schema and `checkMerge`.
 */
import { z } from 'zod';
import { fail } from '../errors.js';
import type { OptionSpec } from '../pipeline/descriptor.js';
import { common, field, int } from '../pipeline/fields.js';
import { KEEP_PER_LAYER } from './allocate.js';
import { DROP_MODES } from './decide.js';
import { ALIGN_METHODS, fromHiddenStates, getAlign, getRouter, GROUPING_METHODS, ROUTER_METHODS, WEIGHTING_METHODS } from './methods.js';
import { MERGE_OPTION_DEFAULTS } from './types.js';

export const DEFAULTS = { grouping: 'msmoe', align: 'weights', weighting: 'frequency', router: 'mean' } as const;

export const MERGE_OPTIONS = z.object({
  model: common.model(),
  out: common.out(),
  groups: field(int(1), { help: 'experts per MoE layer after merging', arg: 'n' }),
  grouping: field(z.enum(GROUPING_METHODS).default(DEFAULTS.grouping), { help: 'how experts are grouped (see Grouping below)', arg: 'm' }),
  align: field(z.enum(ALIGN_METHODS).default(DEFAULTS.align), {
    help: "permute members' hidden units onto the anchor before averaging (see Alignment below)",
    arg: 'm',
  }),
  weighting: field(z.enum(WEIGHTING_METHODS).default(DEFAULTS.weighting), { help: 'member weights in the average (see Weighting below)', arg: 'm' }),
  router: field(z.enum(ROUTER_METHODS).default(DEFAULTS.router), { help: 'new router row per group (see Router rows below)', arg: 'm' }),
  drop: field(z.enum(DROP_MODES).optional(), {
    help: "auto: plan candidates on the calibration text and write the one whose model has the lowest next-token NLL on it: for each of --choose-groupings, the merge decided per layer (drop a group's other members, or prune the layer by REAP or frequency, wherever that lowers the layer's output error) and every group merged as planned; and REAP pruning (report: choice, and decision per layer); never: merge as planned",
    arg: 'm',
    defaultText: 'auto with --calib, never with --stats or --plan',
  }),
  chooseGroupings: field(z.array(z.enum(GROUPING_METHODS)).nonempty().optional(), {
    help: '--drop auto: a grouping whose merges are candidates (decided per layer, and every group merged) beside REAP pruning (repeatable)',
    arg: 'm',
    defaultText: 'every grouping, the --grouping first',
  }),
  keepPerLayer: field(z.enum(KEEP_PER_LAYER).default('uniform'), {
    help: "auto: also report how the same total of experts would be spread over the layers (knapsack over each layer's output-error curve); the checkpoint keeps the same count in every layer (needs --calib)",
    arg: 'm',
  }),
  calib: common.calib('calibration text: sequential merging in one forward pass, each layer measured through the merged layers before it'),
  calibIds: common.calibIds(),
  calibTokens: common.calibTokens(),
  seqLen: common.seqLen(),
  stats: common.stats('saved calibration statistics of the unmerged model (moe calibrate --out); no hidden states, so no activation alignment or router fit'),
  fitSteps: field(int(1).default(MERGE_OPTION_DEFAULTS.fitSteps), { help: 'router fit: optimisation steps', arg: 'n' }),
  fitTokens: field(int(1).default(MERGE_OPTION_DEFAULTS.fitTokens), { help: 'router fit: calibration tokens per layer', arg: 'n' }),
  alignTokens: field(int(1).default(MERGE_OPTION_DEFAULTS.alignTokens), { help: 'activation alignment: routed tokens per group', arg: 'n' }),
  backend: common.backend(),
  threads: common.threads(),
  savePlan: common.savePlan(
    'also write the plan (groups, member weights, permutations and fitted router rows computed from data) to this file; with --dry-run only the plan',
  ),
  plan: common.plan(
    'apply a saved plan (--save-plan) instead of planning: no calibration needed; give the same --groups/--grouping/--align/--weighting/--router (and fit/align options) as the run that saved it',
  ),
  shard: common.shard(
    'layer-parallel job i of n: write only layers l with l % n = i (join the parts with moe assemble); needs --plan or --stats, the same in every job',
  ),
  dropMtp: common.dropMtp(),
  dryRun: common.dryRun('print the plan and the estimated peak memory, write no checkpoint (with --calib this runs the sequential pass)'),
  force: common.force(),
});

export type MergeOptions = z.output<typeof MERGE_OPTIONS>;

/** Combinations, before any file is read. */
export function checkMerge(o: MergeOptions): void {
  if (o.plan && o.savePlan) fail('Usage', 'give --plan FILE (apply a saved plan) or --save-plan FILE, not both');
  if (o.plan && (o.calib || o.stats)) fail('Usage', '--plan applies a saved plan: --calib and --stats are not used with it');
  if (o.calib && o.stats) fail('Usage', 'give --calib FILE or --stats DIR, not both');
  if (!o.calib && !o.stats && !o.plan)
    fail(
      'Usage',
      `merging is data-driven (grouping ${o.grouping} reads routing statistics): give calibration text (--calib FILE), saved statistics (--stats DIR) or a saved plan (--plan FILE)`,
    );
  if (o.plan && o.drop) fail('Usage', '--drop decides while planning: a saved plan (--plan) already holds its decisions, give no --drop with it');
  if (o.keepPerLayer === 'auto' && !o.calib)
    fail('Usage', '--keep-per-layer auto measures each layer on calibration hidden states: give --calib FILE (not --stats or --plan)');
  if (o.chooseGroupings && (o.drop === 'never' || !o.calib))
    fail('Usage', "--choose-groupings names the candidates of --drop auto's whole-model choice: give it with --calib FILE and without --drop never");
  if (o.stats && o.drop === 'auto')
    fail('Usage', '--drop auto measures each layer on calibration hidden states: give --calib FILE (--stats is not enough), or --drop never');
  if (o.stats) {
    // a dry run refuses what the real run refuses: it predicts that run
    if (fromHiddenStates(getAlign(o.align))) fail('Usage', `--align ${o.align} needs calibration hidden states: give --calib FILE (--stats is not enough)`);
    if (fromHiddenStates(getRouter(o.router))) fail('Usage', `--router ${o.router} needs calibration hidden states: give --calib FILE (--stats is not enough)`);
  }
  if (o.shard && o.calib) {
    fail(
      'Usage',
      '--shard needs --plan FILE or --stats DIR: with --calib each layer is merged on the output of the merged layers before it, so one run must plan them all (--calib FILE --dry-run --save-plan FILE, then every job --plan FILE)',
    );
  }
  if (!o.dryRun && !o.out) fail('Usage', '--out DIR is required (or use --dry-run)');
}

export const MERGE_SPEC: OptionSpec<typeof MERGE_OPTIONS> = { options: MERGE_OPTIONS, check: checkMerge };
