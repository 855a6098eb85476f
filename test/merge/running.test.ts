import { describe, expect, it } from 'vitest';
import { runningEdit } from '../../src/merge/pipeline.js';
import type { RoutingRule } from '../../src/model/types.js';
import { route } from '../../src/runtime/routing.js';
import { randomArray, randomExpert, rng, routerLogits } from './synthetic.js';

const rule = (score: RoutingRule['score'], afterTopk: RoutingRule['afterTopk']): RoutingRule => ({
  score,
  afterTopk,
  selectionBias: false,
  topK: 2,
  normalize: score === 'softmax',
  scale: 1,
});

describe('running edit of a merged layer', () => {
  for (const [score, after] of [
    ['softmax', 'none'],
    ['sigmoid', 'none'],
    ['none', 'softmax'],
  ] as const) {
    it(`${score}: routes exactly as the N-expert router does (spare slots never chosen, same weights)`, () => {
      const r = rng(7);
      const H = 8,
        E = 8,
        N = 5,
        T = 50;
      const experts = Array.from({ length: N }, () => randomExpert(H, 4, r));
      const w = randomArray(N * H, r);
      const bias = randomArray(N, r);
      const x = randomArray(T * H, r);
      const edit = runningEdit(experts, { w, bias }, E, H);
      expect(edit.experts!.length).toBe(E);
      for (let i = 0; i < N; i++) expect(edit.experts![i]).toBe(experts[i]);
      const addBias = (z: Float32Array, b: Float32Array, n: number) => z.map((v, i) => v + b[i % n]);
      const small = route(rule(score, after), addBias(routerLogits(w, N, x, T, H), bias, N), T, N);
      const big = route(rule(score, after), addBias(routerLogits(edit.router!.w, E, x, T, H), edit.router!.bias!, E), T, E);
      expect(Array.from(big.routing.idx)).toEqual(Array.from(small.routing.idx));
      for (let i = 0; i < T * 2; i++) expect(big.routing.w[i]).toBeCloseTo(small.routing.w[i], 6);
    });
  }
});
