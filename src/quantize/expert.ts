/**
 * Quantize one SwiGLU MLP (a routed expert or a shared expert) from the tokens that reach it. GPTQ is applied
 * projection by projection in the MLP's own order: gate and up share the Hessian of the expert's input tokens,
 * then down is quantized on the activations act(gate_q x) * (up_q x) computed with the already-quantized gate and
 * up ("true sequential" inside the expert). With fewer than `minTokens` tokens the Hessian says too little, so
 * the expert falls back to round-to-nearest and says so.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ActivationSpec } from '../model/types.js';
import type { Linear, SwiGLUWeights } from '../runtime/api.js';
import { accumulateHessian, gptqQuantize, prepareGptq, type GptqPrepared } from '../../kernels/quant/gptq.js';
import { dequantize, quantizeRtn } from '../../kernels/quant/rtn.js';
import type { QuantBits, QuantizedLinear } from '../../kernels/quant/types.js';
import { compensates, getQuantizer, type Method } from './methods.js';
import type { Proj } from './plan.js';

export type { Method };

export interface QuantSettings {
  method: Method;
  groupSize: number;
  sym: boolean;
  damp: number;
  actOrder: boolean;
  /** experts that saw fewer tokens use round-to-nearest */
  minTokens: number;
}

export type ProjBits = Record<Proj, QuantBits | 'keep'>;

export interface ExpertQuant {
  quant: Partial<Record<Proj, QuantizedLinear>>;
  /** the weights a loader reconstructs (kept projections unchanged) */
  deq: SwiGLUWeights;
  /** round-to-nearest was used although GPTQ was asked for (too few tokens) */
  fallback: boolean;
  /** GPTQ preparation of down's inputs (from the quantized gate/up), to requantize down at another width */
  downPrep?: GptqPrepared;
}

export function activate(g: Float32Array, u: Float32Array, a: ActivationSpec): Float32Array {
  const h = new Float32Array(g.length);
  if (a.kind === 'silu') {
    for (let k = 0; k < h.length; k++) {
      const x = g[k]!;
      h[k] = (x / (1 + Math.exp(-x))) * u[k]!;
    }
  } else {
    for (let k = 0; k < h.length; k++) {
      const x = Math.min(g[k]!, a.limit);
      const y = Math.max(-a.limit, Math.min(a.limit, u[k]!));
      h[k] = ((y + 1) * x) / (1 + Math.exp(-a.alpha * x));
    }
  }
  return h;
}

/**
 * y [n, out] = x W^T (+ b) on tfjs with W transposed explicitly: tfjs-wasm's matMul(transposeB) is 10-15x slower
 * than on a transposed copy (measured 2048 x 256 x 512: 1.5-1.9 s vs 0.1-0.2 s).
 */
export function linearT(x: Float32Array, n: number, lin: Linear): Float32Array {
  if (n === 0) return new Float32Array(0);
  const y = tf.tidy(() => {
    const r = tf.matMul(tf.tensor2d(x, [n, lin.in]), tf.transpose(tf.tensor2d(lin.w, [lin.out, lin.in])));
    return lin.b ? tf.add(r, tf.tensor1d(lin.b)) : r;
  });
  const out = y.dataSync() as Float32Array;
  y.dispose();
  return out;
}

/** The MLP's output down(act(gate x) * up x) [n, H]. */
export function mlpForward(w: SwiGLUWeights, x: Float32Array, n: number, act: ActivationSpec): Float32Array {
  return linearT(activate(linearT(x, n, w.gate), linearT(x, n, w.up), act), n, w.down);
}

export function inputHessian(x: Float32Array, n: number, inF: number): Float64Array {
  const h = new Float64Array(inF * inF);
  accumulateHessian(h, x, n, inF);
  return h;
}

