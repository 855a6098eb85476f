/**
 * The block fits of llama.cpp's k-quants with an importance matrix, ported from ggml-quants.c
 * (quantize_row_q{2,3,4,5,6}_K_impl and their helpers make_qkx3_quants, make_qx_quants, make_qp_quants): each
 * sub-block's scale (and offset) by llama.cpp's importance-weighted search, then the super-block's float16 d / dmin
 * and the integer sub-scales by make_qp_quants (Q2_K, Q4_K, Q5_K: a weighted fit of the scales themselves, weighted
 * by each sub-block's total importance) or make_qx_quants (Q3_K) or plain rounding (Q6_K), exactly as llama.cpp
 * does. The values' codes are left to the caller: the nearest code on the grid the decoder rebuilds, which is
 * llama.cpp's requantize step (quantizeRow), or GPTQ's column-by-column choice (gptq.ts).
 *
 * Why a port and not our own fit: measured against llama.cpp's own quantize_q*_K on the same rows and importance
 * (bench/gguf-kfit.ts), our earlier least-squares sweep left 1.6-8.3% more importance-weighted error on Q2_K-Q6_K,
 * most of it in the rounding of the sub-scales, which llama.cpp fits by weighted least squares instead of scaling
 * the largest to the top code. Arithmetic is float32 (Math.fround) where llama.cpp's is, so the stored bytes agree
 * with a build of ggml-quants.c that does not fuse multiply-adds (the same bench counts the equal bytes).
 */
import { f32ToF16Bits } from '../../src/io/dtype.js';

/** A fitted block as kquants.ts's KBlock (declared here too: kquants.ts imports this module). */
export interface FittedBlock {
  d: number;
  dmin: number;
  sc: Int32Array;
  m: Int32Array;
  q: Int32Array;
}

const fr = Math.fround;
const GROUP_MAX_EPS = fr(1e-15);

/** ggml's nearest_int: round half to even (the float magic-number trick), on a float32 value. */
export function nearestInt(v: number): number {
  const r = Math.round(v);
  // Math.round rounds .5 up; the float trick rounds to even
  return Math.abs(v - Math.trunc(v)) === 0.5 ? 2 * Math.round(v / 2) : r;
}

/**
 * make_qkx3_quants (affine, codes 0..nmax): the scale and -min of n values x[o..] with importance w, over nstep + 1
 * candidate grids, by weighted squared error (use_mad false in every k-quant caller).
 */
function makeQkx3(
  n: number,
  nmax: number,
  x: Float32Array,
  o: number,
  w: Float32Array,
  rmin: number,
  rdelta: number,
  nstep: number,
): { scale: number; min: number } {
  let min = x[o]!;
  let max = x[o]!;
  let sumW = w[0]!;
  let sumX = fr(sumW * x[o]!);
  for (let i = 1; i < n; i++) {
    const v = x[o + i]!;
    if (v < min) min = v;
    if (v > max) max = v;
    sumW = fr(sumW + w[i]!);
    sumX = fr(sumX + fr(w[i]! * v));
  }
  if (min > 0) min = 0;
  if (max <= min) return { scale: 0, min: -min };
  let iscale = fr(nmax / fr(max - min));
  let scale = fr(1 / iscale);
  let best = 0;
  for (let i = 0; i < n; i++) {
    const l = Math.max(0, Math.min(nmax, nearestInt(fr(iscale * fr(x[o + i]! - min)))));
    const diff = fr(fr(fr(scale * l) + min) - x[o + i]!);
    best = fr(best + fr(w[i]! * fr(diff * diff)));
  }
  const aux = new Int32Array(n);
  for (let is = 0; is <= nstep; is++) {
    iscale = fr(fr(fr(rmin + fr(rdelta * is)) + nmax) / fr(max - min));
    let sl = 0;
    let sl2 = 0;
    let sxl = 0;
    for (let i = 0; i < n; i++) {
      const l = Math.max(0, Math.min(nmax, nearestInt(fr(iscale * fr(x[o + i]! - min)))));
      aux[i] = l;
      const wl = fr(w[i]! * l);
      sl = fr(sl + wl);
      sl2 = fr(sl2 + fr(wl * l));
      sxl = fr(sxl + fr(wl * x[o + i]!));
    }
    const D = fr(fr(sumW * sl2) - fr(sl * sl));
    if (D > 0) {
      let thisScale = fr(fr(fr(sumW * sxl) - fr(sumX * sl)) / D);
      let thisMin = fr(fr(fr(sl2 * sumX) - fr(sl * sxl)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = fr(sxl / sl2);
      }
      let mad = 0;
      for (let i = 0; i < n; i++) {
        const diff = fr(fr(fr(thisScale * aux[i]!) + thisMin) - x[o + i]!);
        mad = fr(mad + fr(w[i]! * fr(diff * diff)));
      }
      if (mad < best) {
        best = mad;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  return { scale, min: -min };
}

/**
 * make_qx_quants with rmse_type 1 and weights qw (symmetric, codes -nmax..nmax-1): the scale of n values x[o..], and
 * their codes (offset by nmax) in L when given.
 */
function makeQx(n: number, nmax: number, x: Float32Array, o: number, qw: ArrayLike<number>, L?: Int32Array): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[o + i]!);
    if (ax > amax) {
      amax = ax;
      max = x[o + i]!;
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L?.fill(0, 0, n);
    return 0;
  }
  const codes = (iscale: number, into?: Int32Array) => {
    let sumlx = 0;
    let suml2 = 0;
    for (let i = 0; i < n; i++) {
      const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(fr(iscale * x[o + i]!))));
      if (into) into[i] = l + nmax;
      const w = qw[i]!;
      sumlx = fr(sumlx + fr(fr(w * x[o + i]!) * l));
      suml2 = fr(suml2 + fr(fr(w * l) * l));
    }
    return { sumlx, suml2 };
  };
  let iscale = fr(-nmax / max);
  let { sumlx, suml2 } = codes(iscale, L);
  let scale = suml2 ? fr(sumlx / suml2) : 0;
  let best = fr(scale * sumlx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = fr(-fr(nmax + fr(0.1 * is)) / max);
    ({ sumlx, suml2 } = codes(iscale));
    if (suml2 > 0 && fr(sumlx * sumlx) > fr(best * suml2)) {
      if (L) codes(iscale, L);
      scale = fr(sumlx / suml2);
      best = fr(scale * sumlx);
    }
  }
  return scale;
}

