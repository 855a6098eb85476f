/**
 * Merge or drop, decided per layer and per group by the merge's own objective: the MoE block's output error
 * ‖F(X) − F'(X)‖² / ‖F(X)‖² on calibration tokens, F the layer as it is, F' the N-expert layer (its experts, its
 * router rows, the family's own top-k and renormalisation on the new scores).
 *
 * Why: on a model with uneven routing (dead or near-dead experts), merging a live expert into another adds the
 * alignment error of the average, and averaging router rows with a dead expert's row moves the routing of every
 * token the group serves. Pruning the same count removes whole experts and leaves the survivors exact. A merge that
 * may drop experts contains pruning as a special case, so it should never lose to it on its own objective; this
 * module makes that true by construction:
 *
 * 1. the planned merge (every group merged, the configured router rows);
 * 2. group by group, "drop" instead of "merge": the group keeps only its most salient member (its original bytes and
 *    its own router row; the others get weight 0), accepted where the layer's error goes down (two passes);
 * 3. REAP pruning and frequency pruning of the whole layer at the same count (the kept experts alone, original rows,
 *    i.e. exactly the pruned layer), taken when lower still.
 *
 * The lowest error wins, so the chosen layer is never worse on the sample than the planned merge, than REAP pruning
 * or than frequency pruning. Every candidate's expert outputs are computed once per layer on an evenly spaced token
 * sample (every token through every candidate expert, since new scores may route a token anywhere), so a candidate
 * costs one routing of the sample.
 */
import type { ActivationSpec, RoutingRule } from '../model/types.js';
import { route } from '../runtime/routing.js';
import type { Routing, SwiGLUWeights } from '../runtime/api.js';
import { swiglu } from '../runtime/swiglu.js';
import type { RouterWeights } from './router.js';
import type { ExpertGroup, LayerSignals } from './types.js';

export const DROP_MODES = ['auto', 'never'] as const;
export type DropMode = (typeof DROP_MODES)[number];

/** calibration tokens the decision measures each candidate on (evenly spaced over the pass), at most */
export const DECIDE_TOKENS = 2048;
/** the candidates' outputs on the sample are held at once: (E + N) x tokens x H float32 within this budget */
const DECIDE_BYTES = 512 * 2 ** 20;

/** Sample size of the decision: DECIDE_TOKENS, fewer where E + N outputs of that many tokens exceed the budget (at least 256). */
export function decideTokens(E: number, N: number, H: number): number {
  return Math.max(256, Math.min(DECIDE_TOKENS, Math.floor(DECIDE_BYTES / ((E + N) * H * 4))));
}

export type LayerChoice = 'merge' | 'merge-drop' | 'prune-reap' | 'prune-frequency';

export interface DecisionReport {
  /** what the layer became */
  choice: LayerChoice;
  /** relative output error of the chosen layer and of each candidate on the sample */
  error: number;
  errors: { merge: number; mergeDrop: number; reap: number; frequency: number };
  /** experts whose weights left the layer (weight 0 in their group): dropped rather than merged */
  dropped: number[];
  tokens: number;
}

export interface DecideInput {
  x: Float32Array;
  T: number;
  H: number;
  routing: Routing;
  /** [T, E] router logits as the runtime computed them (router bias included) */
  logits: Float32Array;
  experts: readonly SwiGLUWeights[];
  router: RouterWeights;
  rule: RoutingRule;
  activation?: ActivationSpec;
  signals: LayerSignals;
  /** the planned merge: groups, their merged experts, member weights and router rows */
  groups: readonly ExpertGroup[];
  merged: readonly SwiGLUWeights[];
  weights: readonly number[][];
  rows: RouterWeights;
  maxTokens?: number;
}

export interface DecidedGroup {
  group: ExpertGroup;
  weights: number[];
  expert: SwiGLUWeights;
  /** true: the group is one member's original expert (the others weight 0) */
  dropped: boolean;
}

export interface Decision {
  groups: DecidedGroup[];
  rows: RouterWeights;
  /** false: the planned merge stands unchanged */
  changed: boolean;
  report: DecisionReport;
}

interface Slot {
  /** cache key of the slot's expert outputs */
  key: string;
  expert: SwiGLUWeights;
  row: Float32Array;
  bias?: number;
  corr?: number;
}

const rowOf = (r: RouterWeights, i: number, H: number): Pick<Slot, 'row' | 'bias' | 'corr'> => ({
  row: r.w.subarray(i * H, (i + 1) * H),
  ...(r.bias ? { bias: r.bias[i] } : {}),
  ...(r.correctionBias ? { corr: r.correctionBias[i] } : {}),
});

