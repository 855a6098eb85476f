/**
 * llama.cpp's 3-bit grid types, from their definitions (ggml-common.h block_iq3_xxs / block_iq3_s, the grids and
 * ksigns_iq2xs; ggml-quants.c iq3xs_init_impl, quantize_row_iq3_xxs_impl, quantize_row_iq3_s_impl,
 * dequantize_row_iq3_xxs / _s). Values come in groups of 4 that take one point of a fixed grid (4 unsigned levels),
 * with a sign per value and a scale per 32 values:
 *
 *   type     bytes  layout (per 256 values)                                          value
 *   IQ3_XXS    98   d f16 | qs[64] grid indices | 8 x u32 (4 x 7 sign bits, 4-bit s)   d (0.5 + s) / 2 * grid * sign
 *   IQ3_S     110   d f16 | qs[64] | qh[8] (9th index bit) | signs[32] | scales[4]      d (1 + 2 s) * grid * sign
 *
 * IQ3_XXS stores 7 signs per 8 values, the 8th making their count even (ksigns_iq2xs); its 256 grid points decode to
 * levels 4, 12, ..., 52, 62; IQ3_S's 512 points decode to 1, 3, ..., 15 and every sign is stored.
 *
 * The quantizer is llama.cpp's, in float32 (Math.fround at each of its roundings) so that the bytes equal its
 * ggml_quantize_chunk's: per 32 values the signs are split off (IQ3_XXS flips the least important value when the
 * count of negatives is odd), a sweep of 31 (XXS) or 19 (S) candidate scales rounds every group to the nearest
 * level vector, replaced by the best of its precomputed grid neighbours when it is not a grid point, keeping the
 * scale of largest weighted correlation; then the 4-bit scales against one float16 d.
 */
import { f16BitsToF32, f32ToF16Bits } from '../../src/io/dtype.js';
import { IQ3S_KGRID, IQ3XXS_KGRID } from './iq3-grids.js';
import { nearestInt } from './kfit.js';

export const IQ3_TYPES = ['IQ3_XXS', 'IQ3_S'] as const;
export type Iq3Type = (typeof IQ3_TYPES)[number];

export const IQ3_SPECS: Readonly<Record<Iq3Type, { block: number; bytes: number }>> = {
  IQ3_XXS: { block: 256, bytes: 98 },
  IQ3_S: { block: 256, bytes: 110 },
};

const fr = Math.fround;
const EPS_XXS = fr(1e-8);
const F_XXS = fr(1.0125);
const F_S = fr(1.033);
const P2 = fr(0.2);
/** ggml-common.h iq3xxs_grid decodes IQ3_XXS's levels 0..7 to these bytes (iq3s_grid: 2 l + 1) */
const XXS_LEVELS = [4, 12, 20, 28, 36, 44, 52, 62];

/** ksigns_iq2xs[i]: the 7 stored sign bits and, as bit 7, the one that makes the count of negatives even. */
export function ksign(i: number): number {
  let p = 0;
  for (let b = i; b; b >>= 1) p ^= b & 1;
  return i | (p << 7);
}

interface Grid {
  /** grid points' levels (0..7), 4 per point */
  levels: Uint8Array;
  /** decoded magnitudes, 4 per point (what ggml-common.h's grid holds) */
  decoded: Uint8Array;
  /** level vector (4 x 3 bits) -> point, or -(offset + 1) into neighbours when it is not a point */
  map: Int32Array;
  /** per off-grid vector: a count, then the points of its nwant nearest distinct distances */
  neighbours: Uint16Array;
}

const grids = new Map<Iq3Type, Grid>();

