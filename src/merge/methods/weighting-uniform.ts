/** Every member weighs the same: the baseline that needs no statistics. */
import type { Weighting } from './common.js';

export const weightingUniform: Weighting = {
  name: 'uniform',
  summary: 'equal weights',
  needs: 'none',
  weight: () => 1,
};
