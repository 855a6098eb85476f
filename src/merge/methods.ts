/**
 * The choices of `moe merge`, one registered unit each (src/merge/methods/<kind>-<name>.ts: its descriptor and the
 * operation of its kind): how experts are grouped, how a group's members are aligned onto its anchor, how they are
 * weighted in the average, and where the group's router row comes from. Each says what data it needs; the engine
 * derives the checks from that (a --stats artifact holds no hidden states, so the choices that need a sequential
 * pass refuse it). The names are the option values and recipe values; a new choice is one file there plus its
 * tests, listed below.
 */
import { fail } from '../errors.js';
import type { MethodDescriptor, MethodFamily } from '../pipeline/descriptor.js';
import { alignActivations } from './methods/align-activations.js';
import { alignNone } from './methods/align-none.js';
import { alignWeights } from './methods/align-weights.js';
import type { Alignment, GroupingRule, RouterRowMethod, Weighting } from './methods/common.js';
import { groupingHierarchical } from './methods/grouping-hierarchical.js';
import { groupingMsmoe } from './methods/grouping-msmoe.js';
import { groupingSaliency } from './methods/grouping-saliency.js';
import { routerAnchor } from './methods/router-anchor.js';
import { routerFit } from './methods/router-fit.js';
import { routerMean } from './methods/router-mean.js';
import { weightingFrequency } from './methods/weighting-frequency.js';
import { weightingSaliency } from './methods/weighting-saliency.js';
import { weightingUniform } from './methods/weighting-uniform.js';

export type { Alignment, GroupingRule, GroupTokens, MergeMethod, RouterRowMethod, Weighting } from './methods/common.js';

export const GROUPINGS: readonly GroupingRule[] = [groupingMsmoe, groupingHierarchical, groupingSaliency];
export const ALIGNS: readonly Alignment[] = [alignNone, alignWeights, alignActivations];
export const WEIGHTINGS: readonly Weighting[] = [weightingFrequency, weightingSaliency, weightingUniform];
export const ROUTERS: readonly RouterRowMethod[] = [routerMean, routerAnchor, routerFit];

/** A kind's names, in registry order: the option's choices and recipe values. */
export const methodNames = <T extends string>(list: readonly { name: T }[]): [T, ...T[]] => list.map((m) => m.name) as [T, ...T[]];

export const GROUPING_METHODS = methodNames(GROUPINGS);
export const ALIGN_METHODS = methodNames(ALIGNS);
export const WEIGHTING_METHODS = methodNames(WEIGHTINGS);
export const ROUTER_METHODS = methodNames(ROUTERS);

export const MERGE_METHODS: readonly MethodFamily[] = [
  { option: '--grouping', title: 'Grouping', methods: GROUPINGS },
  { option: '--align', title: 'Alignment', methods: ALIGNS },
  { option: '--weighting', title: 'Weighting', methods: WEIGHTINGS },
  { option: '--router', title: 'Router rows', methods: ROUTERS },
];

export const find = <T extends MethodDescriptor>(list: readonly T[], name: string): T | undefined => list.find((m) => m.name === name);

function get<T extends MethodDescriptor>(list: readonly T[], option: string, name: string): T {
  const m = find(list, name);
  if (!m) fail('Usage', `unknown ${option} '${name}' (choose one of: ${list.map((x) => x.name).join(', ')})`);
  return m;
}

export const getGrouping = (name: string): GroupingRule => get(GROUPINGS, '--grouping', name);
export const getAlign = (name: string): Alignment => get(ALIGNS, '--align', name);
export const getWeighting = (name: string): Weighting => get(WEIGHTINGS, '--weighting', name);
export const getRouter = (name: string): RouterRowMethod => get(ROUTERS, '--router', name);

/** A choice computed from calibration hidden states: a --stats artifact cannot make it, a plan must carry its result. */
export const fromHiddenStates = (m: MethodDescriptor): boolean => m.needs === 'sequential';
