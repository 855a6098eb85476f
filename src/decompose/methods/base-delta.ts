/**
 * D²-MoE: a frequency-weighted base expert per layer x projection (kept dense) plus each expert's delta from it,
 * factorised whitened by the expert's Gram.
 */
import { fail } from '../../errors.js';
import { factorizeLinear, factorRank, frequencyWeightedBase } from '../factorize.js';
import { ladderTop } from '../unitshape.js';
import { type DecomposeModeMethod, factorisationParts, factorOptions, perExpertShapes, workspaceBytes } from './common.js';

export const baseDelta: DecomposeModeMethod = {
  name: 'base-delta',
  summary: 'frequency-weighted base expert per layer x projection (dense) plus whitened low-rank deltas per expert',
  paper: 'D²-MoE',
  needs: 'forward',
  shapes: (c) => perExpertShapes(c, true, factorRank(c.m, c.n, ladderTop(c.m + c.n, c.m * c.n, (c.m * c.n) / c.E, c.opts.ratio), c.opts)),
  *units(c) {
    const { m, n, E } = c;
    // the base is computed once per layer x projection and shared (read-only) by its experts' units
    const base = frequencyWeightedBase(
      c.experts.map((w) => w[c.proj].w),
      c.tokens ?? new Array<number>(E).fill(1),
      m * n,
    );
    for (let j = 0; j < E; j++) {
      const G = c.measureG(j);
      yield { ...c.units[j]!, tokens: c.tokens && [c.tokens[j]!], weights: [c.W64(j)], grams: G && [G], base };
    }
  },
  factorize(u, opts) {
    const { m, n } = u;
    const W = u.weights[0]!;
    const base = u.base!;
    const delta = W.map((v, i) => v - base[i]!);
    // u.fixed is the base's share m n / E (perExpertShapes)
    return factorizeLinear(delta, m, n, u.grams?.[0], opts.engine, ladderTop(m + n, m * n, u.fixed, opts.ratio), factorOptions(opts));
  },
  // weight, base and delta, the whitened delta and its whitening factor
  memory: (c) => factorisationParts(c.units, (u) => workspaceBytes(u, 3 * u.m * u.n, [u.m, u.n], u.n * u.n), c.threads),
  check({ ratio, E }) {
    if (ratio * E < 1)
      fail(
        'ImpossibleBudget',
        `--ratio ${ratio} is below what the base experts alone need in base-delta mode (one dense expert per layer of ${E}): use a ratio above ${(1 / E).toFixed(3)}`,
      );
  },
};
