/**
 * The factorisations behind every `moe decompose` mode, on float64 matrices (W is [m, n] = [out, in]).
 *
 * Each returns a `Factorization`: the spectrum it truncates (so the planner can price every candidate rank
 * before choosing) and a `factors(k)` that cuts it at rank k. The loss of rank k, `tail[k]`, is the squared error
 * the truncation leaves, in activation space when a Gram is given (SVD-LLM: ||(W - W_k) X^T||_F^2 =
 * sum of dropped s_i^2 of W L, G = X^T X = L L^T) and in weight space otherwise.
 */
import { cholesky } from '../../kernels/linalg/cholesky.js';
import { matmul, type Engine } from '../../kernels/linalg/matmul.js';
import { DEFAULT_SVD_SEED, svd, tailEnergy, type Svd } from '../../kernels/linalg/svd.js';
import { rightSolveLower } from '../../kernels/linalg/triangular.js';

export interface Factors {
  /** [m, k] */
  A: Float64Array;
  /** [k, n] */
  B: Float64Array;
  k: number;
}

export interface Factorization {
  m: number;
  n: number;
  /** tail[k] = squared error left at rank k, for k = 0..maxRank */
  tail: Float64Array;
  maxRank: number;
  /** ridge added to the Gram before its Cholesky (0: exact whitening) */
  ridge: number;
  factors(k: number): Factors;
}

/** Whitening factor L of a Gram (L L^T = G + ridge I), or undefined for plain SVD. */
export function whitening(G: Float64Array, n: number): { L: Float64Array; ridge: number } {
  const { L, ridgeUsed } = cholesky(G, n);
  return { L, ridge: ridgeUsed };
}

/**
 * Beyond this many dimensions on the smaller side, a full eigendecomposition (float64 on the host, O(n^3)) costs
 * minutes per matrix; when the caller knows the highest rank it can use, the randomized route computes only
 * that many triplets, and the energy beyond them is still exact (from the Frobenius norm).
 */
export const FULL_SPECTRUM_MAX_DIM = 2048;

export interface FactorizeOptions {
  /** seed of the randomized SVD's gaussian sketch (default DEFAULT_SVD_SEED) */
  seed?: number;
  /** smaller-side dimension above which the randomized route is taken (default FULL_SPECTRUM_MAX_DIM) */
  randomizedAbove?: number;
}

function randomized(m: number, n: number, maxRank: number | undefined, opts: FactorizeOptions): maxRank is number {
  return maxRank !== undefined && Math.min(m, n) > (opts.randomizedAbove ?? FULL_SPECTRUM_MAX_DIM) && maxRank < Math.min(m, n) / 2;
}

/** The rank a factorisation of an [m, n] matrix will have (what `maxRank` of its Factorization will be). */
export function factorRank(m: number, n: number, maxRank: number | undefined, opts: FactorizeOptions = {}): number {
  const full = Math.min(m, n);
  return randomized(m, n, maxRank, opts) ? Math.max(0, Math.min(maxRank, full)) : full;
}

function truncatedSvd(M: Float64Array, m: number, n: number, engine?: Engine, maxRank?: number, opts: FactorizeOptions = {}): Svd {
  if (randomized(m, n, maxRank, opts)) {
    return svd(M, m, n, { rank: maxRank, method: 'randomized', engine, powerIters: 2, seed: opts.seed ?? DEFAULT_SVD_SEED });
  }
  return svd(M, m, n, { engine });
}

function splitSqrt(sv: Svd, k: number): { A: Float64Array; SVt: Float64Array } {
  // S^(1/2) on both sides keeps the two factors on the same scale (what SVD-LLM stores)
  const { m, n } = sv;
  const kk = sv.k;
  const A = new Float64Array(m * k);
  for (let i = 0; i < m; i++) for (let j = 0; j < k; j++) A[i * k + j] = sv.U[i * kk + j]! * Math.sqrt(sv.s[j]!);
  const SVt = new Float64Array(k * n);
  for (let j = 0; j < k; j++) {
    const r = Math.sqrt(sv.s[j]!);
    for (let c = 0; c < n; c++) SVt[j * n + c] = sv.Vt[j * n + c]! * r;
  }
  return { A, SVt };
}

/** Plain SVD (weight space) or whitened SVD-LLM (activation space) of one linear. */
export function factorizeLinear(
  W: Float64Array,
  m: number,
  n: number,
  G?: Float64Array,
  engine?: Engine,
  maxRank?: number,
  opts: FactorizeOptions = {},
): Factorization {
  const white = G ? whitening(G, n) : undefined;
  const M = white ? matmul(W, white.L, m, n, n, { engine }) : W;
  const sv = truncatedSvd(M, m, n, engine, maxRank, opts);
  return {
    m,
    n,
    tail: tailEnergy(sv),
    maxRank: sv.k,
    ridge: white?.ridge ?? 0,
    factors(k) {
      k = clampRank(k, sv.k);
      const { A, SVt } = splitSqrt(sv, k);
      return { A, B: white ? rightSolveLower(SVt, k, white.L, n) : SVt, k };
    },
  };
}

