/**
 * Grouping: which experts of a layer merge together. Every method returns exactly `n` non-empty groups that
 * partition the layer's experts; group order is by anchor index so the merged layer keeps the original order of
 * its surviving anchors.
 *
 * - msmoe (M-SMoE): the n most frequently routed experts are dominant; every other expert joins the dominant one
 *   whose router logits over calibration tokens are most similar (cosine of logit columns).
 * - hierarchical (HC-SMoE): average-linkage agglomerative clustering of the experts' mean outputs (cosine
 *   distance) down to n clusters; the anchor is the cluster's most frequent member.
 * - saliency (REAM-style): the n experts with the highest REAP saliency are centroids; each centroid takes its
 *   nearest unassigned experts (mean-output cosine; closest pairs first), at most ceil((E - n) / n) each, so no
 *   centroid swallows the layer.
 *
 * Under group-limited routing (DeepSeek-V2 group_limited_greedy, DeepSeek-V3 noaux_tc, GLM-4.5: n_group routing
 * groups of E / n_group consecutive experts, a token choosing among topk_group of them) a merged expert must stay
 * inside one routing group, and every routing group must keep the same count, or n_group / topk_group would no
 * longer describe the merged layer. groupExperts then runs the method inside each routing group on that group's
 * signals (n / n_group merged experts each), so every method keeps its own criterion, only restricted.
 */
import { fail } from '../errors.js';
import type { RoutingRule } from '../model/types.js';
import { getGrouping } from './methods.js';
import { finishGroups } from './similarity.js';
import type { ExpertGroup, GroupingMethod, LayerSignals } from './types.js';

function groupFlat(method: GroupingMethod, sig: LayerSignals, n: number): ExpertGroup[] {
  return getGrouping(method).group(sig, n);
}

/** The signals of experts [from, from + size) alone, renumbered from 0 (one routing group's view of the layer). */
export function sliceSignals(sig: LayerSignals, from: number, size: number): LayerSignals {
  const E = sig.numExperts;
  const H = sig.hidden;
  const S = sig.logitRows;
  const out: LayerSignals = {
    numExperts: size,
    hidden: H,
    count: sig.count.slice(from, from + size),
    saliency: sig.saliency.slice(from, from + size),
    logitRows: S,
  };
  if (sig.meanOutput) out.meanOutput = sig.meanOutput.slice(from * H, (from + size) * H);
  if (sig.logitSample) {
    const cols = new Float32Array(S * size);
    for (let s = 0; s < S; s++) cols.set(sig.logitSample.subarray(s * E + from, s * E + from + size), s * size);
    out.logitSample = cols;
  }
  return out;
}

/**
 * Group a layer's E experts into n groups with `method`. `routingGroups` > 1: the layer's experts form that many
 * routing groups of E / routingGroups consecutive experts, and each is grouped on its own into n / routingGroups
 * (n must be a multiple; checkRoutingGroups states the rule), so no merged expert spans two routing groups.
 */
export function groupExperts(method: GroupingMethod, sig: LayerSignals, n: number, routingGroups = 1): ExpertGroup[] {
  const E = sig.numExperts;
  if (!Number.isInteger(n) || n < 1 || n > E) fail('Usage', `--groups ${n} must be between 1 and the ${E} experts per layer`);
  if (routingGroups <= 1) return groupFlat(method, sig, n);
  if (E % routingGroups !== 0 || n % routingGroups !== 0)
    fail('Usage', `--groups ${n} must be a multiple of the ${routingGroups} routing groups of ${E} experts`);
  const size = E / routingGroups;
  const per = n / routingGroups;
  const groups: ExpertGroup[] = [];
  for (let r = 0; r < routingGroups; r++) {
    const from = r * size;
    for (const g of groupFlat(method, sliceSignals(sig, from, size), per)) {
      groups.push({ anchor: g.anchor + from, members: g.members.map((m) => m + from) });
    }
  }
  return finishGroups(groups);
}

/** The routing group of expert j when E experts form nGroup routing groups. */
export function routingGroupOf(j: number, E: number, nGroup: number): number {
  return Math.floor(j / (E / nGroup));
}

/**
 * Check a partition respects group-limited routing: every group inside one routing group, each routing group
 * holding n / nGroup of the groups, and the groups in routing-group order (the merged layer's expert i belongs to
 * routing group floor(i / (n / nGroup)), as the merged config's n_group says). Returns why not, or undefined.
 */
