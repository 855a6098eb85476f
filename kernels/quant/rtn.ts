/**
 * Round-to-nearest quantization per group of input columns, the grid GPTQ also uses (its `Quantizer`):
 * the range of a group always includes 0; asymmetric = min-max with an integer zero point, symmetric = zero at
 * 2^(bits-1) and scale from the largest magnitude. Scales are rounded to float16 before the codes are chosen,
 * so what we measure is exactly what a GPTQ loader will reconstruct from the F16 `scales` tensor.
 */
import * as tf from '@tensorflow/tfjs-core';
import { f16BitsToF32, f32ToF16Bits } from '../../src/io/dtype.js';
import { groupColumns, maxq as maxqOf, numGroups, type QuantizedLinear, type QuantSpec } from './types.js';

/** Round half to even, as torch.round and tf.round do, so the typed-array and tfjs paths agree bit for bit. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The float16 value the F16 scales tensor will hold: the nearest one at or above v (rounding a scale down would
 * push the group's extreme values past the grid and clip them); never 0, so codes stay finite.
 */
export function toF16(v: number): number {
  const bits = f32ToF16Bits(v);
  let h = f16BitsToF32(bits);
  if (h < v) h = f16BitsToF32(bits + 1);
  return h > 0 ? h : 2 ** -24;
}

/**
 * Scale and zero point of one group from its value range. Asymmetric zero points are kept >= 1: GPTQ v1 stores
 * zero-1 and v2 loaders add 1 to every packed field of a word at once (GPTQModel's
 * convert_gptq_v1_to_v2_format_module adds 0b0101... for 2 bits), so a stored -1 (all ones) would carry into the
 * neighbouring field. A group with no negative value then uses the grid [-s, (maxq-1)s] instead of [0, maxq s].
 */
export function groupParams(xmin: number, xmax: number, bits: number, sym: boolean): { scale: number; zero: number } {
  const mq = maxqOf(bits);
  let lo = Math.min(xmin, 0);
  let hi = Math.max(xmax, 0);
  if (sym) {
    hi = Math.max(-lo, hi);
    if (lo < 0) lo = -hi;
  }
  if (lo === 0 && hi === 0) {
    lo = -1;
    hi = 1;
  }
  if (sym) {
    const scale = toF16((hi - lo) / mq);
    return { scale, zero: (mq + 1) / 2 };
  }
  let scale = toF16((hi - lo) / mq);
  let zero = roundHalfEven(-lo / scale);
  if (zero < 1) {
    scale = toF16(hi / (mq - 1));
    zero = 1;
  }
  return { scale, zero: Math.min(zero, mq) };
}

export function quantizeValue(w: number, scale: number, zero: number, mq: number): number {
  const q = roundHalfEven(w / scale) + zero;
  return q < 0 ? 0 : Math.min(q, mq);
}

/**
 * Round-to-nearest of a [out, in] weight, groups of consecutive input columns. The reductions and the code
 * computation run on tfjs ops (on the GPU when one is active); the per-group parameters ([groups, out], small)
 * are derived on typed arrays because they need float16 rounding.
 */
export function quantizeRtn(w: Float32Array, out: number, inF: number, spec: QuantSpec): QuantizedLinear {
  const gs = groupColumns(inF, spec.groupSize);
  const G = numGroups(inF, gs);
  const mq = maxqOf(spec.bits);
  const padded = G * gs;
  const [mins, maxs] = tf.tidy(() => {
    let W = tf.tensor2d(w, [out, inF]);
    // zero padding cannot change a group's range: the range always includes 0
    if (padded > inF)
      W = tf.pad(W, [
        [0, 0],
        [0, padded - inF],
      ]);
    const g = tf.reshape(W, [out, G, gs]);
    return [tf.min(g, 2), tf.max(g, 2)];
  });
  const mn = mins.dataSync() as Float32Array;
  const mx = maxs.dataSync() as Float32Array;
  mins.dispose();
  maxs.dispose();
  const scales = new Float32Array(G * out);
  const zeros = new Uint8Array(G * out);
  // tensors are [out, G] here; the format wants [G, out]
  const sOG = new Float32Array(out * G);
  const zOG = new Float32Array(out * G);
  for (let o = 0; o < out; o++) {
    for (let g = 0; g < G; g++) {
      const { scale, zero } = groupParams(mn[o * G + g]!, mx[o * G + g]!, spec.bits, spec.sym);
      scales[g * out + o] = scale;
      zeros[g * out + o] = zero;
      sOG[o * G + g] = scale;
      zOG[o * G + g] = zero;
    }
  }
  const codes = tf.tidy(() => {
    let W = tf.tensor2d(w, [out, inF]);
    if (padded > inF)
      W = tf.pad(W, [
        [0, 0],
        [0, padded - inF],
      ]);
    const s = tf.tensor3d(sOG, [out, G, 1]);
    const z = tf.tensor3d(zOG, [out, G, 1]);
    const q = tf.clipByValue(tf.add(tf.round(tf.div(tf.reshape(W, [out, G, gs]), s)), z), 0, mq);
    return tf.slice(tf.reshape(q, [out, padded]), [0, 0], [out, inF]);
  });
  const qf = codes.dataSync() as Float32Array;
  codes.dispose();
  const q = new Uint8Array(out * inF);
  for (let k = 0; k < q.length; k++) q[k] = qf[k]!;
  const gIdx = new Int32Array(inF);
  for (let i = 0; i < inF; i++) gIdx[i] = Math.floor(i / gs);
  return { out, in: inF, spec, q, scales, zeros, gIdx };
}

/** Reconstruct the float32 [out, in] weight a GPTQ loader computes from the stored tensors. */
export function dequantize(ql: QuantizedLinear): Float32Array {
  const { out, in: inF, q, scales, zeros, gIdx } = ql;
  const w = new Float32Array(out * inF);
  for (let o = 0; o < out; o++) {
    const row = o * inF;
    for (let i = 0; i < inF; i++) {
      const g = gIdx[i]! * out + o;
      w[row + i] = scales[g]! * (q[row + i]! - zeros[g]!);
    }
  }
  return w;
}
