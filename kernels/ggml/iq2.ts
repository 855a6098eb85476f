/**
 * llama.cpp's 2-bit importance quants IQ2_XXS (2.0625 bpw), IQ2_XS (2.3125) and IQ2_S (2.5625), from their
 * definitions: the block structs of ggml-common.h, the decoders dequantize_row_iq2_* and the quantizers
 * quantize_row_iq2_{xxs,xs,s}_impl with the neighbour lists of iq2xs_init_impl (ggml-quants.c). The grids are
 * format data (iq2-grids.ts); the code is ours, arithmetic in float32 (Math.fround) where llama.cpp's is, so that
 * the bytes equal llama.cpp's given the same rows and importance (bench/gguf-iq2.ts counts them).
 *
 * A 256-value block is 8 (XXS) or 16 (XS, S) sub-blocks of 32 or 16 values, each 8-value group one grid point
 * (8 magnitudes from {8, 25, 43}) with its signs; value = d * (0.5 + s) * 0.25 * grid[j] * sign[j], d a float16
 * per block and s a 4-bit scale per sub-block:
 *
 *   type     bytes  layout (after d)                      per 8-group         signs
 *   IQ2_XXS    66   qs[64]: per 32 values two u32: grid     8-bit index of 256   7 bits, the 8th makes the count
 *                   bytes | 4 x 7 sign bits + 4-bit scale                        of minus signs even (ksigns)
 *   IQ2_XS     74   qs u16[32] (index | signs << 9), scales[8] (two 4-bit)  9-bit index of 512   7 bits (ksigns)
 *   IQ2_S      82   qs[32] index low bytes | signs[32] | qh[8] (2 high bits each) | scales[8]  10-bit of 1024, 8 bits
 *
 * The quantizer (llama.cpp's, per sub-block): the signs are taken from the values (XXS, XS flip the least important
 * one when their count is odd, as the stored 7 bits require), then a sweep of scales; at each, every group's
 * magnitudes round to the levels {1, 3, 5} x scale and, when that 8-vector is not a grid point, the best of its
 * precomputed grid neighbours (iq2xs_init_impl: all points at the nearest one or two squared distances) by
 * importance-weighted error; the scale is refitted by weighted least squares for the chosen points, the best kept.
 * The sub-block scales are then rounded to 4 bits of d = max / 31.
 *
 * Importance per value (llama.cpp's): w_i = imatrix_i * sqrt(sigma^2 + x_i^2), sigma^2 the block's mean square
 * (twice it for IQ2_S). llama.cpp refuses IQ2_XXS/IQ2_XS without an importance matrix; here none means ones. IQ2_S
 * without one takes llama.cpp's own rule w_i = sigma^2 / 4 + x_i^2.
 */
import { f16BitsToF32, f32ToF16Bits } from '../../src/io/dtype.js';
import { IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, KSIGNS_IQ2XS } from './iq2-grids.js';
import { makeQp, nearestInt } from './kfit.js';

export const IQ2_TYPES = ['IQ2_XXS', 'IQ2_XS', 'IQ2_S'] as const;
export type Iq2Type = (typeof IQ2_TYPES)[number];

export const IQ2_BLOCK = 256;
/** bytes per 256-value block (ggml-common.h block_iq2_*) */
export const IQ2_BYTES: Readonly<Record<Iq2Type, number>> = { IQ2_XXS: 66, IQ2_XS: 74, IQ2_S: 82 };

export const isIq2Type = (t: string): t is Iq2Type => (IQ2_TYPES as readonly string[]).includes(t);

const fr = Math.fround;
const F01 = fr(0.1);
const GROUP_MAX_EPS = fr(1e-15);
const GROUP_MAX_EPS_IQ2_S = fr(1e-8);
/** the map is indexed by 8 levels of 2 bits; with levels 0..2 the largest index is 0b10 x 8 = 43690 */
const KMAP_SIZE = 43692;

interface Tables {
  /** the decoder's magnitudes, 8 per point */
  grid: Uint8Array;
  /** the quantizer's points, 8 odd integers 2l + 1 per point */
  pos: Int8Array;
  /** 8 levels (2 bits each) -> the point's index, or -(offset + 1) of its neighbour list */
  map: Int32Array;
  /** at each offset: the count, then the indices */
  neighbours: Uint16Array;
}

