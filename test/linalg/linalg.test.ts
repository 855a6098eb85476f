import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import { beforeAll, describe, expect, it } from 'vitest';
import { cholesky } from '../../kernels/linalg/cholesky.js';
import { symEig } from '../../kernels/linalg/eig.js';
import { gram, matmul, transpose } from '../../kernels/linalg/matmul.js';
import { gaussian, orthonormalize, svd, tailEnergy } from '../../kernels/linalg/svd.js';
import { invertLower, lowerTimes, rightSolveLower, solveLower, solveLowerT, solveUpper, timesLower } from '../../kernels/linalg/triangular.js';
import { MoeError } from '../../src/errors.js';

beforeAll(async () => {
  await tf.setBackend('wasm');
  await tf.ready();
});

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
};
const maxAbs = (a: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
};
/** random SPD matrix X^T X + 0.1 I */
function spd(n: number, seed: number): Float64Array {
  const X = gaussian(2 * n * n, seed);
  const g = gram(X, 2 * n, n, 'f64');
  for (let i = 0; i < n; i++) g[i * n + i]! += 0.1;
  return g;
}

describe('matmul', () => {
  it('f64 and tf engines agree, with transposes', () => {
    const [m, k, n] = [37, 53, 29];
    const A = gaussian(m * k, 1);
    const B = gaussian(k * n, 2);
    const ref = matmul(A, B, m, k, n, { engine: 'f64' });
    // direct triple loop as the reference for the reference
    let e = 0;
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += A[i * k + p]! * B[p * n + j]!;
        e = Math.max(e, Math.abs(s - ref[i * n + j]!));
      }
    expect(e).toBeLessThan(1e-12);
    expect(maxAbsDiff(matmul(A, B, m, k, n, { engine: 'tf' }), ref)).toBeLessThan(1e-4);
    const At = transpose(A, m, k);
    const Bt = transpose(B, k, n);
    expect(maxAbsDiff(matmul(At, Bt, m, k, n, { transA: true, transB: true, engine: 'f64' }), ref)).toBeLessThan(1e-12);
    expect(maxAbsDiff(matmul(At, Bt, m, k, n, { transA: true, transB: true, engine: 'tf' }), ref)).toBeLessThan(1e-4);
  });
});

describe('cholesky', () => {
  it('factors an SPD matrix: L L^T = A, L lower, no ridge', () => {
    const n = 40;
    const A = spd(n, 3);
    const { L, ridgeUsed } = cholesky(A, n);
    expect(ridgeUsed).toBe(0);
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) expect(L[i * n + j]).toBe(0);
    const LLt = matmul(L, L, n, n, n, { transB: true, engine: 'f64' });
    expect(maxAbsDiff(LLt, A) / maxAbs(A)).toBeLessThan(1e-13);
  });

  it('falls back to a ridge on a singular PSD matrix and reports it', () => {
    const n = 30;
    // rank 10: X is 10 x 30
    const X = gaussian(10 * n, 4);
    const A = gram(X, 10, n, 'f64');
    const { L, ridgeUsed, attempts } = cholesky(A, n);
    expect(ridgeUsed).toBeGreaterThan(0);
    expect(attempts).toBeGreaterThan(1);
    let mean = 0;
    for (let i = 0; i < n; i++) mean += A[i * n + i]! / n;
    expect(ridgeUsed).toBeLessThan(1e-2 * mean);
    const LLt = matmul(L, L, n, n, n, { transB: true, engine: 'f64' });
    for (let i = 0; i < n; i++) A[i * n + i]! += ridgeUsed;
    expect(maxAbsDiff(LLt, A) / maxAbs(A)).toBeLessThan(1e-12);
  });

  it('applies a requested ridge up front, handles the zero matrix, rejects indefinite and NaN input', () => {
    const n = 5;
    const A = spd(n, 5);
    let mean = 0;
    for (let i = 0; i < n; i++) mean += A[i * n + i]! / n;
    expect(cholesky(A, n, { ridge: 0.01 }).ridgeUsed).toBeCloseTo(0.01 * mean, 12);
    const Z = cholesky(new Float64Array(n * n), n);
    expect(Z.ridgeUsed).toBeGreaterThan(0);
    const neg = new Float64Array(n * n);
    for (let i = 0; i < n; i++) neg[i * n + i] = -1;
    expect(() => cholesky(neg, n)).toThrow(/negative/);
    // indefinite with a positive diagonal: [[1, 2], [2, 1]] has eigenvalue -1, beyond any sensible ridge
    expect(() => cholesky(Float64Array.of(1, 2, 2, 1), 2)).toThrow(MoeError);
    const bad = spd(n, 6);
    bad[7] = NaN;
    expect(() => cholesky(bad, n)).toThrow(/non-finite/);
  });
});

describe('triangular solves', () => {
  const n = 25;
  const r = 7;
  const { L } = cholesky(spd(n, 7), n);
  const B = gaussian(n * r, 8);
  it('forward, transposed-back and upper solves invert the products', () => {
    const X = solveLower(L, n, B, r);
    expect(maxAbsDiff(lowerTimes(L, n, X, r), B)).toBeLessThan(1e-10);
    const Lt = transpose(L, n, n);
    const Y = solveLowerT(L, n, B, r);
    expect(maxAbsDiff(matmul(Lt, Y, n, n, r, { engine: 'f64' }), B)).toBeLessThan(1e-10);
    const Z = solveUpper(Lt, n, B, r);
    expect(maxAbsDiff(Z, Y)).toBeLessThan(1e-12);
  });
  it('right solve X L = B and the inverse', () => {
    const Br = gaussian(r * n, 9);
    const X = rightSolveLower(Br, r, L, n);
    expect(maxAbsDiff(timesLower(X, r, L, n), Br)).toBeLessThan(1e-10);
    const Linv = invertLower(L, n);
    const I = matmul(Linv, L, n, n, n, { engine: 'f64' });
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) expect(Math.abs(I[i * n + j]! - (i === j ? 1 : 0))).toBeLessThan(1e-10);
    expect(maxAbsDiff(matmul(Br, Linv, r, n, n, { engine: 'f64' }), X)).toBeLessThan(1e-10);
  });
});

