import { describe, expect, it } from 'vitest';
import { allocate, allocationReport } from '../../src/merge/allocate.js';
import { rng } from './synthetic.js';

/** every count vector in [min, max]^L summing to total, brute force */
function brute(curves: number[][], total: number, min: number): { counts: number[]; err: number } {
  const L = curves.length;
  let best = { counts: [] as number[], err: Infinity };
  const rec = (l: number, left: number, acc: number[], err: number) => {
    if (l === L) {
      if (left === 0 && err < best.err) best = { counts: [...acc], err };
      return;
    }
    for (let e = 0; e < curves[l].length && e <= left; e++) rec(l + 1, left - e, [...acc, min + e], err + curves[l][e]);
  };
  rec(0, total - L * min, [], 0);
  return best;
}

describe('--keep-per-layer auto: knapsack of the expert budget over layers', () => {
  it('finds the least summed error at the same total (brute force on random decreasing curves)', () => {
    const r = rng(9);
    for (let trial = 0; trial < 30; trial++) {
      const L = 2 + Math.floor(r() * 4);
      const E = 4 + Math.floor(r() * 5);
      const min = 2;
      const curves = Array.from({ length: L }, () => {
        // error falls as experts are kept, 0 with all of them
        const c: number[] = [];
        let v = r() * 2;
        for (let n = min; n <= E; n++) {
          c.push(n === E ? 0 : v);
          v *= r();
        }
        return c;
      });
      const N = min + Math.floor(r() * (E - min + 1));
      const counts = allocate(curves, N * L, min);
      expect(counts.reduce((a, b) => a + b, 0)).toBe(N * L);
      const sum = counts.reduce((a, n, l) => a + curves[l][n - min], 0);
      expect(sum).toBeCloseTo(brute(curves, N * L, min).err, 12);
      const rep = allocationReport(
        curves.map((_, l) => l),
        curves,
        N,
        min,
      );
      expect(rep.errorAllocated).toBeLessThanOrEqual(rep.errorUniform + 1e-15);
      expect(rep.written).toBe(false);
    }
  });

  it('moves experts from a layer with dead experts to one where all are live', () => {
    // layer 0: its last two experts are dead (keeping 4 of 6 costs nothing); layer 1: every expert matters
    const curves = [
      [0.5, 0.2, 0, 0, 0],
      [0.9, 0.6, 0.3, 0.1, 0],
    ];
    expect(allocate(curves, 10, 2)).toEqual([4, 6]);
  });
});