export function routingGroupProblem(groups: readonly ExpertGroup[], E: number, nGroup: number): string | undefined {
  if (nGroup <= 1) return undefined;
  const n = groups.length;
  if (n % nGroup !== 0) return `${n} merged experts do not split into the ${nGroup} routing groups`;
  const per = n / nGroup;
  for (let i = 0; i < n; i++) {
    const g = groups[i]!;
    const r = routingGroupOf(g.anchor, E, nGroup);
    const bad = g.members.find((m) => routingGroupOf(m, E, nGroup) !== r);
    if (bad !== undefined) return `group of expert ${g.anchor} takes expert ${bad} from another routing group (${nGroup} groups of ${E / nGroup} experts)`;
    if (r !== Math.floor(i / per)) return `routing group ${r} must merge to ${per} experts, in routing-group order`;
  }
  return undefined;
}

/** Check a plan is a partition of 0..E-1 into n non-empty groups (guards hand-written and loaded plans). */
export function checkPartition(groups: readonly ExpertGroup[], E: number, n: number): void {
  if (groups.length !== n) fail('ComputeError', `merge plan has ${groups.length} groups, expected ${n}`);
  const seen = new Uint8Array(E);
  for (const g of groups) {
    if (g.members.length === 0 || g.members[0] !== g.anchor) fail('ComputeError', 'merge plan: a group must list its anchor first');
    for (const m of g.members) {
      if (!Number.isInteger(m) || m < 0 || m >= E || seen[m]) fail('ComputeError', `merge plan: expert ${m} is out of range or in two groups`);
      seen[m] = 1;
    }
  }
  if (seen.some((s) => s === 0)) fail('ComputeError', 'merge plan leaves an expert out');
}

/**
 * The routing groups a merge must respect: n_group when the family limits each token to topk_group of them, else
 * 1. A limit that selects every group (topk_group >= n_group) changes nothing, so those layers merge freely and
 * the merged config drops the groups (n_group 1), which routes identically.
 */
export function mergeRoutingGroups(rule: Pick<RoutingRule, 'groups'>): number {
  const g = rule.groups;
  return g && g.nGroup > 1 && g.topkGroup < g.nGroup ? g.nGroup : 1;
}

/**
 * Merged expert counts that keep group-limited routing valid: multiples of n_group, at least 2 per routing group
 * when groups are ranked by their top-2 scores, enough per group for topk_group groups to supply top-k, at most
 * the input's experts. An empty list when the rule has no effective group limit.
 */
export function validGroupCounts(E: number, rule: Pick<RoutingRule, 'groups' | 'topK'>): number[] {
  const nGroup = mergeRoutingGroups(rule);
  if (nGroup <= 1) return [];
  const g = rule.groups!;
  const minPer = Math.max(g.groupScore === 'top2sum' ? 2 : 1, Math.ceil(rule.topK / g.topkGroup));
  const out: number[] = [];
  for (let per = minPer; per * nGroup <= E; per++) out.push(per * nGroup);
  return out;
}

/** Refuse a merged count the routing groups cannot hold (exit 2), naming the nearest counts that work. */
export function checkGroupCount(n: number, E: number, rule: Pick<RoutingRule, 'groups' | 'topK'>, family: string): void {
  const nGroup = mergeRoutingGroups(rule);
  if (nGroup <= 1) return;
  const valid = validGroupCounts(E, rule);
  if (valid.includes(n)) return;
  const g = rule.groups!;
  const below = valid.filter((v) => v < n).pop();
  const above = valid.find((v) => v > n);
  const nearest = [below, above].filter((v) => v !== undefined);
  const why =
    n % nGroup !== 0
      ? `must be a multiple of n_group ${nGroup}`
      : `leaves ${n / nGroup} per routing group, and ${g.groupScore === 'top2sum' ? 'groups are ranked by their top-2 experts and ' : ''}topk_group ${g.topkGroup} groups must supply top-k ${rule.topK}`;
  fail(
    'Usage',
    `--groups ${n} ${why}: ${family} routes within ${nGroup} groups of ${E / nGroup} experts (topk_group ${g.topkGroup}), and each group merges to the same count; ` +
      (nearest.length ? `nearest valid: ${nearest.join(' or ')}` : `no merged count works for ${E} experts`),
  );
}
