/**
 * Expert-scoring methods for `moe prune`, one small registered unit each in a flat registry (mergekit's
 * registry.py, llm-compressor's requires_calibration_data flag). A method either scores experts from calibration
 * statistics (higher = keep), or, for `reconstruct`, chooses the kept set itself inside a forward pass
 * (src/prune/reconstruct.ts); `random` is the measurement baseline.
 */
import type { LayerStats } from '../calibrate/types.js';
import { fail } from '../errors.js';

export interface ScoreContext {
  numExperts: number;
  /** seeded uniform [0,1) generator (random baseline) */
  rng: () => number;
}

export interface PruneMethod {
  name: string;
  description: string;
  paper?: string;
  requiresCalibration: boolean;
  /**
   * stats: score(layerStats) from a calibration pass of the unpruned model;
   * forward: the kept set is chosen per layer during a forward pass that sees earlier layers already pruned;
   * none: no data (random)
   */
  kind: 'stats' | 'forward' | 'none';
  /** per-expert importance, higher = keep (for kind 'forward': the seed/fallback score shown in the report) */
  score?(layer: LayerStats | undefined, ctx: ScoreContext): Float64Array;
}

const perExpert = (n: number, f: (j: number) => number): Float64Array => {
  const out = new Float64Array(n);
  for (let j = 0; j < n; j++) out[j] = f(j);
  return out;
};

function need(layer: LayerStats | undefined, method: string): LayerStats {
  if (!layer) fail('InvalidStats', `method ${method} needs calibration statistics for every MoE layer`);
  return layer;
}

export const PRUNE_METHODS: readonly PruneMethod[] = [
  {
    name: 'reap',
    description: 'router-weighted expert activation: mean over routed tokens of g_j(x)·‖f_j(x)‖₂',
    paper: 'https://arxiv.org/abs/2510.13999',
    requiresCalibration: true,
    kind: 'stats',
    score(layer) {
      const s = need(layer, 'reap');
      return perExpert(s.numExperts, (j) => (s.count[j] > 0 ? s.reapSum[j] / s.count[j] : 0));
    },
  },
  {
    name: 'frequency',
    description: 'tokens with the expert among their top-k (SEER-MoE heavy hitters)',
    paper: 'https://arxiv.org/abs/2404.05089',
    requiresCalibration: true,
    kind: 'stats',
    score(layer) {
      const s = need(layer, 'frequency');
      return perExpert(s.numExperts, (j) => s.count[j]);
    },
  },
  {
    name: 'gate-mass',
    description: 'mean router probability p_j(x) over all tokens (Expert Drop)',
    paper: 'https://arxiv.org/abs/2406.02500',
    requiresCalibration: true,
    kind: 'stats',
    score(layer) {
      const s = need(layer, 'gate-mass');
      return perExpert(s.numExperts, (j) => (s.tokens > 0 ? s.probMass[j] / s.tokens : 0));
    },
  },
  {
    name: 'easy-ep',
    description: 'output-aware token contribution: Σ g_j‖f_j‖·max(1 − cos(h_before, h_after), 0) (EASY-EP)',
    paper: 'https://arxiv.org/abs/2504.06792',
    requiresCalibration: true,
    kind: 'stats',
    score(layer) {
      const s = need(layer, 'easy-ep');
      return perExpert(s.numExperts, (j) => s.easyEpSum[j]);
    },
  },
  {
    name: 'reconstruct',
    description:
      'kept set minimising ‖F(X) − F_S(X)‖_F of the MoE block output, routing redone among kept experts (exact for few subsets, else beam search seeded by REAP)',
    paper: 'https://arxiv.org/abs/2402.14800',
    requiresCalibration: true,
    kind: 'forward',
  },
  {
    name: 'random',
    description: 'uniformly random experts (baseline; --seed)',
    requiresCalibration: false,
    kind: 'none',
    score(_layer, ctx) {
      return perExpert(ctx.numExperts, () => ctx.rng());
    },
  },
];

export function methodNames(): string[] {
  return PRUNE_METHODS.map((m) => m.name);
}

export function getMethod(name: string): PruneMethod {
  const m = PRUNE_METHODS.find((x) => x.name === name);
  if (!m) fail('Usage', `unknown pruning method '${name}' (choose one of: ${methodNames().join(', ')})`);
  return m;
}
