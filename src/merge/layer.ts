/**
 * Merge one MoE layer: plan (groups) -> align members onto anchors -> weighted average -> router rows.
 * Pure function of the layer's weights, its statistics and (for data-driven choices) its calibration inputs,
 * so the same code serves the streamed pipeline and the tests.
 */
import { fail } from '../errors.js';
import type { ActivationSpec, RoutingRule } from '../model/types.js';
import { decideLayer, decisionApplies, type DropMode } from './decide.js';
import type { Routing, SwiGLUWeights } from '../runtime/api.js';
import { alignFromSimilarity, permuteUnits } from './align.js';
import { ExpertAverager, memberWeights } from './combine.js';
import { fromHiddenStates, getAlign } from './methods.js';
import { checkPartition, groupExperts, routingGroupProblem } from './grouping.js';
import { mergeRouter, type RouterFitOptions, type RouterWeights } from './router.js';
import { MERGE_OPTION_DEFAULTS, type ExpertGroup, type GroupReport, type LayerReport, type LayerSignals, type MergeChoices } from './types.js';

export interface LayerCalibration {
  /** [T, H] MoE-block inputs */
  x: Float32Array;
  T: number;
  /** [T, E] router logits */
  logits: Float32Array;
  routing: Routing;
}

export interface MergeLayerInput {
  layer: number;
  experts: readonly SwiGLUWeights[];
  router: RouterWeights;
  signals: LayerSignals;
  rule: Pick<RoutingRule, 'score'>;
  /** the family's expert activation (activation alignment correlates what the expert really computes) */
  activation?: ActivationSpec;
  calib?: LayerCalibration;
  /** a fixed plan (e.g. from a dry run); otherwise grouped by choices.grouping */
  groups?: ExpertGroup[];
  /** group-limited routing: the layer's routing groups (mergeRoutingGroups), which every merged group stays inside */
  routingGroups?: number;
  /** the family's whole routing rule: the merge-or-drop decision routes its candidates by it */
  routingRule?: RoutingRule;
}

export interface MergeLayerOptions {
  /** at most this many routed tokens per group for activation alignment (evenly spaced) */
  maxAlignTokens?: number;
  routerFit?: RouterFitOptions;
  /**
   * auto: after planning, decide per group whether to merge or drop (keep one member) and whether REAP or frequency
   * pruning of the whole layer does better, by the layer's output error on calibration tokens (src/merge/decide.ts);
   * needs calibration hidden states and the routing rule. never (default here): the planned merge as it is.
   */
  drop?: DropMode;
  /** tokens the decision measures on */
  decideTokens?: number;
}

export interface MergedLayer {
  groups: ExpertGroup[];
  experts: SwiGLUWeights[];
  /** per group, per member (anchor first): the permutation applied before averaging (null: none) */
  perms: Array<Array<Int32Array | null>>;
  router: RouterWeights;
  report: LayerReport;
  /** the decision replaced the planned groups or rows: the plan must store the rows */
  decided?: boolean;
}

/** Tokens with any group member among their top-k, evenly subsampled to at most `max`; returns their rows of x. */
export function groupTokens(calib: LayerCalibration, members: readonly number[], H: number, max: number): { x: Float32Array; T: number } {
  const { idx, k, T } = calib.routing;
  const set = new Set(members);
  const rows: number[] = [];
  for (let t = 0; t < T; t++) {
    for (let s = 0; s < k; s++) {
      if (set.has(idx[t * k + s])) {
        rows.push(t);
        break;
      }
    }
  }
  const take = rows.length <= max ? rows : Array.from({ length: max }, (_, i) => rows[Math.floor((i * rows.length) / max)]);
  const x = new Float32Array(take.length * H);
  take.forEach((t, i) => x.set(calib.x.subarray(t * H, (t + 1) * H), i * H));
  return { x, T: take.length };
}

export interface MergedGroup {
  expert: SwiGLUWeights;
  report: GroupReport;
  /** per member, anchor first (null): the permutation of its hidden units applied before averaging (null: none) */
  perms: Array<Int32Array | null>;
}

