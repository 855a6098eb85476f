/**
 * The options of `moe decompose`, declared once (src/pipeline/fields.ts): the command line, recipe stages and
 * library calls are all validated by this schema and `checkDecompose`.
 */
import { z } from 'zod';
import { DEFAULT_SVD_SEED } from '../../kernels/linalg/svd.js';
import { fail } from '../errors.js';
import type { OptionSpec } from '../pipeline/descriptor.js';
import { common, field, int } from '../pipeline/fields.js';
import type { DecomposeMode } from './format.js';
import { getMode, MODE_NAMES } from './methods.js';
import { DEFAULT_ALLOC_SECONDS } from './plan.js';

export const DEFAULT_MODE: DecomposeMode = 'whitened';

export const DECOMPOSE_OPTIONS = z.object({
  model: common.model(),
  out: common.out(),
  ratio: field(z.number().gt(0).max(1), { help: 'fraction of expert parameters kept', arg: 'r' }),
  mode: field(z.enum(MODE_NAMES).default(DEFAULT_MODE), { help: 'factorisation (see Modes below)', arg: 'mode' }),
  uniform: field(z.boolean().default(false), {
    help: 'the same parameter fraction in every linear, k = floor(m n R / (m + n)), instead of allocating ranks by truncation loss',
  }),
  materialize: field(z.boolean().default(false), {
    help: 'write dense weights in the input dtype (an ordinary checkpoint of the family) instead of factors',
  }),
  calib: common.calib('calibration text (needed by every mode but svd)'),
  calibIds: common.calibIds(),
  calibTokens: common.calibTokens(),
  seqLen: common.seqLen(),
  stats: common.stats('saved calibration statistics (not enough for decompose: it needs Gram matrices)'),
  seed: field(int(0).default(DEFAULT_SVD_SEED), { help: 'seed of the randomized SVD (used for matrices above 2048 on both sides)', arg: 'n' }),
  allocSeconds: field(z.number().positive().optional(), {
    help: 'time limit of the rank allocation solver, seconds',
    arg: 's',
    defaultText: String(DEFAULT_ALLOC_SECONDS),
  }),
  backend: common.backend(),
  threads: common.threads(),
  savePlan: common.savePlan('save the rank plan (rank per unit, tied to this model and these flags); works with --dry-run'),
  plan: common.plan('apply a saved rank plan: no scoring, no allocation (same model and flags as the run that saved it)'),
  shard: common.shard(
    'layer-parallel job i of n: factorise and write only layers l with l % n = i (join the parts with moe assemble); needs --plan unless --uniform',
  ),
  dryRun: common.dryRun('print the plan and the estimated peak memory, write nothing (no factorisation at the planned ranks)'),
  force: common.force(),
});

export type DecomposeOptions = z.output<typeof DECOMPOSE_OPTIONS>;

/** Combinations, before any file is read. `windows` / `grams`: calibration a library caller already holds. */
export function checkDecompose(o: DecomposeOptions & { windows?: unknown; grams?: unknown }): void {
  const mode = getMode(o.mode);
  if (o.calib && o.stats) fail('Usage', 'give --calib FILE or --stats DIR, not both');
  if (o.stats) fail('Usage', 'decompose needs the Gram matrices of routed activations, which saved statistics do not hold: give --calib FILE');
  if (mode.needs !== 'none' && !o.calib && !o.windows && !o.grams)
    fail('Usage', `--mode ${o.mode} whitens by the activations each expert sees: give calibration text (--calib FILE), or use --mode svd`);
  if (o.plan && o.savePlan) fail('Usage', "give --plan FILE (apply a saved plan) or --save-plan FILE (save this run's plan), not both");
  if (o.shard && !o.plan && !o.uniform) {
    fail(
      'Usage',
      '--shard needs --plan FILE: ranks are allocated over all layers at once, so compute the plan once (--save-plan FILE, e.g. with --dry-run) and give it to every job; or use --uniform',
    );
  }
  if (!o.dryRun && !o.out) fail('Usage', '--out DIR is required (or use --dry-run)');
}

export const DECOMPOSE_SPEC: OptionSpec<typeof DECOMPOSE_OPTIONS> = { options: DECOMPOSE_OPTIONS, check: checkDecompose };