const SOURCES: Readonly<Record<Iq2Type, readonly bigint[]>> = { IQ2_XXS: IQ2XXS_GRID, IQ2_XS: IQ2XS_GRID, IQ2_S: IQ2S_GRID };
const LEVEL: Readonly<Record<number, number>> = { 8: 0, 25: 1, 43: 2 };
const tables = new Map<Iq2Type, Tables>();

/**
 * iq2xs_init_impl: the grid as levels and, for every 8-vector of levels 0..2 that is not a grid point, its
 * neighbours: every point at the nwant smallest squared distances (one for IQ2_S, two otherwise), ordered by
 * distance then index (llama.cpp's qsort of (distance, index) pairs). llama.cpp also lists vectors with a level 3,
 * which its quantizers never look up (levels are clamped to 0..2); they are left out here.
 */
function tablesOf(type: Iq2Type): Tables {
  const have = tables.get(type);
  if (have) return have;
  const src = SOURCES[type];
  const size = src.length;
  const grid = new Uint8Array(size * 8);
  const pos = new Int8Array(size * 8);
  const map = new Int32Array(KMAP_SIZE).fill(-1);
  for (let k = 0; k < size; k++) {
    let u = 0;
    for (let i = 0; i < 8; i++) {
      const b = Number((src[k]! >> BigInt(8 * i)) & 0xffn);
      const l = LEVEL[b];
      if (l === undefined) throw new Error(`iq2 grid ${type}[${k}]: byte ${b} is not a grid magnitude`);
      grid[k * 8 + i] = b;
      pos[k * 8 + i] = 2 * l + 1;
      u |= l << (2 * i);
    }
    map[u] = k;
  }
  const nwant = type === 'IQ2_S' ? 1 : 2;
  const lists: number[] = [];
  const d2 = new Int32Array(size);
  const p = new Int8Array(8);
  for (let u = 0; u < KMAP_SIZE; u++) {
    if (map[u]! >= 0) continue;
    let three = false;
    for (let k = 0; k < 8; k++) {
      const l = (u >> (2 * k)) & 3;
      if (l === 3) three = true;
      p[k] = 2 * l + 1;
    }
    if (three) continue;
    let m1 = Infinity;
    for (let j = 0; j < size; j++) {
      let s = 0;
      for (let k = 0; k < 8; k++) {
        const t = pos[j * 8 + k]! - p[k]!;
        s += t * t;
      }
      d2[j] = s;
      if (s < m1) m1 = s;
    }
    let m2 = Infinity;
    if (nwant === 2) for (let j = 0; j < size; j++) if (d2[j]! > m1 && d2[j]! < m2) m2 = d2[j]!;
    map[u] = -(lists.length + 1);
    const at = lists.length;
    lists.push(0);
    for (const m of nwant === 2 ? [m1, m2] : [m1]) for (let j = 0; j < size; j++) if (d2[j] === m) lists.push(j);
    lists[at] = lists.length - at - 1;
  }
  const t: Tables = { grid, pos, map, neighbours: Uint16Array.from(lists) };
  tables.set(type, t);
  return t;
}

// ---- decoding (dequantize_row_iq2_*) ------------------------------------------------------------------------------

function rd16(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8);
}

