/**
 * llama.cpp's 4-bit non-linear types, from their definitions (ggml-common.h block_iq4_nl / block_iq4_xs and the
 * table kvalues_iq4nl; ggml-quants.c quantize_row_iq4_nl_impl, quantize_iq4_nl, quantize_iq4_xs,
 * dequantize_row_iq4_nl / _xs). Every value is a block step times one of 16 fixed levels:
 *
 *   type    block  bytes  layout                                               value
 *   IQ4_NL    32     18   d f16 | qs[16]                                       d * kvalues[q]
 *   IQ4_XS   256    136   d f16 | scales_h u16 | scales_l[4] | qs[128]        d * (ls - 32) * kvalues[q]
 *
 * (qs: low nibbles are values 0..15 of each 32, high nibbles 16..31; IQ4_XS's 6-bit sub-scale ls of sub-block ib is
 * the nibble ib%2 of scales_l[ib/2] with bits 2ib..2ib+1 of scales_h above it.) IQ4_NL is what llama.cpp writes for
 * every IQ type whose rows are not whole 256-blocks.
 *
 * The quantizer is llama.cpp's, in float32 (Math.fround at each of its roundings) so that the bytes equal those
 * its ggml_quantize_chunk writes (bench/gguf-kfit.ts counts them): per 32-value sub-block an importance-weighted
 * search of the step over 15 candidate grids (ntry 7), then for IQ4_XS the 6-bit sub-scales against one float16 d
 * and every value's level again on the stored step. For GPTQ (gptq.ts) the same search fits a block's steps and
 * each column takes the level nearest to its error-updated value (iq4Codec).
 */
import { f16BitsToF32, f32ToF16Bits } from '../../src/io/dtype.js';
import { nearestInt } from './kfit.js';

export const IQ4_TYPES = ['IQ4_NL', 'IQ4_XS'] as const;
export type Iq4Type = (typeof IQ4_TYPES)[number];

/** ggml-common.h kvalues_iq4nl: the 16 levels, in increasing order */
export const KVALUES_IQ4NL: readonly number[] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

export const IQ4_SPECS: Readonly<Record<Iq4Type, { block: number; bytes: number }>> = {
  IQ4_NL: { block: 32, bytes: 18 },
  IQ4_XS: { block: 256, bytes: 136 },
};

const fr = Math.fround;
const GROUP_MAX_EPS = fr(1e-15);
const NTRY = 7;
const KV = KVALUES_IQ4NL;

/** best_index_int8: the level nearest to x (x in level units), ties to the upper one as ggml's comparison does. */
export function bestIndex(x: number): number {
  if (x <= KV[0]!) return 0;
  if (x >= KV[15]!) return 15;
  let ml = 0;
  let mu = 15;
  while (mu - ml > 1) {
    const mav = (ml + mu) >> 1;
    if (x < KV[mav]!) mu = mav;
    else ml = mav;
  }
  return fr(x - KV[mu - 1]!) < fr(KV[mu]! - x) ? mu - 1 : mu;
}

/** One fitted block: float16 d, IQ4_XS's stored sub-scales (ls - 32 in -32..31), the levels. */
export interface Iq4Block {
  d: number;
  ls: Int32Array;
  q: Uint8Array;
}

/**
 * quantize_row_iq4_nl_impl with ntry 7 on the block x[o..o+block) (float32 values), importance qw[io..] or none
 * (then llama.cpp weights by x^2): the block's stored d (and sub-scales) and the levels llama.cpp picks.
 */
export function fitIq4Block(type: Iq4Type, x: ArrayLike<number>, o: number, qw?: ArrayLike<number>, io = 0): Iq4Block {
  const sbs = IQ4_SPECS[type].block;
  const nb = sbs / 32;
  const L = new Uint8Array(sbs);
  const ls = new Int32Array(nb);
  const scales = new Float32Array(nb);
  const weight = new Float32Array(32);
  let sigma2 = 0;
  for (let j = 0; j < sbs; j++) sigma2 = fr(sigma2 + fr(x[o + j]! * x[o + j]!));
  sigma2 = fr(sigma2 * fr(2 / sbs));
  let maxScale = 0;
  let amaxScale = 0;
  for (let ib = 0; ib < nb; ib++) {
    const xb = o + ib * 32;
    for (let j = 0; j < 32; j++) {
      const v = x[xb + j]!;
      weight[j] = qw ? fr(fr(qw[io + ib * 32 + j]!) * fr(Math.sqrt(fr(sigma2 + fr(v * v))))) : fr(v * v);
    }
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const ax = Math.abs(x[xb + j]!);
      if (ax > amax) {
        amax = ax;
        max = x[xb + j]!;
      }
    }
    if (amax < GROUP_MAX_EPS) {
      scales[ib] = 0;
      continue;
    }
    let d = fr(-max / KV[0]!);
    let id = fr(1 / d);
    let sumqx = 0;
    let sumq2 = 0;
    for (let j = 0; j < 32; j++) {
      const l = bestIndex(fr(id * x[xb + j]!));
      L[ib * 32 + j] = l;
      const wq = fr(weight[j]! * KV[l]!);
      sumqx = fr(sumqx + fr(wq * x[xb + j]!));
      sumq2 = fr(sumq2 + fr(wq * KV[l]!));
    }
    d = sumq2 > 0 ? fr(sumqx / sumq2) : 0;
    let best = fr(d * sumqx);
    for (let itry = -NTRY; itry <= NTRY; itry++) {
      id = fr((itry + KV[0]!) / max);
      sumqx = 0;
      sumq2 = 0;
      for (let j = 0; j < 32; j++) {
        const l = bestIndex(fr(id * x[xb + j]!));
        const wq = fr(weight[j]! * KV[l]!);
        sumqx = fr(sumqx + fr(wq * x[xb + j]!));
        sumq2 = fr(sumq2 + fr(wq * KV[l]!));
      }
      if (sumq2 > 0 && fr(sumqx * sumqx) > fr(best * sumq2)) {
        d = fr(sumqx / sumq2);
        best = fr(d * sumqx);
      }
    }
    scales[ib] = d;
    if (Math.abs(d) > amaxScale) {
      amaxScale = Math.abs(d);
      maxScale = d;
    }
  }
  if (nb > 1) {
    // the sub-scales are rounded against the float32 d, not its float16 (as llama.cpp does)
    const d = fr(-maxScale / 32);
    const id = d ? fr(1 / d) : 0;
    for (let ib = 0; ib < nb; ib++) {
      const l = Math.max(-32, Math.min(31, nearestInt(fr(id * scales[ib]!))));
      ls[ib] = l;
      const dl = fr(d * l);
      const idl = dl ? fr(1 / dl) : 0;
      for (let j = 0; j < 32; j++) L[ib * 32 + j] = bestIndex(fr(idl * x[o + ib * 32 + j]!));
    }
    return { d: f32ToF16Bits(d), ls, q: L };
  }
  const id = scales[0] ? fr(1 / scales[0]!) : 0;
  for (let j = 0; j < 32; j++) L[j] = bestIndex(fr(id * x[o + j]!));
  return { d: f32ToF16Bits(scales[0]!), ls, q: L };
}