/** The N experts of highest score (ties: lower index), ascending. */
export function topExperts(score: Float64Array, n: number): number[] {
  const order = Array.from(score.keys()).sort((a, b) => score[b]! - score[a]! || a - b);
  return order.slice(0, n).sort((a, b) => a - b);
}

/** Scores the candidates of one layer on a fixed token sample. */
export class LayerError {
  readonly T: number;
  private readonly x: Float32Array;
  private readonly y0: Float64Array;
  private readonly norm0: number;
  private readonly outs = new Map<string, Float32Array>();

  constructor(private readonly input: Pick<DecideInput, 'x' | 'T' | 'H' | 'routing' | 'experts' | 'rule' | 'activation' | 'maxTokens'>) {
    const { H } = input;
    const T = Math.min(input.T, input.maxTokens ?? DECIDE_TOKENS);
    this.T = T;
    const pick = Int32Array.from({ length: T }, (_, i) => Math.floor((i * input.T) / T));
    this.x = new Float32Array(T * H);
    pick.forEach((t, i) => this.x.set(input.x.subarray(t * H, (t + 1) * H), i * H));
    // the layer as it is, on the sample: its own routing (weights as the runtime used them)
    const k = input.routing.k;
    this.y0 = new Float64Array(T * H);
    for (let i = 0; i < T; i++) {
      for (let s = 0; s < k; s++) {
        const w = input.routing.w[pick[i]! * k + s]!;
        if (w === 0) continue;
        const f = this.output(`e${input.routing.idx[pick[i]! * k + s]}`, input.experts[input.routing.idx[pick[i]! * k + s]!]!);
        for (let h = 0; h < H; h++) this.y0[i * H + h] += w * f[i * H + h]!;
      }
    }
    let n = 0;
    for (const v of this.y0) n += v * v;
    this.norm0 = n;
  }

  /** [T, H] outputs of an expert on every sample token (computed once per key) */
  output(key: string, w: SwiGLUWeights): Float32Array {
    let o = this.outs.get(key);
    if (!o) {
      o = swiglu(w, this.x, this.T, this.input.activation ?? { kind: 'silu' });
      this.outs.set(key, o);
    }
    return o;
  }

  /** ‖F − F'‖² / ‖F‖² of the layer made of these slots (router rows, family's top-k over them) */
  error(slots: readonly Slot[]): number {
    const { H } = this.input;
    const T = this.T;
    const N = slots.length;
    const logits = new Float32Array(T * N);
    for (let i = 0; i < T; i++) {
      const xo = i * H;
      for (let j = 0; j < N; j++) {
        const r = slots[j]!.row;
        let s = slots[j]!.bias ?? 0;
        for (let h = 0; h < H; h++) s += this.x[xo + h]! * r[h]!;
        logits[i * N + j] = s;
      }
    }
    const corr = slots.some((s) => s.corr !== undefined) ? Float32Array.from(slots, (s) => s.corr ?? 0) : undefined;
    const rule: RoutingRule = { ...this.input.rule, topK: Math.min(this.input.rule.topK, N) };
    const { routing } = route(rule, logits, T, N, corr);
    const outs = slots.map((s) => this.output(s.key, s.expert));
    const k = routing.k;
    let err = 0;
    const y = new Float64Array(H);
    for (let i = 0; i < T; i++) {
      y.fill(0);
      for (let s = 0; s < k; s++) {
        const w = routing.w[i * k + s]!;
        if (w === 0) continue;
        const f = outs[routing.idx[i * k + s]!]!;
        for (let h = 0; h < H; h++) y[h] += w * f[i * H + h]!;
      }
      for (let h = 0; h < H; h++) {
        const d = this.y0[i * H + h]! - y[h]!;
        err += d * d;
      }
    }
    return this.norm0 > 0 ? err / this.norm0 : err;
  }
}

/** A pruned layer as groups: each kept expert alone, each removed one attached (weight 0) to the kept one nearest by mean output. */
function pruneGroups(kept: readonly number[], E: number, sig: LayerSignals): ExpertGroup[] {
  const groups = kept.map((j) => ({ anchor: j, members: [j] }));
  const H = sig.hidden;
  const mo = sig.meanOutput;
  const cos = (a: number, b: number): number => {
    if (!mo) return 0;
    let d = 0;
    let na = 0;
    let nb = 0;
    for (let h = 0; h < H; h++) {
      d += mo[a * H + h]! * mo[b * H + h]!;
      na += mo[a * H + h]! ** 2;
      nb += mo[b * H + h]! ** 2;
    }
    return na > 0 && nb > 0 ? d / Math.sqrt(na * nb) : 0;
  };
  const keptSet = new Set(kept);
  for (let e = 0; e < E; e++) {
    if (keptSet.has(e)) continue;
    let best = 0;
    for (let g = 1; g < kept.length; g++) if (cos(e, kept[g]!) > cos(e, kept[best]!)) best = g;
    groups[best]!.members.push(e);
  }
  return groups;
}