/**
 * make_qp_quants: the scale d and codes L (0..nmax) of n non-negative values (sub-block scales), weights qw. Also
 * the first scale guess of IQ2_XXS's group search (iq2.ts), whose values can include one negative (its sign
 * parity flip): llama.cpp's L is uint8_t, so a negative code is stored (and read back) as code & 255, as here.
 */
export function makeQp(n: number, nmax: number, x: Float32Array, L: Int32Array, qw: Float32Array): number {
  let max = 0;
  for (let i = 0; i < n; i++) max = Math.max(max, x[i]!);
  if (max < GROUP_MAX_EPS) {
    L.fill(0, 0, n);
    return 0;
  }
  let iscale = fr(nmax / max);
  for (let i = 0; i < n; i++) L[i] = nearestInt(fr(iscale * x[i]!)) & 255;
  const scale = fr(1 / iscale);
  let bestMse = 0;
  for (let i = 0; i < n; i++) {
    const diff = fr(x[i]! - fr(scale * L[i]!));
    bestMse = fr(bestMse + fr(fr(qw[i]! * diff) * diff));
  }
  for (let is = -4; is <= 4; is++) {
    if (is === 0) continue;
    const iscaleIs = fr(fr(fr(0.1 * is) + nmax) / max);
    const scaleIs = fr(1 / iscaleIs);
    let mse = 0;
    for (let i = 0; i < n; i++) {
      const l = Math.min(nmax, nearestInt(fr(iscaleIs * x[i]!)));
      const diff = fr(x[i]! - fr(scaleIs * l));
      mse = fr(mse + fr(fr(qw[i]! * diff) * diff));
    }
    if (mse < bestMse) {
      bestMse = mse;
      iscale = iscaleIs;
    }
  }
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const l = Math.min(nmax, nearestInt(fr(iscale * x[i]!)));
    L[i] = l & 255;
    sumlx = fr(sumlx + fr(fr(qw[i]! * x[i]!) * l));
    suml2 = fr(suml2 + fr(fr(qw[i]! * l) * l));
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const w = qw[i]!;
      let slx = fr(sumlx - fr(fr(w * x[i]!) * L[i]!));
      let sl2 = fr(suml2 - fr(fr(w * L[i]!) * L[i]!));
      if (slx > 0 && sl2 > 0) {
        const nl = Math.min(nmax, nearestInt(fr(fr(x[i]! * sl2) / slx)));
        if (nl !== L[i]) {
          slx = fr(slx + fr(fr(w * x[i]!) * nl));
          sl2 = fr(sl2 + fr(fr(w * nl) * nl));
          if (fr(fr(slx * slx) * suml2) > fr(fr(sumlx * sumlx) * sl2)) {
            L[i] = nl & 255;
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  return suml2 > 0 ? fr(sumlx / suml2) : 0;
}

const SUB: Readonly<Record<string, number>> = { Q2_K: 16, Q3_K: 16, Q4_K: 32, Q5_K: 32, Q6_K: 16 };

/** Whether kfit fits this type (the k-quants; the 32-value types keep kquants.ts's own fit). */
export function hasLlamaFit(type: string): boolean {
  return type in SUB;
}

/**
 * The stored parameters (d, dmin as float16 bits; sub-scales sc and sub-offsets m as the decoder reads them) of one
 * 256-value block x[o..o+256) under llama.cpp's fit with importance imatrix[o'..] (per value of the block; ones
 * when llama.cpp would have none). Codes q are zero: the caller takes the nearest on the grid.
 */
export function fitBlockLlama(type: string, xIn: ArrayLike<number>, imatrix: ArrayLike<number>, o: number, io = 0): FittedBlock {
  const sub = SUB[type];
  if (!sub) throw new RangeError(`kfit: ${type} is not a k-quant`);
  const nsub = 256 / sub;
  const x = new Float32Array(256);
  for (let i = 0; i < 256; i++) x[i] = xIn[o + i]!;
  const sc = new Int32Array(nsub);
  const m = new Int32Array(nsub);
  const q = new Int32Array(256);
  let sumx2 = 0;
  for (let i = 0; i < 256; i++) sumx2 = fr(sumx2 + fr(x[i]! * x[i]!));
  // Q2_K weights by sigma^2 = mean square; Q3_K-Q5_K by twice it; Q6_K by the importance alone
  const sigma2 = type === 'Q2_K' ? fr(sumx2 / 256) : fr(fr(2 * sumx2) / 256);
  const weights = (j: number) => {
    const w = new Float32Array(sub);
    for (let l = 0; l < sub; l++) {
      const v = x[sub * j + l]!;
      w[l] = type === 'Q6_K' ? fr(imatrix[io + sub * j + l]!) : fr(fr(imatrix[io + sub * j + l]!) * fr(Math.sqrt(fr(sigma2 + fr(v * v)))));
    }
    return w;
  };
  const sumOf = (w: Float32Array) => {
    let s = 0;
    for (const v of w) s = fr(s + v);
    return s;
  };
  const scales = new Float32Array(nsub);
  const mins = new Float32Array(nsub);
  const sw = new Float32Array(nsub);
  if (type === 'Q2_K' || type === 'Q4_K' || type === 'Q5_K') {
    const nmax = type === 'Q2_K' ? 3 : type === 'Q4_K' ? 15 : 31;
    for (let j = 0; j < nsub; j++) {
      const w = weights(j);
      // quantize_row_q2_K_impl sums only the first QK_K/16 = 16 weights: the whole 16-value sub-block
      sw[j] = sumOf(w);
      const r = makeQkx3(sub, nmax, x, sub * j, w, fr(-0.9), fr(0.05), 36);
      scales[j] = r.scale;
      mins[j] = r.min;
    }
    const top = type === 'Q2_K' ? 15 : 63;
    const d = f32ToF16Bits(makeQp(nsub, top, scales, sc, sw));
    const dmin = f32ToF16Bits(makeQp(nsub, top, mins, m, sw));
    // Q5_K clamps to the 6 stored bits (make_qp_quants can return nmax exactly; a no-op kept for fidelity)
    for (let j = 0; j < nsub; j++) {
      sc[j] = Math.min(top, sc[j]!);
      m[j] = Math.min(top, m[j]!);
    }
    return { d, dmin, sc, m, q };
  }
  if (type === 'Q3_K') {
    for (let j = 0; j < nsub; j++) {
      const w = weights(j);
      sw[j] = sumOf(w);
      scales[j] = fr(makeQx(16, 4, x, 16 * j, w));
    }
    const Ls = new Int32Array(nsub);
    const dBlock = makeQx(nsub, 32, scales, 0, sw, Ls);
    // stored as 6 bits l (0..63), read back as l - 32
    for (let j = 0; j < nsub; j++) sc[j] = (Ls[j]! & 63) - 32;
    return { d: f32ToF16Bits(dBlock), dmin: 0, sc, m, q };
  }
  // Q6_K
  let maxScale = 0;
  let maxAbs = 0;
  for (let j = 0; j < nsub; j++) {
    const s = makeQx(16, 32, x, 16 * j, weights(j));
    scales[j] = s;
    if (Math.abs(s) > maxAbs) {
      maxAbs = Math.abs(s);
      maxScale = s;
    }
  }
  if (maxAbs < GROUP_MAX_EPS) return { d: 0, dmin: 0, sc, m, q };
  const iscale = fr(-128 / maxScale);
  const d = f32ToF16Bits(fr(1 / iscale));
  // int8 storage: MIN(127, nearest_int(...)) then the int8 cast
  for (let j = 0; j < nsub; j++) sc[j] = ((Math.min(127, nearestInt(fr(iscale * scales[j]!))) + 128) & 255) - 128;
  return { d, dmin: 0, sc, m, q };
}