export interface GroupContext {
  H: number;
  calib?: LayerCalibration;
  activation?: ActivationSpec;
  maxAlignTokens?: number;
  /** permutations decided earlier (a saved plan): applied as given, with their alignment report */
  applied?: { perms: ReadonlyArray<Int32Array | null>; alignment: GroupReport['alignment'] };
}

/** One member's permutation onto the anchor (null: averaged as stored) and its alignment report. */
function alignMember(
  anchor: SwiGLUWeights,
  member: SwiGLUWeights,
  g: ExpertGroup,
  k: number,
  align: MergeChoices['align'],
  ctx: GroupContext,
  tokens: { value?: { x: Float32Array; T: number } },
): { perm: Int32Array | null; alignment: GroupReport['alignment'][number] } {
  if (ctx.applied) return { perm: ctx.applied.perms[k] ?? null, alignment: ctx.applied.alignment[k] ?? null };
  const method = getAlign(align);
  if (!method.similarity) return { perm: null, alignment: null };
  const sim = method.similarity(
    anchor,
    member,
    () => (tokens.value ??= groupTokens(ctx.calib!, g.members, ctx.H, ctx.maxAlignTokens ?? MERGE_OPTION_DEFAULTS.alignTokens)),
    ctx.activation,
  );
  const a = alignFromSimilarity(sim, anchor.gate.out);
  return { perm: a.perm, alignment: { member: g.members[k], before: a.before, after: a.after } };
}

function checkGroupInput(g: ExpertGroup, weights: number[], align: MergeChoices['align'], ctx: GroupContext): void {
  if (fromHiddenStates(getAlign(align)) && !ctx.calib && !ctx.applied) fail('Usage', `--align ${align} needs calibration hidden states (--calib FILE)`);
  if (weights.length !== g.members.length) fail('ComputeError', 'merge: group and weights differ in size');
}

/**
 * One group's merge, member by member: the anchor first, then each member aligned onto it and added to the
 * weighted average. Shared by the in-memory merge and the streamed one, which differ only in how members arrive.
 */
class GroupMerge {
  private readonly avg = new ExpertAverager();
  private readonly alignment: GroupReport['alignment'] = [null];
  private readonly perms: Array<Int32Array | null> = [null];
  private readonly tokens = {};

  constructor(
    private readonly g: ExpertGroup,
    private readonly anchor: SwiGLUWeights,
    private readonly weights: number[],
    private readonly align: MergeChoices['align'],
    private readonly ctx: GroupContext,
  ) {
    this.avg.add(anchor, weights[0]);
  }

  add(k: number, member: SwiGLUWeights): void {
    if (this.weights[k] === 0 && !this.ctx.applied?.perms[k]) {
      // a dropped member (weight 0) adds nothing: no alignment, and a group left with its anchor alone stays its bytes
      this.alignment.push(null);
      this.perms.push(null);
      return;
    }
    const a = alignMember(this.anchor, member, this.g, k, this.align, this.ctx, this.tokens);
    this.avg.add(a.perm ? permuteUnits(member, a.perm) : member, this.weights[k]);
    this.alignment.push(a.alignment);
    this.perms.push(a.perm);
  }

  result(): MergedGroup {
    const { g, weights, alignment, perms } = this;
    return { expert: this.avg.result(), report: { anchor: g.anchor, members: g.members, weights, alignment }, perms };
  }
}

/**
 * Align a group's members onto its anchor and average them with the given weights, one member at a time: the
 * anchor, the running float64 sum and the member being aligned are all that is held, so members can be loaded
 * lazily (the write of a planned merge). Equal, bit for bit, to mergeGroup on the same experts.
 */
export async function mergeGroupStreamed(
  g: ExpertGroup,
  load: (j: number) => Promise<SwiGLUWeights>,
  weights: number[],
  align: MergeChoices['align'],
  ctx: GroupContext,
): Promise<MergedGroup> {
  checkGroupInput(g, weights, align, ctx);
  const m = new GroupMerge(g, await load(g.anchor), weights, align, ctx);
  for (let k = 1; k < g.members.length; k++) m.add(k, await load(g.members[k]));
  return m.result();
}