/** iq3xs_init_impl: the grid, its map and every off-grid vector's neighbour list (built once, on first use). */
function gridOf(type: Iq3Type): Grid {
  const have = grids.get(type);
  if (have) return have;
  const kgrid = type === 'IQ3_XXS' ? IQ3XXS_KGRID : IQ3S_KGRID;
  const size = kgrid.length;
  const nwant = size === 256 ? 2 : 3;
  const levels = new Uint8Array(size * 4);
  const decoded = new Uint8Array(size * 4);
  const map = new Int32Array(4096).fill(-1);
  for (let k = 0; k < size; k++) {
    for (let i = 0; i < 4; i++) {
      const l = (kgrid[k]! >> (3 * i)) & 7;
      levels[4 * k + i] = l;
      decoded[4 * k + i] = type === 'IQ3_XXS' ? XXS_LEVELS[l]! : 2 * l + 1;
    }
    map[kgrid[k]!] = k;
  }
  const lists: number[] = [];
  const d2 = new Int32Array(size);
  const order = Array.from({ length: size }, (_, j) => j);
  for (let u = 0; u < 4096; u++) {
    if (map[u]! >= 0) continue;
    for (let j = 0; j < size; j++) {
      let s = 0;
      for (let i = 0; i < 4; i++) {
        const diff = 2 * levels[4 * j + i]! - 2 * ((u >> (3 * i)) & 7);
        s += diff * diff;
      }
      d2[j] = s;
    }
    // qsort on (distance, index): a total order
    order.sort((a, b) => d2[a]! - d2[b]! || a - b);
    const start = lists.length;
    map[u] = -(start + 1);
    lists.push(0);
    let dist = d2[order[0]!]!;
    let nhave = 1;
    let n = 0;
    for (const j of order) {
      if (d2[j]! > dist) {
        if (nhave === nwant) break;
        dist = d2[j]!;
        nhave++;
      }
      lists.push(j);
      n++;
    }
    lists[start] = n;
  }
  const g = { levels, decoded, map, neighbours: Uint16Array.from(lists) };
  grids.set(type, g);
  return g;
}

/** The decoded grid (4 bytes per point, ggml-common.h's iq3xxs_grid / iq3s_grid as bytes). */
export const iq3DecodedGrid = (type: Iq3Type): Uint8Array => gridOf(type).decoded;

/**
 * iq3_find_best_neighbour: among the neighbours of off-grid vector u, the point of least weighted squared error to
 * xval[o..o+4) at this scale (first of equals); its levels go to L[o..o+4).
 */
function bestNeighbour(g: Grid, u: number, xval: Float32Array, w: Float32Array, o: number, scale: number, L: Int8Array): number {
  const at = -g.map[u]! - 1;
  const n = g.neighbours[at]!;
  let best = Number.MAX_VALUE;
  let index = -1;
  for (let j = 1; j <= n; j++) {
    const p = g.neighbours[at + j]!;
    let d2 = 0;
    for (let i = 0; i < 4; i++) {
      const diff = fr(fr(scale * (2 * g.levels[4 * p + i]! + 1)) - xval[o + i]!);
      d2 = fr(d2 + fr(fr(w[o + i]! * diff) * diff));
    }
    if (d2 < best) {
      best = d2;
      index = p;
    }
  }
  for (let i = 0; i < 4; i++) L[o + i] = g.levels[4 * index + i]!;
  return index;
}

const levelOf = (id: number, v: number) => Math.max(0, Math.min(7, nearestInt(fr(fr(0.5) * fr(fr(id * v) - 1)))));

/**
 * quantize_row_iq3_xxs_impl / quantize_row_iq3_s_impl for the 256 values x[o..] (float32), importance qw[io..] or
 * none (llama.cpp then weights by x^2), into out[at..at+bytes).
 */
