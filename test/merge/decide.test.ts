import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import { mergeLayer } from '../../src/merge/layer.js';
import type { MergeChoices } from '../../src/merge/types.js';
import type { RoutingRule } from '../../src/model/types.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { measureSignals, moeForward, randomArray, randomExpert, rng } from './synthetic.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

const H = 12;
const I = 24;
const K = 2;
const MIXTRAL: RoutingRule = { score: 'softmax', afterTopk: 'none', selectionBias: false, topK: K, normalize: true, scale: 1 };

/** ‖a − b‖² / ‖a‖², float64 */
function relErr(a: Float64Array, b: Float64Array): number {
  let e = 0;
  let n = 0;
  for (let i = 0; i < a.length; i++) {
    e += (a[i] - b[i]) ** 2;
    n += a[i] ** 2;
  }
  return e / n;
}

/**
 * A layer of E random experts whose router rows are scaled per expert: `live[e]` near 0 makes expert e (almost)
 * never chosen, which is the uneven routing of a model trained with a weak load-balancing loss.
 */
function layer(seed: number, E: number, T: number, live: number[]) {
  const r = rng(seed);
  const experts: SwiGLUWeights[] = Array.from({ length: E }, () => randomExpert(H, I, r));
  const router = randomArray(E * H, r);
  // a dead expert: its row pointed away from every token (a large negative logit for all x)
  const x = randomArray(T * H, r);
  const mean = new Float32Array(H);
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) mean[h] += x[t * H + h] / T;
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) x[t * H + h] += 2 - mean[h];
  for (let e = 0; e < E; e++) {
    if (live[e] >= 1) continue;
    for (let h = 0; h < H; h++) router[e * H + h] = -Math.abs(router[e * H + h]) * (1 - live[e]) * 3;
  }
  const before = moeForward(experts, router, x, T, K);
  const signals = measureSignals(experts, router, x, T, K);
  return { experts, router, x, T, before, signals };
}

function run(l: ReturnType<typeof layer>, choices: MergeChoices, drop: 'auto' | 'never') {
  return mergeLayer(
    {
      layer: 0,
      experts: l.experts,
      router: { w: l.router },
      signals: l.signals,
      rule: MIXTRAL,
      routingRule: MIXTRAL,
      calib: { x: l.x, T: l.T, logits: l.before.logits, routing: l.before.routing },
    },
    choices,
    { drop },
  );
}

describe('merge or drop (--drop auto)', () => {
  it('never worse than the planned merge, REAP or frequency pruning on the layer output error, each error checked by an independent forward', () => {
    for (const seed of [1, 2, 3]) {
      const E = 8;
      const l = layer(seed, E, 256, [1, 1, 1, 1, 1, 1, 0.3, 0]);
      for (const grouping of ['msmoe', 'hierarchical', 'saliency'] as const) {
        for (const N of [6, 4]) {
          const choices: MergeChoices = { groups: N, grouping, align: 'weights', weighting: 'frequency', router: 'mean' };
          const m = run(l, choices, 'auto');
          const d = m.report.decision!;
          expect(d.tokens).toBe(256);
          // the chosen layer, run by the reference forward (float64, its own routing code), has the reported error
          const after = moeForward(m.experts, m.router.w, l.x, l.T, K);
          expect(relErr(l.before.out, after.out)).toBeCloseTo(d.error, 4);
          // so do the candidates: the planned merge and REAP / frequency pruning (kept experts, their own rows)
          const planned = run(l, choices, 'never');
          expect(relErr(l.before.out, moeForward(planned.experts, planned.router.w, l.x, l.T, K).out)).toBeCloseTo(d.errors.merge, 4);
          for (const [score, err] of [
            [l.signals.saliency, d.errors.reap],
            [l.signals.count, d.errors.frequency],
          ] as const) {
            const kept = Array.from(score.keys())
              .sort((a, b) => score[b] - score[a] || a - b)
              .slice(0, N)
              .sort((a, b) => a - b);
            const rows = new Float32Array(N * H);
            kept.forEach((j, i) => rows.set(l.router.subarray(j * H, (j + 1) * H), i * H));
            const pruned = moeForward(
              kept.map((j) => l.experts[j]),
              rows,
              l.x,
              l.T,
              K,
            );
            expect(relErr(l.before.out, pruned.out)).toBeCloseTo(err, 4);
          }
          expect(d.error).toBeLessThanOrEqual(Math.min(d.errors.merge, d.errors.mergeDrop, d.errors.reap, d.errors.frequency));
          expect(d.errors.mergeDrop).toBeLessThanOrEqual(d.errors.merge);
          // the groups still partition the experts, dropped members have weight 0, the kept one is the anchor
          expect(
            m.groups
              .flatMap((g) => g.members)
              .slice()
              .sort((a, b) => a - b),
          ).toEqual(Array.from({ length: E }, (_, i) => i));
          m.report.groups.forEach((g) => expect(g.weights.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12));
          const zero = m.report.groups.flatMap((g) => g.members.filter((_, k) => g.weights[k] === 0)).sort((a, b) => a - b);
          expect(zero).toEqual(d.dropped);
        }
      }
    }
  });

  it('drops a dead expert instead of merging it, and keeps live random experts apart', () => {
    // independent random experts: averaging two live ones is far from either; expert 7 never receives a token
    const l = layer(5, 8, 256, [1, 1, 1, 1, 1, 1, 1, 0]);
    expect(l.signals.count[7]).toBe(0);
    const choices: MergeChoices = { groups: 6, grouping: 'msmoe', align: 'weights', weighting: 'frequency', router: 'mean' };
    const m = run(l, choices, 'auto');
    const d = m.report.decision!;
    expect(d.choice).not.toBe('merge');
    expect(d.error).toBeLessThan(d.errors.merge);
    expect(d.dropped).toContain(7);
    // never: the planned merge, no decision
    const never = run(l, choices, 'never');
    expect(never.report.decision).toBeUndefined();
    expect(never.decided).toBeUndefined();
  });

  it('a group left with its anchor alone is that expert, untouched', () => {
    const l = layer(7, 8, 256, [1, 1, 1, 1, 1, 1, 0.2, 0]);
    const m = run(l, { groups: 6, grouping: 'msmoe', align: 'weights', weighting: 'frequency', router: 'mean' }, 'auto');
    m.report.groups.forEach((g, i) => {
      if (g.weights[0] === 1) expect(m.experts[i]).toBe(l.experts[g.anchor]);
    });
  });
});
