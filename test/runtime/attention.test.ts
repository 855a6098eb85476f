import { beforeAll, describe, expect, it } from 'vitest';
import { attentionCore } from '../../src/runtime/attention.js';
import { initBackend } from '../../src/runtime/backend.js';

beforeAll(async () => {
  await initBackend('wasm');
});

/** naive attention for one window: query head j uses kv head floor(j / g) */
function naive(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  S: number,
  h: number,
  kvh: number,
  d: number,
  scale: number,
  window?: number,
  sinks?: Float32Array,
): Float64Array {
  const g = h / kvh;
  const out = new Float64Array(S * h * d);
  for (let i = 0; i < S; i++) {
    for (let j = 0; j < h; j++) {
      const kj = Math.floor(j / g);
      const sc: number[] = [];
      const ts: number[] = [];
      for (let t = 0; t <= i; t++) {
        if (window !== undefined && i - t >= window) continue;
        let s = 0;
        for (let a = 0; a < d; a++) s += q[(i * h + j) * d + a]! * k[(t * kvh + kj) * d + a]!;
        sc.push(s * scale);
        ts.push(t);
      }
      const all = sinks ? [...sc, sinks[j]!] : sc;
      const m = Math.max(...all);
      const z = all.reduce((acc, x) => acc + Math.exp(x - m), 0);
      ts.forEach((t, n) => {
        const p = Math.exp(sc[n]! - m) / z;
        for (let a = 0; a < d; a++) out[(i * h + j) * d + a]! += p * v[(t * kvh + kj) * d + a]!;
      });
    }
  }
  return out;
}

describe('attention core', () => {
  it('GQA head mapping, causal + sliding mask, sinks, several windows', () => {
    const B = 2,
      S = 7,
      h = 6,
      kvh = 2,
      d = 4;
    let seed = 5;
    const r = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) / 2 ** 23 - 1;
    const q = Float32Array.from({ length: B * S * h * d }, r);
    const k = Float32Array.from({ length: B * S * kvh * d }, r);
    const v = Float32Array.from({ length: B * S * kvh * d }, r);
    const sinks = Float32Array.from({ length: h }, r);
    for (const [window, sk] of [
      [undefined, undefined],
      [3, undefined],
      [3, sinks],
    ] as const) {
      const got = attentionCore(q, k, v, B, S, h, kvh, d, d, 0.5, window, sk);
      for (let b = 0; b < B; b++) {
        const want = naive(q.subarray(b * S * h * d), k.subarray(b * S * kvh * d), v.subarray(b * S * kvh * d), S, h, kvh, d, 0.5, window, sk);
        for (let i = 0; i < want.length; i++) {
          expect(Math.abs(got[b * S * h * d + i]! - want[i]!)).toBeLessThan(1e-5);
        }
      }
    }
  });
});
