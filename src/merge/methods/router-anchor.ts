/** The merged expert keeps its anchor's router row (REAM keeps the centroid's). */
import { fixedRows, rowsFrom } from '../router-math.js';
import type { RouterRowMethod } from './common.js';

export const routerAnchor: RouterRowMethod = {
  name: 'anchor',
  summary: "the anchor's row",
  paper: 'REAM',
  needs: 'none',
  rows: (c) => fixedRows(c, rowsFrom(c.router, c.groups, c.H, 'anchor')),
};
