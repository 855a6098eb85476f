/**
 * llama.cpp's block quantization formats, from their definitions (ggml-common.h block structs; the decoders of
 * ggml-quants.c dequantize_row_*): the 32-value blocks Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (the types llama.cpp falls back to
 * for rows that are not whole 256-blocks) and the k-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
 *
 * Every format here is affine per sub-block: value = dl * q - ml with dl = d * sc and ml = dmin * m, where d and
 * dmin are float16 per super-block and sc, m small integers per sub-block:
 *
 *   type  block sub  q range   sc          m       bytes  layout
 *   Q4_0   32   32    -8..7    (d only)    -        18    d | qs[16]               (low nibbles 0..15, high 16..31)
 *   Q4_1   32   32     0..15   (d only)    m f16    20    d | m | qs[16]           (value = d * q + m)
 *   Q5_0   32   32   -16..15   (d only)    -        22    d | qh[4] | qs[16]       (bit j of qh: 5th bit of value j)
 *   Q5_1   32   32     0..31   (d only)    m f16    24    d | m | qh[4] | qs[16]
 *   Q8_0   32   32  -127..127  (d only)    -        34    d | qs[32]
 *   Q2_K  256   16     0..3    4-bit       4-bit    84    scales[16] (sc | m<<4) | qs[64] | d | dmin
 *   Q3_K  256   16    -4..3    6-bit - 32  -       110    hmask[32] | qs[64] | scales[12] | d
 *   Q4_K  256   32     0..15   6-bit       6-bit   144    d | dmin | scales[12] | qs[128]
 *   Q5_K  256   32     0..31   6-bit       6-bit   176    d | dmin | scales[12] | qh[32] | qs[128]
 *   Q6_K  256   16   -32..31   int8        -       210    ql[128] | qh[64] | scales[16] | d
 *
 * Decoding computes in float32 exactly as ggml (and gguf-py) do; every product there is exact in float32 (an
 * f16 times a 6-bit integer, times a code of at most 8 bits), so the results agree bit for bit whether or not a
 * compiler fuses the multiply-add.
 *
 * Encoding: the k-quants (Q2_K-Q6_K) are fitted by llama.cpp's own importance-matrix search, ported in kfit.ts
 * (byte for byte what its quantize_q*_K writes given the same importance; ones when there is none). The 32-value
 * types keep our own search: each block's scale (and offset) by importance-weighted least squares over a sweep of
 * candidate grids, rounded to what the format stores; every value then takes the nearest code on the grid the
 * decoder will actually reconstruct. Importance per value there is w_i = imatrix_i * sqrt(sigma^2 + x_i^2)
 * (sigma^2 the block's mean square).
 */
import { f16BitsToF32, f32ToF16Bits } from '../../src/io/dtype.js';
import { fitBlockLlama, hasLlamaFit, nearestInt } from './kfit.js';

export const KQUANT_TYPES = ['Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'] as const;
export type KQuantType = (typeof KQUANT_TYPES)[number];

interface Spec {
  block: number;
  sub: number;
  bytes: number;
  qmin: number;
  qmax: number;
  /** affine (with an offset) or symmetric */
  affine: boolean;
  /** stored sub-scale range (signed for Q3_K / Q6_K) */
  scMin: number;
  scMax: number;
  /** stored sub-offset maximum (affine types) */
  mMax: number;
  /** one sub-block whose step (and offset) are stored directly as float16, no integer sub-scales (32-blocks) */
  direct?: boolean;
  /** the offset is a signed float16 (Q4_1, Q5_1: value = d * q + m); the k-quants store an unsigned one */
  signedMin?: boolean;
}

