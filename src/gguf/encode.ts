/** One matrix at one ggml type, by GPTQ into the block format or by llama.cpp's importance-weighted rounding. */
import { fromF32, toF32 } from '../io/dtype.js';
import type { SwiGLUWeights } from '../runtime/api.js';
import { accumulateHessian, type GptqPrepared } from '../../kernels/quant/gptq.js';
import { gptqGgml, gptqRounder } from '../../kernels/ggml/gptq.js';
import { dequantizeGgml, quantizeGgml } from '../../kernels/ggml/codecs.js';
import type { GgmlType } from './format.js';

const FLOATS: readonly GgmlType[] = ['F32', 'F16', 'BF16'];

export interface Quantizer {
  prep?: GptqPrepared;
  /** per input column: the Hessian diagonal (GPTQ's block fit) or the imatrix (rounding) */
  imp?: ArrayLike<number>;
}

/** One matrix W [out, in] at a type: its bytes and what llama.cpp's decoder rebuilds. */
export function encodeMatrix(type: GgmlType, w: Float32Array, out: number, inF: number, q: Quantizer = {}): { bytes: Uint8Array; deq: Float32Array } {
  if (FLOATS.includes(type)) {
    if (type === 'F32') return { bytes: new Uint8Array(w.buffer.slice(w.byteOffset, w.byteOffset + w.byteLength)), deq: w };
    const bytes = fromF32(w, type as 'F16' | 'BF16');
    return { bytes, deq: toF32(bytes, type as 'F16' | 'BF16') };
  }
  if (q.prep && gptqRounder(type)) {
    const g = gptqGgml(type, w, out, inF, q.prep, q.imp);
    return { bytes: g.bytes, deq: g.deq };
  }
  // without a Hessian (or for a type GPTQ cannot round into): llama.cpp's importance-weighted search
  const bytes = quantizeGgml(type, w, out, inF, q.imp);
  return { bytes, deq: dequantizeGgml(type, bytes, out, inF) };
}

export function hessianOf(x: Float32Array, n: number, inF: number): Float64Array {
  const h = new Float64Array(inF * inF);
  accumulateHessian(h, x, n, inF);
  return h;
}

export const diagOf = (h: Float64Array, n: number) => Float64Array.from({ length: n }, (_, i) => h[i * n + i]!);

export const withWeight = (lin: SwiGLUWeights['gate'], w: Float32Array) => ({ out: lin.out, in: lin.in, w, ...(lin.b ? { b: lin.b } : {}) });
