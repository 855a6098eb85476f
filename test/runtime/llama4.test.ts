/**
 * The Llama 4 pieces of the runtime, each against a second computation: chunked attention (a window of two chunks
 * attends as two windows of one chunk each), and the router weight on the expert input (y = sum_k f(w_k x), not
 * sum_k w_k f(x)). transformers conformance of the whole family: test/interop-families (llama4_text, llama4).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { attentionCore } from '../../src/runtime/attention.js';
import { initBackend } from '../../src/runtime/backend.js';
import { expertGrams, layerGrams } from '../../src/decompose/grams.js';
import type { MoeLayerInput } from '../../src/runtime/api.js';
import { moeBlock } from '../../src/runtime/moe.js';
import { swiglu } from '../../src/runtime/swiglu.js';
import type { Routing, SwiGLUWeights } from '../../src/model/types.js';
import { seededRandom } from '../../kernels/random.js';

beforeAll(async () => {
  await initBackend('wasm');
});

const rnd = (n: number, r: () => number, s = 1) => Float32Array.from({ length: n }, () => (r() * 2 - 1) * s);

describe('chunked attention', () => {
  it('a window of two chunks gives what two windows of one chunk give', () => {
    const r = seededRandom(3);
    const C = 5;
    const h = 4;
    const kvh = 2;
    const d = 8;
    const q = rnd(2 * C * h * d, r);
    const k = rnd(2 * C * kvh * d, r);
    const v = rnd(2 * C * kvh * d, r);
    const chunked = attentionCore(q, k, v, 1, 2 * C, h, kvh, d, d, 0.35, undefined, undefined, C);
    const split = attentionCore(q, k, v, 2, C, h, kvh, d, d, 0.35);
    for (let i = 0; i < chunked.length; i++) expect(chunked[i]).toBeCloseTo(split[i]!, 5);
    // and differs from full causal attention past the first chunk
    const full = attentionCore(q, k, v, 1, 2 * C, h, kvh, d, d, 0.35);
    const tail = (a: Float32Array) => Array.from(a.subarray(C * h * d));
    expect(tail(full)).not.toEqual(tail(chunked));
  });
});

describe('router weight on the expert input', () => {
  it('y = sum_k f_e(w x) + shared(x), and the reported expert output is f_e(w x)', async () => {
    const r = seededRandom(5);
    const H = 6;
    const I = 4;
    const T = 5;
    const E = 3;
    const lin = (o: number, i: number) => ({ out: o, in: i, w: rnd(o * i, r, 0.6) });
    const experts: SwiGLUWeights[] = Array.from({ length: E }, () => ({ gate: lin(I, H), up: lin(I, H), down: lin(H, I) }));
    const shared: SwiGLUWeights = { gate: lin(I, H), up: lin(I, H), down: lin(H, I) };
    const x = rnd(T * H, r, 1.5);
    const k = 2;
    const routing: Routing = {
      T,
      k,
      idx: Int32Array.from({ length: T * k }, (_, i) => (i % k === 0 ? (i / k) % E : ((i - 1) / k + 1) % E)),
      w: Float32Array.from({ length: T * k }, () => 0.2 + 0.7 * r()),
    };
    const outputs = new Map<number, Float32Array>();
    const res = await moeBlock(
      x,
      T,
      H,
      routing,
      (e) => experts[e]!,
      E,
      { kind: 'silu' },
      { w: shared },
      (o) => outputs.set(o.expert, o.out),
      undefined,
      undefined,
      true,
    );
    const want = swiglu(shared, x, T);
    for (let t = 0; t < T; t++) {
      for (let s = 0; s < k; s++) {
        const w = routing.w[t * k + s]!;
        const scaled = Float32Array.from(x.subarray(t * H, (t + 1) * H), (v) => v * w);
        const f = swiglu(experts[routing.idx[t * k + s]!]!, scaled, 1);
        for (let j = 0; j < H; j++) want[t * H + j]! += f[j]!;
      }
    }
    for (let i = 0; i < want.length; i++) expect(res.y[i]).toBeCloseTo(want[i]!, 5);
    // not the weighted-output form every other family uses
    const other = await moeBlock(x, T, H, routing, (e) => experts[e]!, E, { kind: 'silu' }, { w: shared });
    expect(Math.max(...Array.from(other.y, (v, i) => Math.abs(v - res.y[i]!)))).toBeGreaterThan(1e-3);
    // expert 0's reported output on its first token is f_0(w x) of that slot
    const t0 = Array.from({ length: T * k }, (_, i) => i).find((i) => routing.idx[i] === 0)!;
    const tok = Math.floor(t0 / k);
    const f0 = swiglu(
      experts[0]!,
      Float32Array.from(x.subarray(tok * H, (tok + 1) * H), (v) => v * routing.w[t0]!),
      1,
    );
    for (let j = 0; j < H; j++) expect(outputs.get(0)![j]).toBeCloseTo(f0[j]!, 5);
  });
});

describe("decompose's Gram matrices where the weight scales the expert input", () => {
  it('are the Grams of the rows w * x each expert reads (gate/up input and down input)', () => {
    const r = seededRandom(9);
    const H = 6;
    const I = 4;
    const T = 7;
    const E = 2;
    const k = 1;
    const lin = (o: number, i: number) => ({ out: o, in: i, w: rnd(o * i, r, 0.6) });
    const experts: SwiGLUWeights[] = Array.from({ length: E }, () => ({ gate: lin(I, H), up: lin(I, H), down: lin(H, I) }));
    const x = rnd(T * H, r, 1.5);
    const routing: Routing = { T, k, idx: Int32Array.from({ length: T }, (_, t) => t % E), w: Float32Array.from({ length: T }, () => 0.1 + 0.8 * r()) };
    const input = { layer: { index: 1 }, T, hidden: H, x, routing, experts } as unknown as MoeLayerInput;
    const g = layerGrams(input, { kind: 'silu' }, true, true);
    for (let j = 0; j < E; j++) {
      const rows = Array.from({ length: T }, (_, t) => t).filter((t) => t % E === j);
      // the scaled rows written out, then the plain Grams of them
      const xs = new Float32Array(T * H);
      for (const t of rows) for (let a = 0; a < H; a++) xs[t * H + a] = Math.fround(x[t * H + a]! * routing.w[t]!);
      const want = expertGrams(xs, H, rows, experts[j]!, { kind: 'silu' }, T, true);
      expect(g.experts[j]!.tokens).toBe(rows.length);
      for (let i = 0; i < H * H; i++) expect(g.experts[j]!.input![i]).toBeCloseTo(want.input![i]!, 6);
      for (let i = 0; i < I * I; i++) expect(g.experts[j]!.mid![i]).toBeCloseTo(want.mid![i]!, 6);
      // and not the Grams of x itself
      const plain = layerGrams(input, { kind: 'silu' }, true, false);
      expect(Math.abs(plain.experts[j]!.input![0]! - g.experts[j]!.input![0]!)).toBeGreaterThan(1e-4);
    }
  });
});