export const KQUANT_SPECS: Readonly<Record<KQuantType, Spec>> = {
  Q4_0: { block: 32, sub: 32, bytes: 18, qmin: -8, qmax: 7, affine: false, scMin: 1, scMax: 1, mMax: 0, direct: true },
  Q4_1: { block: 32, sub: 32, bytes: 20, qmin: 0, qmax: 15, affine: true, scMin: 1, scMax: 1, mMax: 0, direct: true, signedMin: true },
  Q5_0: { block: 32, sub: 32, bytes: 22, qmin: -16, qmax: 15, affine: false, scMin: 1, scMax: 1, mMax: 0, direct: true },
  Q5_1: { block: 32, sub: 32, bytes: 24, qmin: 0, qmax: 31, affine: true, scMin: 1, scMax: 1, mMax: 0, direct: true, signedMin: true },
  Q8_0: { block: 32, sub: 32, bytes: 34, qmin: -127, qmax: 127, affine: false, scMin: 1, scMax: 1, mMax: 0, direct: true },
  Q2_K: { block: 256, sub: 16, bytes: 84, qmin: 0, qmax: 3, affine: true, scMin: 0, scMax: 15, mMax: 15 },
  Q3_K: { block: 256, sub: 16, bytes: 110, qmin: -4, qmax: 3, affine: false, scMin: -32, scMax: 31, mMax: 0 },
  Q4_K: { block: 256, sub: 32, bytes: 144, qmin: 0, qmax: 15, affine: true, scMin: 0, scMax: 63, mMax: 63 },
  Q5_K: { block: 256, sub: 32, bytes: 176, qmin: 0, qmax: 31, affine: true, scMin: 0, scMax: 63, mMax: 63 },
  Q6_K: { block: 256, sub: 16, bytes: 210, qmin: -32, qmax: 31, affine: false, scMin: -128, scMax: 127, mMax: 0 },
};

const fr = Math.fround;
const f16 = (bits: number) => f16BitsToF32(bits);

/** One fitted block: the stored integers and float16 bits. */
export interface KBlock {
  d: number;
  dmin: number;
  sc: Int32Array;
  m: Int32Array;
  q: Int32Array;
}

/** The dequantization grid of a block: per sub-block step dl and offset ml (value = dl * q - ml). */
export function blockGrid(type: KQuantType, b: Pick<KBlock, 'd' | 'dmin' | 'sc' | 'm'>): { dl: Float32Array; ml: Float32Array } {
  const s = KQUANT_SPECS[type];
  const n = s.block / s.sub;
  const dl = new Float32Array(n);
  const ml = new Float32Array(n);
  const d = f16(b.d);
  const dmin = f16(b.dmin);
  for (let j = 0; j < n; j++) {
    if (s.direct) {
      // Q4_1/Q5_1 add their float16 offset m: value = d * q + m = d * q - (-m)
      dl[j] = d;
      ml[j] = s.affine ? -dmin : 0;
    } else {
      dl[j] = fr(d * b.sc[j]!);
      ml[j] = s.affine ? fr(dmin * b.m[j]!) : 0;
    }
  }
  return { dl, ml };
}

// ---- decoding (ggml-quants.c dequantize_row_*) ----------------------------------------------------------------

function rd16(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8);
}

/** get_scale_min_k4: the j-th 6-bit scale and min of a Q4_K/Q5_K scales[12]. */
function scaleMinK4(j: number, q: Uint8Array, o: number): [number, number] {
  if (j < 4) return [q[o + j]! & 63, q[o + j + 4]! & 63];
  return [(q[o + j + 4]! & 0xf) | ((q[o + j - 4]! >> 6) << 4), (q[o + j + 4]! >> 4) | ((q[o + j]! >> 6) << 4)];
}

