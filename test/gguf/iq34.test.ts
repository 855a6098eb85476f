/**
 * llama.cpp's IQ4_NL / IQ4_XS (kernels/ggml/iq4.ts) and IQ3_XXS / IQ3_S (iq3.ts): the quantizers write the bytes
 * llama.cpp's own ggml_quantize_chunk wrote for the same seeded rows, with and without an importance matrix, and on
 * rows of special cases (recorded in
 * fixtures/iq34-llama.json by `npx tsx bench/gguf-iq34.ts --quant /tmp/gguf-quant --write-fixture ...`); the decoders
 * rebuild hand-packed blocks to the values the format defines; GPTQ into IQ4 writes bytes that decode to what it fed
 * back and lowers the Hessian-weighted error below the rounding; rows that are not whole 256-blocks take IQ4_NL.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { dequantizeGgml, quantizeGgml } from '../../kernels/ggml/codecs.js';
import { gptqGgml, hessianError } from '../../kernels/ggml/gptq.js';
import { GGML_COMMON_SPOT } from '../../kernels/ggml/iq3-grids.js';
import { iq3DecodedGrid, ksign, llamaIq3sLayout } from '../../kernels/ggml/iq3.js';
import { KVALUES_IQ4NL, bestIndex, fitIq4Block, iq4Steps } from '../../kernels/ggml/iq4.js';
import { accumulateHessian, prepareGptq } from '../../kernels/quant/gptq.js';
import { seededRandom } from '../../kernels/random.js';
import { f32ToF16Bits } from '../../src/io/dtype.js';
import { fittingType } from '../../src/gguf/export.js';
import { typeOptions } from '../../src/gguf/quantize.js';
import type { GgmlType } from '../../src/gguf/format.js';
import { hardRows, kfitRows } from './kfit-rows.js';
import { useWasm } from '../quantize/tf.js';

const fixture = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'iq34-llama.json'), 'utf8')) as Record<string, string>;
const IQ4: GgmlType[] = ['IQ4_NL', 'IQ4_XS'];
const IQ3: GgmlType[] = ['IQ3_XXS', 'IQ3_S'];

describe("IQ quantizers equal llama.cpp's quantize_iq4_nl / _iq4_xs / _iq3_xxs / _iq3_s", () => {
  const { x, im } = kfitRows(2, 512);
  const hard = hardRows(512);
  it.each([...IQ4, ...IQ3].flatMap((t) => [`${t}.imatrix`, `${t}.plain`, `${t}.hard`]))('%s: byte for byte', (key) => {
    const [type, tag] = key.split('.') as [GgmlType, string];
    let q = tag === 'hard' ? quantizeGgml(type, hard.x, hard.rows, 512, hard.im) : quantizeGgml(type, x, 2, 512, tag === 'imatrix' ? im : undefined);
    // IQ3_S after an all-zero sub-block: ours in place, llama.cpp's shifted (iq3.ts); compared in llama.cpp's layout
    if (type === 'IQ3_S' && tag === 'hard') q = llamaIq3sLayout(q, hard.x, hard.rows, 512);
    const ours = Buffer.from(q).toString('hex');
    expect(ours.length).toBe(fixture[key]!.length);
    expect(ours).toBe(fixture[key]);
  });
});

describe('IQ4 decoders', () => {
  it('best_index_int8: the nearest level, ties to the upper one, clamped at the ends', () => {
    expect(bestIndex(-1000)).toBe(0);
    expect(bestIndex(1000)).toBe(15);
    expect(bestIndex(0)).toBe(8); // 0 is 10 from -10 and 1 from 1
    expect(bestIndex(-4.5)).toBe(8); // -10 and 1: 5.5 vs 5.5 -> upper
    expect(bestIndex(-4.6)).toBe(7);
    expect(bestIndex(100)).toBe(14); // 89 vs 113: 11 < 13
  });

  it('IQ4_NL: d * kvalues[nibble], low nibbles first', () => {
    const b = new Uint8Array(18);
    const d = f32ToF16Bits(0.5);
    b[0] = d & 0xff;
    b[1] = d >> 8;
    for (let j = 0; j < 16; j++) b[2 + j] = j | ((15 - j) << 4);
    const v = dequantizeGgml('IQ4_NL', b, 1, 32);
    for (let j = 0; j < 16; j++) {
      expect(v[j]).toBe(0.5 * KVALUES_IQ4NL[j]!);
      expect(v[16 + j]).toBe(0.5 * KVALUES_IQ4NL[15 - j]!);
    }
  });

  it('IQ4_XS: d * (ls - 32) * kvalues[nibble], 6-bit ls split into scales_l nibbles and scales_h pairs', () => {
    const b = new Uint8Array(136);
    const d = f32ToF16Bits(0.25);
    b[0] = d & 0xff;
    b[1] = d >> 8;
    const ls = [0, 1, 31, 32, 33, 47, 62, 63];
    let h = 0;
    ls.forEach((l, ib) => {
      b[4 + (ib >> 1)]! |= (l & 0xf) << (4 * (ib % 2));
      h |= (l >> 4) << (2 * ib);
    });
    b[2] = h & 0xff;
    b[3] = h >> 8;
    for (let i = 0; i < 128; i++) b[8 + i] = (i % 16) | (((i + 3) % 16) << 4);
    const v = dequantizeGgml('IQ4_XS', b, 1, 256);
    for (let ib = 0; ib < 8; ib++)
      for (let j = 0; j < 16; j++) {
        expect(v[32 * ib + j]).toBe(Math.fround(0.25 * (ls[ib]! - 32)) * KVALUES_IQ4NL[j]!);
        expect(v[32 * ib + 16 + j]).toBe(Math.fround(0.25 * (ls[ib]! - 32)) * KVALUES_IQ4NL[(j + 3) % 16]!);
      }
  });

  it('round trip: each value decodes to the level nearest it on its sub-block step (clamped beyond the end levels)', () => {
    const { x } = kfitRows(4, 512);
    for (const t of IQ4) {
      const block = t === 'IQ4_NL' ? 32 : 256;
      const q = quantizeGgml(t, x, 4, 512);
      expect(q.length).toBe(t === 'IQ4_NL' ? (4 * 512 * 18) / 32 : (4 * 512 * 136) / 256);
      const v = dequantizeGgml(t, q, 4, 512);
      let worst = 0;
      for (let b = 0; b < x.length / block; b++) {
        const steps = iq4Steps(t as 'IQ4_NL' | 'IQ4_XS', fitIq4Block(t as 'IQ4_NL' | 'IQ4_XS', x, b * block));
        for (let i = b * block; i < (b + 1) * block; i++) {
          const dl = Math.abs(steps[(i - b * block) >> 5]!);
          const e = Math.abs(v[i]! - x[i]!);
          // the widest gap between levels is 24 steps; beyond 113 (or -127) steps the end level is the nearest
          if (Math.abs(x[i]!) < dl * 113) expect(e, `${t} value ${i}`).toBeLessThanOrEqual(dl * 12 * (1 + 1e-6));
          // nearest: no other level of the same step is closer
          const closest = Math.min(...KVALUES_IQ4NL.map((k) => Math.abs(steps[(i - b * block) >> 5]! * k - x[i]!)));
          // llama.cpp picks IQ4_XS's levels on the float32 step before d is stored as float16 (up to 2^-11 of it)
          if (e > closest + dl * 127 * 2 ** -11) expect.fail(`${t} value ${i}: error ${e}, a level at ${closest}`);
          worst = Math.max(worst, e);
        }
      }
      expect(worst).toBeGreaterThan(0);
    }
  });
});

describe('IQ3 decoders', () => {
  const u32 = (g: Uint8Array, k: number) => (g[4 * k]! | (g[4 * k + 1]! << 8) | (g[4 * k + 2]! << 16) | (g[4 * k + 3]! << 24)) >>> 0;
  it("the grids decode as ggml-common.h's iq3xxs_grid / iq3s_grid; ksigns_iq2xs makes the count of signs even", () => {
    const xxs = iq3DecodedGrid('IQ3_XXS');
    const s = iq3DecodedGrid('IQ3_S');
    expect([u32(xxs, 0), u32(xxs, 1), u32(xxs, 255)]).toEqual(GGML_COMMON_SPOT.iq3xxs);
    expect([u32(s, 0), u32(s, 1), u32(s, 511)]).toEqual(GGML_COMMON_SPOT.iq3s);
    expect(new Set(xxs)).toEqual(new Set([4, 12, 20, 28, 36, 44, 52, 62]));
    expect(new Set(s)).toEqual(new Set([1, 3, 5, 7, 9, 11, 13, 15]));
    // ggml-common.h ksigns_iq2xs starts 0, 129, 130, 3, 132, 5, 6, 135 and ends 255
    expect([0, 1, 2, 3, 4, 5, 6, 7, 127].map(ksign)).toEqual([0, 129, 130, 3, 132, 5, 6, 135, 255]);
  });

  it('IQ3_XXS: d (0.5 + s) / 2 * grid * sign per 32 values, the 8th sign from the parity of the 7 stored', () => {
    const b = new Uint8Array(98);
    const d = f32ToF16Bits(0.125);
    b[0] = d & 0xff;
    b[1] = d >> 8;
    for (let i = 0; i < 64; i++) b[2 + i] = (i * 37) & 255;
    for (let ib = 0; ib < 8; ib++) {
      const sgn = [ib * 5, 127 - ib, 1, 64 + ib].map((v) => v & 127);
      const v = (sgn[0]! | (sgn[1]! << 7) | (sgn[2]! << 14) | (sgn[3]! << 21) | ((ib * 2 + 1) << 28)) >>> 0;
      for (let k = 0; k < 4; k++) b[66 + 4 * ib + k] = (v >>> (8 * k)) & 0xff;
    }
    const y = dequantizeGgml('IQ3_XXS', b, 1, 256);
    const g = iq3DecodedGrid('IQ3_XXS');
    for (let ib = 0; ib < 8; ib++) {
      const db = Math.fround(0.125 * (0.5 + ib * 2 + 1) * 0.5);
      const sgn = [ib * 5, 127 - ib, 1, 64 + ib].map((v) => ksign(v & 127));
      for (let i = 0; i < 32; i++) {
        const idx = b[2 + 8 * ib + (i >> 2)]!;
        const mag = Math.fround(db * g[4 * idx + (i % 4)]!);
        expect(y[32 * ib + i]).toBe(sgn[i >> 3]! & (1 << (i % 8)) ? -mag : mag);
      }
    }
  });

  it('IQ3_S: d (1 + 2 s) * grid * sign, 9-bit indices (qh), every sign stored, 4-bit scales in pairs', () => {
    const b = new Uint8Array(110);
    const d = f32ToF16Bits(0.0625);
    b[0] = d & 0xff;
    b[1] = d >> 8;
    for (let i = 0; i < 64; i++) b[2 + i] = (i * 53 + 7) & 255;
    for (let ib = 0; ib < 8; ib++) b[66 + ib] = (ib * 29) & 255;
    for (let i = 0; i < 32; i++) b[74 + i] = (i * 71 + 3) & 255;
    for (let i = 0; i < 4; i++) b[106 + i] = (i * 3) | ((15 - i) << 4);
    const y = dequantizeGgml('IQ3_S', b, 1, 256);
    const g = iq3DecodedGrid('IQ3_S');
    for (let ib = 0; ib < 8; ib++) {
      const s = ib % 2 ? 15 - (ib >> 1) : (ib >> 1) * 3;
      const db = Math.fround(0.0625 * (1 + 2 * s));
      for (let i = 0; i < 32; i++) {
        const k = i >> 2;
        const idx = b[2 + 8 * ib + k]! | (((b[66 + ib]! >> k) & 1) << 8);
        const mag = Math.fround(db * g[4 * idx + (i % 4)]!);
        expect(y[32 * ib + i]).toBe(b[74 + 4 * ib + (i >> 3)]! & (1 << (i % 8)) ? -mag : mag);
      }
    }
  });

  it('IQ3_S after an all-zero sub-block: the later sub-blocks decode in place (llama.cpp 3f545bec writes them misplaced)', () => {
    const h = hardRows(512);
    const q = quantizeGgml('IQ3_S', h.x, h.rows, 512, h.im);
    // row 6 has its values 64..95 zero: llama.cpp's layout of the same codes decodes the rest of that block wrongly
    const rel = (v: Float32Array, a: number, b: number) => {
      let e = 0;
      let x2 = 0;
      for (let i = a; i < b; i++) {
        e += (v[i]! - h.x[i]!) ** 2;
        x2 += h.x[i]! ** 2;
      }
      return Math.sqrt(e / x2);
    };
    const ours = dequantizeGgml('IQ3_S', q, h.rows, 512);
    const theirs = dequantizeGgml('IQ3_S', llamaIq3sLayout(q, h.x, h.rows, 512), h.rows, 512);
    // measured 0.136 (ours) and 1.469 (llama.cpp's layout) on values 96..255 of row 6; 0.134 on row 0's first block
    expect(rel(ours, 6 * 512 + 96, 6 * 512 + 256)).toBeLessThan(0.2);
    expect(rel(theirs, 6 * 512 + 96, 6 * 512 + 256)).toBeGreaterThan(1);
    expect(rel(ours, 0, 256)).toBeLessThan(0.2);
  });

  it('round trip: each value decodes to its sign, a grid level at its sub-block scale; error well below the values', () => {
    const { x, im } = kfitRows(4, 512);
    for (const t of IQ3) {
      const q = quantizeGgml(t, x, 4, 512, im);
      expect(q.length).toBe(((4 * 512) / 256) * (t === 'IQ3_XXS' ? 98 : 110));
      const v = dequantizeGgml(t, q, 4, 512);
      let e2 = 0;
      let x2 = 0;
      let wrongSign = 0;
      for (let i = 0; i < v.length; i++) {
        e2 += (v[i]! - x[i]!) ** 2;
        x2 += x[i]! ** 2;
        if (v[i]! * x[i]! < 0) wrongSign++;
      }
      // measured on these rows: relative rms error 0.249 (XXS) / 0.200 (S), Q3_K 0.190; IQ3_XXS flips the least
      // important sign of each group of 8 with an odd count of negatives (0.070 of the values), IQ3_S none
      expect(Math.sqrt(e2 / x2), t).toBeLessThan(t === 'IQ3_XXS' ? 0.27 : 0.22);
      expect(wrongSign / v.length, t).toBeLessThan(t === 'IQ3_XXS' ? 0.08 : 1e-9);
    }
  });
});

describe('GPTQ into IQ4 and IQ3', () => {
  beforeAll(useWasm);
  it('bytes decode to what GPTQ fed back (IQ3: one grid point per 4 columns, the XXS sign parity kept); the Hessian-weighted error is below the rounding with the same importance', () => {
    const r = seededRandom(7);
    const g = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
    const out = 16;
    const inF = 256;
    const T = 600;
    // correlated inputs (a few shared directions), as a layer's activations are
    const base = Array.from({ length: 8 }, () => Float32Array.from({ length: inF }, g));
    const X = new Float32Array(T * inF);
    for (let t = 0; t < T; t++) {
      const c = base.map(() => g());
      for (let i = 0; i < inF; i++) X[t * inF + i] = 0.3 * g() + c.reduce((s, ci, k) => s + ci * base[k]![i]!, 0);
    }
    const w = Float32Array.from({ length: out * inF }, () => 0.02 * g());
    const h = new Float64Array(inF * inF);
    accumulateHessian(h, X, T, inF);
    const diag = Float32Array.from({ length: inF }, (_, i) => h[i * inF + i]!);
    for (const t of [...IQ4, ...IQ3]) {
      const res = gptqGgml(t, w, out, inF, prepareGptq(h, inF, { damp: 0.01 }), diag);
      const dec = dequantizeGgml(t, res.bytes, out, inF);
      const bad = dec.findIndex((v, i) => v !== res.deq[i]);
      expect(bad, `${t}: value ${bad}`).toBe(-1);
      const rtn = dequantizeGgml(t, quantizeGgml(t, w, out, inF, diag), out, inF);
      const eR = hessianError(w, rtn, out, inF, h);
      const eG = hessianError(w, res.deq, out, inF, h);
      // measured 0.025 (IQ4_NL), 0.034 (IQ4_XS), 0.105 (IQ3_XXS), 0.045 (IQ3_S) of the rounding's error on these
      // strongly correlated inputs
      expect(eG, t).toBeLessThan(0.3 * eR);
    }
  });
});

describe("llama.cpp's fallback for IQ types", () => {
  it('rows that are not whole 256-blocks take IQ4_NL (F16 when not whole 32-blocks)', () => {
    expect(fittingType('IQ4_XS', 128).type).toBe('IQ4_NL');
    expect(fittingType('IQ3_S', 96).type).toBe('IQ4_NL');
    expect(fittingType('IQ4_XS', 256).type).toBe('IQ4_XS');
    expect(fittingType('IQ4_XS', 100).type).toBe('F16');
    // on a 128-wide tensor IQ4_XS and IQ4_NL are one option of IQ4_NL's bytes (18 per 32 values)
    const opts = typeOptions([128, 64], ['IQ4_XS', 'IQ4_NL', 'Q4_K']);
    expect(opts.map((o) => [o.type, o.bytes])).toEqual([
      ['IQ4_NL', (128 / 32) * 18 * 64],
      ['Q5_0', (128 / 32) * 22 * 64],
    ]);
    expect(opts[0]!.requested).toEqual(['IQ4_XS', 'IQ4_NL']);
  });
});