export function decideLayer(input: DecideInput): Decision {
  const { H, experts, router, signals } = input;
  const E = experts.length;
  const N = input.groups.length;
  const le = new LayerError(input);
  const original = (j: number): Slot => ({ key: `e${j}`, expert: experts[j]!, ...rowOf(router, j, H) });
  const mergedSlot = (g: number): Slot =>
    input.groups[g]!.members.length === 1
      ? { key: `e${input.groups[g]!.anchor}`, expert: input.merged[g]!, ...rowOf(input.rows, g, H) }
      : { key: `g${g}`, expert: input.merged[g]!, ...rowOf(input.rows, g, H) };
  // the member a dropped group keeps: its most salient (REAP), ties to the group's order
  const keeper = (g: ExpertGroup): number => g.members.reduce((b, m) => (signals.saliency[m]! > signals.saliency[b]! ? m : b), g.members[0]!);

  const drop = new Array<boolean>(N).fill(false);
  const slotsOf = (d: readonly boolean[]) => input.groups.map((g, i) => (d[i] ? original(keeper(g)) : mergedSlot(i)));
  const mergeErr = le.error(slotsOf(drop));
  let best = mergeErr;
  for (let pass = 0; pass < 2; pass++) {
    let moved = false;
    for (let i = 0; i < N; i++) {
      if (input.groups[i]!.members.length === 1) continue;
      drop[i] = !drop[i];
      const e = le.error(slotsOf(drop));
      if (e < best) {
        best = e;
        moved = true;
      } else drop[i] = !drop[i];
    }
    if (!moved) break;
  }
  const mergeDropErr = best;
  const reapKept = topExperts(signals.saliency, N);
  const freqKept = topExperts(signals.count, N);
  const reapErr = le.error(reapKept.map(original));
  const freqErr = le.error(freqKept.map(original));

  const errors = { merge: mergeErr, mergeDrop: mergeDropErr, reap: reapErr, frequency: freqErr };
  let choice: LayerChoice = mergeDropErr < mergeErr ? 'merge-drop' : 'merge';
  let error = mergeDropErr;
  if (reapErr < error) {
    choice = 'prune-reap';
    error = reapErr;
  }
  if (freqErr < error) {
    choice = 'prune-frequency';
    error = freqErr;
  }

  let groups: DecidedGroup[];
  let rows: RouterWeights;
  if (choice === 'merge' || choice === 'merge-drop') {
    groups = input.groups.map((g, i) => {
      if (!drop[i]) return { group: g, weights: [...input.weights[i]!], expert: input.merged[i]!, dropped: false };
      const kj = keeper(g);
      const members = [kj, ...g.members.filter((m) => m !== kj)];
      return { group: { anchor: kj, members }, weights: members.map((_, k) => (k === 0 ? 1 : 0)), expert: experts[kj]!, dropped: true };
    });
    const slots = slotsOf(drop);
    rows = rowsOf(slots, router, input.rows);
  } else {
    const kept = choice === 'prune-reap' ? reapKept : freqKept;
    groups = pruneGroups(kept, E, signals).map((g) => ({
      group: g,
      weights: g.members.map((_, k) => (k === 0 ? 1 : 0)),
      expert: experts[g.anchor]!,
      dropped: g.members.length > 1,
    }));
    rows = rowsOf(kept.map(original), router, input.rows);
  }
  const dropped = groups.flatMap((g) => g.group.members.filter((_, k) => g.weights[k] === 0)).sort((a, b) => a - b);
  return { groups, rows, changed: choice !== 'merge', report: { choice, error, errors, dropped, tokens: le.T } };
}

/** Router rows [N, H] (and bias, selection bias where the router has them) of a layer's slots. */
function rowsOf(slots: readonly Slot[], router: RouterWeights, planned: RouterWeights): RouterWeights {
  const N = slots.length;
  const H = slots[0]!.row.length;
  const w = new Float32Array(N * H);
  slots.forEach((s, i) => w.set(s.row, i * H));
  const res: RouterWeights = { w };
  if (router.bias || planned.bias) res.bias = Float32Array.from(slots, (s) => s.bias ?? 0);
  if (router.correctionBias || planned.correctionBias) res.correctionBias = Float32Array.from(slots, (s) => s.corr ?? 0);
  return res;
}
