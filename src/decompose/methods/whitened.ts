/**
 * SVD-LLM's whitened SVD: factorise W L with L L^T the Gram of the expert's routed inputs, so the truncation error
 * is the activation-space error, exactly.
 */
import { factorRank } from '../factorize.js';
import { ladderTop } from '../unitshape.js';
import { type DecomposeModeMethod, factorisationParts, perExpertFactorize, perExpertInputs, perExpertShapes, workspaceBytes } from './common.js';

export const whitened: DecomposeModeMethod = {
  name: 'whitened',
  summary: "SVD of W L with L L^T the Gram of the expert's routed inputs: the truncation error is the activation-space error, exactly",
  paper: 'SVD-LLM, https://arxiv.org/abs/2403.07378',
  needs: 'forward',
  shapes: (c) => perExpertShapes(c, false, factorRank(c.m, c.n, ladderTop(c.m + c.n, c.m * c.n, 0, c.opts.ratio), c.opts)),
  units: (c) => perExpertInputs(c, () => 1),
  factorize: (u, opts) => perExpertFactorize(u, opts, true),
  // the weights, the whitened matrix and its [n, n] whitening factor
  memory: (c) => factorisationParts(c.units, (u) => workspaceBytes(u, u.m * u.n, [u.m, u.n], u.n * u.n), c.threads),
};
