/**
 * Expert MLPs: down(act(gate x) * up x). `silu` is every family's SwiGLU; gpt_oss clamps and shifts
 * (modeling_gpt_oss.py GptOssExperts: gate <= limit, up in [-limit, limit], (up + 1) * gate * sigmoid(alpha gate)).
 * Rows are batched: an expert is applied once to all the tokens routed to it, one matmul per projection.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ActivationSpec } from '../model/types.js';
import type { SwiGLUWeights } from './api.js';
import { applyT, upload, type DeviceLinear } from './ops.js';
import { swigluRowsPerChunk } from './chunks.js';

export interface DeviceSwiGLU {
  /**
   * gate and up as two linears, not one stacked [2I, in] product: the stacked one needs two slices of its output,
   * and the wasm backend's slice copies at a few hundred MB/s, as long as the activation itself (measured 7.7 ms per
   * [2048, 512] slice vs 1.9 ms for the sigmoid). Every output element is the same dot product either way.
   */
  gate: DeviceLinear;
  up: DeviceLinear;
  inter: number;
  down: DeviceLinear;
  dispose(): void;
}

export function uploadSwiGLU(w: SwiGLUWeights): DeviceSwiGLU {
  if (w.gate.in !== w.up.in) throw new RangeError(`gate (${w.gate.out}x${w.gate.in}) and up (${w.up.out}x${w.up.in}) take different inputs`);
  const gate = upload(w.gate);
  const up = upload(w.up);
  const down = upload(w.down);
  return {
    gate,
    up,
    inter: w.gate.out,
    down,
    dispose: () => {
      gate.dispose();
      up.dispose();
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
      const xt = tf.tensor2d(x.subarray(r0 * w.gate.in, (r0 + r) * w.gate.in), [r, w.gate.in]);
      const h = act(applyT(xt, w.gate), applyT(xt, w.up), activation);
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