/** Decode `n` values (whole 256-blocks) of one row from its blocks at bytes[0..]; into out[at..]. */
export function dequantizeRowIq2(type: Iq2Type, bytes: Uint8Array, n: number, out = new Float32Array(n), at = 0): Float32Array {
  if (n % IQ2_BLOCK !== 0) throw new RangeError(`${type}: ${n} values are not whole blocks of ${IQ2_BLOCK}`);
  const nb = n / IQ2_BLOCK;
  const bb = IQ2_BYTES[type];
  if (bytes.length < nb * bb) throw new RangeError(`${type}: ${bytes.length} bytes for ${nb} blocks of ${bb}`);
  const { grid } = tablesOf(type);
  let y = at;
  // one 8-value group: db * grid[j], negated where the sign bit is set (every product is exact in float32)
  const put = (db: number, g: number, signs: number) => {
    for (let j = 0; j < 8; j++) {
      const v = fr(db * grid[g * 8 + j]!);
      out[y++] = signs & (1 << j) ? -v : v;
    }
  };
  for (let i = 0; i < nb; i++) {
    const o = i * bb;
    const d = f16BitsToF32(rd16(bytes, o));
    if (type === 'IQ2_XXS') {
      for (let ib = 0; ib < 8; ib++) {
        const q = o + 2 + 8 * ib;
        const aux1 = (bytes[q + 4]! | (bytes[q + 5]! << 8) | (bytes[q + 6]! << 16) | (bytes[q + 7]! << 24)) >>> 0;
        const db = fr(fr(d * (0.5 + (aux1 >>> 28))) * 0.25);
        for (let l = 0; l < 4; l++) put(db, bytes[q + l]!, KSIGNS_IQ2XS[(aux1 >>> (7 * l)) & 127]!);
      }
    } else if (type === 'IQ2_XS') {
      for (let ib = 0; ib < 8; ib++) {
        const sc = bytes[o + 66 + ib]!;
        const db0 = fr(fr(d * (0.5 + (sc & 0xf))) * 0.25);
        const db1 = fr(fr(d * (0.5 + (sc >> 4))) * 0.25);
        for (let l = 0; l < 4; l++) {
          const qs = rd16(bytes, o + 2 + 2 * (4 * ib + l));
          put(l < 2 ? db0 : db1, qs & 511, KSIGNS_IQ2XS[qs >> 9]!);
        }
      }
    } else {
      for (let ib = 0; ib < 8; ib++) {
        const sc = bytes[o + 74 + ib]!;
        const qh = bytes[o + 66 + ib]!;
        const db0 = fr(fr(d * (0.5 + (sc & 0xf))) * 0.25);
        const db1 = fr(fr(d * (0.5 + (sc >> 4))) * 0.25);
        for (let l = 0; l < 4; l++) {
          const g = bytes[o + 2 + 4 * ib + l]! | ((qh << (8 - 2 * l)) & 0x300);
          put(l < 2 ? db0 : db1, g, bytes[o + 34 + 4 * ib + l]!);
        }
      }
    }
  }
  return out;
}

/** Decode a [rows, n] matrix (row after row). */
export function dequantizeMatrixIq2(type: Iq2Type, bytes: Uint8Array, rows: number, n: number): Float32Array {
  const out = new Float32Array(rows * n);
  const rb = (n / IQ2_BLOCK) * IQ2_BYTES[type];
  for (let r = 0; r < rows; r++) dequantizeRowIq2(type, bytes.subarray(r * rb, (r + 1) * rb), n, out, r * n);
  return out;
}

// ---- quantizing (quantize_row_iq2_*_impl) -------------------------------------------------------------------------

/**
 * iq2_find_best_neighbour: among the listed points, the one with the least sum of w_i (scale * q_i - x_i)^2 (the
 * first on ties); writes its levels into L[lo..lo+8) and returns its index.
 */
function bestNeighbour(t: Tables, list: number, x: Float32Array, w: Float32Array, o: number, scale: number, L: Int8Array, lo: number): number {
  const count = t.neighbours[list]!;
  let best = Infinity;
  let gi = -1;
  for (let j = 1; j <= count; j++) {
    const g = t.neighbours[list + j]!;
    let d2 = 0;
    for (let i = 0; i < 8; i++) {
      const diff = fr(fr(scale * t.pos[g * 8 + i]!) - x[o + i]!);
      d2 = fr(d2 + fr(fr(w[o + i]! * diff) * diff));
    }
    if (d2 < best) {
      best = d2;
      gi = g;
    }
  }
  for (let i = 0; i < 8; i++) L[lo + i] = (t.pos[gi * 8 + i]! - 1) / 2;
  return gi;
}

/** Round the 8 magnitudes x[o..] at 1/scale id to levels 0..2 (into L[o..]); their map key. */
function levelsAt(x: Float32Array, o: number, id: number, L: Int8Array): number {
  let u = 0;
  for (let i = 0; i < 8; i++) {
    const l = Math.max(0, Math.min(2, nearestInt(fr(0.5 * fr(fr(id * x[o + i]!) - 1)))));
    L[o + i] = l;
    u |= l << (2 * i);
  }
  return u;
}

