import { describe, expect, it } from 'vitest';
import { KQUANT_SPECS, KQUANT_TYPES, blockGrid, dequantizeMatrix, dequantizeRow, fitBlock, packBlock, quantizeMatrix } from '../../kernels/ggml/kquants.js';
import { ggmlTypeBpw } from '../../src/gguf/format.js';
import { fittingType, llamaFallback } from '../../src/gguf/export.js';
import { seededRandom } from '../../kernels/random.js';

const r = seededRandom(3);
const n = 512;
const rows = 6;
const x = Float32Array.from({ length: rows * n }, () => (r() * 2 - 1) * 0.1 * (1 + 3 * r() ** 8));

function mse(a: Float32Array, b: Float32Array, w?: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (w ? w[i % n]! : 1) * (a[i]! - b[i]!) ** 2;
  return s / a.length;
}

describe('llama.cpp block formats', () => {
  it('bytes and bits per weight are the format definitions', () => {
    const bpw = Object.fromEntries(KQUANT_TYPES.map((t) => [t, ggmlTypeBpw(t)]));
    expect(bpw).toEqual({ Q4_0: 4.5, Q4_1: 5, Q5_0: 5.5, Q5_1: 6, Q8_0: 8.5, Q2_K: 2.625, Q3_K: 3.4375, Q4_K: 4.5, Q5_K: 5.5, Q6_K: 6.5625 });
    for (const t of KQUANT_TYPES) expect(quantizeMatrix(t, x, rows, n).length).toBe((rows * n * KQUANT_SPECS[t].bytes) / KQUANT_SPECS[t].block);
  });

  it('error falls with every extra bit, and each value is the nearest point of the grid the decoder rebuilds', () => {
    let prev = Infinity;
    for (const t of ['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'Q8_0'] as const) {
      const e = mse(dequantizeMatrix(t, quantizeMatrix(t, x, rows, n), rows, n), x);
      expect(e).toBeLessThan(prev);
      prev = e;
    }
    // the 32-blocks: a fifth bit halves the step; an offset (Q4_1, Q5_1) helps one-signed blocks
    prev = Infinity;
    for (const t of ['Q4_0', 'Q5_0', 'Q8_0'] as const) {
      const e = mse(dequantizeMatrix(t, quantizeMatrix(t, x, rows, n), rows, n), x);
      expect(e).toBeLessThan(prev);
      prev = e;
    }
    const pos = x.map((v) => Math.abs(v) + 0.05);
    for (const [a, b] of [
      ['Q4_0', 'Q4_1'],
      ['Q5_0', 'Q5_1'],
    ] as const)
      expect(mse(dequantizeMatrix(b, quantizeMatrix(b, pos, rows, n), rows, n), pos)).toBeLessThan(
        mse(dequantizeMatrix(a, quantizeMatrix(a, pos, rows, n), rows, n), pos),
      );
    // nearest-on-grid: no other code of the block's sub-block is closer to the value
    for (const t of KQUANT_TYPES) {
      const s = KQUANT_SPECS[t];
      const blk = fitBlock(t, x, 0);
      const { dl, ml } = blockGrid(t, blk);
      const bytes = quantizeMatrix(t, x.subarray(0, s.block), 1, s.block);
      const deq = dequantizeRow(t, bytes, s.block);
      for (let i = 0; i < s.block; i++) {
        const j = Math.floor(i / s.sub);
        let best = Infinity;
        for (let q = s.qmin; q <= s.qmax; q++) best = Math.min(best, Math.abs(Math.fround(Math.fround(dl[j]! * q) - ml[j]!) - x[i]!));
        expect(Math.abs(deq[i]! - x[i]!)).toBeLessThanOrEqual(best + 1e-7);
      }
      // packing the same parameters and codes reproduces the bytes
      for (let i = 0; i < s.block; i++)
        blk.q[i] = Math.max(s.qmin, Math.min(s.qmax, Math.round((x[i]! + ml[Math.floor(i / s.sub)]!) / (dl[Math.floor(i / s.sub)]! || 1))));
      const again = new Uint8Array(s.bytes);
      packBlock(t, blk, again, 0);
      expect(again).toEqual(bytes.subarray(0, s.bytes));
    }
  });

  it('an importance matrix lowers the importance-weighted error', () => {
    const im = Float32Array.from({ length: n }, (_, i) => (i % 7 === 0 ? 50 : 0.05));
    for (const t of ['Q2_K', 'Q3_K', 'Q4_K', 'Q6_K', 'Q4_0', 'Q5_1'] as const) {
      const plain = dequantizeMatrix(t, quantizeMatrix(t, x, rows, n), rows, n);
      const weighted = dequantizeMatrix(t, quantizeMatrix(t, x, rows, n, im), rows, n);
      expect(mse(weighted, x, im)).toBeLessThan(mse(plain, x, im));
    }
  });

  it('zero, constant and one-signed rows decode finite and close', () => {
    for (const t of KQUANT_TYPES) {
      for (const v of [0, 0.25, -0.3]) {
        const row = new Float32Array(256).fill(v);
        const d = dequantizeMatrix(t, quantizeMatrix(t, row, 1, 256), 1, 256);
        for (const y of d) expect(Math.abs(y - v)).toBeLessThan(0.3 * Math.abs(v) + 1e-6);
      }
    }
  });

  it("shapes the k-quants cannot take get llama.cpp's fallback, stated", () => {
    expect(llamaFallback('Q4_K', 128)).toBe('Q5_0');
    expect(llamaFallback('Q2_K', 128)).toBe('Q4_0');
    expect(llamaFallback('Q6_K', 128)).toBe('Q8_0');
    expect(llamaFallback('IQ2_XS', 128)).toBe('IQ4_NL');
    expect(llamaFallback('Q4_K', 100)).toBe('F16');
    expect(llamaFallback('Q4_K', 512)).toBe('Q4_K');
    expect(fittingType('Q6_K', 128)).toEqual({ type: 'Q8_0', reason: "rows of 128 are not whole Q6_K blocks: llama.cpp's fallback Q8_0" });
    expect(fittingType('Q4_K', 128)).toEqual({ type: 'Q5_0', reason: "rows of 128 are not whole Q4_K blocks: llama.cpp's fallback Q5_0" });
    expect(fittingType('Q5_K', 128).type).toBe('Q5_1');
    expect(fittingType('Q3_K', 128).type).toBe('Q4_0');
    expect(fittingType('IQ2_XS', 128)).toEqual({ type: 'IQ4_NL', reason: "rows of 128 are not whole IQ2_XS blocks: llama.cpp's fallback IQ4_NL" });
  });
});