/** Decode `n` values of a row (n a multiple of the block size) from its blocks. */
export function dequantizeRow(type: KQuantType, bytes: Uint8Array, n: number, out = new Float32Array(n), at = 0): Float32Array {
  const s = KQUANT_SPECS[type];
  if (n % s.block !== 0) throw new RangeError(`${type}: ${n} values are not whole blocks of ${s.block}`);
  const nb = n / s.block;
  if (bytes.length < nb * s.bytes) throw new RangeError(`${type}: ${bytes.length} bytes for ${nb} blocks of ${s.bytes}`);
  let y = at;
  for (let i = 0; i < nb; i++) {
    const o = i * s.bytes;
    switch (type) {
      case 'Q4_0':
      case 'Q4_1':
      case 'Q5_0':
      case 'Q5_1': {
        // x * d (+ m): the product of a float16 and a 5-bit integer is exact in float32, so one rounding at most
        const d = f16(rd16(bytes, o));
        const one = type === 'Q4_1' || type === 'Q5_1';
        const m = one ? f16(rd16(bytes, o + 2)) : 0;
        const five = type === 'Q5_0' || type === 'Q5_1';
        const qh = o + (one ? 4 : 2);
        const qs = qh + (five ? 4 : 0);
        const h = five ? (bytes[qh]! | (bytes[qh + 1]! << 8) | (bytes[qh + 2]! << 16) | (bytes[qh + 3]! << 24)) >>> 0 : 0;
        const bias = one ? 0 : five ? 16 : 8;
        for (let j = 0; j < 16; j++) {
          const x0 = ((bytes[qs + j]! & 0xf) | (five ? ((h >>> j) << 4) & 0x10 : 0)) - bias;
          const x1 = ((bytes[qs + j]! >> 4) | (five ? (h >>> (j + 12)) & 0x10 : 0)) - bias;
          out[y + j] = one ? fr(x0 * d + m) : fr(x0 * d);
          out[y + j + 16] = one ? fr(x1 * d + m) : fr(x1 * d);
        }
        y += 32;
        break;
      }
      case 'Q8_0': {
        const d = f16(rd16(bytes, o));
        for (let j = 0; j < 32; j++) out[y++] = fr(((bytes[o + 2 + j]! << 24) >> 24) * d);
        break;
      }
      case 'Q2_K': {
        const d = f16(rd16(bytes, o + 80));
        const min = f16(rd16(bytes, o + 82));
        let is = 0;
        for (let nn = 0; nn < 2; nn++) {
          const q = o + 16 + nn * 32;
          for (let j = 0; j < 4; j++) {
            const shift = 2 * j;
            for (const half of [0, 16]) {
              const sc = bytes[o + is++]!;
              const dl = fr(d * (sc & 0xf));
              const ml = fr(min * (sc >> 4));
              for (let l = 0; l < 16; l++) out[y++] = fr(fr(dl * ((bytes[q + half + l]! >> shift) & 3)) - ml);
            }
          }
        }
        break;
      }
      case 'Q3_K': {
        const d = f16(rd16(bytes, o + 108));
        const sc = o + 96;
        const scales = new Int32Array(16);
        for (let k = 0; k < 16; k++) {
          const low = k < 8 ? bytes[sc + k]! & 0xf : bytes[sc + k - 8]! >> 4;
          const high = (bytes[sc + 8 + (k % 4)]! >> (2 * Math.floor(k / 4))) & 3;
          scales[k] = (low | (high << 4)) - 32;
        }
        let is = 0;
        let m = 1;
        for (let nn = 0; nn < 2; nn++) {
          const q = o + 32 + nn * 32;
          for (let j = 0; j < 4; j++) {
            const shift = 2 * j;
            for (const half of [0, 16]) {
              const dl = fr(d * scales[is++]!);
              for (let l = 0; l < 16; l++) {
                const v = ((bytes[q + half + l]! >> shift) & 3) - (bytes[o + half + l]! & m ? 0 : 4);
                out[y++] = fr(dl * v);
              }
            }
            m <<= 1;
          }
        }
        break;
      }
      case 'Q4_K':
      case 'Q5_K': {
        const d = f16(rd16(bytes, o));
        const min = f16(rd16(bytes, o + 2));
        const five = type === 'Q5_K';
        const qh = o + 16;
        let ql = o + (five ? 48 : 16);
        let u1 = 1;
        let u2 = 2;
        for (let j = 0, is = 0; j < 256; j += 64, is += 2) {
          const [s1, m1] = scaleMinK4(is, bytes, o + 4);
          const [s2, m2] = scaleMinK4(is + 1, bytes, o + 4);
          const d1 = fr(d * s1);
          const mm1 = fr(min * m1);
          const d2 = fr(d * s2);
          const mm2 = fr(min * m2);
          for (let l = 0; l < 32; l++) out[y++] = fr(fr(d1 * ((bytes[ql + l]! & 0xf) + (five && bytes[qh + l]! & u1 ? 16 : 0))) - mm1);
          for (let l = 0; l < 32; l++) out[y++] = fr(fr(d2 * ((bytes[ql + l]! >> 4) + (five && bytes[qh + l]! & u2 ? 16 : 0))) - mm2);
          ql += 32;
          u1 <<= 2;
          u2 <<= 2;
        }
        break;
      }
      case 'Q6_K': {
        const d = f16(rd16(bytes, o + 208));
        for (let nn = 0; nn < 2; nn++) {
          const ql = o + nn * 64;
          const qh = o + 128 + nn * 32;
          const sc = o + 192 + nn * 8;
          const base = y + nn * 128;
          for (let l = 0; l < 32; l++) {
            const is = l >> 4;
            const h = bytes[qh + l]!;
            const q1 = ((bytes[ql + l]! & 0xf) | ((h & 3) << 4)) - 32;
            const q2 = ((bytes[ql + l + 32]! & 0xf) | (((h >> 2) & 3) << 4)) - 32;
            const q3 = ((bytes[ql + l]! >> 4) | (((h >> 4) & 3) << 4)) - 32;
            const q4 = ((bytes[ql + l + 32]! >> 4) | (((h >> 6) & 3) << 4)) - 32;
            const s = (k: number) => (bytes[sc + is + k]! << 24) >> 24;
            out[base + l] = fr(fr(d * s(0)) * q1);
            out[base + l + 32] = fr(fr(d * s(2)) * q2);
            out[base + l + 64] = fr(fr(d * s(4)) * q3);
            out[base + l + 96] = fr(fr(d * s(6)) * q4);
          }
        }
        y += 256;
        break;
      }
    }
  }
  return out;
}