/** The decoder's step of each 32-value sub-block of a fitted block (float32, as dequantize_row_iq4_* computes it). */
export function iq4Steps(type: Iq4Type, b: Pick<Iq4Block, 'd' | 'ls'>): Float32Array {
  const d = f16BitsToF32(b.d);
  if (type === 'IQ4_NL') return Float32Array.of(d);
  return Float32Array.from(b.ls, (l) => fr(d * l));
}

export function packIq4Block(type: Iq4Type, b: Iq4Block, out: Uint8Array, o: number): void {
  out[o] = b.d & 0xff;
  out[o + 1] = b.d >> 8;
  let qs = o + 2;
  if (type === 'IQ4_XS') {
    let h = 0;
    for (let ib = 0; ib < 8; ib++) {
      const l = b.ls[ib]! + 32;
      if (ib % 2 === 0) out[o + 4 + ib / 2] = l & 0xf;
      else out[o + 4 + (ib >> 1)] |= (l & 0xf) << 4;
      h |= (l >> 4) << (2 * ib);
    }
    out[o + 2] = h & 0xff;
    out[o + 3] = h >> 8;
    qs = o + 8;
  }
  const nsub = IQ4_SPECS[type].block / 32;
  for (let i = 0; i < nsub; i++) for (let j = 0; j < 16; j++) out[qs + 16 * i + j] = b.q[32 * i + j]! | (b.q[32 * i + 16 + j]! << 4);
}

/** quantize_iq4_nl / quantize_iq4_xs: rows of n values (a multiple of the block) with an optional importance per column. */
export function quantizeIq4Matrix(type: Iq4Type, x: Float32Array, rows: number, n: number, imatrix?: ArrayLike<number>): Uint8Array {
  const { block, bytes } = IQ4_SPECS[type];
  if (n % block !== 0) throw new RangeError(`${type}: a row of ${n} values is not whole blocks of ${block}`);
  const nb = n / block;
  const out = new Uint8Array(rows * nb * bytes);
  const xs = x instanceof Float32Array ? x : Float32Array.from(x);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      const blk = fitIq4Block(type, xs, r * n + b * block, imatrix, b * block);
      packIq4Block(type, blk, out, (r * nb + b) * bytes);
    }
  }
  return out;
}

/** dequantize_row_iq4_nl / _xs over `rows` rows of n values. */
export function dequantizeIq4Matrix(type: Iq4Type, bytes: Uint8Array, rows: number, n: number): Float32Array {
  const { block, bytes: bb } = IQ4_SPECS[type];
  if (n % block !== 0) throw new RangeError(`${type}: ${n} values are not whole blocks of ${block}`);
  const nb = (rows * n) / block;
  if (bytes.length < nb * bb) throw new RangeError(`${type}: ${bytes.length} bytes for ${nb} blocks of ${bb}`);
  const out = new Float32Array(rows * n);
  let y = 0;
  for (let i = 0; i < nb; i++) {
    const o = i * bb;
    const d = f16BitsToF32(bytes[o]! | (bytes[o + 1]! << 8));
    if (type === 'IQ4_NL') {
      for (let j = 0; j < 16; j++) {
        out[y + j] = fr(d * KV[bytes[o + 2 + j]! & 0xf]!);
        out[y + j + 16] = fr(d * KV[bytes[o + 2 + j]! >> 4]!);
      }
      y += 32;
      continue;
    }
    const sh = bytes[o + 2]! | (bytes[o + 3]! << 8);
    for (let ib = 0; ib < 8; ib++) {
      const lsv = ((bytes[o + 4 + (ib >> 1)]! >> (4 * (ib % 2))) & 0xf) | (((sh >> (2 * ib)) & 3) << 4);
      const dl = fr(d * (lsv - 32));
      const qs = o + 8 + 16 * ib;
      for (let j = 0; j < 16; j++) {
        out[y + j] = fr(dl * KV[bytes[qs + j]! & 0xf]!);
        out[y + j + 16] = fr(dl * KV[bytes[qs + j]! >> 4]!);
      }
      y += 32;
    }
  }
  return out;
}