export function quantizeIq3Block(
  type: Iq3Type,
  x: ArrayLike<number>,
  o: number,
  qw: ArrayLike<number> | undefined,
  io: number,
  out: Uint8Array,
  at: number,
): void {
  const g = gridOf(type);
  const xxs = type === 'IQ3_XXS';
  const bytes = IQ3_SPECS[type].bytes;
  out.fill(0, at, at + bytes);
  const weight = new Float32Array(32);
  const waux = new Float32Array(32);
  const xval = new Float32Array(32);
  const L = new Int8Array(32);
  const Laux = new Int8Array(32);
  const onGrid = new Array<boolean>(8);
  const onGridAux = new Array<boolean>(8);
  const signs = new Uint8Array(4);
  const scales = new Float32Array(8);
  // IQ3_XXS: qs[64] then 8 u32 of signs and scale; IQ3_S: qs[64] | qh[8] | signs[32] | scales[4]
  const qs = at + 2;
  const sas = new Uint32Array(8);
  // IQ3_S: sub-block ib's grid indices at qs + 8 ib, its signs at 74 + 4 ib. llama.cpp's writer (3f545bec) advances
  // its qs and signs pointers only past sub-blocks that are not all zero, so after an all-zero sub-block it writes
  // the later ones' codes one sub-block early and its own decoder reads them misplaced (relative rms error 1.47 on
  // the sub-blocks after one, bench/gguf-iq34.ts's hard rows); we write every sub-block in its place, the only
  // bytes that differ from llama.cpp's (llamaIq3sLayout rebuilds its layout from ours, for the byte comparison).
  let sumx2 = 0;
  for (let i = 0; i < 256; i++) sumx2 = fr(sumx2 + fr(x[o + i]! * x[o + i]!));
  const sigma2 = fr(fr(2 * sumx2) / 256);
  let maxScale = 0;
  for (let ib = 0; ib < 8; ib++) {
    const xb = o + 32 * ib;
    for (let i = 0; i < 32; i++) {
      const v = x[xb + i]!;
      weight[i] = qw ? fr(fr(qw[io + 32 * ib + i]!) * fr(Math.sqrt(fr(sigma2 + fr(v * v))))) : fr(v * v);
      waux[i] = fr(Math.sqrt(weight[i]!));
    }
    for (let k = 0; k < 4; k++) {
      let nflip = 0;
      let s = 0;
      for (let i = 0; i < 8; i++) {
        const v = x[xb + 8 * k + i]!;
        if (v >= 0) xval[8 * k + i] = v;
        else {
          xval[8 * k + i] = -v;
          nflip++;
          s |= 1 << i;
        }
      }
      if (xxs && nflip % 2) {
        let imin = 0;
        let min = fr(fr(weight[8 * k]! * x[xb + 8 * k]!) * x[xb + 8 * k]!);
        for (let i = 1; i < 8; i++) {
          const ax = fr(fr(weight[8 * k + i]! * x[xb + 8 * k + i]!) * x[xb + 8 * k + i]!);
          if (ax < min) {
            min = ax;
            imin = i;
          }
        }
        xval[8 * k + imin] = -xval[8 * k + imin]!;
        s ^= 1 << imin;
      }
      signs[k] = xxs ? s & 127 : s;
    }
    let max = xval[0]!;
    for (let i = 1; i < 32; i++) max = Math.max(max, xval[i]!);
    L.fill(0);
    if (xxs ? max < EPS_XXS : !max) {
      scales[ib] = 0;
      continue;
    }
    let best = 0;
    let scale = fr(max / 15);
    onGrid.fill(xxs);
    const range = xxs ? 15 : 9;
    for (let is = -range; is <= range; is++) {
      const id = fr(fr(15 + fr(is * P2)) / max);
      const thisScale = fr(1 / id);
      for (let k = 0; k < 8; k++) {
        let u = 0;
        for (let i = 0; i < 4; i++) {
          const l = levelOf(id, xval[4 * k + i]!);
          Laux[4 * k + i] = l;
          u |= l << (3 * i);
        }
        onGridAux[k] = true;
        if (g.map[u]! < 0) {
          onGridAux[k] = false;
          bestNeighbour(g, u, xval, waux, 4 * k, thisScale, Laux);
        }
      }
      let sumqx = 0;
      let sumq2 = 0;
      for (let i = 0; i < 32; i++) {
        const w = weight[i]!;
        const q = 2 * Laux[i]! + 1;
        sumqx = fr(sumqx + fr(fr(w * xval[i]!) * q));
        sumq2 = fr(sumq2 + fr(fr(w * q) * q));
      }
      if (sumq2 > 0 && fr(sumqx * sumqx) > fr(best * sumq2)) {
        scale = fr(sumqx / sumq2);
        best = fr(scale * sumqx);
        L.set(Laux);
        for (let k = 0; k < 8; k++) onGrid[k] = onGridAux[k]!;
      }
    }
    let notOnGrid = 0;
    for (let k = 0; k < 8; k++) if (!onGrid[k]) notOnGrid++;
    if (notOnGrid > 0 && scale > 0) {
      const id = fr(1 / scale);
      for (let k = 0; k < 8; k++) {
        // IQ3_S re-rounds every group here (llama.cpp's `continue` for on-grid groups is commented out there)
        if (xxs && onGrid[k]) continue;
        let u = 0;
        for (let i = 0; i < 4; i++) u |= levelOf(id, xval[4 * k + i]!) << (3 * i);
        let p = g.map[u]!;
        if (p < 0) p = bestNeighbour(g, u, xval, waux, 4 * k, scale, L);
        for (let i = 0; i < 4; i++) L[4 * k + i] = g.levels[4 * p + i]!;
      }
      let sumqx = 0;
      let sumq2 = 0;
      for (let i = 0; i < 32; i++) {
        const w = weight[i]!;
        const q = 2 * L[i]! + 1;
        sumqx = fr(sumqx + fr(fr(w * xval[i]!) * q));
        sumq2 = fr(sumq2 + fr(fr(w * q) * q));
      }
      if (sumq2 > 0) scale = fr(sumqx / sumq2);
    }
    if (scale < 0) {
      // never expected (llama.cpp keeps it): a positive scale with every sign flipped
      scale = -scale;
      for (let k = 0; k < 4; k++) signs[k] = xxs ? ~signs[k]! & 127 : ~signs[k]! & 255;
    }
    for (let k = 0; k < 8; k++) {
      let u = 0;
      for (let i = 0; i < 4; i++) u |= L[4 * k + i]! << (3 * i);
      const p = g.map[u]!;
      if (p < 0) throw new Error(`${type}: level vector ${u} is not on the grid`);
      if (xxs) out[qs + 8 * ib + k] = p;
      else {
        out[qs + 8 * ib + k] = p & 255;
        out[at + 66 + ((ib * 8 + k) >> 3)]! |= (p >> 8) << ((ib * 8 + k) % 8);
      }
    }
    if (xxs) sas[ib] = (signs[0]! | (signs[1]! << 7) | (signs[2]! << 14) | (signs[3]! << 21)) >>> 0;
    else {
      for (let k = 0; k < 4; k++) out[at + 74 + 4 * ib + k] = signs[k]!;
    }
    scales[ib] = scale;
    maxScale = Math.max(maxScale, scale);
  }
  if (!maxScale) {
    // all-zero block: llama.cpp leaves IQ3_XXS entirely zero; IQ3_S keeps what its sub-blocks wrote (nothing)
    if (xxs) out.fill(0, at, at + bytes);
    return;
  }
  const d = fr(maxScale / 31);
  const dh = f32ToF16Bits(fr(d * (xxs ? F_XXS : F_S)));
  out[at] = dh & 0xff;
  out[at + 1] = dh >> 8;
  const id = fr(1 / d);
  const sc = (s: number) => Math.max(0, Math.min(15, nearestInt(fr(fr(0.5) * fr(fr(id * s) - 1)))));
  if (xxs) {
    for (let ib = 0; ib < 8; ib++) {
      const v = (sas[ib]! | (sc(scales[ib]!) << 28)) >>> 0;
      const p = at + 2 + 64 + 4 * ib;
      out[p] = v & 0xff;
      out[p + 1] = (v >>> 8) & 0xff;
      out[p + 2] = (v >>> 16) & 0xff;
      out[p + 3] = v >>> 24;
    }
  } else {
    for (let ib = 0; ib < 8; ib += 2) out[at + 106 + ib / 2] = sc(scales[ib]!) | (sc(scales[ib + 1]!) << 4);
  }
}