// ---- packing ------------------------------------------------------------------------------------------------------

function wr16(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >> 8) & 0xff;
}

/** Write one fitted block into `out` at byte `o` (codes in the type's signed/unsigned range). */
export function packBlock(type: KQuantType, blk: KBlock, out: Uint8Array, o: number): void {
  const { q, sc, m } = blk;
  switch (type) {
    case 'Q4_0':
    case 'Q4_1':
    case 'Q5_0':
    case 'Q5_1': {
      const one = type === 'Q4_1' || type === 'Q5_1';
      const five = type === 'Q5_0' || type === 'Q5_1';
      wr16(out, o, blk.d);
      if (one) wr16(out, o + 2, blk.dmin);
      const qh = o + (one ? 4 : 2);
      const qs = qh + (five ? 4 : 0);
      const bias = one ? 0 : five ? 16 : 8;
      let h = 0;
      for (let j = 0; j < 16; j++) {
        const u0 = q[j]! + bias;
        const u1 = q[j + 16]! + bias;
        out[qs + j] = (u0 & 0xf) | ((u1 & 0xf) << 4);
        if (u0 & 16) h |= 1 << j;
        if (u1 & 16) h |= 1 << (j + 16);
      }
      if (five) for (let k = 0; k < 4; k++) out[qh + k] = (h >>> (8 * k)) & 0xff;
      return;
    }
    case 'Q8_0':
      wr16(out, o, blk.d);
      for (let j = 0; j < 32; j++) out[o + 2 + j] = q[j]! & 0xff;
      return;
    case 'Q2_K':
      for (let k = 0; k < 16; k++) out[o + k] = sc[k]! | (m[k]! << 4);
      for (let i = 0; i < 64; i++) out[o + 16 + i] = 0;
      for (let e = 0; e < 256; e++) {
        const nn = e >> 7;
        const j = (e >> 5) & 3;
        const l = e & 31;
        out[o + 16 + nn * 32 + l]! |= q[e]! << (2 * j);
      }
      wr16(out, o + 80, blk.d);
      wr16(out, o + 82, blk.dmin);
      return;
    case 'Q3_K': {
      for (let i = 0; i < 96; i++) out[o + i] = 0;
      for (let e = 0; e < 256; e++) {
        const nn = e >> 7;
        const j = (e >> 5) & 3;
        const l = e & 31;
        const u = q[e]! + 4;
        out[o + 32 + nn * 32 + l]! |= (u & 3) << (2 * j);
        if (u >> 2) out[o + l]! |= 1 << (nn * 4 + j);
      }
      const s = Array.from(sc, (v) => v + 32);
      for (let k = 0; k < 8; k++) out[o + 96 + k] = (s[k]! & 0xf) | ((s[k + 8]! & 0xf) << 4);
      for (let k = 0; k < 4; k++) out[o + 104 + k] = (s[k]! >> 4) | ((s[k + 4]! >> 4) << 2) | ((s[k + 8]! >> 4) << 4) | ((s[k + 12]! >> 4) << 6);
      wr16(out, o + 108, blk.d);
      return;
    }
    case 'Q4_K':
    case 'Q5_K': {
      wr16(out, o, blk.d);
      wr16(out, o + 2, blk.dmin);
      for (let j = 0; j < 4; j++) {
        out[o + 4 + j] = sc[j]! | ((sc[j + 4]! >> 4) << 6);
        out[o + 8 + j] = m[j]! | ((m[j + 4]! >> 4) << 6);
        out[o + 12 + j] = (sc[j + 4]! & 0xf) | ((m[j + 4]! & 0xf) << 4);
      }
      const five = type === 'Q5_K';
      const qh = o + 16;
      const ql = o + (five ? 48 : 16);
      if (five) for (let i = 0; i < 32; i++) out[qh + i] = 0;
      for (let e = 0; e < 256; e++) {
        const j = e >> 6;
        const hi = (e >> 5) & 1;
        const l = e & 31;
        const v = q[e]!;
        const at = ql + 32 * j + l;
        if (hi) out[at] = (out[at]! & 0x0f) | ((v & 0xf) << 4);
        else out[at] = (out[at]! & 0xf0) | (v & 0xf);
        if (five && v & 16) out[qh + l]! |= 1 << (2 * j + hi);
      }
      return;
    }
    case 'Q6_K': {
      for (let i = 0; i < 192; i++) out[o + i] = 0;
      for (let e = 0; e < 256; e++) {
        const nn = e >> 7;
        const k = (e >> 5) & 3;
        const l = e & 31;
        const u = q[e]! + 32;
        const at = o + nn * 64 + l + (k & 1 ? 32 : 0);
        out[at]! |= (u & 0xf) << (k & 2 ? 4 : 0);
        out[o + 128 + nn * 32 + l]! |= (u >> 4) << (2 * k);
      }
      for (let k = 0; k < 16; k++) out[o + 192 + k] = sc[k]! & 0xff;
      wr16(out, o + 208, blk.d);
      return;
    }
  }
}

