/**
 * From scores to a pruning plan: which experts every MoE layer keeps. Checks that the request can be served by
 * the family's stock loaders before any weight is read: the same count in every layer, at least top-k experts,
 * and under group-limited routing (DeepSeek n_group / topk_group) the same count in every group.
 */
import { fail } from '../errors.js';
import type { ModelView, RoutingRule } from '../model/types.js';

export interface GroupPlan {
  /** group keys of the pruned model */
  nGroup: number;
  topkGroup: number;
  /** experts kept in each group (kept sets must respect it) */
  perGroup: number;
  /** group size of the unpruned model */
  groupSize: number;
}

export interface LayerPlan {
  layer: number;
  /** kept experts, ascending original indices; the pruned model's expert i is kept[i] */
  kept: number[];
  removed: number[];
  /** per-expert score the choice was based on (higher = more important) */
  scores: number[];
}

export interface PrunePlan {
  numExperts: number;
  keep: number;
  topK: number;
  groups?: GroupPlan;
  layers: LayerPlan[];
}

/** --ratio R keeps round(R x experts) per layer. */
export function keepFromRatio(ratio: number, numExperts: number): number {
  if (!Number.isFinite(ratio) || ratio <= 0 || ratio > 1) fail('Usage', `--ratio must be in (0, 1] (fraction of experts kept), got ${ratio}`);
  return Math.round(ratio * numExperts);
}

/**
 * Validate a keep count against the model and work out the group structure of the pruned model. With
 * group-limited routing the kept count must split evenly over the groups; when the group limit is a no-op
 * (topk_group == n_group) any split works and the groups collapse to one, which routes identically.
 */
export function checkKeep(view: ModelView, keep: number): { groups?: GroupPlan } {
  const E = view.dims.numExperts;
  const k = view.routing.topK;
  if (!Number.isInteger(keep)) fail('Usage', `--keep must be a whole number of experts, got ${keep}`);
  if (keep > E) fail('Usage', `cannot keep ${keep} experts: the model has ${E} per layer`);
  if (keep < 1) fail('Usage', `must keep at least 1 expert per layer, got ${keep}`);
  if (keep < k) fail('Usage', `cannot keep ${keep} experts: fewer than the ${k} each token is routed to (num_experts_per_tok); keep at least ${k}`);
  const g = view.routing.groups;
  if (!g || g.nGroup <= 1) return {};
  const groupSize = E / g.nGroup;
  if (keep % g.nGroup === 0) {
    const perGroup = keep / g.nGroup;
    if (g.groupScore === 'top2sum' && perGroup < 2) {
      fail(
        'Usage',
        `cannot keep ${keep} experts: group-limited routing scores each of the ${g.nGroup} groups by its top-2 experts, so every group needs at least 2 (keep at least ${2 * g.nGroup})`,
      );
    }
    if (perGroup * g.topkGroup < k) {
      fail(
        'Usage',
        `cannot keep ${keep} experts: with ${perGroup} per group and topk_group ${g.topkGroup} a token can reach only ${perGroup * g.topkGroup} experts, fewer than top-k ${k}`,
      );
    }
    return { groups: { nGroup: g.nGroup, topkGroup: g.topkGroup, perGroup, groupSize } };
  }
  if (g.topkGroup >= g.nGroup) {
    return { groups: { nGroup: 1, topkGroup: 1, perGroup: keep, groupSize: E } };
  }
  return fail(
    'Usage',
    `cannot keep ${keep} experts: group-limited routing (n_group ${g.nGroup}, topk_group ${g.topkGroup}) needs the same count in every group, so keep a multiple of ${g.nGroup}`,
  );
}

/** Highest scores first; ties go to the lower index so plans are deterministic. */
function topIndices(scores: ArrayLike<number>, from: number[], n: number): number[] {
  return [...from].sort((a, b) => scores[b] - scores[a] || a - b).slice(0, n);
}

/** Keep the `keep` highest-scoring experts (per group when groups constrain the choice). */
export function keptFromScores(scores: ArrayLike<number>, keep: number, groups?: GroupPlan): number[] {
  const E = scores.length;
  for (let j = 0; j < E; j++) if (Number.isNaN(scores[j])) fail('NonFinite', `expert ${j} has a NaN score (calibration statistics are corrupt)`);
  let kept: number[];
  if (groups && groups.groupSize < E) {
    kept = [];
    for (let g = 0; g < E / groups.groupSize; g++) {
      const members = Array.from({ length: groups.groupSize }, (_, i) => g * groups.groupSize + i);
      kept.push(...topIndices(scores, members, groups.perGroup));
    }
  } else {
    kept = topIndices(
      scores,
      Array.from({ length: E }, (_, j) => j),
      keep,
    );
  }
  return kept.sort((a, b) => a - b);
}

export function layerPlan(layer: number, scores: ArrayLike<number>, kept: number[]): LayerPlan {
  const set = new Set(kept);
  const removed: number[] = [];
  for (let j = 0; j < scores.length; j++) if (!set.has(j)) removed.push(j);
  return { layer, kept: [...kept].sort((a, b) => a - b), removed, scores: Array.from(scores) };
}

/** The routing rule of the pruned model (groups rewritten when they collapse). */
export function prunedRule(rule: RoutingRule, groups?: GroupPlan): RoutingRule {
  if (!rule.groups || !groups) return rule;
  return { ...rule, groups: groups.nGroup <= 1 ? undefined : { ...rule.groups, nGroup: groups.nGroup, topkGroup: groups.topkGroup } };
}
