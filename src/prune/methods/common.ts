/** What every expert-scoring method of `moe prune` is: a method descriptor with, for statistics methods, its score. */
import type { LayerStats } from '../../calibrate/types.js';
import { fail } from '../../errors.js';
import type { MethodDescriptor } from '../../pipeline/descriptor.js';

export interface ScoreContext {
  numExperts: number;
  /** seeded uniform [0,1) generator (random baseline) */
  rng: () => number;
}

/**
 * needs 'stats': score(layerStats) from a calibration pass of the unpruned model; 'sequential': the kept set is
 * chosen per layer during a forward pass that sees earlier layers already pruned; 'none': no data (random).
 */
/** What a prune method's memory estimate sees: the pass's calibration tokens and the model's shape. */
export interface PruneMemoryContext {
  tokens: number;
  hidden: number;
  experts: number;
  /** reconstruct: calibration tokens sampled per layer (--sample-tokens) */
  sampleTokens: number;
}

export interface PruneMethod extends MethodDescriptor<PruneMemoryContext> {
  needs: 'stats' | 'sequential' | 'none';
  /** per-expert importance, higher = keep (for 'sequential': the seed/fallback score shown in the report) */
  score?(layer: LayerStats | undefined, ctx: ScoreContext): Float64Array;
}

export const perExpert = (n: number, f: (j: number) => number): Float64Array => {
  const out = new Float64Array(n);
  for (let j = 0; j < n; j++) out[j] = f(j);
  return out;
};

export function need(layer: LayerStats | undefined, method: string): LayerStats {
  if (!layer) fail('InvalidStats', `method ${method} needs calibration statistics for every MoE layer`);
  return layer;
}
