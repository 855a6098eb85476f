/** Plain truncated SVD of each expert linear: the truncation error is the weight-space error. */
import { factorizeLinear, factorRank } from '../factorize.js';
import { ladderTop } from '../unitshape.js';
import { type DecomposeModeMethod, factorisationParts, perExpertShapes, workspaceBytes } from './common.js';

export const svd: DecomposeModeMethod = {
  name: 'svd',
  summary: 'plain truncated SVD of each expert linear (weight-space error)',
  needs: 'none',
  shapes: (c) => perExpertShapes(c, false, factorRank(c.m, c.n, ladderTop(c.m + c.n, c.m * c.n, 0, c.opts.ratio), c.opts)),
  *score(c) {
    const { m, n } = c;
    for (let j = 0; j < c.E; j++) {
      const W = c.W64(j);
      const G = c.measureG(j);
      const fact = factorizeLinear(W, m, n, undefined, c.opts.engine, ladderTop(m + n, m * n, 0, c.opts.ratio), c.fo);
      yield {
        ...c.units[j]!,
        tokens: c.tokens && [c.tokens[j]!],
        weights: [W],
        grams: G && [G],
        fact,
        tail: fact.tail,
        maxRank: fact.maxRank,
        ridge: fact.ridge,
        weight: c.freqWeight(j),
      };
    }
  },
  // the weights and the matrix decomposed, no whitening factor
  memory: (c) => factorisationParts(c.units, (u) => workspaceBytes(u, u.m * u.n, [u.m, u.n], 0)),
};
