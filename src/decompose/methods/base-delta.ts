/**
 * D²-MoE: a frequency-weighted base expert per layer x projection (kept dense) plus each expert's delta from it,
 * factorised whitened by the expert's Gram.
 */
import { fail } from '../../errors.js';
import { factorizeLinear, factorRank, frequencyWeightedBase } from '../factorize.js';
import { ladderTop } from '../unitshape.js';
import { type DecomposeModeMethod, factorisationParts, perExpertShapes, workspaceBytes } from './common.js';

export const baseDelta: DecomposeModeMethod = {
  name: 'base-delta',
  summary: 'frequency-weighted base expert per layer x projection (dense) plus whitened low-rank deltas per expert',
  paper: 'D²-MoE',
  needs: 'forward',
  shapes: (c) => perExpertShapes(c, true, factorRank(c.m, c.n, ladderTop(c.m + c.n, c.m * c.n, (c.m * c.n) / c.E, c.opts.ratio), c.opts)),
  *score(c) {
    const { m, n, E } = c;
    const base = frequencyWeightedBase(
      c.experts.map((w) => w[c.proj].w),
      c.tokens ?? new Array<number>(E).fill(1),
      m * n,
    );
    for (let j = 0; j < E; j++) {
      const W = c.W64(j);
      const G = c.measureG(j);
      const delta = W.map((v, i) => v - base[i]!);
      const fact = factorizeLinear(delta, m, n, G, c.opts.engine, ladderTop(m + n, m * n, (m * n) / E, c.opts.ratio), c.fo);
      yield {
        ...c.units[j]!,
        tokens: c.tokens && [c.tokens[j]!],
        weights: [W],
        grams: G && [G],
        base,
        fact,
        tail: fact.tail,
        maxRank: fact.maxRank,
        ridge: fact.ridge,
      };
    }
  },
  // weight, base and delta, the whitened delta and its whitening factor
  memory: (c) => factorisationParts(c.units, (u) => workspaceBytes(u, 3 * u.m * u.n, [u.m, u.n], u.n * u.n)),
  check({ ratio, E }) {
    if (ratio * E < 1)
      fail(
        'ImpossibleBudget',
        `--ratio ${ratio} is below what the base experts alone need in base-delta mode (one dense expert per layer of ${E}): use a ratio above ${(1 / E).toFixed(3)}`,
      );
  },
};
