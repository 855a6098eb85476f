/**
 * Vocabulary of `moe merge`: how experts are grouped, aligned, weighted and routed after merging, and the plan and
 * report those choices produce. Each layer of N_in experts becomes N groups; a group's members merge into one
 * expert and one router row.
 */

/**
 * The names of each kind of choice: one registered unit each in src/merge/methods/<kind>-<name>.ts, listed in the
 * registry (src/merge/methods.ts), whose lists are the option values; a name here without a unit does not compile.
 */
export type GroupingMethod = 'msmoe' | 'hierarchical' | 'saliency';
export type AlignMethod = 'none' | 'weights' | 'activations';
export type WeightingMethod = 'frequency' | 'saliency' | 'uniform';
export type RouterMethod = 'anchor' | 'mean' | 'fit';

/** What a merge method's memory estimate sees (src/merge/memory.ts): the phase, the shapes, the token counts. */
export interface MergeMemoryContext {
  /** the sequential forward pass (--calib), or the write */
  phase: 'pass' | 'write';
  hidden: number;
  intermediate: number;
  experts: number;
  groups: number;
  /** one expert's weights in float32 */
  expertBytes: number;
  /** calibration tokens of the pass (0 without one) */
  tokens: number;
  alignTokens: number;
  fitTokens: number;
  /** the plan leaves weight alignment to the write (a group of several members without permutations) */
  alignAtWrite: boolean;
}

/** One group of experts that merge into one. `members[0]` is the anchor (its hidden units are the reference order). */
export interface ExpertGroup {
  anchor: number;
  members: number[];
}

/**
 * What grouping and weighting read about one layer's experts. All fields come from calibration statistics
 * (src/calibrate/types.ts LayerStats) turned into means.
 */
export interface LayerSignals {
  numExperts: number;
  hidden: number;
  /** [E] tokens routed to each expert */
  count: Float64Array;
  /** [E] REAP saliency: mean over routed tokens of g_j(x) * ||f_j(x)|| (0 for an expert never routed) */
  saliency: Float64Array;
  /** [E, H] mean expert output over its routed tokens (zeros for an expert never routed) */
  meanOutput?: Float64Array;
  /** [S, E] router logits of S calibration tokens */
  logitSample?: Float32Array;
  logitRows: number;
}

/** Defaults of the data-driven steps' options (--align-tokens, --fit-steps, --fit-tokens). */
export const MERGE_OPTION_DEFAULTS = { alignTokens: 2048, fitSteps: 300, fitTokens: 4096 } as const;

export interface MergeChoices {
  groups: number;
  grouping: GroupingMethod;
  align: AlignMethod;
  weighting: WeightingMethod;
  router: RouterMethod;
}

export interface GroupReport {
  anchor: number;
  members: number[];
  /** normalised merge weight of each member, same order as members */
  weights: number[];
  /** per non-anchor member: mean matched similarity per hidden unit before / after alignment (null without alignment) */
  alignment: Array<{ member: number; before: number; after: number } | null>;
}

export interface LayerReport {
  layer: number;
  groups: GroupReport[];
  /** --drop auto: what the layer became and the output error of each candidate (src/merge/decide.ts) */
  decision?: DecisionReport;
  router: {
    method: RouterMethod;
    /** mean KL(group-summed old scores || new scores) on calibration tokens: of the chosen rows and of mean rows */
    kl?: number;
    klMeanRows?: number;
    tokens?: number;
    steps?: number;
  };
}

/** --drop auto (src/merge/decide.ts): what a layer became, and the output error of each candidate */
export type LayerChoice = 'merge' | 'merge-drop' | 'prune-reap' | 'prune-frequency';

/** What one group became: strength 0 = dropped to one member, 1 = merged as planned; row: whose router row. */
export interface GroupDecision {
  strength: number;
  row: 'planned' | 'anchor';
}

export interface DecisionReport {
  /** what the layer became */
  choice: LayerChoice;
  /** relative output error of the chosen layer and of each candidate on the sample */
  error: number;
  errors: { merge: number; mergeDrop: number; reap: number; frequency: number };
  /** experts whose weights left the layer (weight 0 in their group): dropped rather than merged */
  dropped: number[];
  /** merge and merge-drop: per group, the strength and router row taken */
  groups?: GroupDecision[];
  tokens: number;
}