/** Align a group's members onto its anchor and average them with the given weights (experts in memory). */
export function mergeGroup(
  g: ExpertGroup,
  experts: ReadonlyMap<number, SwiGLUWeights> | readonly SwiGLUWeights[],
  weights: number[],
  align: MergeChoices['align'],
  ctx: GroupContext,
): MergedGroup {
  const get = (j: number): SwiGLUWeights => {
    const e = experts instanceof Map ? experts.get(j) : (experts as readonly SwiGLUWeights[])[j];
    if (!e) fail('ComputeError', `merge: expert ${j} was not loaded`);
    return e;
  };
  checkGroupInput(g, weights, align, ctx);
  const m = new GroupMerge(g, get(g.anchor), weights, align, ctx);
  for (let k = 1; k < g.members.length; k++) m.add(k, get(g.members[k]));
  return m.result();
}

export function mergeLayer(input: MergeLayerInput, choices: MergeChoices, opts: MergeLayerOptions = {}): MergedLayer {
  const { experts, signals } = input;
  const E = experts.length;
  const H = signals.hidden;
  if (signals.numExperts !== E) fail('InvalidStats', `layer ${input.layer}: statistics describe ${signals.numExperts} experts, the model has ${E}`);
  const groups = input.groups ?? groupExperts(choices.grouping, signals, choices.groups, input.routingGroups);
  checkPartition(groups, E, choices.groups);
  const crossing = routingGroupProblem(groups, E, input.routingGroups ?? 1);
  if (crossing) fail('ComputeError', `layer ${input.layer}: merge plan breaks group-limited routing: ${crossing}`);
  if (fromHiddenStates(getAlign(choices.align)) && !input.calib) fail('Usage', `--align ${choices.align} needs calibration hidden states (--calib FILE)`);

  const merged: SwiGLUWeights[] = [];
  const reports: GroupReport[] = [];
  const perms: MergedLayer['perms'] = [];
  for (const g of groups) {
    const weights = memberWeights(choices.weighting, g.members, signals);
    const m = mergeGroup(g, experts, weights, choices.align, { H, calib: input.calib, activation: input.activation, maxAlignTokens: opts.maxAlignTokens });
    merged.push(m.expert);
    reports.push(m.report);
    perms.push(m.perms);
  }

  const fitData = input.calib ? { x: input.calib.x, T: input.calib.T, logits: input.calib.logits } : undefined;
  const r = mergeRouter(choices.router, input.router, groups, H, E, input.rule, fitData, opts.routerFit);
  const report: LayerReport = { layer: input.layer, groups: reports, router: { method: choices.router } };
  if (r.kl !== undefined) {
    report.router.kl = r.kl;
    report.router.klMeanRows = r.klMean;
    report.router.tokens = r.tokens;
    if (r.steps !== undefined) report.router.steps = r.steps;
  }
  const rule = input.routingRule;
  // the decision routes N candidates by the family's rule; group-limited routing keeps the planned merge (its
  // candidates would have to respect per-group counts, which pruning candidates do not)
  if (opts.drop === 'auto' && input.calib && rule && decisionApplies(rule)) {
    const d = decideLayer({
      x: input.calib.x,
      T: input.calib.T,
      H,
      routing: input.calib.routing,
      logits: input.calib.logits,
      experts,
      router: input.router,
      rule,
      activation: input.activation,
      signals,
      groups,
      merged,
      weights: reports.map((g) => g.weights),
      rows: r.router,
      average: (g, w) => mergeGroup(groups[g]!, experts, w, choices.align, { H, applied: { perms: perms[g]!, alignment: reports[g]!.alignment } }).expert,
      maxTokens: opts.decideTokens,
    });
    report.decision = d.report;
    if (d.changed) {
      const dReports: GroupReport[] = d.groups.map((g, i) =>
        g.kind === 'single'
          ? { anchor: g.group.anchor, members: g.group.members, weights: g.weights, alignment: g.group.members.map(() => null) }
          : { ...reports[i]!, weights: g.weights },
      );
      const dPerms = d.groups.map((g, i) => (g.kind === 'single' ? g.group.members.map(() => null) : perms[i]!));
      report.groups = dReports;
      return { groups: d.groups.map((g) => g.group), experts: d.groups.map((g) => g.expert), perms: dPerms, router: d.rows, report, decided: true };
    }
  }
  return { groups, experts: merged, perms, router: r.router, report };
}