/** The group's point with levels L[o..] put on the grid (its neighbours' best at `scale` when it is not one). */
function onGrid(t: Tables, u: number, x: Float32Array, waux: Float32Array, o: number, scale: number, L: Int8Array): { gi: number; was: boolean } {
  const gi = t.map[u]!;
  if (gi >= 0) return { gi, was: true };
  return { gi: bestNeighbour(t, -gi - 1, x, waux, o, scale, L, o), was: false };
}

/** sum w x q and sum w q^2 over n values with q = 2 L + 1. */
function sums(n: number, w: Float32Array, x: Float32Array, L: Int8Array): { sumqx: number; sumq2: number } {
  let sumqx = 0;
  let sumq2 = 0;
  for (let i = 0; i < n; i++) {
    const q = 2 * L[i]! + 1;
    sumqx = fr(sumqx + fr(fr(w[i]! * x[i]!) * q));
    sumq2 = fr(sumq2 + fr(fr(w[i]! * q) * q));
  }
  return { sumqx, sumq2 };
}

/** The magnitudes of groups of 8 and their sign bits; with `even`, the least important value flips when odd. */
function signsOf(xb: Float32Array, xo: number, n: number, w: Float32Array, even: boolean, xval: Float32Array, signs: Uint8Array): void {
  for (let k = 0; k < n / 8; k++) {
    let nflip = 0;
    let s = 0;
    for (let i = 0; i < 8; i++) {
      const v = xb[xo + 8 * k + i]!;
      if (v >= 0) xval[8 * k + i] = v;
      else {
        xval[8 * k + i] = -v;
        nflip++;
        s |= 1 << i;
      }
    }
    if (even && nflip % 2) {
      let imin = 0;
      let min = fr(fr(w[8 * k]! * xb[xo + 8 * k]!) * xb[xo + 8 * k]!);
      for (let i = 1; i < 8; i++) {
        const v = xb[xo + 8 * k + i]!;
        const ax = fr(fr(w[8 * k + i]! * v) * v);
        if (ax < min) {
          min = ax;
          imin = i;
        }
      }
      xval[8 * k + imin] = -xval[8 * k + imin]!;
      s ^= 1 << imin;
    }
    signs[k] = even ? s & 127 : s;
  }
}

/** One fitted sub-block: its scale (before the 4-bit rounding), grid indices and sign bytes per group. */
interface SubFit {
  scale: number;
  gi: Int32Array;
  signs: Uint8Array;
}

/**
 * The sub-block of n values xb[xo..] (32 for XXS, 16 for XS / S) with weights w (already imatrix x sqrt(...)):
 * llama.cpp's sign choice, scale sweep and grid search. Returns scale 0 (and point 0) for an all-small sub-block.
 */
