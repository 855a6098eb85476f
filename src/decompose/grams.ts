/**
 * Input Gram matrices of each expert's linears, from the tokens routed to it (SVD-LLM whitening needs the
 * inputs a linear actually sees): gate and up read the MoE block input x, down reads the expert's intermediate
 * activation act(gate x) * up x. Grams are divided by the layer's token count, so G_j = f_j * E[x x^T | routed]
 * carries the expert's frequency: an expert that sees few tokens has a small Gram, hence small truncation
 * losses, hence fewer parameters from the allocator.
 */
import * as tf from '@tensorflow/tfjs-core';
import { symmetrize } from '../../kernels/linalg/matmul.js';
import type { ActivationSpec } from '../model/types.js';
import type { MoeLayerInput, SwiGLUWeights } from '../runtime/api.js';

export interface ExpertGrams {
  /** tokens routed to this expert */
  tokens: number;
  /** [H, H] Gram of gate/up inputs / T, undefined when no token was routed here */
  input?: Float64Array;
  /** [I, I] Gram of down inputs / T */
  mid?: Float64Array;
}

export interface LayerGrams {
  layer: number;
  /** tokens that reached the layer */
  T: number;
  topK: number;
  experts: ExpertGrams[];
}

/** Rows of x routed to each expert. */
export function routedRows(input: Pick<MoeLayerInput, 'routing'>, E: number): number[][] {
  const { T, k, idx } = input.routing;
  const rows: number[][] = Array.from({ length: E }, () => []);
  for (let t = 0; t < T; t++) {
    for (let s = 0; s < k; s++) {
      const j = idx[t * k + s]!;
      if (j >= 0 && j < E) rows[j]!.push(t);
    }
  }
  return rows;
}

function applyActivation(gate: tf.Tensor2D, up: tf.Tensor2D, act: ActivationSpec): tf.Tensor2D {
  if (act.kind === 'silu') return tf.mul(tf.mul(gate, tf.sigmoid(gate)), up);
  const g = tf.minimum(gate, act.limit);
  const u = tf.clipByValue(up, -act.limit, act.limit);
  return tf.mul(tf.add(u, 1), tf.mul(g, tf.sigmoid(tf.mul(g, act.alpha))));
}

function withBias(y: tf.Tensor2D, b?: Float32Array): tf.Tensor2D {
  return b ? tf.add(y, tf.tensor1d(b)) : y;
}

/** Gram matrices of one expert on its routed rows (x [T, H], f32), scaled by 1/scale. */
export function expertGrams(
  x: Float32Array,
  H: number,
  rows: readonly number[],
  w: SwiGLUWeights,
  act: ActivationSpec,
  scale: number,
  wantMid: boolean,
  /** per-row factor on the input (the slot weight where it scales the expert input, llama4) */
  rowScale?: readonly number[],
): ExpertGrams {
  const Tj = rows.length;
  if (Tj === 0) return { tokens: 0 };
  const xj = new Float32Array(Tj * H);
  rows.forEach((t, i) => xj.set(x.subarray(t * H, (t + 1) * H), i * H));
  // float32 products, as the runtime's gather (src/runtime/moe.ts) and torch's routed_in compute them
  if (rowScale) for (let i = 0; i < Tj; i++) for (let a = 0; a < H; a++) xj[i * H + a] = Math.fround(xj[i * H + a]! * rowScale[i]!);
  const [gIn, gMid] = tf.tidy(() => {
    const X = tf.tensor2d(xj, [Tj, H]);
    const gin = tf.div(tf.matMul(X, X, true, false), scale);
    if (!wantMid) return [gin.dataSync() as Float32Array, undefined];
    const gate = withBias(tf.matMul(X, tf.tensor2d(w.gate.w, [w.gate.out, w.gate.in]), false, true), w.gate.b);
    const up = withBias(tf.matMul(X, tf.tensor2d(w.up.w, [w.up.out, w.up.in]), false, true), w.up.b);
    const h = applyActivation(gate, up, act);
    const gmid = tf.div(tf.matMul(h, h, true, false), scale);
    return [gin.dataSync() as Float32Array, gmid.dataSync() as Float32Array];
  });
  const input = Float64Array.from(gIn);
  symmetrize(input, H);
  const out: ExpertGrams = { tokens: Tj, input };
  if (gMid) {
    const I = w.gate.out;
    out.mid = Float64Array.from(gMid);
    symmetrize(out.mid, I);
  }
  return out;
}

export function layerGrams(input: MoeLayerInput, act: ActivationSpec, wantMid = true, weightsInput = false): LayerGrams {
  const E = input.experts.length;
  const rows = routedRows(input, E);
  // llama4 (RoutingRule.weightsInput): an expert reads w * x, w its slot's routing weight, so its Grams are of those rows
  const scales = weightsInput ? routedWeights(input, E) : undefined;
  return {
    layer: input.layer.index,
    T: input.T,
    topK: input.routing.k,
    experts: input.experts.map((w, j) => expertGrams(input.x, input.hidden, rows[j]!, w, act, Math.max(input.T, 1), wantMid, scales?.[j])),
  };
}

/** The routing weight of each of routedRows' rows (same order). */
function routedWeights(input: Pick<MoeLayerInput, 'routing'>, E: number): number[][] {
  const { T, k, idx, w } = input.routing;
  const out: number[][] = Array.from({ length: E }, () => []);
  for (let t = 0; t < T; t++) {
    for (let s = 0; s < k; s++) {
      const j = idx[t * k + s]!;
      if (j >= 0 && j < E) out[j]!.push(w[t * k + s]!);
    }
  }
  return out;
}