function quantOne(lin: Linear, bits: QuantBits, s: QuantSettings, prep: GptqPrepared | undefined): QuantizedLinear {
  const spec = { bits, groupSize: s.groupSize, sym: s.sym };
  if (!prep) return quantizeRtn(lin.w, lin.out, lin.in, spec);
  return gptqQuantize(lin.w, lin.out, lin.in, prep, spec).quant;
}

/** GPTQ's Hessian preparation for the expert's input (shared by gate and up, and across candidate widths). */
export function prepareInput(x: Float32Array, n: number, inF: number, s: QuantSettings): GptqPrepared {
  return prepareGptq(inputHessian(x, n, inF), inF, { damp: s.damp, actOrder: s.actOrder });
}

function withWeight(lin: Linear, w: Float32Array): Linear {
  return { out: lin.out, in: lin.in, w, ...(lin.b ? { b: lin.b } : {}) };
}

/**
 * @param x the tokens routed to this MLP [n, in] (all tokens for a shared expert)
 * @param px prepareInput(x) when the caller already has it (shared across candidate widths)
 * @param downPx a prepared Hessian for down's inputs to use instead of the one from the quantized gate/up
 *   (scoring shares one from the full-precision gate/up across all widths)
 */
export function quantizeMlp(
  w: SwiGLUWeights,
  x: Float32Array,
  n: number,
  bits: ProjBits,
  s: QuantSettings,
  act: ActivationSpec,
  px?: GptqPrepared,
  downPx?: GptqPrepared,
): ExpertQuant {
  const useGptq = compensates(s.method, n, s.minTokens);
  const fallback = getQuantizer(s.method).hessians && !useGptq;
  const quant: Partial<Record<Proj, QuantizedLinear>> = {};
  const deq: SwiGLUWeights = { gate: w.gate, up: w.up, down: w.down };
  const H = useGptq && (bits.gate !== 'keep' || bits.up !== 'keep') ? (px ?? prepareInput(x, n, w.gate.in, s)) : undefined;
  for (const p of ['gate', 'up'] as const) {
    const b = bits[p];
    if (b === 'keep') continue;
    quant[p] = quantOne(w[p], b, s, H);
    deq[p] = withWeight(w[p], dequantize(quant[p]!));
  }
  if (bits.down !== 'keep') {
    let hd: GptqPrepared | undefined;
    if (useGptq) {
      if (downPx) hd = downPx;
      else {
        const h = activate(linearT(x, n, deq.gate), linearT(x, n, deq.up), act);
        hd = prepareInput(h, n, w.down.in, s);
      }
    }
    quant.down = quantOne(w.down, bits.down, s, hd);
    deq.down = withWeight(w.down, dequantize(quant.down));
    return { quant, deq, fallback, ...(hd ? { downPrep: hd } : {}) };
  }
  return { quant, deq, fallback };
}

/** The same expert with down quantized at another width (gate/up and down's Hessian reused). */
export function requantizeDown(q: ExpertQuant, w: SwiGLUWeights, bits: QuantBits, s: QuantSettings): ExpertQuant {
  const down = quantOne(w.down, bits, s, q.downPrep);
  return {
    quant: { ...q.quant, down },
    deq: { ...q.deq, down: withWeight(w.down, dequantize(down)) },
    fallback: q.fallback,
    ...(q.downPrep ? { downPrep: q.downPrep } : {}),
  };
}

/** Sum over tokens of g_t^2 ||f_q(x_t) - f(x_t)||^2: the MoE block's output error from this expert alone. */
export function outputError(ref: Float32Array, w: SwiGLUWeights, x: Float32Array, n: number, gates: Float32Array, act: ActivationSpec): number {
  if (n === 0) return 0;
  const y = mlpForward(w, x, n, act);
  const H = w.down.out;
  let e = 0;
  for (let t = 0; t < n; t++) {
    let s = 0;
    for (let k = 0; k < H; k++) {
      const d = y[t * H + k]! - ref[t * H + k]!;
      s += d * d;
    }
    e += gates[t]! * gates[t]! * s;
  }
  return e;
}
