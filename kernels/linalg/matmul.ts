/**
 * Dense products for the linear-algebra kernels. Matrices are row-major Float64Array.
 *
 * Big products go through tfjs (float32, on whichever backend is active: GPU when present); small ones, and the
 * ones whose rounding would be amplified afterwards (products with a Cholesky factor or its inverse), run in
 * float64 on typed arrays, where tfjs's per-op overhead and float32 rounding would cost more than the flops.
 */
import * as tf from '@tensorflow/tfjs-core';

export type Engine = 'auto' | 'tf' | 'f64';

/** Products with fewer multiply-adds than this stay in float64 under 'auto'. */
export const TF_MIN_FLOPS = 2 ** 26;

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  engine?: Engine;
}

function tfReady(): boolean {
  try {
    return tf.getBackend() !== undefined && tf.getBackend() !== null;
  } catch {
    return false;
  }
}

/** Which engine a product of m x k by k x n would use. */
export function engineFor(m: number, k: number, n: number, engine: Engine = 'auto'): 'tf' | 'f64' {
  if (engine !== 'auto') return engine;
  return m * k * n >= TF_MIN_FLOPS && tfReady() ? 'tf' : 'f64';
}

/**
 * C [m, n] = op(A) op(B) where op(A) is [m, k] and op(B) is [k, n]; A is stored [m, k] (or [k, m] with transA),
 * B is stored [k, n] (or [n, k] with transB).
 */
export function matmul(
  a: Float64Array | Float32Array,
  b: Float64Array | Float32Array,
  m: number,
  k: number,
  n: number,
  opts: MatmulOptions = {},
): Float64Array {
  const tA = !!opts.transA;
  const tB = !!opts.transB;
  if (a.length < m * k || b.length < k * n) throw new RangeError(`matmul: operands too small for ${m}x${k} by ${k}x${n}`);
  if (engineFor(m, k, n, opts.engine) === 'tf') {
    // transposing on the host is O(size) while tfjs-wasm's transposed matMul paths run several times slower
    const A32 = tA ? transposeF32(a, k, m) : Float32Array.from(a.subarray(0, m * k));
    const B32 = tB ? transposeF32(b, n, k) : Float32Array.from(b.subarray(0, k * n));
    const out = tf.tidy(() => tf.matMul(tf.tensor2d(A32, [m, k]), tf.tensor2d(B32, [k, n])).dataSync() as Float32Array);
    return Float64Array.from(out);
  }
  const c = new Float64Array(m * n);
  // Make both operands row-major in the inner loop: transposing a copy costs O(size), the product O(m k n).
  const A = tA ? transpose(a, k, m) : a;
  const B = tB ? transpose(b, n, k) : b;
  for (let i = 0; i < m; i++) {
    const ci = i * n;
    const ai = i * k;
    for (let p = 0; p < k; p++) {
      const av = A[ai + p]!;
      if (av === 0) continue;
      const bp = p * n;
      for (let j = 0; j < n; j++) c[ci + j]! += av * B[bp + j]!;
    }
  }
  return c;
}

function transposeF32(a: Float64Array | Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    const ri = i * cols;
    for (let j = 0; j < cols; j++) t[j * rows + i] = a[ri + j]!;
  }
  return t;
}

/** [rows, cols] -> [cols, rows] */
export function transpose(a: Float64Array | Float32Array, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    const ri = i * cols;
    for (let j = 0; j < cols; j++) t[j * rows + i] = a[ri + j]!;
  }
  return t;
}

/** X^T X for X [rows, cols] (a Gram matrix of row vectors), symmetric [cols, cols]. */
export function gram(x: Float64Array | Float32Array, rows: number, cols: number, engine: Engine = 'auto'): Float64Array {
  const g = matmul(x, x, cols, rows, cols, { transA: true, engine });
  symmetrize(g, cols);
  return g;
}

/** Average a matrix with its transpose in place (float32 products are not exactly symmetric). */
export function symmetrize(g: Float64Array, n: number): void {
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const v = 0.5 * (g[i * n + j]! + g[j * n + i]!);
      g[i * n + j] = v;
      g[j * n + i] = v;
    }
  }
}

export function frobenius(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * a[i]!;
  return Math.sqrt(s);
}
