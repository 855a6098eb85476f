import { describe, expect, it } from 'vitest';
import type { RoutingRule } from '../../src/model/types.js';
import { applySkip, medianSecondRatio, route, skipMask } from '../../src/runtime/routing.js';

const base: RoutingRule = { score: 'softmax', afterTopk: 'none', selectionBias: false, topK: 2, normalize: false, scale: 1 };
const f32 = (a: number[]) => Float32Array.from(a);
const sm = (a: number[]) => {
  const m = Math.max(...a);
  const e = a.map((v) => Math.exp(v - m));
  const s = e.reduce((x, y) => x + y, 0);
  return e.map((v) => v / s);
};
const sig = (v: number) => 1 / (1 + Math.exp(-v));

describe('routing rules on hand-made logits', () => {
  it('softmax top-k with and without renormalisation (mixtral vs olmoe)', () => {
    const l = [1, 3, 2, 0];
    const p = sm(l);
    const off = route(base, f32(l), 1, 4);
    expect(Array.from(off.routing.idx)).toEqual([1, 2]);
    expect(off.routing.w[0]).toBeCloseTo(p[1]!, 6);
    expect(off.routing.w[1]).toBeCloseTo(p[2]!, 6);
    const on = route({ ...base, normalize: true }, f32(l), 1, 4);
    expect(on.routing.w[0]).toBeCloseTo(p[1]! / (p[1]! + p[2]!), 6);
    expect(on.routing.w[0]! + on.routing.w[1]!).toBeCloseTo(1, 6);
    // probs are the full softmax
    expect(Array.from(on.probs).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
  });

  it('ties go to the lower expert index', () => {
    const r = route({ ...base, topK: 2 }, f32([2, 5, 5, 5]), 1, 4);
    expect(Array.from(r.routing.idx)).toEqual([1, 2]);
    const r2 = route({ ...base, topK: 3 }, f32([0, 0, 0, 0, 0, 0]), 1, 6);
    expect(Array.from(r2.routing.idx)).toEqual([0, 1, 2]);
  });

  it('deepseek v2 group-limited greedy: groups ranked by max, dropped groups masked, x scale, no renormalisation', () => {
    // 8 experts in 4 groups of 2; keep 2 groups
    const l = [0, 4, 3.9, 3.8, 0, 0, 3.7, 1];
    const rule: RoutingRule = { ...base, topK: 3, groups: { nGroup: 4, topkGroup: 2, groupScore: 'max' }, scale: 2 };
    const r = route(rule, f32(l), 1, 8);
    const p = sm(l);
    // groups by max: g0 (4), g1 (3.9), g3 (3.7) -> keep g0, g1; expert 6 (3.7) is excluded although it beats 0/5
    expect(Array.from(r.routing.idx)).toEqual([1, 2, 3]);
    expect(r.routing.w[0]).toBeCloseTo(2 * p[1]!, 6);
    expect(r.routing.w[2]).toBeCloseTo(2 * p[3]!, 6);
    // without groups, expert 6 would be third
    expect(Array.from(route({ ...rule, groups: undefined }, f32(l), 1, 8).routing.idx)).toEqual([1, 2, 3]);
    expect(Array.from(route({ ...rule, topK: 4, groups: undefined }, f32(l), 1, 8).routing.idx)).toEqual([1, 2, 3, 6]);
    expect(Array.from(route({ ...rule, topK: 4 }, f32(l), 1, 8).routing.idx)).toEqual([1, 2, 3, 0]);
  });

  it('deepseek v3: sigmoid, bias for selection only, group score = sum of top-2, renormalise + eps, x scale', () => {
    const l = [0.5, 0.4, -1, -1, 0.45, 0.44, 0.43, 0.42];
    const bias = f32([0, 0, 0, 0, 0, 0, 0.3, 0.3]);
    const rule: RoutingRule = {
      score: 'sigmoid',
      afterTopk: 'none',
      selectionBias: true,
      topK: 2,
      normalize: true,
      normEps: 1e-20,
      scale: 2.5,
      groups: { nGroup: 4, topkGroup: 1, groupScore: 'top2sum' },
    };
    const r = route(rule, f32(l), 1, 8, bias);
    // biased group sums: g0 .62+.60, g1 ~.54, g2 .61+.61, g3 .91+.90 -> only g3 survives
    expect(Array.from(r.routing.idx)).toEqual([6, 7]);
    // weights are the unbiased sigmoids, renormalised, x 2.5
    const s6 = sig(0.43),
      s7 = sig(0.42);
    expect(r.routing.w[0]).toBeCloseTo((2.5 * s6) / (s6 + s7), 6);
    expect(r.routing.w[1]).toBeCloseTo((2.5 * s7) / (s6 + s7), 6);
    expect(r.probs[0]).toBeCloseTo(sig(0.5), 6);
    // max-based grouping would keep group 3 as well here, but the sum of top-2 matters: make a group with one strong expert
    const l2 = [3, -3, 1, 1, -3, -3, -3, -3];
    const r2 = route({ ...rule, groups: { nGroup: 4, topkGroup: 1, groupScore: 'top2sum' } }, f32(l2), 1, 8, f32(new Array(8).fill(0)));
    // g0: s(3)+s(-3) = 0.95+0.05 = 1.0 ; g1: 2*s(1) = 1.46 -> g1 wins under top-2 sum
    expect(Array.from(r2.routing.idx)).toEqual([2, 3]);
    const r3 = route({ ...rule, groups: { nGroup: 4, topkGroup: 1, groupScore: 'max' } }, f32(l2), 1, 8, f32(new Array(8).fill(0)));
    expect(Array.from(r3.routing.idx)).toEqual([0, 1]);
    // without renormalisation the weights are scale * sigmoid
    const r4 = route({ ...rule, normalize: false }, f32(l), 1, 8, bias);
    expect(r4.routing.w[0]).toBeCloseTo(2.5 * s6, 6);
  });

  it('dropped groups are masked to -inf (transformers 5.18 DeepseekV3TopkRouter / Glm4MoeTopkRouter masked_fill(~score_mask, -inf)): a kept expert with a negative biased score still wins', () => {
    const l = [0, 0, 0, 0];
    const bias = f32([-1, -0.9, 0.2, 0.1]);
    const rule: RoutingRule = {
      score: 'sigmoid',
      afterTopk: 'none',
      selectionBias: true,
      topK: 2,
      normalize: false,
      scale: 1,
      groups: { nGroup: 2, topkGroup: 1, groupScore: 'top2sum' },
    };
    // biased: [-0.5, -0.4, 0.7, 0.6]; group1 kept; masked group0 -> [0, 0, .7, .6]
    const r = route(rule, f32(l), 1, 4, bias);
    expect(Array.from(r.routing.idx)).toEqual([2, 3]);
    const bias2 = f32([0.2, 0.1, -0.9, -0.85]);
    // biased: [.7, .6, -.4, -.35] -> group0 kept, group1 masked to 0: choose 0,1
    expect(Array.from(route(rule, f32(l), 1, 4, bias2).routing.idx)).toEqual([0, 1]);
    // kept group with negative scores vs masked zeros: group0 biased [-0.3, -0.6], group1 [-0.5, -0.55]; top-2 sums -0.9 vs -1.05
    const bias3 = f32([-0.8, -1.1, -1.0, -1.05]);
    const r3 = route({ ...rule, topK: 2 }, f32(l), 1, 4, bias3);
    // the kept group's experts win although their biased scores are negative (a 0.0 mask would pick 2 and 3)
    expect(Array.from(r3.routing.idx)).toEqual([0, 1]);
  });

  it('granite / gpt_oss: top-k on raw logits then softmax over the k; llama4: sigmoid of the k', () => {
    const l = [1, 3, 2, 0];
    const g = route({ ...base, score: 'none', afterTopk: 'softmax' }, f32(l), 1, 4);
    expect(Array.from(g.routing.idx)).toEqual([1, 2]);
    expect(g.routing.w[0]).toBeCloseTo(Math.exp(3) / (Math.exp(3) + Math.exp(2)), 6);
    const s = route({ ...base, score: 'none', afterTopk: 'sigmoid', topK: 1 }, f32(l), 1, 4);
    expect(s.routing.w[0]).toBeCloseTo(sig(3), 6);
  });

  it('phimoe sparsemixer: top-1 weight is the softmax over logits within 2*eps of the max, top-2 likewise with top-1 removed', () => {
    const eps = 0.01;
    const l = [1.0, 0.99, 0.5, 0.2];
    const r = route({ ...base, sparsemixer: { jitterEps: eps } }, f32(l), 1, 4);
    expect(Array.from(r.routing.idx)).toEqual([0, 1]);
    // round 1: keep s with (1 - s)/max(|s|, 1) <= 0.02 -> experts 0, 1
    expect(r.routing.w[0]).toBeCloseTo(Math.exp(1) / (Math.exp(1) + Math.exp(0.99)), 6);
    // round 2: max 0.99, expert 0 excluded; keep (0.99 - s)/max(|s|, .99) <= 0.02 -> only expert 1
    expect(r.routing.w[1]).toBeCloseTo(1, 6);
  });

  it('dynamic skipping: w2 < beta * w1 skipped, renormalised when the family renormalises; median ratio', () => {
    const r = { T: 3, k: 2, idx: Int32Array.from([0, 1, 2, 3, 1, 2]), w: f32([0.8, 0.2, 0.6, 0.4, 0.3, 0.7]) };
    expect(medianSecondRatio(r)).toBeCloseTo(0.4286, 3);
    const m = skipMask(r, 0.5);
    // token 2's largest weight is in slot 1: slot 0 (0.3 < 0.5 * 0.7) goes
    expect(Array.from(m.skipped)).toEqual([0, 1, 0, 0, 1, 0]);
    const a = applySkip(r, 0.5, true);
    expect(a.skipped).toBe(2);
    expect(a.routing.w[5]).toBeCloseTo(1, 6);
    expect(a.routing.w[0]).toBeCloseTo(1, 6);
    expect(a.routing.w[1]).toBe(0);
    expect(applySkip(r, 0.5, false).routing.w[0]).toBeCloseTo(0.8, 6);
    expect(applySkip(r, 0, true).skipped).toBe(0);
  });
});
