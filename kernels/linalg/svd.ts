/**
 * Truncated SVD of a dense matrix M [m, n] (row-major float64): M ≈ U diag(s) Vt with U [m, k], Vt [k, n].
 *
 * Two routes:
 * - 'gram': eigendecomposition of the smaller Gram matrix (M^T M or M M^T, formed with tfjs when large), then the
 *   other side as M V / s. Gives the whole spectrum, which rank allocation needs. Squaring the matrix loses the
 *   relative accuracy of singular values below ~1e-4 of the largest when the Gram is formed in float32; those are
 *   the ones truncation drops, and reconstruction U S Vt = M V V^T stays exact at full rank because V is
 *   orthonormal to float64 precision whatever the rounding of the Gram.
 * - 'randomized' (Halko, Martinsson & Tropp 2011): range finder with power iterations, for a few leading
 *   singular triplets of matrices too large for a full eigendecomposition. Orthonormalisation is CholeskyQR2 so
 *   the big products all go through matmul (tfjs).
 */
import { cholesky } from './cholesky.js';
import { symEig } from './eig.js';
import { frobenius, gram, matmul, type Engine } from './matmul.js';
import { invertLower } from './triangular.js';
import { seededRandom as mulberry32 } from '../random.js';

export interface Svd {
  m: number;
  n: number;
  k: number;
  /** [m, k] */
  U: Float64Array;
  /** [k] descending */
  s: Float64Array;
  /** [k, n] */
  Vt: Float64Array;
  /** every singular value the method computed, descending (all min(m, n) for 'gram') */
  spectrum: Float64Array;
  /** ||M||_F^2, so the energy beyond any computed rank is known exactly */
  energy: number;
}

export interface SvdOptions {
  /** rank kept in U, s, Vt (default: all min(m, n)) */
  rank?: number;
  method?: 'gram' | 'randomized';
  engine?: Engine;
  /** randomized: extra columns beyond the rank (default 10) */
  oversample?: number;
  /** randomized: power iterations (default 2) */
  powerIters?: number;
  seed?: number;
}

/** Seed of the randomized route's gaussian sketch when none is given. */
export const DEFAULT_SVD_SEED = 1;

export function svd(M: Float64Array, m: number, n: number, opts: SvdOptions = {}): Svd {
  const full = Math.min(m, n);
  const k = Math.max(0, Math.min(opts.rank ?? full, full));
  if ((opts.method ?? 'gram') === 'randomized') return randomizedSvd(M, m, n, k, opts);
  return gramSvd(M, m, n, k, opts.engine);
}

/** ||M - M_r||_F^2 for every r in [0, spectrum.length]: the energy of the dropped singular values. */
export function tailEnergy(sv: Pick<Svd, 'm' | 'n' | 'spectrum' | 'energy'>): Float64Array {
  const p = sv.spectrum.length;
  const tail = new Float64Array(p + 1);
  // summed from the smallest value up, so tiny tails are not lost to cancellation against the total
  let acc = 0;
  for (let r = p - 1; r >= 0; r--) {
    acc += sv.spectrum[r]! ** 2;
    tail[r] = acc;
  }
  // energy beyond a partial spectrum (randomized) is known exactly from the Frobenius norm
  if (p < Math.min(sv.m, sv.n)) {
    const rest = Math.max(0, sv.energy - acc);
    for (let r = 0; r <= p; r++) tail[r]! += rest;
  }
  return tail;
}

