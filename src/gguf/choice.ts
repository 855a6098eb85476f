/**
 * --method auto (src/quantize/methods/auto.ts): each routed expert's projection is written by GPTQ or by
 * llama.cpp's importance-weighted rounding, whichever gives the lower output error of the expert (through its
 * SwiGLU, weighted by the router's gates) on routed tokens that neither quantizer saw. Why measure: on the 256-wide
 * model GPTQ's Hessian-weighted error of an IQ2 gate is 0.51-0.64x the rounding's, yet the expert's output error is
 * 1.06-1.48x (docs/gguf.md): the proxy GPTQ minimises is not the error that matters, and which one wins differs
 * from tensor to tensor. Both encodings come from the same fit tokens (Hessian, and its diagonal as importance);
 * the bytes of the chosen one are what is written, so the error measured is the error of the file.
 */
import { prepareGptq, type GptqPrepared } from '../../kernels/quant/gptq.js';
import { gptqRounder } from '../../kernels/ggml/gptq.js';
import type { SwiGLUWeights } from '../runtime/api.js';
import { diagOf, encodeMatrix, hessianOf } from './encode.js';
import type { GgmlType } from './format.js';

export type Encoding = 'gptq' | 'rounding';

/** Rows of x (n rows of `width`): every `every`-th row (rows every-1, 2*every-1, ...) held back, the rest fit. */
export function holdBack(x: Float32Array, n: number, width: number, every: number): { fit: Float32Array; held: Float32Array; nFit: number; nHeld: number } {
  const nHeld = Math.floor(n / every);
  const fit = new Float32Array((n - nHeld) * width);
  const held = new Float32Array(nHeld * width);
  let f = 0;
  let h = 0;
  for (let t = 0; t < n; t++) {
    const row = x.subarray(t * width, (t + 1) * width);
    if (t % every === every - 1) held.set(row, h++ * width);
    else fit.set(row, f++ * width);
  }
  return { fit, held, nFit: f, nHeld: h };
}

/** The gates of the held-back rows (same rule as holdBack). */
export function heldGates(g: Float32Array, every: number): Float32Array {
  return Float32Array.from({ length: Math.floor(g.length / every) }, (_, i) => g[(i + 1) * every - 1]!);
}

/** What both encodings of one linear are made from: the fit tokens' Hessian prepared for GPTQ, and its diagonal. */
export interface FitInput {
  prep: GptqPrepared;
  imp: Float64Array;
}

export function fitInput(x: Float32Array, n: number, inF: number, damp: number): FitInput {
  const h = hessianOf(x, n, inF);
  return { prep: prepareGptq(h, inF, { damp }), imp: diagOf(h, inF) };
}

export interface Choice {
  bytes: Uint8Array;
  deq: Float32Array;
  by: Encoding;
  /** the held-back error of each encoding (absent: the type has no GPTQ rounding, nothing was compared) */
  errors?: Record<Encoding, number>;
}

/**
 * Linear lin at a type: GPTQ and the rounding from the same fit input, and whichever gives the lower heldError of
 * what the decoder rebuilds (GPTQ on a tie). A type GPTQ cannot round into takes the rounding unmeasured.
 */
export function chooseEncoding(type: GgmlType, lin: SwiGLUWeights['gate'], fi: FitInput, heldError: (deq: Float32Array) => number): Choice {
  const r = encodeMatrix(type, lin.w, lin.out, lin.in, { imp: fi.imp });
  if (!gptqRounder(type)) return { ...r, by: 'rounding' };
  const g = encodeMatrix(type, lin.w, lin.out, lin.in, fi);
  const errors = { gptq: heldError(g.deq), rounding: heldError(r.deq) };
  return errors.gptq <= errors.rounding ? { ...g, by: 'gptq', errors } : { ...r, by: 'rounding', errors };
}
