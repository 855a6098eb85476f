/**
 * llama.cpp's IQ4_NL / IQ4_XS (kernels/ggml/iq4.ts): the quantizer writes the bytes llama.cpp's own
 * ggml_quantize_chunk wrote for the same seeded rows, with and without an importance matrix (recorded in
 * fixtures/iq34-llama.json by `npx tsx bench/gguf-iq34.ts --quant /tmp/gguf-quant --write-fixture ...`); the decoders
 * rebuild hand-packed blocks to the values the format defines; GPTQ into IQ4 writes bytes that decode to what it fed
 * back and lowers the Hessian-weighted error below the rounding; rows that are not whole 256-blocks take IQ4_NL.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { dequantizeGgml, quantizeGgml } from '../../kernels/ggml/codecs.js';
import { gptqGgml, hessianError } from '../../kernels/ggml/gptq.js';
import { KVALUES_IQ4NL, bestIndex, fitIq4Block, iq4Steps } from '../../kernels/ggml/iq4.js';
import { accumulateHessian, prepareGptq } from '../../kernels/quant/gptq.js';
import { seededRandom } from '../../kernels/random.js';
import { f32ToF16Bits } from '../../src/io/dtype.js';
import { fittingType } from '../../src/gguf/export.js';
import { typeOptions } from '../../src/gguf/quantize.js';
import type { GgmlType } from '../../src/gguf/format.js';
import { kfitRows } from './kfit-rows.js';
import { useWasm } from '../quantize/tf.js';

const fixture = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'iq34-llama.json'), 'utf8')) as Record<string, string>;
const IQ4: GgmlType[] = ['IQ4_NL', 'IQ4_XS'];

describe("IQ4 quantizers equal llama.cpp's quantize_iq4_nl / quantize_iq4_xs", () => {
  const { x, im } = kfitRows(2, 512);
  it.each(IQ4.flatMap((t) => [`${t}.imatrix`, `${t}.plain`]))('%s: byte for byte', (key) => {
    const [type, tag] = key.split('.') as [GgmlType, string];
    const ours = Buffer.from(quantizeGgml(type, x, 2, 512, tag === 'imatrix' ? im : undefined)).toString('hex');
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

describe('GPTQ into IQ4', () => {
  beforeAll(useWasm);
  it('bytes decode to what GPTQ fed back; the Hessian-weighted error is below the rounding with the same importance', () => {
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
    for (const t of IQ4) {
      const res = gptqGgml(t, w, out, inF, prepareGptq(h, inF, { damp: 0.01 }), diag);
      const dec = dequantizeGgml(t, res.bytes, out, inF);
      const bad = dec.findIndex((v, i) => v !== res.deq[i]);
      expect(bad, `${t}: value ${bad}`).toBe(-1);
      const rtn = dequantizeGgml(t, quantizeGgml(t, w, out, inF, diag), out, inF);
      const eR = hessianError(w, rtn, out, inF, h);
      const eG = hessianError(w, res.deq, out, inF, h);
      expect(eG, t).toBeLessThan(0.8 * eR);
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