// ---- fitting ------------------------------------------------------------------------------------------------------

/** The float16 nearest v (finite, as bits). */
function toF16(v: number): number {
  return f32ToF16Bits(v);
}

/** Best scale (and offset) of one sub-block by weighted least squares over a sweep of candidate grids. */
function fitSub(x: ArrayLike<number>, w: ArrayLike<number>, o: number, n: number, s: Spec): { scale: number; min: number } {
  let mn = Infinity;
  let mx = -Infinity;
  let amax = 0;
  let vmax = 0;
  for (let i = o; i < o + n; i++) {
    const v = x[i]!;
    if (v < mn) mn = v;
    if (v > mx) mx = v;
    if (Math.abs(v) > amax) {
      amax = Math.abs(v);
      vmax = v;
    }
  }
  if (s.affine) {
    // value = scale * q - min, q in [0, qmax]; the k-quants store the offset unsigned: min >= 0 (the grid reaches 0
    // or below); Q4_1/Q5_1 store it signed
    if (mn > 0 && !s.signedMin) mn = 0;
    if (mx === mn) return { scale: 0, min: -mn };
    let best = { scale: (mx - mn) / s.qmax, min: -mn };
    let bestErr = Infinity;
    for (let step = -10; step <= 10; step++) {
      const iscale = (s.qmax + 0.05 * step) / (mx - mn);
      // codes for this grid, then the weighted least-squares scale and offset for those codes
      let sw = 0,
        sl = 0,
        sll = 0,
        sx = 0,
        slx = 0;
      const L = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const l = Math.max(0, Math.min(s.qmax, Math.round(iscale * (x[o + i]! - mn))));
        L[i] = l;
        const wi = w[o + i]!;
        sw += wi;
        sl += wi * l;
        sll += wi * l * l;
        sx += wi * x[o + i]!;
        slx += wi * l * x[o + i]!;
      }
      const det = sw * sll - sl * sl;
      let scale: number;
      let off: number;
      if (det > 0) {
        scale = (sw * slx - sl * sx) / det;
        off = (sll * sx - sl * slx) / det; // x ~ scale * l + off
        if (off > 0 && !s.signedMin) {
          off = 0;
          scale = sll > 0 ? slx / sll : 0;
        }
      } else {
        scale = 1 / iscale;
        off = mn;
      }
      let err = 0;
      for (let i = 0; i < n; i++) {
        const e = scale * L[i]! + off - x[o + i]!;
        err += w[o + i]! * e * e;
      }
      if (err < bestErr && scale > 0) {
        bestErr = err;
        best = { scale, min: -off };
      }
    }
    return best;
  }
  // symmetric: value = scale * q, q in [qmin, qmax] with qmin = -qmax - 1: the largest magnitude goes to qmin
  if (amax === 0) return { scale: 0, min: 0 };
  const nmax = -s.qmin;
  let best = { scale: -vmax / nmax, min: 0 };
  let bestErr = Infinity;
  for (let step = -9; step <= 9; step++) {
    const iscale = -(nmax + 0.1 * step) / vmax;
    let sxl = 0,
      sll = 0;
    const L = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const l = Math.max(s.qmin, Math.min(s.qmax, Math.round(iscale * x[o + i]!)));
      L[i] = l;
      sxl += w[o + i]! * x[o + i]! * l;
      sll += w[o + i]! * l * l;
    }
    if (sll === 0) continue;
    const scale = sxl / sll;
    let err = 0;
    for (let i = 0; i < n; i++) {
      const e = scale * L[i]! - x[o + i]!;
      err += w[o + i]! * e * e;
    }
    if (err < bestErr) {
      bestErr = err;
      best = { scale, min: 0 };
    }
  }
  return best;
}

