import { describe, expect, it } from 'vitest';
import {
  bf16BitsToF32,
  DTYPES,
  e4m3ToF32,
  e5m2ToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToE4m3,
  f32ToE5m2,
  f32ToF16Bits,
  fromF32,
  toF32,
  type Dtype,
} from '../../src/io/dtype.js';
import { seededRandom as rng } from '../../kernels/random.js';

const f32 = (x: number) => Math.fround(x);

/** Independent reference: the code whose decoded value is nearest to v in float64, ties to the even code. */
const decodedCache = new Map<unknown, Float64Array>();
function bruteNearest(v: number, codes: number[], decode: (c: number) => number): number {
  let table = decodedCache.get(codes);
  if (!table) decodedCache.set(codes, (table = Float64Array.from(codes, decode)));
  let best = -1;
  let bestD = Infinity;
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i]!;
    const d = Math.abs(table[i]! - v);
    if (d < bestD || (d === bestD && (c & 1) === 0)) {
      best = c;
      bestD = d;
    }
  }
  return best;
}

describe('F16', () => {
  it('decodes reference bit patterns', () => {
    expect(f16BitsToF32(0x3c00)).toBe(1);
    expect(f16BitsToF32(0xc000)).toBe(-2);
    expect(f16BitsToF32(0x7bff)).toBe(65504);
    expect(f16BitsToF32(0x0001)).toBe(2 ** -24);
    expect(f16BitsToF32(0x03ff)).toBe(6.097555160522461e-5);
    expect(f16BitsToF32(0x0400)).toBe(6.103515625e-5);
    expect(f16BitsToF32(0x3555)).toBe(0.333251953125);
    expect(f16BitsToF32(0x7c00)).toBe(Infinity);
    expect(f16BitsToF32(0xfc00)).toBe(-Infinity);
    expect(f16BitsToF32(0x7e00)).toBeNaN();
    expect(Object.is(f16BitsToF32(0x8000), -0)).toBe(true);
  });
  it('encodes with round-to-nearest-even, overflow and gradual underflow', () => {
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65519)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00); // tie between 65504 and 65536: even side is Inf
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie -> even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie -> even (up)
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // half the smallest subnormal: tie to 0
    expect(f32ToF16Bits(f32(2 ** -25 * (1 + 2 ** -23)))).toBe(0x0001);
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(0x0002);
    expect(f32ToF16Bits(6.097555160522461e-5)).toBe(0x03ff);
    expect(f32ToF16Bits(1e-8)).toBe(0);
    expect(f32ToF16Bits(-0)).toBe(0x8000);
    expect(f32ToF16Bits(-Infinity)).toBe(0xfc00);
    expect(f16BitsToF32(f32ToF16Bits(NaN))).toBeNaN();
    expect(f32ToF16Bits(1e10)).toBe(0x7c00);
  });
  it('round-trips every non-NaN code exactly and agrees with a brute-force nearest search', () => {
    const bad: number[] = [];
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7c00) === 0x7c00 && h & 0x3ff) continue;
      if (f32ToF16Bits(f16BitsToF32(h)) !== h) bad.push(h);
    }
    expect(bad).toEqual([]);
    const pos: number[] = [];
    for (let h = 0; h <= 0x7c00; h++) pos.push(h);
    // brute force on a sample (positive codes; the sign bit is independent)
    const r = rng(1);
    for (let i = 0; i < 300; i++) {
      const v = f32(2 ** (r() * 36 - 26) * (1 + r()));
      expect(f32ToF16Bits(v)).toBe(bruteNearest(v, pos, f16BitsToF32));
    }
  });
});

describe('BF16', () => {
  it('decodes and encodes reference values', () => {
    expect(bf16BitsToF32(0x3f80)).toBe(1);
    expect(bf16BitsToF32(0x7f7f)).toBe(3.3895313892515355e38);
    expect(bf16BitsToF32(0x0001)).toBe(9.183549615799121e-41);
    expect(bf16BitsToF32(0x7f80)).toBe(Infinity);
    expect(bf16BitsToF32(0xff80)).toBe(-Infinity);
    expect(bf16BitsToF32(0x7fc0)).toBeNaN();
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie -> even
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(f32ToBf16Bits(3.4028234663852886e38)).toBe(0x7f80); // f32 max rounds to Inf
    expect(f32ToBf16Bits(9.183549615799121e-41)).toBe(0x0001);
    const nanBits = new Uint32Array(Float32Array.of(0).buffer);
    nanBits[0] = 0x7f800001; // signalling NaN whose payload would truncate to Inf
    const b = f32ToBf16Bits(new Float32Array(nanBits.buffer)[0]!);
    expect(bf16BitsToF32(b)).toBeNaN();
  });
  it('round-trips every non-NaN code', () => {
    const bad: number[] = [];
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7f80) === 0x7f80 && h & 0x7f) continue;
      if (f32ToBf16Bits(bf16BitsToF32(h)) !== h) bad.push(h);
    }
    expect(bad).toEqual([]);
  });
});

