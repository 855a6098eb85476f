/**
 * `--drop auto`'s whole-model choice: the merge is planned several ways on the calibration windows (for each
 * candidate grouping, `choiceGroupings`: the per-layer decision of decide.ts and the planned merge with every group
 * merged; then REAP pruning exactly as `moe prune --method reap` does it on the same windows), each candidate
 * model's mean next-token NLL on those windows is measured in the pass that plans it, and the lowest is written.
 *
 * Why: the per-layer decision minimises each MoE layer's own output error, which weighs tokens by the norm of the
 * block's output and ignores what later layers and the head make of the difference; on the fixtures it prefers kept
 * sets that do worse in perplexity (docs/merge.md, "Quality at equal size"). NLL through the head is what
 * perplexity measures. REAP pruning and the planned merge are candidates, so the written model is never worse than
 * either on this objective, by construction. Every grouping's merges are candidates by default (`choiceGroupings`);
 * at 4096 calibration tokens that set wrote a merge worse than REAP on held-out text in one cell (candidates that
 * differ by less than the calibration text's noise make the lowest NLL a worse pick on other text), at the default
 * 8192 in none (docs/merge.md).
 *
 * A held-back split (planning on 3/4 of the windows, choosing on the rest) was measured and rejected: with 4096
 * calibration tokens, 1024 held-back tokens rank candidates that differ by 1% in perplexity no better than the
 * fitting tokens do, and every candidate is planned on fewer tokens (docs/merge.md has the numbers).
 *
 * Cost: one sequential pass per merge candidate (two per grouping; the planned ones skip the per-layer decision) plus, for REAP, the
 * calibration-statistics pass and one masked pass; every pass also runs the head over the calibration tokens. Memory is one pass at a time plus the
 * candidates' plans (groups and router rows, no expert weights).
 */
import { collectStats } from '../calibrate/collect.js';
import type { CalibStats } from '../calibrate/types.js';
import type { Model } from '../model/open.js';
import { reap } from '../prune/methods/reap.js';
import { keptFromScores } from '../prune/plan.js';
import { maskedEdit } from '../runtime/mask.js';
import { streamModel } from '../runtime/stream.js';
import { GROUPING_METHODS } from './methods.js';
import type { GroupingMethod } from './types.js';

export const CANDIDATES = ['merge', 'planned', 'prune-reap'] as const;
export type Candidate = (typeof CANDIDATES)[number];

/**
 * The groupings whose merges are candidates (each twice: decided per layer, and every group merged): the ones given
 * (--choose-groupings), else every registered grouping, the configured --grouping first (ties go to it). Why all
 * of them: they fail in different places. msmoe (frequency anchors, router-logit similarity) is the only one that
 * wins at uneven 8/16; saliency (REAP's kept experts as centroids, the removed ones folded in: the merge closest to
 * the pruning candidate) is what makes balanced 4/8 strictly better than REAP; hierarchical's planned merge is the
 * best at balanced 6/8. On the two trained fixtures at the default 8192 calibration tokens this set has the lowest
 * score of every set measured (1.384; msmoe + saliency 1.388, msmoe alone 1.401, which missed one balanced cell)
 * and is at or below REAP pruning in every cell (docs/merge.md, "Quality at equal size").
 */
export function choiceGroupings(configured: GroupingMethod, given?: readonly GroupingMethod[]): GroupingMethod[] {
  return [...new Set(given?.length ? given : [configured, ...GROUPING_METHODS])];
}

export interface CandidateScore {
  /** merge: decided per layer (decide.ts); planned: every group merged; prune-reap: `moe prune --method reap` */
  candidate: Candidate;
  /** the grouping a merge candidate was planned with */
  grouping?: GroupingMethod;
  /** mean next-token NLL over the calibration windows' scored positions (nats) */
  nll: number;
}

export interface ChoiceReport {
  /** index into candidates of the one written */
  chosen: number;
  /** scored positions of the calibration windows */
  tokens: number;
  candidates: CandidateScore[];
}

/** The candidate of lowest NLL (its index); ties go to the earlier one (the per-layer decided merge first). */
export function pickCandidate(scores: readonly CandidateScore[]): number {
  let best = 0;
  scores.forEach((s, i) => {
    if (s.nll < scores[best]!.nll) best = i;
  });
  return best;
}

/** A candidate's name in progress lines and tables: `planned (hierarchical)`. */
export const candidateName = (c: Pick<CandidateScore, 'candidate' | 'grouping'>): string => (c.grouping ? `${c.candidate} (${c.grouping})` : c.candidate);

export interface ReapCandidate {
  /** per MoE layer (decoder layers, then MTP layers when kept): the REAP-kept experts, ascending */
  kept: Map<number, number[]>;
  stats: CalibStats;
  nll: number;
  tokens: number;
}

/**
 * REAP pruning to N experts per layer, chosen as `moe prune --method reap` chooses (the same statistics pass over the
 * same windows, the same score and tie rule), and its model's NLL on those windows (the masked pass: the kept
 * experts routed exactly as in the N-expert checkpoint).
 */
export async function reapCandidate(model: Model, windows: readonly Int32Array[], N: number, mtp: boolean): Promise<ReapCandidate> {
  const stats = await collectStats(model, windows, mtp ? { mtp: true } : {});
  // REAP draws no random numbers (rng is for the random baseline)
  const kept = new Map(stats.layers.map((ls) => [ls.layer, keptFromScores(reap.score!(ls, { numExperts: ls.numExperts, rng: () => 0 }), N)]));
  const pass = await streamModel(
    model,
    windows,
    { routerOnly: true, onMoeLayer: (input) => maskedEdit(input, kept.get(input.layer.index)!) },
    { scoreLogits: true },
  );
  return { kept, stats, nll: pass.nll / pass.scored, tokens: pass.scored };
}
