/**
 * GPTQ (Frantar et al. 2022) for one linear W [out, in] given the Hessian of its inputs H = sum x x^T:
 * damping (a fraction of the mean diagonal), optional act-order (columns by decreasing H diagonal, written as
 * g_idx), the upper Cholesky factor of H^-1, then columns quantized in order with the error fed back into the
 * columns not yet quantized; within a block of 128 columns the feedback is applied column by column on typed
 * arrays (a tiny sequential loop that would drown in op overhead), and to the columns after the block lazily as
 * one matrix product on tfjs (the GPU when one is active).
 */
import * as tf from '@tensorflow/tfjs-core';
import { fail } from '../../src/errors.js';
import { upperCholeskyOfInverse } from '../linalg/cholesky.js';
import { groupParams, quantizeValue } from './rtn.js';
import { groupColumns, maxq as maxqOf, numGroups, type QuantizedLinear, type QuantSpec } from './types.js';

export interface GptqOptions {
  /** damping as a fraction of the mean diagonal of H (GPTQ's percdamp, 0.01) */
  damp?: number;
  /** quantize columns in order of decreasing H diagonal (desc_act) */
  actOrder?: boolean;
  /** columns per lazy-update block (128) */
  blockSize?: number;
}

export interface GptqResult {
  quant: QuantizedLinear;
  /** damping fraction finally used (raised when H + damp was not positive definite) */
  damp: number;
  /** GPTQ's own proxy loss: sum of squared errors weighted by 1/[H^-1]_ii^2, halved */
  loss: number;
}

/**
 * H += x^T x for rows of x [n, in] (on tfjs); H is float64 [in, in]. The transpose is explicit: tfjs-wasm's
 * matMul with transposeA/transposeB set runs 10-20x slower than on a transposed copy (measured, 2048 x 512).
 */
export function accumulateHessian(h: Float64Array, x: Float32Array, n: number, inF: number): void {
  if (n === 0) return;
  const xtx = tf.tidy(() => {
    const X = tf.tensor2d(x, [n, inF]);
    return tf.matMul(tf.transpose(X), X);
  });
  const d = xtx.dataSync() as Float32Array;
  xtx.dispose();
  for (let k = 0; k < d.length; k++) h[k] += d[k]!;
}

/** The Hessian-only part of GPTQ (dead columns, act-order permutation, damping, U), shared by every weight and
 * bit-width quantized against the same inputs (gate and up of an expert, all candidate widths). */
export interface GptqPrepared {
  inF: number;
  /** input columns never active in calibration: their weights are zeroed */
  dead: Uint8Array;
  perm?: Int32Array;
  /** upper Cholesky factor of (H + damp)^-1 in quantization order */
  U: Float64Array;
  damp: number;
}

export function prepareGptq(hessian: Float64Array, inF: number, opts: GptqOptions = {}): GptqPrepared {
  if (hessian.length !== inF * inF) fail('InvalidShape', `GPTQ: Hessian has ${hessian.length} values, expected ${inF}x${inF}`);
  const H = Float64Array.from(hessian);
  const dead = new Uint8Array(inF);
  // dead inputs (never non-zero in calibration): their weights cannot matter to the outputs seen
  for (let i = 0; i < inF; i++) {
    if (H[i * inF + i] === 0) {
      H[i * inF + i] = 1;
      dead[i] = 1;
    }
  }
  let perm: Int32Array | undefined;
  let Hp = H;
  if (opts.actOrder) {
    const diag = Array.from({ length: inF }, (_, i) => H[i * inF + i]!);
    perm = Int32Array.from(Array.from({ length: inF }, (_, i) => i).sort((a, b) => diag[b]! - diag[a]! || a - b));
    Hp = new Float64Array(inF * inF);
    for (let a = 0; a < inF; a++) for (let b = 0; b < inF; b++) Hp[a * inF + b] = H[perm[a]! * inF + perm[b]!]!;
  }
  let meanDiag = 0;
  for (let i = 0; i < inF; i++) meanDiag += Hp[i * inF + i]!;
  meanDiag /= inF;
  let damp = opts.damp ?? 0.01;
  let U: Float64Array | undefined;
  for (let tries = 0; tries < 8; tries++) {
    const Hd = Float64Array.from(Hp);
    for (let i = 0; i < inF; i++) Hd[i * inF + i] += damp * meanDiag;
    U = upperCholeskyOfInverse(Hd, inF);
    if (U) break;
    damp *= 10;
  }
  if (!U) fail('ComputeError', `GPTQ: Hessian is not positive definite even with damping ${damp}`);
  return { inF, dead, ...(perm ? { perm } : {}), U, damp };
}

