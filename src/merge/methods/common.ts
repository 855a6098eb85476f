/**
 * What each kind of `moe merge` choice is: a method descriptor (name, paper, data need, memory part) with the one
 * operation its kind performs. The pipeline calls these through the registry (src/merge/methods.ts), never by name.
 */
import type { ActivationSpec } from '../../model/types.js';
import type { MethodDescriptor } from '../../pipeline/descriptor.js';
import type { SwiGLUWeights } from '../../runtime/api.js';
import type { RouterResult, RouterRowsInput } from '../router-math.js';
import type { AlignMethod, ExpertGroup, GroupingMethod, LayerSignals, MergeMemoryContext, RouterMethod, WeightingMethod } from '../types.js';

export type MergeMethod<T extends string> = MethodDescriptor<MergeMemoryContext> & {
  name: T;
  /**
   * needs 'sequential': what the method computes from calibration hidden states, named when a plan made from
   * --stats (which holds none) is given with it
   */
  fromHiddenStates?: string;
  /** the options the method reads besides its name: recorded in the plan settings (a saved plan is refused under others) */
  reads?: readonly ('alignTokens' | 'fitSteps' | 'fitTokens')[];
};

/** --grouping: a partition of a layer's E experts into n non-empty groups (finishGroups order). */
export interface GroupingRule extends MergeMethod<GroupingMethod> {
  group(sig: LayerSignals, n: number): ExpertGroup[];
}

/** The calibration tokens routed to a group, gathered on first use (at most --align-tokens). */
export type GroupTokens = () => { x: Float32Array; T: number };

/**
 * --align: the similarity of a member's intermediate units to the anchor's, which a linear assignment turns into
 * the member's permutation; none: members are averaged as stored (no permutation, nothing in the plan).
 */
export interface Alignment extends MergeMethod<AlignMethod> {
  similarity?(anchor: SwiGLUWeights, member: SwiGLUWeights, tokens: GroupTokens, activation?: ActivationSpec): Float64Array;
}

/** --weighting: a member's unnormalised weight in its group's average (non-negative, finite). */
export interface Weighting extends MergeMethod<WeightingMethod> {
  weight(sig: Pick<LayerSignals, 'count' | 'saliency'>, expert: number): number;
}

/** --router: the merged layer's router rows, one per group. */
export interface RouterRowMethod extends MergeMethod<RouterMethod> {
  rows(c: RouterRowsInput): RouterResult;
}
