/** Plain truncated SVD of each expert linear: the truncation error is the weight-space error. */
import { factorRank } from '../factorize.js';
import { ladderTop } from '../unitshape.js';
import { type DecomposeModeMethod, factorisationParts, perExpertFactorize, perExpertInputs, perExpertShapes, workspaceBytes } from './common.js';

export const svd: DecomposeModeMethod = {
  name: 'svd',
  summary: 'plain truncated SVD of each expert linear (weight-space error)',
  needs: 'none',
  shapes: (c) => perExpertShapes(c, false, factorRank(c.m, c.n, ladderTop(c.m + c.n, c.m * c.n, 0, c.opts.ratio), c.opts)),
  units: (c) => perExpertInputs(c, (j) => c.freqWeight(j)),
  factorize: (u, opts) => perExpertFactorize(u, opts, false),
  // the weights and the matrix decomposed, no whitening factor
  memory: (c) => factorisationParts(c.units, (u) => workspaceBytes(u, u.m * u.n, [u.m, u.n], 0), c.threads),
};
