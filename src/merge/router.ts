/**
 * The router after merging: one row per group. A linear row cannot reproduce the group-summed probabilities of
 * the old router exactly, so three options:
 *
 * - anchor: the anchor's own row (REAM keeps the centroid's row);
 * - mean: the mean of the members' rows;
 * - fit: rows (and bias, when the router has one) fitted on calibration hidden states so the new scores match
 *   the group-summed old ones: softmax families minimise KL(P_group || softmax(x R^T)), sigmoid families the
 *   binary KL against min(1, summed sigmoid). Adam on float64 typed arrays, started from the better of anchor
 *   and mean and keeping the best iterate, so the fit is never worse than its start on the tokens it sees.
 *
 * The runtime then applies the family's own top-k to the new scores; the fit targets the full distribution,
 * which is what top-k selection and renormalisation read from.
 */

import { fail } from '../errors.js';
import type { RoutingRule } from '../model/types.js';
import { getRouter } from './methods.js';
import { rowsFrom, type RouterFitData, type RouterFitOptions, type RouterResult, type RouterWeights } from './router-math.js';
import type { ExpertGroup, RouterMethod } from './types.js';

export { groupTargets, routerKL, type RouterFitData, type RouterFitOptions, type RouterResult, type RouterWeights } from './router-math.js';

/** The merged layer's router rows by `method` (its file: src/merge/methods/router-<name>.ts). */
export function mergeRouter(
  method: RouterMethod,
  router: RouterWeights,
  groups: readonly ExpertGroup[],
  H: number,
  E: number,
  rule: Pick<RoutingRule, 'score'>,
  data?: RouterFitData,
  opts: RouterFitOptions = {},
): RouterResult {
  if (router.w.length !== E * H) fail('ComputeError', `router has ${router.w.length} weights, expected ${E}x${H}`);
  const mean = rowsFrom(router, groups, H, 'mean');
  return getRouter(method).rows({ router, groups, H, E, rule, ...(data ? { data } : {}), opts, mean });
}