function fitSub(type: Iq2Type, t: Tables, xb: Float32Array, xo: number, w: Float32Array): SubFit {
  const n = type === 'IQ2_XXS' ? 32 : 16;
  const ng = n / 8;
  const waux = new Float32Array(n);
  for (let i = 0; i < n; i++) waux[i] = fr(Math.sqrt(w[i]!));
  const xval = new Float32Array(n);
  const signs = new Uint8Array(ng);
  signsOf(xb, xo, n, w, type !== 'IQ2_S', xval, signs);
  const gi = new Int32Array(ng);
  let max = xval[0]!;
  for (let i = 1; i < n; i++) max = Math.max(max, xval[i]!);
  // llama.cpp skips such a sub-block before storing anything: point 0, no signs, scale 0
  if (max < (type === 'IQ2_S' ? GROUP_MAX_EPS_IQ2_S : GROUP_MAX_EPS)) return { scale: 0, gi, signs: new Uint8Array(ng) };
  const L = new Int8Array(n);
  const Laux = new Int8Array(n);
  let scale: number;
  if (type === 'IQ2_XXS') {
    scale = makeQp(32, 4, xval, new Int32Array(32), w);
    const effMax = fr(scale * 3);
    if (effMax <= 0) return { scale: 0, gi, signs: new Uint8Array(ng) };
    let best = 0;
    for (let is = -6; is <= 6; is++) {
      const id = fr(fr(5 + fr(is * F01)) / effMax);
      const thisScale = fr(1 / id);
      for (let k = 0; k < ng; k++) onGrid(t, levelsAt(xval, 8 * k, id, Laux), xval, waux, 8 * k, thisScale, Laux);
      const { sumqx, sumq2 } = sums(n, w, xval, Laux);
      if (sumq2 > 0 && fr(sumqx * sumqx) > fr(best * sumq2)) {
        scale = fr(sumqx / sumq2);
        best = fr(scale * sumqx);
        L.set(Laux);
      }
    }
    if (scale > 0) {
      const id = fr(1 / scale);
      for (let k = 0; k < ng; k++) {
        const g = onGrid(t, levelsAt(xval, 8 * k, id, L), xval, waux, 8 * k, scale, L).gi;
        for (let i = 0; i < 8; i++) L[8 * k + i] = (t.pos[g * 8 + i]! - 1) / 2;
      }
      const { sumqx, sumq2 } = sums(n, w, xval, L);
      if (sumq2 > 0) scale = fr(sumqx / sumq2);
    }
  } else {
    let best = 0;
    scale = fr(max / 5);
    const on = [true, true];
    const onAux = [true, true];
    for (let is = -9; is <= 9; is++) {
      const id = fr(fr(5 + fr(is * F01)) / max);
      const thisScale = fr(1 / id);
      for (let k = 0; k < ng; k++) onAux[k] = onGrid(t, levelsAt(xval, 8 * k, id, Laux), xval, waux, 8 * k, thisScale, Laux).was;
      const { sumqx, sumq2 } = sums(n, w, xval, Laux);
      if (sumq2 > 0 && fr(sumqx * sumqx) > fr(best * sumq2)) {
        scale = fr(sumqx / sumq2);
        best = fr(scale * sumqx);
        L.set(Laux);
        on[0] = onAux[0]!;
        on[1] = onAux[1]!;
      }
    }
    if ((!on[0] || !on[1]) && scale > 0) {
      const id = fr(1 / scale);
      for (let k = 0; k < ng; k++) if (!on[k]) onGrid(t, levelsAt(xval, 8 * k, id, L), xval, waux, 8 * k, scale, L);
      const { sumqx, sumq2 } = sums(n, w, xval, L);
      if (sumq2 > 0) scale = fr(sumqx / sumq2);
    }
  }
  if (scale < 0) {
    // llama.cpp: "should never happen"; the stored scale is unsigned, so the signs flip instead
    scale = -scale;
    for (let k = 0; k < ng; k++) signs[k] = ~signs[k]! & (type === 'IQ2_S' ? 255 : 127);
  }
  for (let k = 0; k < ng; k++) {
    let u = 0;
    for (let i = 0; i < 8; i++) u |= L[8 * k + i]! << (2 * i);
    const g = t.map[u]!;
    if (g < 0) throw new Error(`${type}: levels ${u} are not a grid point`);
    gi[k] = g;
  }
  return { scale, gi, signs };
}

/** 4-bit sub-block scale l with scale ~ d (2 l + 1), d = max / 31 (id = 1 / d) */
const scale4 = (id: number, scale: number) => Math.max(0, Math.min(15, nearestInt(fr(0.5 * fr(fr(id * scale) - 1)))));

/** A block's stored fields: d (float16 bits), the 4-bit sub-block scales, and per 8-value group its point and signs. */
export interface Iq2Block {
  type: Iq2Type;
  d: number;
  /** 8 (XXS) or 16 (XS, S) 4-bit scales */
  sc: Uint8Array;
  /** 32 groups: grid index and stored sign bits (7 for XXS/XS, 8 for S) */
  gi: Int32Array;
  signs: Uint8Array;
}

/**
 * llama.cpp's fit of one 256-value block x[xo..] with per-value importance qw[qo..] (its quant_weights; undefined:
 * ones, or IQ2_S's own rule).
 */
