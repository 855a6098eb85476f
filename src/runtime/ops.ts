/**
 * Numeric building blocks of the forward pass. Big matrix products go through tfjs (whichever backend is active);
 * row-wise work that is a handful of flops per element (norms, RoPE, routing) stays on typed arrays, where it costs
 * less than a tfjs op's dispatch. Activations cross into tfjs in bounded chunks of rows, so the hidden states of
 * every calibration sequence can live outside the (32-bit) wasm heap.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Linear } from './api.js';

import { MAX_ROWS } from './chunks.js';

export { MAX_ROWS };

/** A linear uploaded to the backend once and applied to many row chunks. */
export interface DeviceLinear {
  out: number;
  in: number;
  /** W^T [in, out]: the wasm backend's matmul is ~5x faster on a plain right operand than with transposeB */
  wT: tf.Tensor2D;
  b?: tf.Tensor1D;
  dispose(): void;
}

/**
 * w^T [cols, rows] of w [rows, cols], in 16 x 16 tiles on the host. The wasm backend's transpose kernel (a generic
 * N-d one) took 7-20 ns per element here against 3-9 for this, and every thread of a window-shared pass transposes
 * each layer's weights once (bench/forward.ts's model: transposes were the largest fixed cost of a share). A
 * transpose moves values without arithmetic, so the bytes are the kernel's.
 */
export function transposeHost(w: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(rows * cols);
  const B = 16;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let c = c0; c < c1; c++) {
        const o = c * rows;
        for (let r = r0; r < r1; r++) t[o + r] = w[r * cols + c]!;
      }
    }
  }
  return t;
}

export function upload(lin: Linear): DeviceLinear {
  if (lin.w.length !== lin.out * lin.in) throw new RangeError(`linear ${lin.out}x${lin.in} holds ${lin.w.length} values`);
  const wT = tf.tensor2d(transposeHost(lin.w, lin.out, lin.in), [lin.in, lin.out]);
  const b = lin.b ? tf.tensor1d(lin.b) : undefined;
  return {
    out: lin.out,
    in: lin.in,
    wT,
    ...(b ? { b } : {}),
    dispose() {
      wT.dispose();
      b?.dispose();
    },
  };
}

/** y = x W^T (+ b) inside a tidy scope (x is a tensor [r, in]). */
export function applyT(x: tf.Tensor2D, lin: DeviceLinear): tf.Tensor2D {
  const y: tf.Tensor2D = tf.matMul(x, lin.wT);
  return lin.b ? (tf.add(y, lin.b) as tf.Tensor2D) : y;
}

/** y [rows, out] = x [rows, in] W^T + b, on typed arrays, chunked over rows. */
export function linearRows(x: Float32Array, rows: number, lin: DeviceLinear, out?: Float32Array): Float32Array {
  const y = out ?? new Float32Array(rows * lin.out);
  for (let r0 = 0; r0 < rows; r0 += MAX_ROWS) {
    const r = Math.min(MAX_ROWS, rows - r0);
    const res = tf.tidy(() => applyT(tf.tensor2d(x.subarray(r0 * lin.in, (r0 + r) * lin.in), [r, lin.in]), lin));
    y.set(res.dataSync() as Float32Array, r0 * lin.out);
    res.dispose();
  }
  return y;
}

/** One-shot linear from host weights (uploads, applies, frees). */
export function linear(x: Float32Array, rows: number, lin: Linear): Float32Array {
  const d = upload(lin);
  try {
    return linearRows(x, rows, d);
  } finally {
    d.dispose();
  }
}

/**
 * RMSNorm as HF computes it (float32): x * rsqrt(mean(x^2) + eps) * weight, over groups of `dim` values.
 * `dim` smaller than the row width normalises each head separately (qwen3 q_norm/k_norm).
 */
export function rmsNorm(x: Float32Array, dim: number, weight: Float32Array, eps: number, out?: Float32Array): Float32Array {
  const y = out ?? new Float32Array(x.length);
  if (weight.length !== dim) throw new RangeError(`norm weight has ${weight.length} values, rows have ${dim}`);
  const n = x.length / dim;
  for (let r = 0; r < n; r++) {
    const o = r * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) {
      const v = x[o + i]!;
      ss += v * v;
    }
    const inv = 1 / Math.sqrt(Math.fround(ss / dim) + eps);
    for (let i = 0; i < dim; i++) y[o + i] = weight[i]! * Math.fround(x[o + i]! * inv);
  }
  return y;
}

/** LayerNorm with bias (phimoe): (x - mean) / sqrt(var + eps) * weight + bias (biased variance, as torch). */
export function layerNorm(x: Float32Array, dim: number, weight: Float32Array, bias: Float32Array | undefined, eps: number, out?: Float32Array): Float32Array {
  const y = out ?? new Float32Array(x.length);
  const n = x.length / dim;
  for (let r = 0; r < n; r++) {
    const o = r * dim;
    let mean = 0;
    for (let i = 0; i < dim; i++) mean += x[o + i]!;
    mean /= dim;
    let v = 0;
    for (let i = 0; i < dim; i++) {
      const d = x[o + i]! - mean;
      v += d * d;
    }
    const inv = 1 / Math.sqrt(v / dim + eps);
    for (let i = 0; i < dim; i++) y[o + i] = (x[o + i]! - mean) * inv * weight[i]! + (bias ? bias[i]! : 0);
  }
  return y;
}

export interface NormWeights {
  kind: 'rms' | 'layer';
  weight: Float32Array;
  bias?: Float32Array;
  eps: number;
}

export function applyNorm(x: Float32Array, dim: number, n: NormWeights, out?: Float32Array): Float32Array {
  return n.kind === 'layer' ? layerNorm(x, dim, n.weight, n.bias, n.eps, out) : rmsNorm(x, dim, n.weight, n.eps, out);
}

export function clampInPlace(x: Float32Array, c: number): void {
  for (let i = 0; i < x.length; i++) x[i] = Math.min(c, Math.max(-c, x[i]!));
}
