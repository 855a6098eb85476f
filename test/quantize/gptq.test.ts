import { beforeAll, describe, expect, it } from 'vitest';
import { upperCholeskyOfInverse } from '../../kernels/linalg/cholesky.js';
import { accumulateHessian, gptqQuantize } from '../../kernels/quant/gptq.js';
import { dequantize, quantizeRtn } from '../../kernels/quant/rtn.js';
import type { QuantBits } from '../../kernels/quant/types.js';
import { randn, rng, useWasm } from './tf.js';

beforeAll(useWasm);

/** Inputs with strongly correlated features and uneven scales, as real activations have. */
function correlatedInputs(n: number, inF: number, seed: number): Float32Array {
  const r = rng(seed);
  const k = 16;
  const z = randn(n * k, r);
  const mix = randn(k * inF, r);
  const colScale = Float32Array.from({ length: inF }, (_, i) => 0.2 + (3 * ((i * 37) % 11)) / 11);
  const noise = randn(n * inF, r, 0.1);
  const x = new Float32Array(n * inF);
  for (let t = 0; t < n; t++)
    for (let i = 0; i < inF; i++) {
      let s = noise[t * inF + i]!;
      for (let a = 0; a < k; a++) s += z[t * k + a]! * mix[a * inF + i]!;
      x[t * inF + i] = s * colScale[i]!;
    }
  return x;
}

/** ||X (W - Wq)^T||^2: the output error GPTQ minimises. */
function outputError(x: Float32Array, n: number, w: Float32Array, wq: Float32Array, out: number, inF: number): number {
  let e = 0;
  for (let t = 0; t < n; t++)
    for (let o = 0; o < out; o++) {
      let s = 0;
      for (let i = 0; i < inF; i++) s += x[t * inF + i]! * (w[o * inF + i]! - wq[o * inF + i]!);
      e += s * s;
    }
  return e;
}

describe('upperCholeskyOfInverse', () => {
  it('returns U with U^T U = H^-1', () => {
    const n = 5;
    const a = randn(n * n, rng(3));
    const h = new Float64Array(n * n);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        let s = i === j ? 0.5 : 0;
        for (let k = 0; k < n; k++) s += a[i * n + k]! * a[j * n + k]!;
        h[i * n + j] = s;
      }
    const u = upperCholeskyOfInverse(h, n)!;
    // (U^T U) H = I
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) {
          let uu = 0;
          for (let m = 0; m < n; m++) uu += u[m * n + i]! * u[m * n + k]!;
          s += uu * h[k * n + j]!;
        }
        expect(s).toBeCloseTo(i === j ? 1 : 0, 8);
        if (j < i) expect(u[i * n + j]).toBe(0);
      }
    const neg = new Float64Array([1, 2, 2, 1]);
    expect(upperCholeskyOfInverse(neg, 2)).toBeUndefined();
  });
});

describe('GPTQ vs round-to-nearest on correlated inputs', () => {
  const out = 48,
    inF = 256,
    n = 1024;
  const x = correlatedInputs(n, inF, 11);
  const w = randn(out * inF, rng(12), 0.05);
  const h = new Float64Array(inF * inF);
  beforeAll(async () => {
    await useWasm();
    accumulateHessian(h, x, n, inF);
  });

  it('accumulates H = X^T X', () => {
    let s = 0;
    for (let t = 0; t < n; t++) s += x[t * inF + 3]! * x[t * inF + 7]!;
    expect(h[3 * inF + 7]).toBeCloseTo(s, -1);
    expect(h[3 * inF + 7]).toBe(h[7 * inF + 3]);
  });

  for (const bits of [2, 3, 4] as QuantBits[]) {
    it(`${bits} bits: lower output error than RTN with the same grid (plain and act-order)`, () => {
      const spec = { bits, groupSize: 128, sym: false };
      const rtnErr = outputError(x, n, w, dequantize(quantizeRtn(w, out, inF, spec)), out, inF);
      const g = gptqQuantize(w, out, inF, h, spec);
      const gErr = outputError(x, n, w, dequantize(g.quant), out, inF);
      const ga = gptqQuantize(w, out, inF, h, spec, { actOrder: true });
      const gaErr = outputError(x, n, w, dequantize(ga.quant), out, inF);
      expect(gErr).toBeLessThan(0.8 * rtnErr);
      expect(gaErr).toBeLessThan(0.8 * rtnErr);
      // act-order permutes the columns: g_idx is no longer monotone but every group still has groupSize columns
      const counts = new Map<number, number>();
      for (const gi of ga.quant.gIdx) counts.set(gi, (counts.get(gi) ?? 0) + 1);
      expect([...counts.values()]).toEqual([128, 128]);
      expect(Array.from(ga.quant.gIdx).some((gi, i) => i > 0 && gi < ga.quant.gIdx[i - 1]!)).toBe(true);
    });
  }

  it('symmetric GPTQ uses the fixed mid zero point', () => {
    const g = gptqQuantize(w, out, inF, h, { bits: 4, groupSize: 64, sym: true });
    expect(new Set(g.quant.zeros)).toEqual(new Set([8]));
    expect(g.quant.scales.length).toBe(4 * out);
  });

  it('zeroes dead input columns and still quantizes', () => {
    const h2 = Float64Array.from(h);
    for (let j = 0; j < inF; j++) {
      h2[5 * inF + j] = 0;
      h2[j * inF + 5] = 0;
    }
    const g = gptqQuantize(w, out, inF, h2, { bits: 4, groupSize: 128, sym: false });
    const d = dequantize(g.quant);
    for (let o = 0; o < out; o++) expect(Math.abs(d[o * inF + 5]!)).toBeLessThanOrEqual(g.quant.scales[o]! / 2 + 1e-9);
  });

  it('rejects a Hessian of the wrong size', () => {
    expect(() => gptqQuantize(w, out, inF, new Float64Array(10), { bits: 4, groupSize: 128, sym: false })).toThrow(/Hessian/);
  });
});