export function fitBlockIq2(type: Iq2Type, x: ArrayLike<number>, xo: number, qw: ArrayLike<number> | undefined, qo: number): Iq2Block {
  const t = tablesOf(type);
  const n = type === 'IQ2_XXS' ? 32 : 16;
  const nsub = IQ2_BLOCK / n;
  const blk: Iq2Block = { type, d: 0, sc: new Uint8Array(nsub), gi: new Int32Array(32), signs: new Uint8Array(32) };
  const xbl = new Float32Array(IQ2_BLOCK);
  for (let i = 0; i < IQ2_BLOCK; i++) xbl[i] = x[xo + i]!;
  let sumx2 = 0;
  for (let i = 0; i < IQ2_BLOCK; i++) sumx2 = fr(sumx2 + fr(xbl[i]! * xbl[i]!));
  const sigma2 = type === 'IQ2_S' ? fr(fr(2 * sumx2) / IQ2_BLOCK) : fr(sumx2 / IQ2_BLOCK);
  const fits: SubFit[] = [];
  let maxScale = 0;
  const w = new Float32Array(n);
  for (let ib = 0; ib < nsub; ib++) {
    for (let i = 0; i < n; i++) {
      const v = xbl[n * ib + i]!;
      if (qw || type !== 'IQ2_S') w[i] = fr(fr(qw ? qw[qo + n * ib + i]! : 1) * fr(Math.sqrt(fr(sigma2 + fr(v * v)))));
      else w[i] = fr(fr(0.25 * sigma2) + fr(v * v));
    }
    const f = fitSub(type, t, xbl, n * ib, w);
    fits.push(f);
    maxScale = Math.max(maxScale, f.scale);
  }
  // an all-small block: everything stays zero (llama.cpp stores nothing but d = 0)
  if (!maxScale) return blk;
  const d = fr(maxScale / 31);
  const id = fr(1 / d);
  blk.d = f32ToF16Bits(type === 'IQ2_S' ? fr(d * fr(0.9875)) : d);
  const per = n / 8;
  for (let ib = 0; ib < nsub; ib++) {
    const f = fits[ib]!;
    blk.sc[ib] = scale4(id, f.scale);
    blk.gi.set(f.gi, per * ib);
    blk.signs.set(f.signs, per * ib);
  }
  return blk;
}

/** The stored block at out[o..o + IQ2_BYTES[type]). */
export function packBlockIq2(blk: Iq2Block, out: Uint8Array, o: number): void {
  const { type } = blk;
  out.fill(0, o, o + IQ2_BYTES[type]);
  out[o] = blk.d & 0xff;
  out[o + 1] = blk.d >> 8;
  if (type === 'IQ2_XXS') {
    for (let ib = 0; ib < 8; ib++) {
      const q = o + 2 + 8 * ib;
      let aux1 = 0;
      for (let k = 0; k < 4; k++) {
        out[q + k] = blk.gi[4 * ib + k]!;
        aux1 |= blk.signs[4 * ib + k]! << (7 * k);
      }
      aux1 = (aux1 | (blk.sc[ib]! << 28)) >>> 0;
      for (let b = 0; b < 4; b++) out[q + 4 + b] = (aux1 >>> (8 * b)) & 0xff;
    }
    return;
  }
  const sAt = o + (type === 'IQ2_XS' ? 66 : 74);
  for (let ib = 0; ib < 8; ib++) out[sAt + ib] = blk.sc[2 * ib]! | (blk.sc[2 * ib + 1]! << 4);
  for (let i8 = 0; i8 < 32; i8++) {
    const g = blk.gi[i8]!;
    if (type === 'IQ2_XS') {
      const v = g | (blk.signs[i8]! << 9);
      out[o + 2 + 2 * i8] = v & 0xff;
      out[o + 3 + 2 * i8] = v >> 8;
    } else {
      out[o + 2 + i8] = g & 255;
      out[o + 66 + (i8 >> 2)]! |= (g >> 8) << (2 * (i8 % 4));
      out[o + 34 + i8] = blk.signs[i8]!;
    }
  }
}

/** One 256-value block x[xo..] with importance qw[qo..], llama.cpp's bytes, into out[o..]. */
export function quantizeBlockIq2(
  type: Iq2Type,
  x: ArrayLike<number>,
  xo: number,
  qw: ArrayLike<number> | undefined,
  qo: number,
  out: Uint8Array,
  o: number,
): void {
  packBlockIq2(fitBlockIq2(type, x, xo, qw, qo), out, o);
}

/** Quantize one row of n values (whole 256-blocks) x[o..]; importance per value of the row (llama.cpp's). */
export function quantizeRowIq2(type: Iq2Type, x: ArrayLike<number>, n: number, imatrix?: ArrayLike<number>, o = 0): Uint8Array {
  if (n % IQ2_BLOCK !== 0) throw new RangeError(`${type}: rows of ${n} values are not whole blocks of ${IQ2_BLOCK}`);
  const bb = IQ2_BYTES[type];
  const out = new Uint8Array((n / IQ2_BLOCK) * bb);
  for (let b = 0; b < n / IQ2_BLOCK; b++) quantizeBlockIq2(type, x, o + b * IQ2_BLOCK, imatrix, b * IQ2_BLOCK, out, b * bb);
  return out;
}

