import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import type { RoutingRule } from '../../src/model/types.js';
import { refitLayer } from '../../src/prune/refit.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { route } from '../../src/runtime/routing.js';
import { runMoe } from '../helpers/cli.js';
import { cloneExpert, randomArray, randomExpert, rng } from '../merge/synthetic.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

const H = 10;
const I = 16;
const RULE: RoutingRule = { score: 'softmax', afterTopk: 'none', selectionBias: false, topK: 2, normalize: true, scale: 1 };

function layerInput(experts: SwiGLUWeights[], w: Float32Array, bias: Float32Array, T: number, seed: number, rule = RULE) {
  const r = rng(seed);
  const E = experts.length;
  const x = randomArray(T * H, r);
  const logits = new Float32Array(T * E);
  for (let t = 0; t < T; t++)
    for (let e = 0; e < E; e++) {
      let s = bias[e];
      for (let h = 0; h < H; h++) s += w[e * H + h] * x[t * H + h];
      logits[t * E + e] = s;
    }
  const { routing } = route(rule, logits, T, E);
  return { x, T, hidden: H, logits, routing, experts, router: { w, bias } };
}

describe('prune --refit-router (least squares on calibration hidden states)', () => {
  it('a removed twin of a kept expert: the refit row takes its routing mass exactly (row equal, bias + log 2) and the layer is reproduced', () => {
    // every expert routed (top-k = all, renormalised): the one rule under which summed probabilities reproduce
    // the layer exactly (with a smaller top-k, both twins could be a token's choice, which one row cannot express)
    const dense = (k: number): RoutingRule => ({ ...RULE, topK: k });
    const r = rng(3);
    const E = 6;
    const experts = Array.from({ length: E }, () => randomExpert(H, I, r));
    const w = randomArray(E * H, r);
    const bias = randomArray(E, r, 0.1);
    // expert 5 is expert 1's twin: same weights, same router row and bias
    experts[5] = cloneExpert(experts[1]);
    w.set(w.subarray(1 * H, 2 * H), 5 * H);
    bias[5] = bias[1];
    const input = layerInput(experts, w, bias, 400, 4, dense(E));
    const kept = [0, 1, 2, 3, 4];
    const res = refitLayer(input, kept, dense(5), { kind: 'silu' });
    expect(res.report.receives).toEqual({ '1': [5] });
    expect(res.report.applied).toBe(true);
    expect(res.report.alpha).toBe(1);
    // softmax over the refit logits equals the old probabilities with the twins summed: the same output
    expect(res.report.errorOwnRows).toBeGreaterThan(1e-3);
    expect(res.report.errorRefit).toBeLessThan(1e-6);
    // (up to the normal equations' small ridge)
    for (let h = 0; h < H; h++) expect(res.rows.w[1 * H + h]).toBeCloseTo(w[1 * H + h], 3);
    expect(res.rows.bias![1]).toBeCloseTo(bias[1] + Math.log(2), 3);
    // kept experts that received nothing keep their rows, bit for bit
    for (const i of [0, 2, 3, 4]) {
      expect(Array.from(res.rows.w.subarray(i * H, (i + 1) * H))).toEqual(Array.from(w.subarray(kept[i] * H, (kept[i] + 1) * H)));
      expect(res.rows.bias![i]).toBe(bias[kept[i]]);
    }
  });

  it('never worse than the own rows on the measured error; own rows returned unchanged when the refit does not help', () => {
    for (const seed of [1, 2, 5]) {
      const r = rng(seed);
      const E = 8;
      const experts = Array.from({ length: E }, () => randomExpert(H, I, r));
      const w = randomArray(E * H, r);
      const bias = new Float32Array(E);
      const input = layerInput(experts, w, bias, 300, seed + 10);
      const kept = [0, 2, 3, 5, 6, 7];
      const res = refitLayer(input, kept, RULE, { kind: 'silu' });
      expect(res.report.errorRefit).toBeLessThanOrEqual(res.report.errorOwnRows);
      expect(res.report.applied).toBe(res.report.alpha > 0);
      expect(res.report.applied).toBe(res.report.errorRefit < res.report.errorOwnRows);
      if (!res.report.applied) {
        kept.forEach((j, i) => expect(Array.from(res.rows.w.subarray(i * H, (i + 1) * H))).toEqual(Array.from(w.subarray(j * H, (j + 1) * H))));
      }
      // the removed experts are each received by one kept expert
      expect(
        Object.values(res.report.receives)
          .flat()
          .sort((a, b) => a - b),
      ).toEqual([1, 4]);
    }
  });

  it('is refused without calibration text, in one line', async () => {
    const r = await runMoe(['prune', '--model', 'test/fixtures/tiny-mixtral', '--keep', '6', '--method', 'random', '--refit-router', '--out', '/tmp/never']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^moe: --refit-router .*--calib/);
  });
});
