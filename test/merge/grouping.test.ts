import { describe, expect, it } from 'vitest';
import { checkPartition, groupExperts } from '../../src/merge/grouping.js';
import { GROUPING_METHODS } from '../../src/merge/methods.js';
import type { LayerSignals } from '../../src/merge/types.js';
import { gaussian, rng } from './synthetic.js';

/**
 * 8 experts where 6 duplicates 1 and 7 duplicates 3 (same mean output, same router-logit column), and the
 * duplicates are the least used and least salient, as a copy sharing its twin's traffic would be.
 */
function duplicatedSignals(seed: number): LayerSignals {
  const r = rng(seed);
  const E = 8;
  const H = 16;
  const S = 50;
  const twin = [0, 1, 2, 3, 4, 5, 1, 3];
  const base = Array.from({ length: 6 }, () => Float64Array.from({ length: H }, () => gaussian(r)));
  const meanOutput = new Float64Array(E * H);
  for (let e = 0; e < E; e++) meanOutput.set(base[twin[e]], e * H);
  const cols = Array.from({ length: 6 }, () => Float32Array.from({ length: S }, () => gaussian(r)));
  const logitSample = new Float32Array(S * E);
  for (let s = 0; s < S; s++) for (let e = 0; e < E; e++) logitSample[s * E + e] = cols[twin[e]][s];
  const count = Float64Array.from([90, 80, 70, 60, 50, 40, 10, 5]);
  const saliency = Float64Array.from([9, 8, 7, 6, 5, 4, 1, 0.5]);
  return { numExperts: E, hidden: H, count, saliency, meanOutput, logitSample, logitRows: S };
}

describe('grouping', () => {
  for (const method of GROUPING_METHODS) {
    it(`${method}: duplicated experts end up with their twins, the rest stay alone`, () => {
      for (const seed of [1, 2, 3]) {
        const groups = groupExperts(method, duplicatedSignals(seed), 6);
        checkPartition(groups, 8, 6);
        expect(groups.map((g) => g.members)).toEqual([[0], [1, 6], [2], [3, 7], [4], [5]]);
        expect(groups.map((g) => g.anchor)).toEqual([0, 1, 2, 3, 4, 5]);
      }
    });
  }

  it('msmoe anchors are the most frequent experts; saliency centroids the most salient', () => {
    const sig = duplicatedSignals(4);
    // make expert 7 the busiest: it must become dominant, and its twin 3 joins it
    sig.count[7] = 1000;
    sig.count[3] = 1;
    const ms = groupExperts('msmoe', sig, 6);
    expect(ms.find((g) => g.members.includes(3))!.anchor).toBe(7);
    sig.saliency[6] = 100;
    sig.saliency[1] = 0.1;
    const sal = groupExperts('saliency', sig, 6);
    expect(sal.find((g) => g.members.includes(1))!.anchor).toBe(6);
  });

  it('hierarchical uses average linkage: a chain of near neighbours does not collapse into one cluster', () => {
    // four experts on a line at 0, 1, 2, 10 (2-D outputs so cosine distances differ): into 2 groups
    const angle = [0, 0.1, 0.2, 1.4];
    const meanOutput = new Float64Array(8);
    angle.forEach((a, e) => meanOutput.set([Math.cos(a), Math.sin(a)], e * 2));
    const sig: LayerSignals = { numExperts: 4, hidden: 2, count: Float64Array.from([1, 4, 2, 3]), saliency: new Float64Array(4), meanOutput, logitRows: 0 };
    const g = groupExperts('hierarchical', sig, 2);
    expect(g.map((x) => x.members)).toEqual([[1, 0, 2], [3]]);
    expect(g[0].anchor).toBe(1);
  });

  it('saliency caps each centroid at ceil((E - n) / n) extra members', () => {
    const sig = duplicatedSignals(5);
    const g = groupExperts('saliency', sig, 2);
    checkPartition(g, 8, 2);
    expect(g.map((x) => x.members.length)).toEqual([4, 4]);
  });

  it('rejects impossible group counts and missing signals', () => {
    const sig = duplicatedSignals(6);
    expect(() => groupExperts('msmoe', sig, 9)).toThrow(/between 1 and the 8/);
    expect(() => groupExperts('msmoe', sig, 0)).toThrow(/between 1/);
    expect(() => groupExperts('msmoe', { ...sig, logitSample: undefined, logitRows: 0 }, 4)).toThrow(/router-logit samples/);
    expect(() => groupExperts('hierarchical', { ...sig, meanOutput: undefined }, 4)).toThrow(/mean expert outputs/);
    expect(() =>
      checkPartition(
        [
          { anchor: 0, members: [0, 1] },
          { anchor: 1, members: [1] },
        ],
        2,
        2,
      ),
    ).toThrow(/two groups/);
  });
});