/**
 * Our IQ3_S bytes of the rows x (n values each) in llama.cpp's layout: in each block, the grid indices and signs of
 * the sub-blocks that are not all zero moved down over those of the all-zero ones before them (its writer's pointer
 * skip, see quantizeIq3Block), the rest zero. Only for comparing bytes with llama.cpp's.
 */
export function llamaIq3sLayout(ours: Uint8Array, x: ArrayLike<number>, rows: number, n: number): Uint8Array {
  const out = Uint8Array.from(ours);
  const nb = (rows * n) / 256;
  for (let b = 0; b < nb; b++) {
    const at = b * 110;
    out.fill(0, at + 2, at + 66);
    out.fill(0, at + 74, at + 106);
    let k = 0;
    for (let ib = 0; ib < 8; ib++) {
      let zero = true;
      for (let i = 0; i < 32; i++) if (x[b * 256 + 32 * ib + i] !== 0) zero = false;
      if (zero) continue;
      out.set(ours.subarray(at + 2 + 8 * ib, at + 10 + 8 * ib), at + 2 + 8 * k);
      out.set(ours.subarray(at + 74 + 4 * ib, at + 78 + 4 * ib), at + 74 + 4 * k);
      k++;
    }
  }
  return out;
}

export function quantizeIq3Matrix(type: Iq3Type, x: Float32Array, rows: number, n: number, imatrix?: ArrayLike<number>): Uint8Array {
  const { block, bytes } = IQ3_SPECS[type];
  if (n % block !== 0) throw new RangeError(`${type}: a row of ${n} values is not whole blocks of ${block}`);
  const nb = n / block;
  const out = new Uint8Array(rows * nb * bytes);
  for (let r = 0; r < rows; r++) for (let b = 0; b < nb; b++) quantizeIq3Block(type, x, r * n + b * block, imatrix, b * block, out, (r * nb + b) * bytes);
  return out;
}

