/** The request and per-layer report types of `moe prune` (apart from the pipeline, so its helpers import no orchestration). */
import type { z } from 'zod';
import type { Progress } from '../progress.js';
import type { PRUNE_OPTIONS, PruneOptions } from './options.js';
import type { LayerPlan } from './plan.js';
import type { ReconstructOptions } from './reconstruct.js';

/**
 * What a caller gives: the options (src/prune/options.ts, the same for the command line and recipes) plus, for
 * library callers, progress and the reconstruct search's finer knobs.
 */
export type PruneRequest = z.input<typeof PRUNE_OPTIONS> & {
  progress?: Progress;
  /** reconstruct: tokens sampled per layer, subset-enumeration limit, beam width (--sample-tokens / --beam win) */
  reconstruct?: ReconstructOptions;
};
/** The request after validation: every option resolved. */
export type PruneRun = PruneOptions & Omit<PruneRequest, keyof PruneOptions>;

export interface LayerReport extends LayerPlan {
  /** reconstruct: relative output error of the kept set on the token sample, and how it was found */
  relError?: number;
  search?: 'exact' | 'beam';
  subsetsEvaluated?: number;
  /** --refit-router: whether the refit rows were kept, and the layer's output error with own and refit rows */
  refit?: RefitReport;
}

/** --refit-router (src/prune/refit.ts): whether the refit rows were kept, and the layer's output error with own and refit rows */
export interface RefitReport {
  /** the refit rows were written (they lowered the error) */
  applied: boolean;
  /** the blend taken: rows = (1 − alpha)·own + alpha·least squares (0: own rows) */
  alpha: number;
  /** output error with the kept experts' own rows, and with the rows taken (equal when not applied) */
  errorOwnRows: number;
  errorRefit: number;
  /** kept expert -> removed experts whose routing mass it was fitted to receive */
  receives: Record<string, number[]>;
  tokens: number;
}
