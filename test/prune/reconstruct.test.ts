import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../src/runtime/backend.js';
import type { LayerView, RoutingRule } from '../../src/model/types.js';
import type { MoeLayerInput, Routing, SwiGLUWeights } from '../../src/runtime/api.js';
import { binomial, LayerReconstruction, selectByReconstruction, type ReconstructDeps } from '../../src/prune/reconstruct.js';
import { seededRandom } from '../../kernels/random.js';

// Reference softmax -> top-k -> optional renormalisation (Mixtral / OLMoE), written out plainly so the search's
// Gram-matrix shortcut is checked against a direct computation of the block output.
function refRoute(rule: RoutingRule, logits: Float32Array, T: number, E: number): { routing: Routing } {
  const k = rule.topK;
  const idx = new Int32Array(T * k);
  const w = new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    const row = Array.from(logits.subarray(t * E, (t + 1) * E));
    const m = Math.max(...row);
    const ex = row.map((v) => Math.exp(v - m));
    const z = ex.reduce((a, b) => a + b, 0);
    const p = ex.map((v) => v / z);
    const order = p
      .map((_, j) => j)
      .sort((a, b) => p[b] - p[a] || a - b)
      .slice(0, k);
    const s = order.reduce((a, j) => a + p[j], 0);
    order.forEach((j, i) => {
      idx[t * k + i] = j;
      w[t * k + i] = rule.normalize ? p[j] / s : p[j];
    });
  }
  return { routing: { T, k, idx, w } };
}

function refExpert(e: SwiGLUWeights, x: Float32Array, T: number): Float32Array {
  const H = e.gate.in;
  const I = e.gate.out;
  const out = new Float32Array(T * e.down.out);
  for (let t = 0; t < T; t++) {
    const a = new Float64Array(I);
    for (let i = 0; i < I; i++) {
      let g = 0;
      let u = 0;
      for (let h = 0; h < H; h++) {
        g += e.gate.w[i * H + h] * x[t * H + h];
        u += e.up.w[i * H + h] * x[t * H + h];
      }
      a[i] = (g / (1 + Math.exp(-g))) * u;
    }
    for (let o = 0; o < e.down.out; o++) {
      let s = 0;
      for (let i = 0; i < I; i++) s += e.down.w[o * I + i] * a[i];
      out[t * e.down.out + o] = s;
    }
  }
  return out;
}

const deps: ReconstructDeps = { route: refRoute, expert: refExpert };

function randn(rng: () => number, n: number, scale = 1): Float32Array {
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = scale * Math.sqrt(-2 * Math.log(rng() + 1e-12)) * Math.cos(2 * Math.PI * rng());
  return v;
}

function layerInput(opts: { E: number; H: number; I: number; T: number; rule: RoutingRule; seed: number; dup?: number[] }): MoeLayerInput {
  const rng = seededRandom(opts.seed);
  const { E, H, I, T } = opts;
  const lin = (out: number, inn: number) => ({ out, in: inn, w: randn(rng, out * inn, 0.5) });
  const experts: SwiGLUWeights[] = Array.from({ length: E }, () => ({ gate: lin(I, H), up: lin(I, H), down: lin(H, I) }));
  const routerW = randn(rng, E * H);
  // duplicates: same weights and same router row as the first listed expert
  for (const j of opts.dup?.slice(1) ?? []) {
    experts[j] = experts[opts.dup![0]];
    routerW.set(routerW.subarray(opts.dup![0] * H, (opts.dup![0] + 1) * H), j * H);
  }
  const x = randn(rng, T * H);
  const logits = new Float32Array(T * E);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < E; j++) {
      let s = 0;
      for (let h = 0; h < H; h++) s += routerW[j * H + h] * x[t * H + h];
      logits[t * E + j] = s;
    }
  const { routing } = refRoute(opts.rule, logits, T, E);
  return {
    layer: { index: 0 } as LayerView,
    T,
    hidden: H,
    x,
    logits,
    probs: new Float32Array(T * E),
    routing,
    experts,
    router: { w: routerW },
  };
}

/** ‖F − F_S‖² / ‖F‖² computed directly from block outputs. */
function directError(inp: MoeLayerInput, rule: RoutingRule, kept: number[]): number {
  const { T, hidden: H } = inp;
  const outs = inp.experts.map((e) => refExpert(e, inp.x, T));
  const E = inp.experts.length;
  const sub = new Float32Array(T * kept.length);
  for (let t = 0; t < T; t++) kept.forEach((j, i) => (sub[t * kept.length + i] = inp.logits[t * E + j]));
  const { routing: rs } = refRoute(rule, sub, T, kept.length);
  let num = 0;
  let den = 0;
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      let f = 0;
      let fs = 0;
      for (let s = 0; s < inp.routing.k; s++) f += inp.routing.w[t * inp.routing.k + s] * outs[inp.routing.idx[t * inp.routing.k + s]][t * H + h];
      for (let s = 0; s < rs.k; s++) fs += rs.w[t * rs.k + s] * outs[kept[rs.idx[t * rs.k + s]]][t * H + h];
      num += (f - fs) ** 2;
      den += f * f;
    }
  return num / den;
}