function gramSvd(M: Float64Array, m: number, n: number, k: number, engine?: Engine): Svd {
  const energy = frobenius(M.subarray(0, m * n)) ** 2;
  if (n <= m) {
    const { values, vectors: V } = symEig(gram(M, m, n, engine), n);
    const s = sqrtClamp(values);
    const Vk = leadingColumns(V, n, n, k);
    const MV = matmul(M, Vk, m, n, k, { engine });
    const U = divideColumns(MV, m, k, s);
    const Vt = new Float64Array(k * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < k; j++) Vt[j * n + i] = Vk[i * k + j]!;
    return { m, n, k, U, s: s.slice(0, k), Vt, spectrum: s, energy };
  }
  const { values, vectors: Ufull } = symEig(gramRows(M, m, n, engine), m);
  const s = sqrtClamp(values);
  const U = leadingColumns(Ufull, m, m, k);
  // Vt = diag(1/s) U^T M
  const UtM = matmul(U, M, k, m, n, { transA: true, engine });
  const Vt = new Float64Array(k * n);
  for (let j = 0; j < k; j++) {
    const inv = s[j]! > 0 ? 1 / s[j]! : 0;
    for (let c = 0; c < n; c++) Vt[j * n + c] = UtM[j * n + c]! * inv;
  }
  return { m, n, k, U, s: s.slice(0, k), Vt, spectrum: s, energy };
}

/** M M^T [m, m] */
function gramRows(M: Float64Array, m: number, n: number, engine?: Engine): Float64Array {
  const g = matmul(M, M, m, n, m, { transB: true, engine });
  for (let i = 0; i < m; i++)
    for (let j = i + 1; j < m; j++) {
      const v = 0.5 * (g[i * m + j]! + g[j * m + i]!);
      g[i * m + j] = v;
      g[j * m + i] = v;
    }
  return g;
}

function sqrtClamp(values: Float64Array): Float64Array {
  return Float64Array.from(values, (v) => Math.sqrt(Math.max(v, 0)));
}

function leadingColumns(V: Float64Array, rows: number, cols: number, k: number): Float64Array {
  const out = new Float64Array(rows * k);
  for (let i = 0; i < rows; i++) for (let j = 0; j < k; j++) out[i * k + j] = V[i * cols + j]!;
  return out;
}

function divideColumns(A: Float64Array, rows: number, k: number, s: Float64Array): Float64Array {
  for (let j = 0; j < k; j++) {
    // a zero singular value means M v = 0: the column carries nothing and stays zero
    const inv = s[j]! > 0 ? 1 / s[j]! : 0;
    for (let i = 0; i < rows; i++) A[i * k + j]! *= inv;
  }
  return A;
}

// ---- randomized ----------------------------------------------------------------------------------------------

export function gaussian(n: number, seed: number): Float64Array {
  const rnd = mulberry32(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rnd(), 1e-300);
    const v = rnd();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** Orthonormal basis of the columns of Y [rows, l] by CholeskyQR2 (two passes restore orthogonality to ~eps). */
export function orthonormalize(Y: Float64Array, rows: number, l: number, engine?: Engine): Float64Array {
  let Q = Y;
  for (let pass = 0; pass < 2; pass++) {
    const { L } = cholesky(gram(Q, rows, l, engine), l, { eps: 1e-10 });
    const Linv = invertLower(L, l);
    Q = matmul(Q, Linv, rows, l, l, { transB: true, engine });
  }
  return Q;
}

function randomizedSvd(M: Float64Array, m: number, n: number, k: number, opts: SvdOptions): Svd {
  const engine = opts.engine;
  const l = Math.min(k + (opts.oversample ?? 10), Math.min(m, n));
  const energy = frobenius(M.subarray(0, m * n)) ** 2;
  if (l === 0) return { m, n, k: 0, U: new Float64Array(0), s: new Float64Array(0), Vt: new Float64Array(0), spectrum: new Float64Array(0), energy };
  const omega = gaussian(n * l, opts.seed ?? DEFAULT_SVD_SEED);
  let Q = orthonormalize(matmul(M, omega, m, n, l, { engine }), m, l, engine);
  for (let it = 0; it < (opts.powerIters ?? 2); it++) {
    const Z = orthonormalize(matmul(M, Q, n, m, l, { transA: true, engine }), n, l, engine);
    Q = orthonormalize(matmul(M, Z, m, n, l, { engine }), m, l, engine);
  }
  // B = Q^T M [l, n]: small, decomposed exactly
  const B = matmul(Q, M, l, m, n, { transA: true, engine });
  const small = gramSvd(B, l, n, k, engine);
  const U = matmul(Q, small.U, m, l, k, { engine });
  return { m, n, k, U, s: small.s, Vt: small.Vt, spectrum: small.spectrum, energy };
}