/** The nearest code on the decoder's grid (dl, ml) for value v. */
export function nearestCode(v: number, dl: number, ml: number, qmin: number, qmax: number): number {
  if (dl === 0) return Math.max(qmin, 0);
  return Math.max(qmin, Math.min(qmax, Math.round((v + ml) / dl)));
}

/**
 * The stored parameters of one block (d, dmin, sub-scales, sub-offsets) for values x[o..o+block) with
 * importance w. Codes are left to the caller (quantizeRow takes the nearest on the grid; GPTQ takes them column
 * by column as its error feedback updates the values).
 */
export function fitBlockParams(type: KQuantType, x: ArrayLike<number>, w: ArrayLike<number>, o: number): KBlock {
  const s = KQUANT_SPECS[type];
  const nsub = s.block / s.sub;
  const sc = new Int32Array(nsub);
  const m = new Int32Array(nsub);
  const q = new Int32Array(s.block);
  if (type === 'Q8_0') {
    let amax = 0;
    for (let i = o; i < o + 32; i++) amax = Math.max(amax, Math.abs(x[i]!));
    sc[0] = 1;
    return { d: toF16(amax / 127), dmin: 0, sc, m, q };
  }
  if (s.direct) {
    const r = fitSub(x, w, o, s.block, s);
    sc[0] = 1;
    return { d: toF16(r.scale), dmin: s.affine ? toF16(-r.min) : 0, sc, m, q };
  }
  const scales = new Float64Array(nsub);
  const mins = new Float64Array(nsub);
  for (let j = 0; j < nsub; j++) {
    const r = fitSub(x, w, o + j * s.sub, s.sub, s);
    scales[j] = r.scale;
    mins[j] = r.min;
  }
  let d: number;
  if (s.scMin < 0) {
    // signed sub-scales: the largest magnitude maps to the most negative stored value
    let big = 0;
    for (const v of scales) if (Math.abs(v) > Math.abs(big)) big = v;
    d = toF16(big === 0 ? 0 : big / s.scMin);
  } else {
    let big = 0;
    for (const v of scales) big = Math.max(big, v);
    d = toF16(big / s.scMax);
  }
  const df = f16(d);
  for (let j = 0; j < nsub; j++) sc[j] = df === 0 ? 0 : Math.max(s.scMin, Math.min(s.scMax, Math.round(scales[j]! / df)));
  let dmin = 0;
  if (s.affine) {
    let big = 0;
    for (const v of mins) big = Math.max(big, v);
    dmin = toF16(big / s.mMax);
    const mf = f16(dmin);
    for (let j = 0; j < nsub; j++) m[j] = mf === 0 ? 0 : Math.max(0, Math.min(s.mMax, Math.round(mins[j]! / mf)));
  }
  return { d, dmin, sc, m, q };
}