const mixtral: RoutingRule = { score: 'softmax', afterTopk: 'none', selectionBias: false, topK: 2, normalize: true, scale: 1 };
const olmoe: RoutingRule = { ...mixtral, normalize: false };

beforeAll(async () => {
  // the Gram matrices of expert outputs are one batched matmul on the tensor backend
  await initBackend('wasm');
});

describe('reconstruction-loss selection', () => {
  it('binomial counts', () => {
    expect(binomial(8, 4)).toBe(70);
    expect(binomial(64, 32)).toBeGreaterThan(1e18);
    expect(binomial(5, 6)).toBe(0);
  });

  for (const [name, rule] of [
    ['renormalised top-k', mixtral],
    ['un-normalised top-k', olmoe],
  ] as const) {
    it(`the Gram-matrix error equals the directly computed block-output error (${name})`, async () => {
      const inp = layerInput({ E: 6, H: 5, I: 7, T: 40, rule, seed: 3 });
      const lr = await LayerReconstruction.build(inp, rule, deps, 4096);
      for (const kept of [
        [0, 1, 2, 3, 4, 5],
        [0, 2, 4],
        [1, 2, 3, 5],
        [0, 1],
      ]) {
        const direct = directError(inp, rule, kept);
        expect(lr.error(kept)).toBeCloseTo(direct, 5);
      }
      expect(lr.error([0, 1, 2, 3, 4, 5])).toBeCloseTo(0, 9);
    });
  }

  it('drops one of three identical experts: zero error, where every other removal costs', async () => {
    const inp = layerInput({ E: 6, H: 6, I: 8, T: 200, rule: mixtral, seed: 11, dup: [1, 3, 4] });
    const r = await selectByReconstruction(inp, 5, mixtral, deps);
    expect(r.search).toBe('exact');
    expect(r.evaluated).toBe(6);
    const removed = [0, 1, 2, 3, 4, 5].filter((j) => !r.kept.includes(j));
    expect([1, 3, 4]).toContain(removed[0]);
    expect(r.relError).toBeLessThan(1e-9);
    // the per-expert scores (error of dropping it alone) separate duplicates from the rest
    for (const j of [0, 2, 5]) expect(r.scores[j]).toBeGreaterThan(1e-4);
  });

  it('exact enumeration finds the minimum over all C(8,4) subsets; the beam search gets close', async () => {
    const inp = layerInput({ E: 8, H: 6, I: 6, T: 120, rule: mixtral, seed: 5 });
    const exact = await selectByReconstruction(inp, 4, mixtral, deps);
    expect(exact.search).toBe('exact');
    expect(exact.evaluated).toBe(70);
    const lr = await LayerReconstruction.build(inp, mixtral, deps, 4096);
    let min = Infinity;
    for (let m = 0; m < 256; m++) {
      const s = [0, 1, 2, 3, 4, 5, 6, 7].filter((j) => m & (1 << j));
      if (s.length === 4) min = Math.min(min, lr.error(s));
    }
    expect(exact.relError).toBeCloseTo(min, 12);
    const beam = await selectByReconstruction(inp, 4, mixtral, deps, undefined, { exactLimit: 10, beam: 3 });
    expect(beam.search).toBe('beam');
    expect(beam.evaluated).toBeLessThan(70);
    expect(beam.relError).toBeGreaterThanOrEqual(exact.relError - 1e-12);
    expect(beam.relError).toBeLessThan(exact.relError * 1.5 + 1e-9);
  });

  it('group constraints: every kept set has the same count per group', async () => {
    const inp = layerInput({ E: 8, H: 5, I: 5, T: 60, rule: mixtral, seed: 9 });
    const groups = { nGroup: 2, topkGroup: 2, perGroup: 2, groupSize: 4 };
    for (const exactLimit of [5000, 1]) {
      const r = await selectByReconstruction(inp, 4, mixtral, deps, groups, { exactLimit });
      expect(r.kept.filter((j) => j < 4).length).toBe(2);
      expect(r.kept.filter((j) => j >= 4).length).toBe(2);
    }
  });
});