/** dequantize_row_iq3_xxs / _s over `rows` rows of n values. */
export function dequantizeIq3Matrix(type: Iq3Type, bytes: Uint8Array, rows: number, n: number): Float32Array {
  const { block, bytes: bb } = IQ3_SPECS[type];
  if (n % block !== 0) throw new RangeError(`${type}: ${n} values are not whole blocks of ${block}`);
  const nb = (rows * n) / block;
  if (bytes.length < nb * bb) throw new RangeError(`${type}: ${bytes.length} bytes for ${nb} blocks of ${bb}`);
  const grid = gridOf(type).decoded;
  const out = new Float32Array(rows * n);
  let y = 0;
  for (let i = 0; i < nb; i++) {
    const o = i * bb;
    const d = f16BitsToF32(bytes[o]! | (bytes[o + 1]! << 8));
    for (let ib = 0; ib < 8; ib++) {
      let db: number;
      const signOf = new Uint8Array(4);
      const idx = new Uint16Array(8);
      if (type === 'IQ3_XXS') {
        const p = o + 66 + 4 * ib;
        const aux = (bytes[p]! | (bytes[p + 1]! << 8) | (bytes[p + 2]! << 16) | (bytes[p + 3]! << 24)) >>> 0;
        db = fr(fr(d * fr(0.5 + (aux >>> 28))) * 0.5);
        for (let l = 0; l < 4; l++) signOf[l] = ksign((aux >>> (7 * l)) & 127);
        for (let k = 0; k < 8; k++) idx[k] = bytes[o + 2 + 8 * ib + k]!;
      } else {
        const s = bytes[o + 106 + (ib >> 1)]!;
        db = fr(d * (1 + 2 * (ib % 2 ? s >> 4 : s & 0xf)));
        const qh = bytes[o + 66 + ib]!;
        for (let l = 0; l < 4; l++) signOf[l] = bytes[o + 74 + 4 * ib + l]!;
        for (let k = 0; k < 8; k++) idx[k] = bytes[o + 2 + 8 * ib + k]! | (((qh >> k) & 1) << 8);
      }
      for (let l = 0; l < 4; l++) {
        for (let h = 0; h < 2; h++) {
          const p = idx[2 * l + h]! * 4;
          for (let j = 0; j < 4; j++) {
            const v = fr(db * grid[p + j]!);
            out[y + 4 * h + j] = signOf[l]! & (1 << (4 * h + j)) ? -v : v;
          }
        }
        y += 8;
      }
    }
  }
  return out;
}

// ---- GPTQ's rounding (gptq.ts): the block's scales from llama.cpp's fit, then one grid point per group of 4 ----------

/** A block being written by GPTQ: the fitted d and scales (kept), the grid point and signs of every group. */
export interface Iq3Codes {
  fit: Uint8Array;
  /** the decoder's step of each 32-value sub-block */
  db: Float32Array;
  /** grid point of each group of 4 */
  idx: Uint16Array;
  /** 1 where the value is negative */
  neg: Uint8Array;
  /** what the decoder rebuilds, per value */
  deq: Float32Array;
}

