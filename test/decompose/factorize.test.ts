import { describe, expect, it } from 'vitest';
import { gram, matmul } from '../../kernels/linalg/matmul.js';
import { gaussian } from '../../kernels/linalg/svd.js';
import {
  activationError2,
  compose,
  factorizeLinear,
  factorizeSharedInput,
  factorizeSharedOutput,
  frequencyWeightedBase,
} from '../../src/decompose/factorize.js';

const relErr = (a: Float64Array, b: Float64Array) => {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
};
/** activations with a few dominant directions and a wide spread of scales, like real hidden states */
function activations(T: number, n: number, seed: number): Float64Array {
  const X = gaussian(T * n, seed);
  for (let t = 0; t < T; t++) for (let c = 0; c < n; c++) X[t * n + c]! *= 0.2 + 3 * Math.exp(-c / 5);
  return X;
}
const [m, n, T] = [24, 16, 200];

describe('factorizations', () => {
  it('plain and whitened: full rank reproduces W to float precision', () => {
    const W = gaussian(m * n, 1);
    const G = gram(activations(T, n, 2), T, n, 'f64');
    for (const g of [undefined, G]) {
      const f = factorizeLinear(W, m, n, g, 'f64');
      expect(f.maxRank).toBe(n);
      const { A, B, k } = f.factors(n);
      expect(relErr(compose(A, B, m, k, n, 'f64'), W)).toBeLessThan(1e-12);
      expect(f.tail[n]).toBe(0);
    }
  });

  it('whitened truncation error in activation space equals sqrt(sum of dropped s_i^2), and beats plain there', () => {
    const W = gaussian(m * n, 3);
    const X = activations(T, n, 4);
    const G = gram(X, T, n, 'f64');
    const white = factorizeLinear(W, m, n, G, 'f64');
    const plain = factorizeLinear(W, m, n, undefined, 'f64');
    expect(white.ridge).toBe(0);
    for (const k of [2, 5, 9, 13]) {
      const { A, B } = white.factors(k);
      const D = compose(A, B, m, k, n, 'f64').map((v, i) => W[i]! - v);
      // measured directly on the tokens: ||D X^T||_F
      const DXt = matmul(D, X, m, n, T, { transB: true, engine: 'f64' });
      let measured = 0;
      for (const v of DXt) measured += v * v;
      expect(Math.sqrt(measured) / Math.sqrt(white.tail[k]!)).toBeCloseTo(1, 9);
      expect(activationError2(D, m, n, G, 'f64') / measured).toBeCloseTo(1, 9);
      const p = plain.factors(k);
      const Dp = compose(p.A, p.B, m, k, n, 'f64').map((v, i) => W[i]! - v);
      expect(activationError2(Dp, m, n, G, 'f64')).toBeGreaterThan(measured);
      // and plain's predicted loss is its weight-space error
      let w2 = 0;
      for (const v of Dp) w2 += v * v;
      expect(w2 / plain.tail[k]!).toBeCloseTo(1, 9);
    }
  });

  it('a rank-deficient Gram (fewer tokens than inputs) factors with a ridge and still reproduces W at full rank', () => {
    const W = gaussian(m * n, 5);
    const G = gram(activations(6, n, 6), 6, n, 'f64');
    const f = factorizeLinear(W, m, n, G, 'f64');
    expect(f.ridge).toBeGreaterThan(0);
    const { A, B } = f.factors(n);
    expect(relErr(compose(A, B, m, n, n, 'f64'), W)).toBeLessThan(1e-7);
  });

  it('shared input basis: full rank reproduces every expert; the loss is the stacked whitened tail', () => {
    const E = 3;
    const Ws = [0, 1, 2].map((j) => gaussian(m * n, 10 + j));
    const Gs = [0, 1, 2].map((j) => gram(activations(T, n, 20 + j), T, n, 'f64'));
    const Gsum = new Float64Array(n * n);
    for (const G of Gs) G.forEach((v, i) => (Gsum[i]! += v));
    const f = factorizeSharedInput(Ws, m, n, Gsum, 'f64');
    expect(f.maxRank).toBe(n);
    const full = f.factors(n);
    Ws.forEach((W, j) => expect(relErr(compose(full.perExpert[j]!, full.shared, m, n, n, 'f64'), W)).toBeLessThan(1e-11));
    const k = 7;
    const t = f.factors(k);
    let err = 0;
    Ws.forEach((W, j) => {
      const D = compose(t.perExpert[j]!, t.shared, m, k, n, 'f64').map((v, i) => W[i]! - v);
      err += activationError2(D, m, n, Gsum, 'f64');
    });
    expect(err / f.tail[k]!).toBeCloseTo(1, 9);
    expect(E).toBe(t.perExpert.length);
  });

  it('shared output basis: per-expert whitening, error splits per expert and sums to the tail', () => {
    const Ws = [0, 1, 2].map((j) => gaussian(m * n, 30 + j));
    const Gs = [0, 1, 2].map((j) => gram(activations(T, n, 40 + j), T, n, 'f64'));
    const f = factorizeSharedOutput(Ws, m, n, Gs, 'f64');
    expect(f.maxRank).toBe(m);
    const full = f.factors(m);
    Ws.forEach((W, j) => expect(relErr(compose(full.shared, full.perExpert[j]!, m, m, n, 'f64'), W)).toBeLessThan(1e-11));
    const k = 10;
    const t = f.factors(k);
    let err = 0;
    Ws.forEach((W, j) => {
      const D = compose(t.shared, t.perExpert[j]!, m, k, n, 'f64').map((v, i) => W[i]! - v);
      err += activationError2(D, m, n, Gs[j]!, 'f64');
    });
    expect(err / f.tail[k]!).toBeCloseTo(1, 9);
  });

  it('frequency-weighted base: weights normalised, zero weights fall back to the mean', () => {
    const a = Float64Array.of(1, 2);
    const b = Float64Array.of(3, 6);
    expect(Array.from(frequencyWeightedBase([a, b], [3, 1], 2))).toEqual([1.5, 3]);
    expect(Array.from(frequencyWeightedBase([a, b], [0, 0], 2))).toEqual([2, 4]);
  });
});