/**
 * One input basis B [k, n] for a group of experts (MoE-SVD / MoLE): W_j ≈ A_j B. Stacking the experts
 * vertically needs one whitening for all of them; the summed Gram of their routed tokens is the
 * frequency-weighted mean Gram up to a constant.
 */
export interface SharedFactorization extends Omit<Factorization, 'factors'> {
  experts: number;
  /** shared B [k, n] and per-expert A_j [m, k] (input basis), or shared A [m, k] and per-expert B_j [k, n] */
  factors(k: number): { shared: Float64Array; perExpert: Float64Array[]; k: number };
}

export function factorizeSharedInput(
  Ws: Float64Array[],
  m: number,
  n: number,
  Gsum?: Float64Array,
  engine?: Engine,
  maxRank?: number,
  opts: FactorizeOptions = {},
): SharedFactorization {
  const E = Ws.length;
  const white = Gsum ? whitening(Gsum, n) : undefined;
  const M = new Float64Array(E * m * n);
  Ws.forEach((W, j) => M.set(white ? matmul(W, white.L, m, n, n, { engine }) : W.subarray(0, m * n), j * m * n));
  const sv = truncatedSvd(M, E * m, n, engine, maxRank, opts);
  return {
    m,
    n,
    experts: E,
    tail: tailEnergy(sv),
    maxRank: sv.k,
    ridge: white?.ridge ?? 0,
    factors(k) {
      k = clampRank(k, sv.k);
      // B = V_k^T L^-1, A_j = rows of U_k S_k: the projection of each expert onto the shared basis
      const Vt = sv.Vt.subarray(0, k * n);
      const shared = white ? rightSolveLower(Vt, k, white.L, n) : Float64Array.from(Vt);
      const perExpert = Ws.map((_, j) => {
        const A = new Float64Array(m * k);
        for (let i = 0; i < m; i++) for (let c = 0; c < k; c++) A[i * k + c] = sv.U[(j * m + i) * sv.k + c]! * sv.s[c]!;
        return A;
      });
      return { shared, perExpert, k };
    },
  };
}

/**
 * One output basis A [m, k] for a group of experts (Sub-MoE): W_j ≈ A B_j. Stacking horizontally lets each
 * block keep its own whitening (the error splits into one term per expert), so no common Gram is needed:
 * the shared U comes from [W_1 L_1 | ... | W_E L_E] and B_j = U_k^T W_j is each expert's projection.
 */
export function factorizeSharedOutput(
  Ws: Float64Array[],
  m: number,
  n: number,
  Gs?: (Float64Array | undefined)[],
  engine?: Engine,
  maxRank?: number,
  opts: FactorizeOptions = {},
): SharedFactorization {
  const E = Ws.length;
  const cols = E * n;
  const M = new Float64Array(m * cols);
  let ridge = 0;
  Ws.forEach((W, j) => {
    const G = Gs?.[j];
    let block = W;
    if (G) {
      const white = whitening(G, n);
      ridge = Math.max(ridge, white.ridge);
      block = matmul(W, white.L, m, n, n, { engine });
    }
    for (let i = 0; i < m; i++) M.set(block.subarray(i * n, (i + 1) * n), i * cols + j * n);
  });
  const sv = truncatedSvd(M, m, cols, engine, maxRank, opts);
  return {
    m,
    n,
    experts: E,
    tail: tailEnergy(sv),
    maxRank: sv.k,
    ridge,
    factors(k) {
      k = clampRank(k, sv.k);
      const shared = new Float64Array(m * k);
      for (let i = 0; i < m; i++) for (let c = 0; c < k; c++) shared[i * k + c] = sv.U[i * sv.k + c]!;
      const perExpert = Ws.map((W) => matmul(shared, W, k, m, n, { transA: true, engine }));
      return { shared, perExpert, k };
    },
  };
}

/** D²-MoE base: the frequency-weighted mean of a group's experts. */
export function frequencyWeightedBase(Ws: readonly ArrayLike<number>[], weights: ArrayLike<number>, size: number): Float64Array {
  let total = 0;
  for (let j = 0; j < Ws.length; j++) total += weights[j]!;
  const base = new Float64Array(size);
  Ws.forEach((W, j) => {
    // no calibration signal at all: fall back to the plain mean
    const w = total > 0 ? weights[j]! / total : 1 / Ws.length;
    for (let i = 0; i < size; i++) base[i]! += w * W[i]!;
  });
  return base;
}

export function clampRank(k: number, max: number): number {
  return Math.max(0, Math.min(Math.floor(k), max));
}

/** A B for factors A [m, k], B [k, n]. */
export function compose(A: Float64Array, B: Float64Array, m: number, k: number, n: number, engine?: Engine): Float64Array {
  if (k === 0) return new Float64Array(m * n);
  return matmul(A, B, m, k, n, { engine });
}

/** tr(D G D^T) for D [m, n]: the squared activation-space error of a weight difference under Gram G. */
export function activationError2(D: Float64Array, m: number, n: number, G: Float64Array, engine?: Engine): number {
  const DG = matmul(D, G, m, n, n, { engine });
  let s = 0;
  for (let i = 0; i < m * n; i++) s += DG[i]! * D[i]!;
  return s;
}
