/** Synthetic experts, routers and a reference MoE-layer forward on typed arrays, for merge tests. */
import type { Linear, SwiGLUWeights } from '../../src/runtime/api.js';

export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

export function gaussian(r: () => number): number {
  const u = Math.max(r(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
}

export function randomArray(n: number, r: () => number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => gaussian(r) * scale);
}

function linear(out: number, inF: number, r: () => number): Linear {
  return { out, in: inF, w: randomArray(out * inF, r, 1 / Math.sqrt(inF)) };
}

export function randomExpert(H: number, I: number, r: () => number): SwiGLUWeights {
  return { gate: linear(I, H, r), up: linear(I, H, r), down: linear(H, I, r) };
}

export function cloneExpert(e: SwiGLUWeights): SwiGLUWeights {
  const c = (l: Linear): Linear => ({ out: l.out, in: l.in, w: l.w.slice() });
  return { gate: c(e.gate), up: c(e.up), down: c(e.down) };
}

export function randomPermutation(n: number, r: () => number): Int32Array {
  const p = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

/** f(x) of one expert for one token, float64 accumulation. */
export function expertForward(e: SwiGLUWeights, x: Float32Array, xo: number): Float64Array {
  const H = e.gate.in;
  const I = e.gate.out;
  const act = new Float64Array(I);
  for (let i = 0; i < I; i++) {
    let g = 0;
    let u = 0;
    for (let h = 0; h < H; h++) {
      g += e.gate.w[i * H + h] * x[xo + h];
      u += e.up.w[i * H + h] * x[xo + h];
    }
    act[i] = (g / (1 + Math.exp(-g))) * u;
  }
  const y = new Float64Array(e.down.out);
  for (let o = 0; o < e.down.out; o++) {
    let s = 0;
    for (let i = 0; i < I; i++) s += e.down.w[o * I + i] * act[i];
    y[o] = s;
  }
  return y;
}

export function routerLogits(router: Float32Array, E: number, x: Float32Array, T: number, H: number): Float32Array {
  const z = new Float32Array(T * E);
  for (let t = 0; t < T; t++)
    for (let e = 0; e < E; e++) {
      let s = 0;
      for (let h = 0; h < H; h++) s += router[e * H + h] * x[t * H + h];
      z[t * E + e] = s;
    }
  return z;
}

/** Mixtral-style layer: softmax, top-k, renormalise; returns output [T, H] and the routing. */
export function moeForward(experts: readonly SwiGLUWeights[], router: Float32Array, x: Float32Array, T: number, k: number) {
  const E = experts.length;
  const H = experts[0].gate.in;
  const logits = routerLogits(router, E, x, T, H);
  const out = new Float64Array(T * H);
  const idx = new Int32Array(T * k);
  const w = new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    const row = Array.from(logits.subarray(t * E, (t + 1) * E));
    const order = row
      .map((_, i) => i)
      .sort((a, b) => row[b] - row[a] || a - b)
      .slice(0, k);
    const mx = Math.max(...row);
    const ex = row.map((v) => Math.exp(v - mx));
    const sel = order.map((i) => ex[i]);
    const s = sel.reduce((a, b) => a + b, 0);
    order.forEach((e, j) => {
      idx[t * k + j] = e;
      w[t * k + j] = sel[j] / s;
      const y = expertForward(experts[e], x, t * H);
      for (let h = 0; h < H; h++) out[t * H + h] += (sel[j] / s) * y[h];
    });
  }
  return { out, logits, routing: { T, k, idx, w } };
}

import type { LayerSignals } from '../../src/merge/types.js';

/** Signals measured the way calibration does: counts, REAP saliency, mean outputs, logit sample. */
export function measureSignals(experts: readonly SwiGLUWeights[], router: Float32Array, x: Float32Array, T: number, k: number): LayerSignals {
  const E = experts.length;
  const H = experts[0].gate.in;
  const f = moeForward(experts, router, x, T, k);
  const count = new Float64Array(E);
  const reap = new Float64Array(E);
  const out = new Float64Array(E * H);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < k; j++) {
      const e = f.routing.idx[t * k + j];
      const y = expertForward(experts[e], x, t * H);
      count[e]++;
      reap[e] += f.routing.w[t * k + j] * Math.hypot(...y);
      for (let h = 0; h < H; h++) out[e * H + h] += y[h];
    }
  for (let e = 0; e < E; e++)
    if (count[e] > 0) {
      reap[e] /= count[e];
      for (let h = 0; h < H; h++) out[e * H + h] /= count[e];
    }
  return { numExperts: E, hidden: H, count, saliency: reap, meanOutput: out, logitSample: f.logits, logitRows: T };
}