/** llama.cpp's fit of the block x[0..256) with importance imp (float32 arithmetic), kept for its d and scales. */
export function fitIq3Codes(type: Iq3Type, x: Float32Array, imp: ArrayLike<number>): Iq3Codes {
  const fit = new Uint8Array(IQ3_SPECS[type].bytes);
  quantizeIq3Block(type, x, 0, imp, 0, fit, 0);
  const d = f16BitsToF32(fit[0]! | (fit[1]! << 8));
  const db = new Float32Array(8);
  for (let ib = 0; ib < 8; ib++) {
    if (type === 'IQ3_XXS') db[ib] = fr(fr(d * fr(0.5 + (fit[66 + 4 * ib + 3]! >> 4))) * 0.5);
    else {
      const s = fit[106 + (ib >> 1)]!;
      db[ib] = fr(d * (1 + 2 * (ib % 2 ? s >> 4 : s & 0xf)));
    }
  }
  return { fit, db, idx: new Uint16Array(64), neg: new Uint8Array(256), deq: new Float32Array(256) };
}

/**
 * Round the group of 4 values v[o..o+4) starting at value j of the block (j a multiple of 4): signs from the values,
 * the grid point nearest their magnitudes at the sub-block's step. IQ3_XXS stores 7 signs per 8 values, the count of
 * negatives even: at the second group of each 8, when the count is odd, the value whose flip costs least is flipped.
 * The decoded values go to c.deq[j..j+4).
 */
export function roundIq3Group(type: Iq3Type, c: Iq3Codes, j: number, v: ArrayLike<number>, o: number): void {
  const g = gridOf(type);
  const db = c.db[j >> 5]!;
  const size = g.decoded.length / 4;
  let best = Number.POSITIVE_INFINITY;
  let bp = 0;
  for (let p = 0; p < size; p++) {
    let e = 0;
    for (let i = 0; i < 4; i++) {
      const diff = fr(db * g.decoded[4 * p + i]!) - Math.abs(v[o + i]!);
      e += diff * diff;
    }
    if (e < best) {
      best = e;
      bp = p;
    }
  }
  c.idx[j >> 2] = bp;
  for (let i = 0; i < 4; i++) {
    c.neg[j + i] = v[o + i]! < 0 ? 1 : 0;
    c.deq[j + i] = fr(db * g.decoded[4 * bp + i]!);
  }
  if (type === 'IQ3_XXS' && j % 8 === 4) {
    let n = 0;
    for (let i = j - 4; i < j + 4; i++) n += c.neg[i]!;
    if (n % 2) {
      // flipping value i moves it from |v| - q away to |v| + q away: the cost is 4 |v| q
      let im = 0;
      for (let i = 1; i < 4; i++) if (Math.abs(v[o + i]!) * c.deq[j + i]! < Math.abs(v[o + im]!) * c.deq[j + im]!) im = i;
      c.neg[j + im] ^= 1;
    }
  }
  for (let i = 0; i < 4; i++) if (c.neg[j + i]) c.deq[j + i] = -c.deq[j + i]!;
}

/** The block's bytes: the fit's d and scales, the groups' grid points and signs. */
export function packIq3Codes(type: Iq3Type, c: Iq3Codes, out: Uint8Array, at: number): void {
  const bytes = IQ3_SPECS[type].bytes;
  out.fill(0, at, at + bytes);
  out[at] = c.fit[0]!;
  out[at + 1] = c.fit[1]!;
  for (let k = 0; k < 64; k++) out[at + 2 + k] = c.idx[k]! & 255;
  if (type === 'IQ3_XXS') {
    for (let ib = 0; ib < 8; ib++) {
      let v = (c.fit[66 + 4 * ib + 3]! >> 4) << 28;
      for (let l = 0; l < 4; l++) {
        let s = 0;
        for (let i = 0; i < 7; i++) s |= c.neg[32 * ib + 8 * l + i]! << i;
        v |= s << (7 * l);
      }
      v >>>= 0;
      for (let k = 0; k < 4; k++) out[at + 66 + 4 * ib + k] = (v >>> (8 * k)) & 0xff;
    }
    return;
  }
  for (let k = 0; k < 64; k++) out[at + 66 + (k >> 3)]! |= (c.idx[k]! >> 8) << (k % 8);
  for (let b = 0; b < 32; b++) {
    let s = 0;
    for (let i = 0; i < 8; i++) s |= c.neg[8 * b + i]! << i;
    out[at + 74 + b] = s;
  }
  for (let i = 0; i < 4; i++) out[at + 106 + i] = c.fit[106 + i]!;
}
