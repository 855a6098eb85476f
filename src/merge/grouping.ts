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
import type { ExpertGroup, GroupingMethod, LayerSignals } from './types.js';

/** Indices sorted by value descending, ties by index (deterministic plans). */
export function rankDescending(v: ArrayLike<number>): number[] {
  return Array.from({ length: v.length }, (_, i) => i).sort((a, b) => v[b] - v[a] || a - b);
}

/** Cosine similarity between rows a and b of a row-major [rows, dim] matrix; 0 when either row is zero. */
function cosineRows(m: ArrayLike<number>, dim: number, a: number, b: number): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let d = 0; d < dim; d++) {
    const x = m[a * dim + d];
    const y = m[b * dim + d];
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  return na > 0 && nb > 0 ? dot / Math.sqrt(na * nb) : 0;
}

/** [E, E] cosine similarity of the experts' router-logit columns over the sampled tokens. */
export function logitSimilarity(sig: LayerSignals): Float64Array {
  const E = sig.numExperts;
  const S = sig.logitRows;
  if (!sig.logitSample || S === 0) fail('InvalidStats', 'grouping msmoe needs router-logit samples in the calibration statistics');
  // transpose to [E, S] so each expert's logits over tokens is one row
  const cols = new Float64Array(E * S);
  for (let s = 0; s < S; s++) for (let e = 0; e < E; e++) cols[e * S + s] = sig.logitSample[s * E + e];
  const sim = new Float64Array(E * E);
  for (let a = 0; a < E; a++) for (let b = 0; b < E; b++) sim[a * E + b] = cosineRows(cols, S, a, b);
  return sim;
}

/** [E, E] cosine similarity of the experts' mean outputs. */
export function outputSimilarity(sig: LayerSignals, method: GroupingMethod): Float64Array {
  const E = sig.numExperts;
  if (!sig.meanOutput) fail('InvalidStats', `grouping ${method} needs mean expert outputs in the calibration statistics`);
  const sim = new Float64Array(E * E);
  for (let a = 0; a < E; a++) for (let b = 0; b < E; b++) sim[a * E + b] = a === b ? 1 : cosineRows(sig.meanOutput, sig.hidden, a, b);
  return sim;
}

function finish(groups: ExpertGroup[]): ExpertGroup[] {
  for (const g of groups) g.members = [g.anchor, ...g.members.filter((m) => m !== g.anchor).sort((a, b) => a - b)];
  return groups.sort((a, b) => a.anchor - b.anchor);
}

export function groupMsmoe(sig: LayerSignals, n: number): ExpertGroup[] {
  const E = sig.numExperts;
  const sim = logitSimilarity(sig);
  const dominant = rankDescending(sig.count).slice(0, n);
  const groups = dominant.map((anchor) => ({ anchor, members: [anchor] }));
  for (let e = 0; e < E; e++) {
    if (dominant.includes(e)) continue;
    let best = 0;
    for (let g = 1; g < groups.length; g++) if (sim[e * E + groups[g].anchor] > sim[e * E + groups[best].anchor]) best = g;
    groups[best].members.push(e);
  }
  return finish(groups);
}

export function groupHierarchical(sig: LayerSignals, n: number): ExpertGroup[] {
  const E = sig.numExperts;
  const sim = outputSimilarity(sig, 'hierarchical');
  let clusters: number[][] = Array.from({ length: E }, (_, i) => [i]);
  const dist = (a: number[], b: number[]): number => {
    let s = 0;
    for (const i of a) for (const j of b) s += 1 - sim[i * E + j];
    return s / (a.length * b.length);
  };
  while (clusters.length > n) {
    let bi = 0;
    let bj = 1;
    let bd = Infinity;
    for (let i = 0; i < clusters.length; i++) {
      for (let j = i + 1; j < clusters.length; j++) {
        const d = dist(clusters[i], clusters[j]);
        if (d < bd - 1e-12) {
          bd = d;
          bi = i;
          bj = j;
        }
      }
    }
    clusters[bi] = [...clusters[bi], ...clusters[bj]];
    clusters = clusters.filter((_, k) => k !== bj);
  }
  return finish(
    clusters.map((members) => ({
      anchor: members.reduce((a, b) => (sig.count[b] > sig.count[a] || (sig.count[b] === sig.count[a] && b < a) ? b : a)),
      members,
    })),
  );
}

export function groupSaliency(sig: LayerSignals, n: number): ExpertGroup[] {
  const E = sig.numExperts;
  const sim = outputSimilarity(sig, 'saliency');
  const centroids = rankDescending(sig.saliency).slice(0, n);
  const cap = Math.ceil((E - n) / n);
  const groups = centroids.map((anchor) => ({ anchor, members: [anchor] }));
  // closest (centroid, expert) pairs first, so a centroid early in saliency order cannot take another's twin
  const pairs: Array<[number, number]> = [];
  for (let g = 0; g < n; g++) for (let e = 0; e < E; e++) if (!centroids.includes(e)) pairs.push([g, e]);
  pairs.sort((p, q) => sim[groups[q[0]].anchor * E + q[1]] - sim[groups[p[0]].anchor * E + p[1]] || p[0] - q[0] || p[1] - q[1]);
  const assigned = new Set<number>();
  for (const [g, e] of pairs) {
    if (assigned.has(e) || groups[g].members.length > cap) continue;
    groups[g].members.push(e);
    assigned.add(e);
  }
  return finish(groups);
}

function groupFlat(method: GroupingMethod, sig: LayerSignals, n: number): ExpertGroup[] {
  switch (method) {
    case 'msmoe':
      return groupMsmoe(sig, n);
    case 'hierarchical':
      return groupHierarchical(sig, n);
    case 'saliency':
      return groupSaliency(sig, n);
  }
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
  return finish(groups);
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
