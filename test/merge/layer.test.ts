import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import { permuteUnits } from '../../src/merge/align.js';
import { mergeLayer } from '../../src/merge/layer.js';
import { ALIGN_METHODS, WEIGHTING_METHODS } from '../../src/merge/methods.js';
import type { MergeChoices } from '../../src/merge/types.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { cloneExpert, measureSignals, moeForward, randomArray, randomExpert, randomPermutation, rng } from './synthetic.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

const H = 12;
const I = 24;
const softmax = { score: 'softmax' as const };

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function expertDiff(a: SwiGLUWeights, b: SwiGLUWeights): number {
  return Math.max(maxDiff(a.gate.w, b.gate.w), maxDiff(a.up.w, b.up.w), maxDiff(a.down.w, b.down.w));
}

describe('mergeLayer', () => {
  it('merging groups of identical experts reproduces the experts and the layer output exactly', () => {
    const r = rng(1);
    const A = randomExpert(H, I, r);
    const B = randomExpert(H, I, r);
    const experts = [A, cloneExpert(A), B, cloneExpert(B), cloneExpert(A)];
    const rowA = randomArray(H, r);
    const rowB = randomArray(H, r);
    const router = new Float32Array(5 * H);
    [rowA, rowA, rowB, rowB, rowA].forEach((row, e) => router.set(row, e * H));
    const T = 64;
    const x = randomArray(T * H, r);
    // top-1 routing: the one case where a single router row per group can reproduce the routing exactly
    const before = moeForward(experts, router, x, T, 1);
    const sig = measureSignals(experts, router, x, T, 1);
    const calib = { x, T, logits: before.logits, routing: before.routing };
    for (const align of ALIGN_METHODS) {
      for (const weighting of WEIGHTING_METHODS) {
        for (const routerMethod of ['anchor', 'mean'] as const) {
          const choices: MergeChoices = { groups: 2, grouping: 'msmoe', align, weighting, router: routerMethod };
          const m = mergeLayer({ layer: 0, experts, router: { w: router }, signals: sig, rule: softmax, calib }, choices);
          expect(m.groups.map((g) => g.members)).toEqual([
            [0, 1, 4],
            [2, 3],
          ]);
          expect(expertDiff(m.experts[0], A)).toBe(0);
          expect(expertDiff(m.experts[1], B)).toBe(0);
          const after = moeForward(m.experts, m.router.w, x, T, 1);
          expect(maxDiff(after.out, before.out)).toBe(0);
        }
      }
    }
  });

  it("permuting a member's hidden units does not change the merged expert with alignment on, and does without", () => {
    const r = rng(2);
    const A = randomExpert(H, I, r);
    // a member that is a noisy copy of A, so alignment has a real (not degenerate) best matching
    const C = cloneExpert(A);
    for (const l of [C.gate, C.up, C.down]) for (let i = 0; i < l.w.length; i++) l.w[i] += 0.3 * (r() - 0.5);
    const perm = randomPermutation(I, r);
    const Cp = permuteUnits(C, perm);
    const router = randomArray(2 * H, r);
    const T = 200;
    const x = randomArray(T * H, r);
    const routing = { T, k: 2, idx: Int32Array.from({ length: 2 * T }, (_, i) => i % 2), w: new Float32Array(2 * T).fill(0.5) };
    const logits = new Float32Array(2 * T);
    const sig = measureSignals([A, C], router, x, T, 2);
    const run = (member: SwiGLUWeights, align: MergeChoices['align']) =>
      mergeLayer(
        { layer: 0, experts: [A, member], router: { w: router }, signals: sig, rule: softmax, calib: { x, T, logits, routing } },
        { groups: 1, grouping: 'hierarchical', align, weighting: 'uniform', router: 'mean' },
      );
    for (const align of ['weights', 'activations'] as const) {
      const plain = run(C, align);
      const permuted = run(Cp, align);
      expect(expertDiff(plain.experts[0], permuted.experts[0])).toBeLessThan(1e-6);
      const rep = permuted.report.groups[0].alignment[1]!;
      expect(rep.after).toBeGreaterThan(rep.before);
    }
    const off = expertDiff(run(C, 'none').experts[0], run(Cp, 'none').experts[0]);
    expect(off).toBeGreaterThan(0.1);
  });

  it('alignment brings a permuted, noisy copy closer to the anchor than plain averaging does', () => {
    const r = rng(3);
    const A = randomExpert(H, I, r);
    const C = permuteUnits(A, randomPermutation(I, r));
    const T = 100;
    const x = randomArray(T * H, r);
    const router = randomArray(2 * H, r);
    const sig = measureSignals([A, C], router, x, T, 1);
    const choices = (align: MergeChoices['align']): MergeChoices => ({ groups: 1, grouping: 'hierarchical', align, weighting: 'uniform', router: 'anchor' });
    const out = (e: SwiGLUWeights) => moeForward([e], new Float32Array(H), x, T, 1).out;
    const ref = out(A);
    const aligned = mergeLayer({ layer: 0, experts: [A, C], router: { w: router }, signals: sig, rule: softmax }, choices('weights'));
    const unaligned = mergeLayer({ layer: 0, experts: [A, C], router: { w: router }, signals: sig, rule: softmax }, choices('none'));
    // a permuted exact copy aligns back to A itself
    expect(maxDiff(out(aligned.experts[0]), ref)).toBeLessThan(1e-5);
    expect(maxDiff(out(unaligned.experts[0]), ref)).toBeGreaterThan(1e-2);
  });

  it('needs calibration hidden states for activation alignment and the fitted router', () => {
    const r = rng(4);
    const experts = [randomExpert(H, I, r), randomExpert(H, I, r), randomExpert(H, I, r)];
    const router = randomArray(3 * H, r);
    const x = randomArray(20 * H, r);
    const sig = measureSignals(experts, router, x, 20, 1);
    const base: MergeChoices = { groups: 2, grouping: 'hierarchical', align: 'none', weighting: 'frequency', router: 'mean' };
    const input = { layer: 0, experts, router: { w: router }, signals: sig, rule: softmax };
    expect(() => mergeLayer(input, { ...base, align: 'activations' })).toThrow(/--calib/);
    expect(() => mergeLayer(input, { ...base, router: 'fit' })).toThrow(/--calib/);
    expect(() => mergeLayer(input, { ...base, groups: 4 })).toThrow(/between 1 and the 3 experts/);
  });
});
