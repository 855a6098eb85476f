/**
 * IQ2_XXS / IQ2_XS / IQ2_S (kernels/ggml/iq2.ts): the quantizer's bytes equal llama.cpp's own ggml_quantize_chunk on
 * seeded rows with an importance matrix (recorded in fixtures/iq2-llama.json by `npx tsx bench/gguf-iq2.ts --quant
 * /tmp/gguf-quant --write-fixture ...`), the decoders rebuild hand-made blocks as the format defines them, and
 * GPTQ's group-by-group choice of grid points (kernels/ggml/gptq.ts) lowers the Hessian-weighted error below
 * llama.cpp's rounding with the Hessian diagonal as importance, writing bytes that decode to what it fed back.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { gptqGgml, hessianError } from '../../kernels/ggml/gptq.js';
import { accumulateHessian, prepareGptq } from '../../kernels/quant/gptq.js';
import { rng, useWasm } from '../quantize/tf.js';
import { IQ2_BYTES, IQ2_TYPES, dequantizeMatrixIq2, dequantizeRowIq2, quantizeMatrixIq2, type Iq2Type } from '../../kernels/ggml/iq2.js';
import { IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID } from '../../kernels/ggml/iq2-grids.js';
import { dequantizeMatrix, quantizeMatrix } from '../../kernels/ggml/kquants.js';
import { f16BitsToF32 } from '../../src/io/dtype.js';
import { kfitRows } from './kfit-rows.js';

const fixture = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'iq2-llama.json'), 'utf8')) as Record<string, string>;

describe("IQ2 quantizers equal llama.cpp's quantize_iq2_* with an importance matrix", () => {
  it.each(IQ2_TYPES)('%s: byte for byte', (type) => {
    const { x, im } = kfitRows(2, 512);
    const ours = Buffer.from(quantizeMatrixIq2(type, x, 2, 512, im)).toString('hex');
    expect(ours.length).toBe(2 * 2 * 2 * IQ2_BYTES[type]);
    expect(ours).toBe(fixture[type]);
  });
  it('IQ2_S without an importance matrix: llama.cpp’s own weights, byte for byte', () => {
    const { x } = kfitRows(2, 512);
    expect(Buffer.from(quantizeMatrixIq2('IQ2_S', x, 2, 512)).toString('hex')).toBe(fixture.IQ2_S_noimatrix);
  });
});

const byte = (grid: readonly bigint[], g: number, j: number) => Number((grid[g]! >> BigInt(8 * j)) & 0xffn);

describe('IQ2 decoders', () => {
  // d = 0.5 as float16 bits 0x3800; each value is d * (0.5 + s) * 0.25 * grid byte, negated by its sign bit
  it('IQ2_XXS: grid bytes, 7 sign bits with even parity, the 4-bit scale in the top of the second word', () => {
    const b = new Uint8Array(66);
    b[0] = 0x00;
    b[1] = 0x38;
    // first 32 values: points 5, 17, 100, 255; signs 1, 3 (bits 0 and 1), 0, 127; scale 9
    b.set([5, 17, 100, 255], 2);
    const aux1 = (1 | (3 << 7) | (0 << 14) | (127 << 21) | (9 << 28)) >>> 0;
    for (let k = 0; k < 4; k++) b[6 + k] = (aux1 >>> (8 * k)) & 0xff;
    const y = dequantizeRowIq2('IQ2_XXS', b, 256);
    const db = 0.5 * 9.5 * 0.25;
    const pts = [5, 17, 100, 255];
    // ksigns: 1 -> bits 0 and 7 (an odd count gets the 8th), 3 -> bits 0 and 1, 127 -> all eight
    const neg = [[0, 7], [0, 1], [], [0, 1, 2, 3, 4, 5, 6, 7]];
    for (let l = 0; l < 4; l++) for (let j = 0; j < 8; j++) expect(y[8 * l + j]).toBe((neg[l]!.includes(j) ? -1 : 1) * db * byte(IQ2XXS_GRID, pts[l]!, j));
    // the other sub-blocks have scale 0 and point 0: d * 0.5 * 0.25 * 8
    for (let i = 32; i < 256; i++) expect(y[i]).toBe(0.5 * 0.5 * 0.25 * 8);
  });
  it('IQ2_XS: 9-bit point, 7 sign bits, two 4-bit scales per 32 values', () => {
    const b = new Uint8Array(74);
    b[1] = 0x38;
    const qs = [511 | (5 << 9), 300, 2 | (64 << 9), 0];
    for (let l = 0; l < 4; l++) {
      b[2 + 2 * l] = qs[l]! & 0xff;
      b[3 + 2 * l] = qs[l]! >> 8;
    }
    b[66] = 3 | (14 << 4);
    const y = dequantizeRowIq2('IQ2_XS', b, 256);
    const neg = [[0, 2], [], [6, 7], []];
    const pts = [511, 300, 2, 0];
    for (let l = 0; l < 4; l++) {
      const db = 0.5 * (l < 2 ? 3.5 : 14.5) * 0.25;
      for (let j = 0; j < 8; j++) expect(y[8 * l + j]).toBe((neg[l]!.includes(j) ? -1 : 1) * db * byte(IQ2XS_GRID, pts[l]!, j));
    }
  });
  it('IQ2_S: 10-bit point (2 high bits in qh), 8 free sign bits', () => {
    const b = new Uint8Array(82);
    b[1] = 0x38;
    const pts = [1023, 256, 513, 7];
    for (let l = 0; l < 4; l++) {
      b[2 + l] = pts[l]! & 255;
      b[66]! |= (pts[l]! >> 8) << (2 * l);
    }
    const signs = [0xff, 0x01, 0x80, 0];
    b.set(signs, 34);
    b[74] = 15 | (0 << 4);
    const y = dequantizeRowIq2('IQ2_S', b, 256);
    for (let l = 0; l < 4; l++) {
      const db = 0.5 * (l < 2 ? 15.5 : 0.5) * 0.25;
      for (let j = 0; j < 8; j++) expect(y[8 * l + j]).toBe((signs[l]! & (1 << j) ? -1 : 1) * db * byte(IQ2S_GRID, pts[l]!, j));
    }
  });
  it('rejects rows that are not whole 256-blocks', () => {
    expect(() => dequantizeRowIq2('IQ2_S', new Uint8Array(82), 128)).toThrow(/whole blocks/);
    expect(() => quantizeMatrixIq2('IQ2_XS', new Float32Array(128), 1, 128)).toThrow(/whole blocks/);
  });
});

describe('IQ2 round trip', () => {
  const { x, im } = kfitRows(8, 512);
  const err = (d: Float32Array) => d.reduce((s, v, i) => s + im[i % 512]! * (v - x[i]!) ** 2, 0);
  const errs = Object.fromEntries(IQ2_TYPES.map((t) => [t, err(dequantizeMatrixIq2(t, quantizeMatrixIq2(t as Iq2Type, x, 8, 512, im), 8, 512))]));
  it('more bits, less importance-weighted error: IQ2_XXS > IQ2_XS > IQ2_S, all above Q2_K’s', () => {
    const q2k = err(dequantizeMatrix('Q2_K', quantizeMatrix('Q2_K', x, 8, 512, im), 8, 512));
    expect(errs.IQ2_XXS!).toBeGreaterThan(errs.IQ2_XS!);
    expect(errs.IQ2_XS!).toBeGreaterThan(errs.IQ2_S!);
    expect(errs.IQ2_S!).toBeGreaterThan(q2k);
    // and far below the error of dropping the weights altogether
    expect(errs.IQ2_XXS!).toBeLessThan(0.5 * err(new Float32Array(x.length)));
  });
  it('an all-zero block stays zero (d = 0)', () => {
    for (const t of IQ2_TYPES) {
      const b = quantizeMatrixIq2(t, new Float32Array(256), 1, 256, new Float32Array(256).fill(1));
      expect(f16BitsToF32(b[0]! | (b[1]! << 8))).toBe(0);
      expect([...dequantizeRowIq2(t, b, 256)].every((v) => v === 0)).toBe(true);
    }
  });
});

describe('GPTQ into IQ2 (8-value grid points chosen group by group)', () => {
  // correlated inputs (48 latent directions plus noise), the case error feedback is for
  const out = 16;
  const inF = 512;
  const n = 768;
  const g = rng(7);
  const A = Float32Array.from({ length: 48 * inF }, () => g());
  const X = new Float32Array(n * inF);
  for (let t = 0; t < n; t++)
    for (let j = 0; j < 48; j++) {
      const z = g();
      for (let i = 0; i < inF; i++) X[t * inF + i]! += z * A[j * inF + i]!;
    }
  for (let i = 0; i < X.length; i++) X[i]! += 0.3 * g();
  const W = Float32Array.from({ length: out * inF }, () => 0.02 * g());
  const H = new Float64Array(inF * inF);
  const diag = new Float64Array(inF);
  beforeAll(async () => {
    await useWasm();
    accumulateHessian(H, X, n, inF);
    for (let i = 0; i < inF; i++) diag[i] = H[i * inF + i]!;
  });
  it.each(IQ2_TYPES)('%s: below the rounding, and its bytes decode to the values it fed back', (type) => {
    const q = gptqGgml(type, W, out, inF, prepareGptq(H, inF, { damp: 0.01 }), diag);
    expect(q.bytes.length).toBe(out * 2 * IQ2_BYTES[type]);
    const back = dequantizeMatrixIq2(type, q.bytes, out, inF);
    expect(back.every((v, i) => v === q.deq[i])).toBe(true);
    const rtn = hessianError(W, dequantizeMatrixIq2(type, quantizeMatrixIq2(type, W, out, inF, diag), out, inF), out, inF, H);
    // measured 0.08-0.09 of the rounding's error on these inputs
    expect(hessianError(W, q.deq, out, inF, H)).toBeLessThan(0.3 * rtn);
  });
});
