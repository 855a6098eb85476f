/**
 * Decompose's own memory part is its mode's (src/decompose/methods/<mode>.ts, the descriptor's `memory`): the
 * factorisation workspace of the mode's largest unit and the allocation churn it leaves. The dry run carries exactly
 * that part, computed from the run's unit shapes, and it follows the shapes as each mode's file says; for every unit
 * of a layer the part bounds what the mode really allocates for the unit (its float64 weights, spectrum and factors).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../../kernels/random.js';
import type { LayerGrams } from '../../src/decompose/grams.js';
import { MODE_METHODS } from '../../src/decompose/methods.js';
import { modelUnitShapes } from '../../src/decompose/pipeline.js';
import { layerUnits, layerUnitShapes, type ScoredUnit } from '../../src/decompose/units.js';
import { openModel, type Model } from '../../src/model/open.js';
import type { MemoryEstimate } from '../../src/runtime/memory.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { runMoe } from '../helpers/cli.js';

const M = 'test/fixtures/tiny-mixtral';
const CALIB = ['--calib', 'test/fixtures/text/calib.txt', '--calib-tokens', '2048', '--seq-len', '64'];
const FIXED = ['--out', '/tmp/moe-memory-decompose-out', '--dry-run', '--json', '--quiet', '--threads', '1', '--backend', 'wasm', '--uniform'];

let model: Model;
beforeAll(async () => {
  model = await openModel(M);
});
afterAll(async () => {
  await model.ckpt.close();
});

const WORKSPACE = 'factorisation of the largest unit (float64 SVD workspace)';

describe("decompose: each mode's memory part is its descriptor's", () => {
  it('the dry run of every mode carries its mode part, from the unit shapes of that run', async () => {
    const workspace = new Map<string, number>();
    for (const mode of MODE_METHODS) {
      const r = await runMoe(['decompose', '--model', M, '--ratio', '0.5', '--mode', mode.name, ...(mode.needs === 'none' ? [] : CALIB), ...FIXED]);
      expect(r.code, r.stderr).toBe(0);
      const memory = (JSON.parse(r.stdout) as { memory: MemoryEstimate }).memory;
      const own = mode.memory({ units: modelUnitShapes(model, { mode: mode.name, ratio: 0.5 }) });
      expect(own.map((p) => p.label)).toEqual([WORKSPACE, 'allocation churn not yet collected (fitted: 6 x the unit workspace + 80 MiB)']);
      for (const p of own) expect(memory.parts, mode.name).toContainEqual(p);
      // the churn is fitted as 6 x the workspace + 80 MiB
      expect(own[1]!.bytes).toBe(6 * own[0]!.bytes + 80 * 2 ** 20);
      workspace.set(mode.name, own[0]!.bytes);
    }
    // tiny-mixtral: H 128, I 256, 8 experts, every unit at full rank (the Gram route of the SVD: the smaller Gram,
    // its eigenvectors and the solver's copy, U, V^T and M V), per projection [m, n] = gate/up [256, 128] or down
    // [128, 256]: the largest unit's workspace, from the shapes alone
    const ws = (r: number, c: number, held: number, whitening: number, mn: number) => {
      const q = Math.min(r, c);
      return (held + r * c + whitening + (3 * q * q + 2 * r * q + q * c) + 3 * mn) * 8;
    };
    const largest = (f: (m: number, n: number) => number) => Math.max(f(256, 128), f(128, 256));
    expect(workspace.get('svd')).toBe(largest((m, n) => ws(m, n, m * n, 0, m * n)));
    expect(workspace.get('whitened')).toBe(largest((m, n) => ws(m, n, m * n, n * n, m * n)));
    // base-delta holds the weight, the base and the delta
    expect(workspace.get('base-delta')).toBe(largest((m, n) => ws(m, n, 3 * m * n, n * n, m * n)));
    // the shared modes decompose the 8 experts stacked: [8 m, n] (shared-input) or [m, 8 n] (shared-output)
    expect(workspace.get('shared-input')).toBe(largest((m, n) => ws(8 * m, n, 8 * m * n, n * n, m * n)));
    expect(workspace.get('shared-output')).toBe(largest((m, n) => ws(m, 8 * n, 8 * m * n, n * n, m * n)));
    // so the modes differ as their shapes say: 2.36 MB (svd) to 11.8 MB (shared-input) on this model
    expect(new Set(workspace.values()).size).toBe(MODE_METHODS.length);
  }, 600_000);

  it("each mode's part bounds what scoring and cutting a unit allocates, on every unit of a layer", () => {
    const [H, I, E] = [128, 256, 8];
    const rng = seededRandom(3);
    const lin = (out: number, inF: number) => ({ out, in: inF, w: Float32Array.from({ length: out * inF }, () => (rng() - 0.5) * 0.1) });
    const experts: SwiGLUWeights[] = Array.from({ length: E }, () => ({ gate: lin(I, H), up: lin(I, H), down: lin(H, I) }));
    // Grams X^T X / T of random routed inputs (positive definite: T > n)
    const gram = (n: number, T: number) => {
      const X = Float64Array.from({ length: T * n }, () => rng() - 0.5);
      const G = new Float64Array(n * n);
      for (let t = 0; t < T; t++) for (let a = 0; a < n; a++) for (let b = 0; b < n; b++) G[a * n + b]! += (X[t * n + a]! * X[t * n + b]!) / T;
      return G;
    };
    const grams: LayerGrams = {
      layer: 0,
      T: 2048,
      topK: 2,
      experts: Array.from({ length: E }, () => ({ tokens: 512, input: gram(H, 300), mid: gram(I, 300) })),
    };
    const ratios: string[] = [];
    for (const mode of MODE_METHODS) {
      const opts = { mode: mode.name, ratio: 0.5, engine: 'f64' as const };
      const shapes = layerUnitShapes(0, E, (proj) => (proj === 'down' ? { m: H, n: I } : { m: I, n: H }), opts);
      let worst = 0;
      for (const u of layerUnits(0, experts, mode.needs === 'none' ? undefined : grams, opts) as Generator<ScoredUnit>) {
        // what the mode allocated for the unit and is alive together at the apply pass: the float64 copies of its
        // weights (base-delta: and the layer's base), its spectrum, and its factors cut at the highest rank
        const f = u.fact.factors(u.maxRank) as { A?: Float64Array; B?: Float64Array; shared?: Float64Array; perExpert?: Float64Array[] };
        const factors = [f.A, f.B, f.shared, ...(f.perExpert ?? [])].reduce((a, x) => a + (x?.byteLength ?? 0), 0);
        const held = u.weights.reduce((a, w) => a + w.byteLength, 0) + (u.base?.byteLength ?? 0) + u.tail.byteLength + factors;
        const [part] = mode.memory({ units: shapes.filter((s) => s.id === u.id) });
        expect(part!.label).toBe(WORKSPACE);
        expect(held, `${mode.name} ${u.id}`).toBeLessThanOrEqual(part!.bytes);
        worst = Math.max(worst, held / part!.bytes);
      }
      ratios.push(`${mode.name} ${worst.toFixed(3)}`);
    }
    // the workspace also holds the decomposed matrix, the SVD's Gram and eigenvectors and the measurement's products
    console.log(`allocated for a unit / its mode's workspace, largest over a layer's units: ${ratios.join(', ')}`);
  }, 300_000);
});