export function gptqQuantize(
  w: Float32Array,
  out: number,
  inF: number,
  hessian: Float64Array | GptqPrepared,
  spec: QuantSpec,
  opts: GptqOptions = {},
): GptqResult {
  if (w.length !== out * inF) fail('InvalidShape', `GPTQ: weight has ${w.length} values, expected ${out}x${inF}`);
  const prep = hessian instanceof Float64Array ? prepareGptq(hessian, inF, opts) : hessian;
  if (prep.inF !== inF) fail('InvalidShape', `GPTQ: Hessian is for ${prep.inF} inputs, the weight has ${inF}`);
  const gs = groupColumns(inF, spec.groupSize);
  const mq = maxqOf(spec.bits);
  // whole groups inside each block, so a group's parameters see every feedback update before it is quantized
  const bs = gs * Math.max(1, Math.round((opts.blockSize ?? 128) / gs));
  const { U, perm, damp } = prep;
  const W = Float32Array.from(w);
  for (let i = 0; i < inF; i++) if (prep.dead[i]) for (let o = 0; o < out; o++) W[o * inF + i] = 0;
  let Wp = W;
  if (perm) {
    Wp = new Float32Array(out * inF);
    for (let o = 0; o < out; o++) for (let p = 0; p < inF; p++) Wp[o * inF + p] = W[o * inF + perm[p]!]!;
  }
  const G = numGroups(inF, gs);
  const scales = new Float32Array(G * out);
  const zeros = new Uint8Array(G * out);
  const Qp = new Uint8Array(out * inF);
  const s = new Float64Array(out);
  const z = new Float64Array(out);
  let loss = 0;

  for (let i1 = 0; i1 < inF; i1 += bs) {
    const i2 = Math.min(i1 + bs, inF);
    const cnt = i2 - i1;
    const W1 = new Float64Array(out * cnt);
    for (let o = 0; o < out; o++) for (let j = 0; j < cnt; j++) W1[o * cnt + j] = Wp[o * inF + i1 + j]!;
    const Err1 = new Float32Array(out * cnt);
    for (let i = 0; i < cnt; i++) {
      const col = i1 + i;
      if (col % gs === 0) {
        const g = col / gs;
        const gEnd = Math.min(i + gs, cnt);
        for (let o = 0; o < out; o++) {
          let mn = Infinity,
            mx = -Infinity;
          for (let j = i; j < gEnd; j++) {
            const v = W1[o * cnt + j]!;
            if (v < mn) mn = v;
            if (v > mx) mx = v;
          }
          const p = groupParams(mn, mx, spec.bits, spec.sym);
          s[o] = p.scale;
          z[o] = p.zero;
          scales[g * out + o] = p.scale;
          zeros[g * out + o] = p.zero;
        }
      }
      const ucol = col * inF;
      const d = U[ucol + col]!;
      for (let o = 0; o < out; o++) {
        const rowOff = o * cnt;
        const wv = W1[rowOff + i]!;
        const q = quantizeValue(wv, s[o]!, z[o]!, mq);
        Qp[o * inF + col] = q;
        const e = (wv - s[o]! * (q - z[o]!)) / d;
        loss += (wv - s[o]! * (q - z[o]!)) ** 2 / (d * d) / 2;
        Err1[rowOff + i] = e;
        for (let j = i + 1; j < cnt; j++) W1[rowOff + j] -= e * U[ucol + i1 + j]!;
      }
    }
    if (i2 < inF) {
      const rest = inF - i2;
      const Ublk = new Float32Array(cnt * rest);
      for (let a = 0; a < cnt; a++) for (let b = 0; b < rest; b++) Ublk[a * rest + b] = U[(i1 + a) * inF + i2 + b]!;
      const upd = tf.tidy(() => tf.matMul(tf.tensor2d(Err1, [out, cnt]), tf.tensor2d(Ublk, [cnt, rest])));
      const u = upd.dataSync() as Float32Array;
      upd.dispose();
      for (let o = 0; o < out; o++) for (let b = 0; b < rest; b++) Wp[o * inF + i2 + b] -= u[o * rest + b]!;
    }
  }

  // back to the checkpoint's column order: codes move with their columns, g_idx records each column's group
  const q = new Uint8Array(out * inF);
  const gIdx = new Int32Array(inF);
  for (let p = 0; p < inF; p++) {
    const c = perm ? perm[p]! : p;
    gIdx[c] = Math.floor(p / gs);
    for (let o = 0; o < out; o++) q[o * inF + c] = Qp[o * inF + p]!;
  }
  return { quant: { out, in: inF, spec, q, scales, zeros, gIdx }, damp, loss };
}