describe('symmetric eigendecomposition', () => {
  it('A V = V diag(lambda), V orthonormal, values descending', () => {
    const n = 60;
    const A = gaussian(n * n, 10);
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) A[i * n + j] = A[j * n + i]!;
    const { values, vectors: V } = symEig(A, n);
    for (let i = 1; i < n; i++) expect(values[i]!).toBeLessThanOrEqual(values[i - 1]!);
    const AV = matmul(A, V, n, n, n, { engine: 'f64' });
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) expect(Math.abs(AV[i * n + j]! - V[i * n + j]! * values[j]!)).toBeLessThan(1e-10);
    const VtV = matmul(V, V, n, n, n, { transA: true, engine: 'f64' });
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) expect(Math.abs(VtV[i * n + j]! - (i === j ? 1 : 0))).toBeLessThan(1e-12);
    let trace = 0;
    for (let i = 0; i < n; i++) trace += A[i * n + i]!;
    expect(values.reduce((a, b) => a + b, 0)).toBeCloseTo(trace, 9);
  });
  it('handles repeated eigenvalues (identity, diagonal) and 1x1', () => {
    const n = 6;
    const I = new Float64Array(n * n);
    for (let i = 0; i < n; i++) I[i * n + i] = i < 3 ? 2 : 5;
    const { values } = symEig(I, n);
    expect(Array.from(values)).toEqual([5, 5, 5, 2, 2, 2]);
    expect(symEig(Float64Array.of(-3), 1).values[0]).toBe(-3);
  });
});

describe('svd', () => {
  for (const [m, n] of [
    [48, 32],
    [32, 48],
  ] as const) {
    it(`gram route ${m}x${n}: full rank reproduces M, orthonormal factors, exact tail energies`, () => {
      const M = gaussian(m * n, 11 + m);
      const sv = svd(M, m, n, { engine: 'f64' });
      const k = Math.min(m, n);
      expect(sv.k).toBe(k);
      const US = Float64Array.from(sv.U);
      for (let i = 0; i < m; i++) for (let j = 0; j < k; j++) US[i * k + j]! *= sv.s[j]!;
      expect(maxAbsDiff(matmul(US, sv.Vt, m, k, n, { engine: 'f64' }), M)).toBeLessThan(1e-11);
      const UtU = matmul(sv.U, sv.U, k, m, k, { transA: true, engine: 'f64' });
      for (let i = 0; i < k; i++) expect(UtU[i * k + i]).toBeCloseTo(1, 10);
      // rank-r truncation error equals the tail energy
      const r = 9;
      const t = svd(M, m, n, { rank: r, engine: 'f64' });
      const Ur = Float64Array.from(t.U);
      for (let i = 0; i < m; i++) for (let j = 0; j < r; j++) Ur[i * r + j]! *= t.s[j]!;
      const R = matmul(Ur, t.Vt, m, r, n, { engine: 'f64' });
      let err = 0;
      for (let i = 0; i < m * n; i++) err += (M[i]! - R[i]!) ** 2;
      expect(err).toBeCloseTo(tailEnergy(sv)[r]!, 8);
      expect(tailEnergy(sv)[0]).toBeCloseTo(sv.energy, 8);
      expect(tailEnergy(sv)[k]).toBe(0);
    });
  }

  it('tf engine: full rank reproduces M to float32 precision', () => {
    const [m, n] = [64, 40];
    const M = gaussian(m * n, 12);
    const sv = svd(M, m, n, { engine: 'tf' });
    const US = Float64Array.from(sv.U);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) US[i * n + j]! *= sv.s[j]!;
    expect(maxAbsDiff(matmul(US, sv.Vt, m, n, n, { engine: 'f64' }), M) / maxAbs(M)).toBeLessThan(1e-5);
  });

  it('randomized route finds the leading triplets of a low-rank-plus-noise matrix', () => {
    const [m, n, r] = [120, 90, 6];
    const A = gaussian(m * r, 13);
    const B = gaussian(r * n, 14);
    const M = matmul(A, B, m, r, n, { engine: 'f64' });
    const noise = gaussian(m * n, 15);
    for (let i = 0; i < m * n; i++) M[i]! += 1e-3 * noise[i]!;
    const exact = svd(M, m, n, { engine: 'f64' });
    const rnd = svd(M, m, n, { rank: r, method: 'randomized', engine: 'f64', powerIters: 2 });
    for (let i = 0; i < r; i++) expect(Math.abs(rnd.s[i]! - exact.s[i]!) / exact.s[i]!).toBeLessThan(1e-6);
    // exact tail energy beyond the computed spectrum
    expect(tailEnergy(rnd)[r]! / tailEnergy(exact)[r]!).toBeCloseTo(1, 3);
    const Q = orthonormalize(gaussian(50 * 8, 16), 50, 8, 'f64');
    const QtQ = matmul(Q, Q, 8, 50, 8, { transA: true, engine: 'f64' });
    for (let i = 0; i < 8; i++) for (let j = 0; j < 8; j++) expect(Math.abs(QtQ[i * 8 + j]! - (i === j ? 1 : 0))).toBeLessThan(1e-12);
  });
});