/** Quantize a [rows, n] matrix, one importance vector of n for every row (as llama-quantize's per-tensor imatrix). */
export function quantizeMatrixIq2(type: Iq2Type, x: ArrayLike<number>, rows: number, n: number, imatrix?: ArrayLike<number>): Uint8Array {
  const rb = (n / IQ2_BLOCK) * IQ2_BYTES[type];
  const out = new Uint8Array(rows * rb);
  for (let r = 0; r < rows; r++) out.set(quantizeRowIq2(type, x, n, imatrix, r * n), r * rb);
  return out;
}

// ---- GPTQ's rounding into a fitted block (kernels/ggml/gptq.ts) --------------------------------------------------

/** The decoded step d * (0.5 + s) * 0.25 of each of the block's 32 groups, in float32 as the decoder computes it. */
export function groupStepsIq2(blk: Iq2Block): Float32Array {
  const d = f16BitsToF32(blk.d);
  const per = blk.type === 'IQ2_XXS' ? 4 : 2;
  const out = new Float32Array(32);
  for (let g = 0; g < 32; g++) out[g] = fr(fr(d * (0.5 + blk.sc[Math.floor(g / per)]!)) * 0.25);
  return out;
}

/**
 * GPTQ's choice for group g of a fitted block (its d and sub-block scales fixed): the signs and grid point of the 8
 * values v[vo..vo+8) as they are now (after the error feedback of the columns before them), by the error weighted
 * by h[ho..] (the Hessian diagonal). The signs follow the values (for XXS/XS, when their count is odd, the least
 * important value, by h v^2, takes the other sign, as llama.cpp does); the magnitudes round to the nearest of the
 * decoded levels (8, 25, 43) x step, and when that 8-vector is not a grid point, the best of its listed neighbours
 * by the decoded error. Writes blk.gi[g], blk.signs[g] and what the decoder rebuilds into deq[dout..dout+8).
 */
export function chooseGroupIq2(
  blk: Iq2Block,
  g: number,
  step: number,
  v: ArrayLike<number>,
  vo: number,
  h: ArrayLike<number>,
  ho: number,
  deq: Float32Array,
  dout: number,
): void {
  const t = tablesOf(blk.type);
  const xval = new Float64Array(8);
  let s = 0;
  let nneg = 0;
  for (let i = 0; i < 8; i++) {
    const x = v[vo + i]!;
    xval[i] = Math.abs(x);
    if (x < 0) {
      s |= 1 << i;
      nneg++;
    }
  }
  if (blk.type !== 'IQ2_S' && nneg % 2) {
    let imin = 0;
    for (let i = 1; i < 8; i++) if (h[ho + i]! * v[vo + i]! ** 2 < h[ho + imin]! * v[vo + imin]! ** 2) imin = i;
    xval[imin] = -xval[imin]!;
    s ^= 1 << imin;
  }
  let best = t.map[0]!;
  if (step > 0) {
    let u = 0;
    for (let i = 0; i < 8; i++) {
      // nearest of 8, 25, 43 (in units of the step): the midpoints 16.5 and 34
      const r = xval[i]! / step;
      u |= (r < 16.5 ? 0 : r < 34 ? 1 : 2) << (2 * i);
    }
    const on = t.map[u]!;
    if (on >= 0) best = on;
    else {
      const list = -on - 1;
      let bestErr = Infinity;
      for (let j = 1; j <= t.neighbours[list]!; j++) {
        const c = t.neighbours[list + j]!;
        let e = 0;
        for (let i = 0; i < 8; i++) e += h[ho + i]! * (step * t.grid[c * 8 + i]! - xval[i]!) ** 2;
        if (e < bestErr) {
          bestErr = e;
          best = c;
        }
      }
    }
  }
  blk.gi[g] = best;
  blk.signs[g] = blk.type === 'IQ2_S' ? s : s & 127;
  for (let i = 0; i < 8; i++) {
    const a = fr(step * t.grid[best * 8 + i]!);
    deq[dout + i] = s & (1 << i) ? -a : a;
  }
}
