import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import { groupTargets, mergeRouter, routerKL } from '../../src/merge/router.js';
import type { ExpertGroup } from '../../src/merge/types.js';
import { randomArray, rng, routerLogits } from './synthetic.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

const H = 16;
const E = 8;
const groups: ExpertGroup[] = [
  { anchor: 0, members: [0, 5] },
  { anchor: 1, members: [1, 6, 7] },
  { anchor: 2, members: [2] },
  { anchor: 3, members: [3, 4] },
];

function data(seed: number, T: number) {
  const r = rng(seed);
  const w = randomArray(E * H, r, 0.5);
  const x = randomArray(T * H, r);
  return { w, x, T, logits: routerLogits(w, E, x, T, H) };
}

describe('router after merging', () => {
  it('anchor and mean rows are what they say', () => {
    const d = data(1, 10);
    const anchor = mergeRouter('anchor', { w: d.w }, groups, H, E, { score: 'softmax' });
    const mean = mergeRouter('mean', { w: d.w }, groups, H, E, { score: 'softmax' });
    expect(Array.from(anchor.router.w.subarray(H, 2 * H))).toEqual(Array.from(d.w.subarray(H, 2 * H)));
    for (let h = 0; h < H; h++) expect(mean.router.w[H + h]).toBeCloseTo((d.w[H + h] + d.w[6 * H + h] + d.w[7 * H + h]) / 3, 6);
    expect(anchor.kl).toBeUndefined();
  });

  it('group targets sum the old softmax (and clamp summed sigmoids at 1)', () => {
    const d = data(2, 5);
    const P = groupTargets(d.logits, 5, E, groups, 'softmax');
    for (let t = 0; t < 5; t++) expect(P.subarray(t * 4, t * 4 + 4).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    const S = groupTargets(new Float32Array(E).fill(10), 1, E, groups, 'sigmoid');
    expect(Array.from(S)).toEqual([1, 1, 1 / (1 + Math.exp(-10)), 1]);
  });

  for (const score of ['softmax', 'sigmoid'] as const) {
    it(`${score}: the fitted rows lower the KL against mean rows, on the fit tokens and on held-out tokens`, () => {
      const fit = data(3, 600);
      const res = mergeRouter('fit', { w: fit.w }, groups, H, E, { score }, fit, { steps: 200 });
      // a sum of sigmoids is further from one sigmoid than a sum of softmax shares is from one share
      expect(res.kl!).toBeLessThan((score === 'softmax' ? 0.8 : 0.95) * res.klMean!);
      const other = data(99, 400);
      const heldOut = { x: other.x, T: 400, logits: routerLogits(fit.w, E, other.x, 400, H) };
      const mean = mergeRouter('mean', { w: fit.w }, groups, H, E, { score });
      expect(routerKL(res.router, groups, heldOut, H, E, { score })).toBeLessThan(routerKL(mean.router, groups, heldOut, H, E, { score }));
      expect(res.router.w.length).toBe(4 * H);
    });
  }

  it('fits a bias when the router has one', () => {
    const d = data(4, 300);
    const bias = randomArray(E, rng(5));
    const res = mergeRouter(
      'fit',
      { w: d.w, bias },
      groups,
      H,
      E,
      { score: 'softmax' },
      { ...d, logits: d.logits.map((v, i) => v + bias[i % E]) },
      { steps: 100 },
    );
    expect(res.router.bias!.length).toBe(4);
    expect(res.kl!).toBeLessThan(res.klMean!);
  });
});