describe('FP8', () => {
  it('E4M3 reference values', () => {
    expect(e4m3ToF32(0x7e)).toBe(448);
    expect(e4m3ToF32(0xfe)).toBe(-448);
    expect(e4m3ToF32(0x38)).toBe(1);
    expect(e4m3ToF32(0x01)).toBe(0.001953125);
    expect(e4m3ToF32(0x07)).toBe(0.013671875);
    expect(e4m3ToF32(0x08)).toBe(0.015625);
    expect(e4m3ToF32(0x7f)).toBeNaN();
    expect(e4m3ToF32(0xff)).toBeNaN();
    expect(Object.is(e4m3ToF32(0x80), -0)).toBe(true);
    expect(f32ToE4m3(448)).toBe(0x7e);
    expect(f32ToE4m3(500)).toBe(0x7e); // saturates
    expect(f32ToE4m3(Infinity)).toBe(0x7e);
    expect(f32ToE4m3(-Infinity)).toBe(0xfe);
    expect(f32ToE4m3(NaN) & 0x7f).toBe(0x7f);
    expect(f32ToE4m3(1.0625)).toBe(0x38); // tie -> even
    expect(f32ToE4m3(1.1875)).toBe(0x3a); // tie -> even (up)
    expect(f32ToE4m3(2 ** -10)).toBe(0x00); // half the smallest subnormal
    expect(f32ToE4m3(3 * 2 ** -10)).toBe(0x02);
    expect(f32ToE4m3(f32(2 ** -10 * (1 + 2 ** -20)))).toBe(0x01);
    expect(f32ToE4m3(-0.015625)).toBe(0x88);
  });
  it('E5M2 reference values', () => {
    expect(e5m2ToF32(0x7b)).toBe(57344);
    expect(e5m2ToF32(0x7c)).toBe(Infinity);
    expect(e5m2ToF32(0xfc)).toBe(-Infinity);
    expect(e5m2ToF32(0x7d)).toBeNaN();
    expect(e5m2ToF32(0x01)).toBe(1.52587890625e-5);
    expect(e5m2ToF32(0x04)).toBe(2 ** -14);
    expect(e5m2ToF32(0x3c)).toBe(1);
    expect(f32ToE5m2(61439)).toBe(0x7b);
    expect(f32ToE5m2(61440)).toBe(0x7c); // tie between max and Inf -> Inf (even)
    expect(f32ToE5m2(-1e9)).toBe(0xfc);
    expect(f32ToE5m2(1.125)).toBe(0x3c);
    expect(f32ToE5m2(1.375)).toBe(0x3e);
    expect(f32ToE5m2(2 ** -17)).toBe(0x00);
    expect(f32ToE5m2(3 * 2 ** -17)).toBe(0x02);
    expect(e5m2ToF32(f32ToE5m2(NaN))).toBeNaN();
  });
  it('every finite code round-trips; random values match brute-force nearest', () => {
    for (let b = 0; b < 256; b++) {
      if ((b & 0x7f) !== 0x7f) expect(f32ToE4m3(e4m3ToF32(b))).toBe(b);
      if ((b & 0x7f) <= 0x7c) expect(f32ToE5m2(e5m2ToF32(b))).toBe(b);
    }
    const e4 = Array.from({ length: 0x7f }, (_, i) => i);
    const e5 = Array.from({ length: 0x7c }, (_, i) => i);
    const r = rng(2);
    for (let i = 0; i < 2000; i++) {
      const v = f32(2 ** (r() * 28 - 20) * (1 + r()));
      if (v <= 448) expect(f32ToE4m3(v)).toBe(bruteNearest(v, e4, e4m3ToF32));
      if (v < 57344) expect(f32ToE5m2(v)).toBe(bruteNearest(v, e5, e5m2ToF32));
    }
  });
});

describe('array conversions', () => {
  const special = Float32Array.of(0, -0, 1, -1.5, 65504, 1e-7, Math.PI, -448, 1e30, -1e-30, Infinity, -Infinity, NaN);
  it('array encoders agree with the scalar ones for every float dtype', () => {
    const cases: [Dtype, (v: number) => number, (b: number) => number][] = [
      ['F16', f32ToF16Bits, f16BitsToF32],
      ['BF16', f32ToBf16Bits, bf16BitsToF32],
      ['F8_E4M3', f32ToE4m3, e4m3ToF32],
      ['F8_E5M2', f32ToE5m2, e5m2ToF32],
    ];
    for (const [d, enc, dec] of cases) {
      const bytes = fromF32(special, d);
      const codes = d === 'F16' || d === 'BF16' ? new Uint16Array(bytes.buffer) : bytes;
      expect([...codes]).toEqual([...special].map(enc));
      const back = toF32(bytes, d);
      expect([...back].map(String)).toEqual([...codes].map((c) => String(dec(c))));
    }
  });
  it('integer and wide dtypes convert exactly', () => {
    const v = Float32Array.of(0, 1, -1, 127, -128, 3, 100);
    for (const d of ['F64', 'F32', 'I64', 'I32', 'I16', 'I8'] as Dtype[]) {
      expect([...toF32(fromF32(v, d), d)]).toEqual([...v]);
    }
    expect([...toF32(fromF32(Float32Array.of(0, 1, 255), 'U8'), 'U8')]).toEqual([0, 1, 255]);
    expect([...toF32(fromF32(Float32Array.of(0, 2, -1), 'BOOL'), 'BOOL')]).toEqual([0, 1, 1]);
    expect([...toF32(fromF32(Float32Array.of(NaN), 'I64'), 'I64')]).toEqual([0]);
  });
  it('decodes from unaligned views', () => {
    const raw = new Uint8Array(9);
    raw.set(new Uint8Array(Float32Array.of(1.5, -2).buffer), 1);
    expect([...toF32(raw.subarray(1), 'F32')]).toEqual([1.5, -2]);
    expect(() => toF32(raw.subarray(0, 3), 'F32')).toThrowError(/not a multiple/);
    expect(DTYPES.length).toBe(12);
  });
});
