/** The merged expert's router row is the mean of its members' rows. */
import { fixedRows } from '../router-math.js';
import type { RouterRowMethod } from './common.js';

export const routerMean: RouterRowMethod = {
  name: 'mean',
  summary: "mean of the members' router rows",
  needs: 'none',
  rows: (c) => fixedRows(c, c.mean),
};
