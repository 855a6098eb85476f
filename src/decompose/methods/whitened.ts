/**
 * SVD-LLM's whitened SVD: factorise W L with L L^T the Gram of the expert's routed inputs, so the truncation error
 * is the activation-space error, exactly.
 */
import { factorizeLinear, factorRank } from '../factorize.js';
import { ladderTop } from '../unitshape.js';
import { type DecomposeModeMethod, factorisationParts, perExpertShapes, workspaceBytes } from './common.js';

export const whitened: DecomposeModeMethod = {
  name: 'whitened',
  summary: "SVD of W L with L L^T the Gram of the expert's routed inputs: the truncation error is the activation-space error, exactly",
  paper: 'SVD-LLM, https://arxiv.org/abs/2403.07378',
  needs: 'forward',
  shapes: (c) => perExpertShapes(c, false, factorRank(c.m, c.n, ladderTop(c.m + c.n, c.m * c.n, 0, c.opts.ratio), c.opts)),
  *score(c) {
    const { m, n } = c;
    for (let j = 0; j < c.E; j++) {
      const W = c.W64(j);
      const G = c.measureG(j);
      const fact = factorizeLinear(W, m, n, G, c.opts.engine, ladderTop(m + n, m * n, 0, c.opts.ratio), c.fo);
      yield {
        ...c.units[j]!,
        tokens: c.tokens && [c.tokens[j]!],
        weights: [W],
        grams: G && [G],
        fact,
        tail: fact.tail,
        maxRank: fact.maxRank,
        ridge: fact.ridge,
        weight: 1,
      };
    }
  },
  // the weights, the whitened matrix and its [n, n] whitening factor
  memory: (c) => factorisationParts(c.units, (u) => workspaceBytes(u, u.m * u.n, [u.m, u.n], u.n * u.n)),
};
