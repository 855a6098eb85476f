/** What grouping and weighting read about a layer's experts: from saved statistics, or measured inside a forward pass. */
import type { LayerStats } from '../calibrate/types.js';
import type { MoeLayerInput, SwiGLUWeights } from '../runtime/api.js';
import type { LayerSignals } from './types.js';

export function signalsFromStats(ls: LayerStats): LayerSignals {
  const E = ls.numExperts;
  const H = ls.hidden;
  const saliency = new Float64Array(E);
  const meanOutput = new Float64Array(E * H);
  for (let e = 0; e < E; e++) {
    const c = ls.count[e];
    if (c <= 0) continue;
    saliency[e] = ls.reapSum[e] / c;
    for (let h = 0; h < H; h++) meanOutput[e * H + h] = ls.outputSum[e * H + h] / c;
  }
  return {
    numExperts: E,
    hidden: H,
    count: ls.count,
    saliency,
    meanOutput: ls.outputSum.length === E * H ? meanOutput : undefined,
    logitSample: ls.logitSampleRows > 0 ? ls.logitSample : undefined,
    logitRows: ls.logitSampleRows,
  };
}

/**
 * One layer's signals measured on the hidden states the hook sees: counts and gates from the routing, expert
 * outputs on their routed tokens (REAP saliency, mean output), and the router logits of all tokens.
 */
export function signalsFromInput(
  input: Pick<MoeLayerInput, 'T' | 'hidden' | 'x' | 'logits' | 'routing' | 'experts'>,
  expert: (w: SwiGLUWeights, x: Float32Array, T: number) => Float32Array,
): LayerSignals {
  const { T, hidden: H, routing } = input;
  const E = input.experts.length;
  const k = routing.k;
  const count = new Float64Array(E);
  const saliency = new Float64Array(E);
  const meanOutput = new Float64Array(E * H);
  const rows: number[][] = Array.from({ length: E }, () => []);
  const gates: number[][] = Array.from({ length: E }, () => []);
  for (let t = 0; t < T; t++) {
    for (let s = 0; s < k; s++) {
      const e = routing.idx[t * k + s];
      rows[e].push(t);
      gates[e].push(routing.w[t * k + s]);
    }
  }
  for (let e = 0; e < E; e++) {
    const n = rows[e].length;
    count[e] = n;
    if (n === 0) continue;
    const xe = new Float32Array(n * H);
    rows[e].forEach((t, i) => xe.set(input.x.subarray(t * H, (t + 1) * H), i * H));
    const y = expert(input.experts[e], xe, n);
    for (let i = 0; i < n; i++) {
      let sq = 0;
      for (let h = 0; h < H; h++) {
        const v = y[i * H + h];
        sq += v * v;
        meanOutput[e * H + h] += v;
      }
      saliency[e] += gates[e][i] * Math.sqrt(sq);
    }
    saliency[e] /= n;
    for (let h = 0; h < H; h++) meanOutput[e * H + h] /= n;
  }
  return { numExperts: E, hidden: H, count, saliency, meanOutput, logitSample: input.logits, logitRows: T };
}
