/**
 * GPTQ time per expert (gate, up, down of one SwiGLU expert, Hessians included) against round-to-nearest on the
 * same expert, for a few expert shapes, and the output-error ratio GPTQ / RTN on correlated synthetic inputs.
 *   npx tsx bench/gptq.ts
 */
import { initBackend } from '../src/runtime/backend.js';
import { outputError, quantizeMlp, type QuantSettings } from '../src/quantize/expert.js';
import { swiglu } from '../src/runtime/swiglu.js';
import type { Linear } from '../src/runtime/api.js';

await initBackend('auto');
let s = 99;
const u = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
const randn = () => Math.sqrt(-2 * Math.log(u() + 1e-12)) * Math.cos(2 * Math.PI * u());
const mat = (o: number, i: number, sc: number): Linear => ({ out: o, in: i, w: Float32Array.from({ length: o * i }, () => randn() * sc) });

const act = { kind: 'silu' } as const;
console.log('hidden  inter  tokens  bits  rtn_ms  gptq_ms  ratio  err_gptq/err_rtn');
for (const [H, I, n] of [
  [256, 512, 2048],
  [512, 1408, 2048],
  [1024, 2816, 1024],
] as const) {
  const k = 16;
  const mix = Float32Array.from({ length: k * H }, () => randn());
  const x = new Float32Array(n * H);
  for (let t = 0; t < n; t++) {
    const z = Array.from({ length: k }, randn);
    for (let i = 0; i < H; i++) {
      let v = 0.1 * randn();
      for (let a = 0; a < k; a++) v += z[a]! * mix[a * H + i]!;
      x[t * H + i] = v;
    }
  }
  const w = { gate: mat(I, H, 0.05), up: mat(I, H, 0.05), down: mat(H, I, 0.05) };
  const gates = new Float32Array(n).fill(1);
  const ref = swiglu(w, x, n, act);
  for (const bits of [2, 3, 4] as const) {
    const base: QuantSettings = { method: 'rtn', groupSize: 128, sym: false, damp: 0.01, actOrder: false, minTokens: 0 };
    const pb = { gate: bits, up: bits, down: bits };
    let t = performance.now();
    const r = quantizeMlp(w, x, n, pb, base, act);
    const rtnMs = performance.now() - t;
    t = performance.now();
    const g = quantizeMlp(w, x, n, pb, { ...base, method: 'gptq' }, act);
    const gMs = performance.now() - t;
    const er = outputError(ref, r.deq, x, n, gates, act);
    const eg = outputError(ref, g.deq, x, n, gates, act);
    console.log(
      `${String(H).padStart(6)}  ${String(I).padStart(5)}  ${String(n).padStart(6)}  ${bits}     ${rtnMs.toFixed(0).padStart(6)}  ${gMs.toFixed(0).padStart(7)}  ${(gMs / rtnMs).toFixed(1).padStart(5)}  ${(eg / er).toFixed(3)}`,
    );
  }
}
