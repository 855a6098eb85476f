import { describe, expect, it } from 'vitest';
import { isMoeError } from '../../src/errors.js';
import type { ModelView, RoutingRule } from '../../src/model/types.js';
import { checkKeep, keepFromRatio, keptFromScores, layerPlan, prunedRule } from '../../src/prune/plan.js';

function view(numExperts: number, topK: number, groups?: RoutingRule['groups']): ModelView {
  const routing: RoutingRule = { score: 'softmax', afterTopk: 'none', selectionBias: false, topK, normalize: true, scale: 1, groups };
  return { dims: { numExperts, topK }, routing } as unknown as ModelView;
}

function usageError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(isMoeError(e) && e.code).toBe('Usage');
    return (e as Error).message;
  }
  throw new Error('expected a usage error');
}

describe('keep count checks', () => {
  it('--ratio keeps round(R x experts)', () => {
    expect(keepFromRatio(0.75, 8)).toBe(6);
    expect(keepFromRatio(0.5, 8)).toBe(4);
    expect(keepFromRatio(0.3, 64)).toBe(19);
    expect(usageError(() => keepFromRatio(0, 8))).toMatch(/ratio/);
    expect(usageError(() => keepFromRatio(1.5, 8))).toMatch(/ratio/);
  });
  it('refuses more than exist, fewer than top-k, and fractions', () => {
    expect(usageError(() => checkKeep(view(8, 2), 9))).toMatch(/has 8/);
    expect(usageError(() => checkKeep(view(8, 2), 1))).toMatch(/top-k|routed to/);
    expect(usageError(() => checkKeep(view(8, 2), 2.5))).toMatch(/whole number/);
    expect(checkKeep(view(8, 2), 2)).toEqual({});
    expect(checkKeep(view(8, 2), 8)).toEqual({});
  });
  it('group-limited routing: same count per group, else collapse a no-op limit, else refuse', () => {
    const g = { nGroup: 4, topkGroup: 2, groupScore: 'top2sum' as const };
    expect(checkKeep(view(16, 2, g), 8).groups).toEqual({ nGroup: 4, topkGroup: 2, perGroup: 2, groupSize: 4 });
    expect(usageError(() => checkKeep(view(16, 2, g), 6))).toMatch(/multiple of 4/);
    // one expert per group cannot be scored by its top-2
    expect(usageError(() => checkKeep(view(16, 2, g), 4))).toMatch(/top-2/);
    // max-scored groups (V2): 1 per group, 2 groups reachable, top-3 impossible
    expect(usageError(() => checkKeep(view(16, 3, { nGroup: 4, topkGroup: 2, groupScore: 'max' }), 4))).toMatch(/reach only 2/);
    // topk_group == n_group selects every group: rewriting to one group routes identically
    expect(checkKeep(view(16, 2, { nGroup: 4, topkGroup: 4, groupScore: 'top2sum' }), 6).groups).toEqual({
      nGroup: 1,
      topkGroup: 1,
      perGroup: 6,
      groupSize: 16,
    });
  });
});

describe('kept set from scores', () => {
  it('keeps the highest scores, ascending indices, ties to the lower index', () => {
    expect(keptFromScores([0.1, 0.9, 0.5, 0.5, 0.2], 3)).toEqual([1, 2, 3]);
    expect(keptFromScores([1, 1, 1, 1], 2)).toEqual([0, 1]);
  });
  it('per group when groups constrain the choice', () => {
    // the 4 best overall (0,1,2,3) all sit in group 0; the plan must take 2 from each group
    const scores = [9, 8, 7, 6, 1, 2, 0.5, 3];
    expect(keptFromScores(scores, 4, { nGroup: 2, topkGroup: 1, perGroup: 2, groupSize: 4 })).toEqual([0, 1, 5, 7]);
  });
  it('a NaN score is refused, not silently sorted', () => {
    expect(() => keptFromScores([1, NaN, 2], 2)).toThrow(/NaN/);
  });
  it('layer plan lists removed experts and keeps the scores', () => {
    expect(layerPlan(3, [5, 1, 4, 2], [0, 2])).toEqual({ layer: 3, kept: [0, 2], removed: [1, 3], scores: [5, 1, 4, 2] });
  });
  it('collapsed groups drop the group limit from the pruned routing rule', () => {
    const rule = view(16, 2, { nGroup: 4, topkGroup: 4, groupScore: 'top2sum' }).routing;
    expect(prunedRule(rule, { nGroup: 1, topkGroup: 1, perGroup: 6, groupSize: 16 }).groups).toBeUndefined();
    expect(prunedRule(rule, { nGroup: 4, topkGroup: 2, perGroup: 2, groupSize: 4 }).groups).toEqual({ nGroup: 4, topkGroup: 2, groupScore: 'top2sum' });
  });
});
