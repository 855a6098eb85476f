import { describe, expect, it } from 'vitest';
import { allocate, paretoOptions, type AllocUnit } from '../../src/alloc/knapsack.js';
import { MoeError } from '../../src/errors.js';

function lcg(seed: number): () => number {
  let s = seed;
  return () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
}

/** Bit-allocation-shaped instances: cost grows with bits, loss falls roughly geometrically, importance varies. */
function instance(nUnits: number, nOpts: number, seed: number): AllocUnit[] {
  const r = lcg(seed);
  return Array.from({ length: nUnits }, (_, u) => {
    const imp = 0.1 + r() * 3;
    const size = 1 + Math.floor(r() * 3);
    return {
      id: `u${u}`,
      options: Array.from({ length: nOpts }, (_, o) => ({ cost: size * (2 + o) + r() * 0.2, loss: imp * 4 ** -o * (0.5 + r()) })),
    };
  });
}

function bruteForce(units: AllocUnit[], budget: number): number {
  let best = Infinity;
  const rec = (u: number, cost: number, loss: number) => {
    if (cost > budget) return;
    if (u === units.length) {
      best = Math.min(best, loss);
      return;
    }
    for (const o of units[u]!.options) rec(u + 1, cost + o.cost, loss + o.loss);
  };
  rec(0, 0, 0);
  return best;
}

describe('allocate (multiple-choice knapsack on GLPK)', () => {
  it('matches brute force on small instances', async () => {
    for (let seed = 1; seed <= 12; seed++) {
      const units = instance(seed % 3 === 0 ? 11 : 6, 3 + (seed % 2), seed);
      const lo = units.reduce((a, u) => a + Math.min(...u.options.map((o) => o.cost)), 0);
      const hi = units.reduce((a, u) => a + Math.max(...u.options.map((o) => o.cost)), 0);
      const budget = lo + (hi - lo) * (0.15 + 0.06 * seed);
      const res = await allocate(units, budget);
      expect(res.optimal).toBe(true);
      expect(res.cost).toBeLessThanOrEqual(budget);
      expect(res.loss).toBeCloseTo(bruteForce(units, budget), 9);
      expect(res.choice).toHaveLength(units.length);
    }
  });

  it('returns the least-loss options when the budget allows everything', async () => {
    const units = instance(4, 3, 99);
    const res = await allocate(units, 1e9);
    expect(res.choice).toEqual(units.map((u) => u.options.reduce((b, o, i, a) => (o.loss < a[b]!.loss ? i : b), 0)));
  });

  it('refuses an impossible budget with the achievable range', async () => {
    const units = instance(3, 3, 5);
    const min = units.reduce((a, u) => a + Math.min(...u.options.map((o) => o.cost)), 0);
    const err = await allocate(units, min * 0.9, { describeCost: (c) => `${c.toFixed(1)} bits` }).catch((e) => e);
    expect(err).toBeInstanceOf(MoeError);
    expect(err.code).toBe('ImpossibleBudget');
    expect(err.message).toMatch(/below the smallest achievable [\d.]+ bits \(largest [\d.]+ bits\)/);
  });

  it('rejects units without options and non-finite losses', async () => {
    await expect(allocate([{ id: 'a', options: [] }], 1)).rejects.toThrow(/no options/);
    await expect(allocate([{ id: 'a', options: [{ cost: 1, loss: NaN }] }], 1)).rejects.toThrow(/non-finite/);
  });

  it('drops dominated options only', () => {
    const keep = paretoOptions([
      { cost: 2, loss: 5 },
      { cost: 3, loss: 6 },
      { cost: 4, loss: 1 },
      { cost: 1, loss: 9 },
    ]);
    expect(keep).toEqual([3, 0, 2]);
  });
});
