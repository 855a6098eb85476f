import { beforeAll, describe, expect, it } from 'vitest';
import { gptqBytes, gptqShapes, packGptq, packValues, unpackGptq, unpackValues } from '../../kernels/quant/pack.js';
import { dequantize, quantizeRtn } from '../../kernels/quant/rtn.js';
import type { QuantBits, QuantizedLinear } from '../../kernels/quant/types.js';
import { randn, rng, useWasm } from './tf.js';

beforeAll(useWasm);

describe('GPTQ v1 word layout (hand-computed words)', () => {
  it('packs 2 bits LSB first, 16 values a word', () => {
    const v = new Array(16).fill(0);
    v[0] = 1;
    v[1] = 2;
    v[2] = 3;
    v[15] = 3;
    expect(Array.from(packValues(v, 2))).toEqual([(1 | (2 << 2) | (3 << 4) | (3 << 30)) >>> 0]);
  });
  it('packs 4 bits LSB first, 8 values a word', () => {
    expect(Array.from(packValues([1, 2, 3, 4, 5, 6, 7, 8, 15, 0, 0, 0, 0, 0, 0, 9], 4))).toEqual([0x87654321, 0x9000000f]);
  });
  it('packs 8 bits LSB first, 4 values a word', () => {
    expect(Array.from(packValues([0x11, 0x22, 0x33, 0xff], 8))).toEqual([0xff332211]);
  });
  it('splits 32 3-bit values over 3 words 10|1|10|1|10', () => {
    const v = new Array(32).fill(0);
    v[0] = 1;
    v[10] = 7;
    v[11] = 1;
    v[21] = 5;
    v[22] = 7;
    v[31] = 1;
    // word0: v0 at 0, low 2 bits of v10 at 30; word1: bit 2 of v10 at 0, v11 at 1, low bit of v21 at 31;
    // word2: bits 1-2 of v21 at 0, v22 at 2, v31 at 29
    expect(Array.from(packValues(v, 3))).toEqual([0xc0000001, 0x80000003, 0x2000001e]);
    const all = Array.from({ length: 32 }, (_, i) => i % 8);
    expect(Array.from(unpackValues(packValues(all, 3), 32, 3))).toEqual(all);
  });
  it('rejects sequences that do not fill whole words', () => {
    expect(() => packValues([1, 2, 3], 4)).toThrow(/whole 32-bit words/);
    expect(() => packValues(new Array(16).fill(0), 3)).toThrow(/whole 32-bit words/);
  });
});

function smallLinear(bits: QuantBits): QuantizedLinear {
  // out 32, in 64, group 32: codes chosen so every word is predictable
  const out = 32,
    inF = 64,
    gs = 32;
  const q = new Uint8Array(out * inF);
  for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) q[o * inF + i] = (o + 3 * i) % (1 << bits);
  const zeros = new Uint8Array(2 * out);
  for (let k = 0; k < zeros.length; k++) zeros[k] = 1 + (k % ((1 << bits) - 1));
  const scales = new Float32Array(2 * out).fill(0.5);
  const gIdx = Int32Array.from({ length: inF }, (_, i) => Math.floor(i / gs));
  return { out, in: inF, spec: { bits, groupSize: gs, sym: false }, q, scales, zeros, gIdx };
}

describe('packGptq / unpackGptq', () => {
  for (const bits of [2, 3, 4, 8] as QuantBits[]) {
    it(`${bits} bits: qweight packs along input per output column, qzeros stores zero-1 along output`, () => {
      const ql = smallLinear(bits);
      const t = packGptq(ql);
      const sh = gptqShapes(32, 64, ql.spec);
      expect(sh.qweight).toEqual([(64 * bits) / 32, 32]);
      expect(sh.qzeros).toEqual([2, (32 * bits) / 32]);
      expect(t.qweight.length).toBe(sh.qweight[0] * 32);
      // column 5 of qweight is the packed input sequence of output row 5
      const col5 = Array.from({ length: sh.qweight[0] }, (_, r) => t.qweight[r * 32 + 5]! >>> 0);
      expect(col5).toEqual(Array.from(packValues(ql.q.subarray(5 * 64, 6 * 64), bits)));
      // group 1 row of qzeros is the packed (zero - 1) sequence over outputs
      const zc = sh.qzeros[1]!;
      const g1 = Array.from(t.qzeros.subarray(zc, 2 * zc), (x) => x >>> 0);
      expect(g1).toEqual(
        Array.from(
          packValues(
            Array.from(ql.zeros.subarray(32, 64), (z) => z - 1),
            bits,
          ),
        ),
      );
      const back = unpackGptq(t, 32, 64, ql.spec);
      expect(back.q).toEqual(ql.q);
      expect(back.zeros).toEqual(ql.zeros);
      expect(back.scales).toEqual(ql.scales);
      expect(back.gIdx).toEqual(ql.gIdx);
      expect(gptqBytes(32, 64, ql.spec)).toBe(t.qweight.length * 4 + t.qzeros.length * 4 + t.scales.length * 2 + t.gIdx.length * 4);
    });
  }
  it('4-bit zero points of 8 are stored as 7 in every nibble', () => {
    const ql = smallLinear(4);
    ql.zeros.fill(8);
    const t = packGptq(ql);
    expect(Array.from(t.qzeros, (x) => x >>> 0)).toEqual(new Array(8).fill(0x77777777));
  });
  it('rejects tensors of the wrong size', () => {
    const ql = smallLinear(4);
    const t = packGptq(ql);
    expect(() => unpackGptq({ ...t, qweight: t.qweight.subarray(1) }, 32, 64, ql.spec)).toThrow(/qweight/);
    const bad = Int32Array.from(t.gIdx);
    bad[0] = 9;
    expect(() => unpackGptq({ ...t, gIdx: bad }, 32, 64, ql.spec)).toThrow(/g_idx/);
  });
});

describe('dequantize round trip', () => {
  for (const bits of [2, 3, 4, 8] as QuantBits[]) {
    for (const sym of [false, true]) {
      it(`${bits} bits ${sym ? 'sym' : 'asym'}: pack -> unpack -> dequantize equals the quantizer's reconstruction`, () => {
        const out = 64,
          inF = 256;
        const w = randn(out * inF, rng(bits * 7 + (sym ? 1 : 0)), 0.02);
        const ql = quantizeRtn(w, out, inF, { bits, groupSize: 128, sym });
        const deq = dequantize(ql);
        const back = dequantize(unpackGptq(packGptq(ql), out, inF, ql.spec));
        expect(back).toEqual(deq);
        // round-to-nearest error is at most half a step (plus fp16 scale rounding) except where clipped
        let maxRel = 0;
        for (let o = 0; o < out; o++)
          for (let i = 0; i < inF; i++) {
            const s = ql.scales[Math.floor(i / 128) * out + o]!;
            maxRel = Math.max(maxRel, Math.abs(deq[o * inF + i]! - w[o * inF + i]!) / s);
          }
        expect(maxRel).toBeLessThanOrEqual(sym ? 1.01 : 0.51);
      });
    }
  }
});
