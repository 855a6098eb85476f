/**
 * Expert MLPs: down(act(gate x) * up x). `silu` is every family's SwiGLU; gpt_oss clamps and shifts
 * (modeling_gpt_oss.py GptOssExperts: gate <= limit, up in [-limit, limit], (up + 1) * gate * sigmoid(alpha gate)).
 * Rows are batched: an expert is applied once to all the tokens routed to it, one matmul per projection.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ActivationSpec } from '../model/types.js';
import type { Linear, SwiGLUWeights } from './api.js';
import { applyT, upload, type DeviceLinear } from './ops.js';
import { swigluRowsPerChunk } from './chunks.js';

export interface DeviceSwiGLU {
  /** gate and up stacked [2I, in]: one matmul for both */
  gateUp: DeviceLinear;
  inter: number;
  down: DeviceLinear;
  dispose(): void;
}

function stack(a: Linear, b: Linear): Linear {
  if (a.in !== b.in) throw new RangeError(`gate (${a.out}x${a.in}) and up (${b.out}x${b.in}) take different inputs`);
  const w = new Float32Array((a.out + b.out) * a.in);
  w.set(a.w, 0);
  w.set(b.w, a.out * a.in);
  const out: Linear = { out: a.out + b.out, in: a.in, w };
  if (a.b || b.b) {
    const bias = new Float32Array(a.out + b.out);
    if (a.b) bias.set(a.b, 0);
    if (b.b) bias.set(b.b, a.out);
    out.b = bias;
  }
  return out;
}

export function uploadSwiGLU(w: SwiGLUWeights): DeviceSwiGLU {
  const gateUp = upload(stack(w.gate, w.up));
  const down = upload(w.down);
  return {
    gateUp,
    inter: w.gate.out,
    down,
    dispose: () => {
      gateUp.dispose();
      down.dispose();
    },
  };
}

function act(g: tf.Tensor2D, u: tf.Tensor2D, a: ActivationSpec): tf.Tensor2D {
  if (a.kind === 'silu') return tf.mul(tf.mul(g, tf.sigmoid(g)), u);
  const gc = tf.minimum(g, a.limit);
  const uc = tf.clipByValue(u, -a.limit, a.limit);
  return tf.mul(tf.add(uc, 1), tf.mul(gc, tf.sigmoid(tf.mul(gc, a.alpha))));
}

/** out [T, H] = expert(x [T, in]) with weights already on the backend. */
/** `onDownInput` receives the down projection's input act(gate x) * up x, chunk by chunk (rows r0 ..). */
export type DownInputSink = (a: Float32Array, rows: number, r0: number) => void;

export function swigluDevice(
  w: DeviceSwiGLU,
  x: Float32Array,
  T: number,
  activation: ActivationSpec,
  out?: Float32Array,
  onDownInput?: DownInputSink,
): Float32Array {
  const H = w.down.out;
  const y = out ?? new Float32Array(T * H);
  const step = swigluRowsPerChunk(w.inter);
  for (let r0 = 0; r0 < T; r0 += step) {
    const r = Math.min(step, T - r0);
    const [res, a] = tf.tidy(() => {
      const xt = tf.tensor2d(x.subarray(r0 * w.gateUp.in, (r0 + r) * w.gateUp.in), [r, w.gateUp.in]);
      const gu = applyT(xt, w.gateUp);
      const I = w.inter;
      const h = act(tf.slice(gu, [0, 0], [r, I]), tf.slice(gu, [0, I], [r, I]), activation);
      return [applyT(h, w.down), onDownInput ? h : undefined] as [tf.Tensor2D, tf.Tensor2D | undefined];
    });
    y.set(res.dataSync() as Float32Array, r0 * H);
    res.dispose();
    if (a) {
      onDownInput!(a.dataSync() as Float32Array, r, r0);
      a.dispose();
    }
  }
  return y;
}

/** out [T, H] = expert(x [T, in]) from host weights (uploaded for this call). */
export function swiglu(w: SwiGLUWeights, x: Float32Array, T: number, activation: ActivationSpec = { kind: 'silu' }, onDownInput?: DownInputSink): Float32Array {
  const d = uploadSwiGLU(w);
  try {
    return swigluDevice(d, x, T, activation, undefined, onDownInput);
  } finally {
    d.dispose();
  }
}
