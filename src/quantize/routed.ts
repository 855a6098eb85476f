/**
 * The calibration tokens each expert of a MoE layer sees, shared by the quantize pipelines (GPTQ format and GGUF)
 * and the class-unit scores: every routed slot with a non-zero weight gives one row, with the router's weight; the
 * shared expert sees every token under its sigmoid gate.
 */
import type { MoeLayerInput } from '../runtime/api.js';

export interface Routed {
  x: Float32Array;
  n: number;
  gates: Float32Array;
}

/** Rows of x routed to each expert, with the weight the model gives each. */
export function routedTokens(inp: MoeLayerInput): Routed[] {
  const E = inp.experts.length;
  const { T, k, idx, w } = inp.routing;
  const H = inp.hidden;
  const counts = new Int32Array(E);
  for (let s = 0; s < T * k; s++) if (w[s] !== 0) counts[idx[s]!]!++;
  const out: Routed[] = Array.from({ length: E }, (_, e) => ({ x: new Float32Array(counts[e]! * H), n: 0, gates: new Float32Array(counts[e]!) }));
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < k; j++) {
      const s = t * k + j;
      if (w[s] === 0) continue;
      const r = out[idx[s]!]!;
      r.x.set(inp.x.subarray(t * H, (t + 1) * H), r.n * H);
      r.gates[r.n] = w[s]!;
      r.n++;
    }
  }
  return out;
}

/** The shared expert's gate per token (sigmoid of its gate row), or 1 without one. */
export function sharedGates(inp: MoeLayerInput): Float32Array {
  const g = new Float32Array(inp.T).fill(1);
  const gw = inp.shared?.gateWeight;
  if (!gw) return g;
  const H = inp.hidden;
  for (let t = 0; t < inp.T; t++) {
    let s = 0;
    for (let i = 0; i < H; i++) s += inp.x[t * H + i]! * gw[i]!;
    g[t] = 1 / (1 + Math.exp(-s));
  }
  return g;
}
