/**
 * `--keep-per-layer auto` (prune and merge): how the same total expert budget would be spread over the layers if
 * the count could differ per layer (dead experts in one layer, all live in another). Every loader requires the same
 * count in every layer, so by default this only reports what it would gain at the same total.
 *
 * Each layer's error curve err_l(n) is the MoE block's output error on calibration tokens (src/merge/decide.ts's
 * LayerError) when it keeps its n best experts by the method's score (REAP saliency for merge) with their own router
 * rows, for n from top-k to E. The allocation minimises Σ_l err_l(n_l) subject to Σ_l n_l = L·N by dynamic
 * programming over layers (an exact knapsack: L·E states per layer). Both sums are reported, with the counts.
 */
import type { RouterWeights } from './router.js';
import { type LayerError, topExperts } from './decide.js';
import type { SwiGLUWeights } from '../runtime/api.js';

export const KEEP_PER_LAYER = ['uniform', 'auto'] as const;
export type KeepPerLayer = (typeof KEEP_PER_LAYER)[number];

export interface AllocationReport {
  /** experts in all MoE layers together: L x N */
  total: number;
  uniform: number;
  /** per MoE layer, the count the allocation would keep */
  counts: number[];
  layers: number[];
  /** Σ over layers of the relative output error: every layer at N, and at the allocated counts */
  errorUniform: number;
  errorAllocated: number;
  /** per layer: err(n) for n = minCount .. numExperts */
  curves: number[][];
  minCount: number;
  written: false;
  note: string;
}

/** err(n) for n = min .. E: the layer keeping its n best experts by `score`, own router rows. */
export function errorCurve(le: LayerError, score: Float64Array, experts: readonly SwiGLUWeights[], router: RouterWeights, H: number, min: number): number[] {
  const E = experts.length;
  const curve: number[] = [];
  for (let n = min; n <= E; n++) {
    const kept = topExperts(score, n);
    curve.push(
      n === E
        ? 0
        : le.error(
            kept.map((j) => ({
              key: `e${j}`,
              expert: experts[j]!,
              row: router.w.subarray(j * H, (j + 1) * H),
              ...(router.bias ? { bias: router.bias[j] } : {}),
              ...(router.correctionBias ? { corr: router.correctionBias[j] } : {}),
            })),
          ),
    );
  }
  return curve;
}

/** Counts n_l in [min, min + curve length − 1] with Σ n_l = total minimising Σ err_l(n_l) (exact DP). */
export function allocate(curves: readonly number[][], total: number, min: number): number[] {
  const L = curves.length;
  const spare = total - L * min;
  if (spare < 0) throw new RangeError(`allocate: ${total} experts cannot give ${L} layers ${min} each`);
  // best[l][s]: least error of layers 0..l-1 using s spare experts beyond the minimum
  let best = new Float64Array(spare + 1).fill(Infinity);
  best[0] = 0;
  const choice: Int32Array[] = [];
  for (let l = 0; l < L; l++) {
    const c = curves[l]!;
    const next = new Float64Array(spare + 1).fill(Infinity);
    const ch = new Int32Array(spare + 1).fill(-1);
    for (let s = 0; s <= spare; s++) {
      if (!Number.isFinite(best[s]!)) continue;
      for (let extra = 0; extra < c.length && s + extra <= spare; extra++) {
        const v = best[s]! + c[extra]!;
        // ties to the smaller extra: a deterministic, uniform-leaning answer
        if (v < next[s + extra]!) {
          next[s + extra] = v;
          ch[s + extra] = extra;
        }
      }
    }
    choice.push(ch);
    best = next;
  }
  if (!Number.isFinite(best[spare]!)) throw new RangeError(`allocate: ${total} experts do not fit ${L} layers of at most ${min + curves[0]!.length - 1}`);
  const counts = new Array<number>(L);
  let s = spare;
  for (let l = L - 1; l >= 0; l--) {
    const extra = choice[l]![s]!;
    counts[l] = min + extra;
    s -= extra;
  }
  return counts;
}

export function allocationReport(layers: number[], curves: number[][], uniform: number, min: number): AllocationReport {
  const total = uniform * layers.length;
  const counts = allocate(curves, total, min);
  const errorUniform = curves.reduce((a, c) => a + c[uniform - min]!, 0);
  const errorAllocated = curves.reduce((a, c, l) => a + c[counts[l]! - min]!, 0);
  return {
    total,
    uniform,
    counts,
    layers,
    errorUniform,
    errorAllocated,
    curves,
    minCount: min,
    written: false,
    note: 'report only: the checkpoint keeps the same count in every layer (every loader requires it)',
  };
}