/** Importance of each value of a row: imatrix_i * sqrt(sigma^2 + x_i^2) per block (llama.cpp's weighting). */
export function rowWeights(x: ArrayLike<number>, n: number, block: number, imatrix?: ArrayLike<number>, o = 0): Float64Array {
  const w = new Float64Array(n);
  for (let b = 0; b < n; b += block) {
    let s2 = 0;
    for (let i = b; i < b + block; i++) s2 += x[o + i]! * x[o + i]!;
    s2 /= block;
    for (let i = b; i < b + block; i++) w[i] = (imatrix ? imatrix[i]! : 1) * Math.sqrt(s2 + x[o + i]! * x[o + i]!);
  }
  return w;
}

const ONES = new Float32Array(256).fill(1);

/**
 * The stored parameters of the block at x[o..] (codes left to the caller), with importance imatrix[io..] per value
 * (none: all ones): llama.cpp's fit for the k-quants (kfit.ts), fitBlockParams' sweep for the 32-value types.
 */
export function fitBlock(type: KQuantType, x: Float32Array | Float64Array, o: number, imatrix?: ArrayLike<number>, io = 0): KBlock {
  const s = KQUANT_SPECS[type];
  if (hasLlamaFit(type)) return fitBlockLlama(type, x, imatrix ?? ONES, o, imatrix ? io : 0);
  const im = imatrix ? Float64Array.from({ length: s.block }, (_, i) => imatrix[io + i]!) : undefined;
  const w = rowWeights(x.subarray(o, o + s.block), s.block, s.block, im);
  return fitBlockParams(type, x.subarray(o, o + s.block), w, 0);
}

/** Quantize one row of n values (a multiple of the block size) into the type's blocks. */
export function quantizeRow(type: KQuantType, x: ArrayLike<number>, n: number, imatrix?: ArrayLike<number>, o = 0): Uint8Array {
  const s = KQUANT_SPECS[type];
  if (n % s.block !== 0) throw new RangeError(`${type}: a row of ${n} values is not whole blocks of ${s.block}`);
  const nb = n / s.block;
  const out = new Uint8Array(nb * s.bytes);
  const llama = hasLlamaFit(type);
  // the k-quants fit float32 values as llama.cpp does; the 32-value types fit in float64
  const xs = llama ? new Float32Array(n) : new Float64Array(n);
  for (let i = 0; i < n; i++) xs[i] = x[o + i]!;
  for (let b = 0; b < nb; b++) {
    const blk = fitBlock(type, xs, b * s.block, imatrix, b * s.block);
    const { dl, ml } = blockGrid(type, blk);
    for (let i = 0; i < s.block; i++) {
      const j = Math.floor(i / s.sub);
      const v = xs[b * s.block + i]!;
      // the k-quants: llama.cpp's requantize step, in float32 with ggml's round-half-to-even (a sub-block of step 0
      // decodes to its offset whatever its codes)
      blk.q[i] = !llama
        ? nearestCode(v, dl[j]!, ml[j]!, s.qmin, s.qmax)
        : dl[j] === 0
          ? Math.max(s.qmin, 0)
          : Math.max(s.qmin, Math.min(s.qmax, nearestInt(fr(fr(fr(v) + ml[j]!) / dl[j]!))));
    }
    packBlock(type, blk, out, b * s.bytes);
  }
  return out;
}

/** Quantize a matrix of `rows` rows of n values (ggml order: row after row). */
export function quantizeMatrix(type: KQuantType, x: Float32Array, rows: number, n: number, imatrix?: ArrayLike<number>): Uint8Array {
  const s = KQUANT_SPECS[type];
  const rb = (n / s.block) * s.bytes;
  const out = new Uint8Array(rows * rb);
  for (let r = 0; r < rows; r++) out.set(quantizeRow(type, x, n, imatrix, r * n), r * rb);
  return out;
}

export function dequantizeMatrix(type: KQuantType, bytes: Uint8Array, rows: number, n: number): Float32Array {
  const s = KQUANT_SPECS[type];
  const rb = (n / s.block) * s.bytes;
  const out = new Float32Array(rows * n);
  for (let r = 0; r < rows; r++) dequantizeRow(type, bytes.subarray(r * rb, (r + 1) * rb), n, out, r * n);
  return out;
}
