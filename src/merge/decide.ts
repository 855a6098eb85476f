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
 * 2. group by group, coordinate descent over how much of the merge to take: "drop" (the group keeps only its most
 *    salient member: its original bytes and its own router row, the others weight 0), or the merge at strength s
 *    (member weights (1 − s)·anchor + s·planned, s in MERGE_STRENGTHS, 1 = the planned merge) with the planned
 *    router row or the anchor's own row; each group takes the variant that lowers the layer's error (two passes);
 * 3. REAP pruning and frequency pruning of the whole layer at the same count (the kept experts alone, original rows,
 *    i.e. exactly the pruned layer), taken when lower still.
 *
 * The lowest error wins, so the chosen layer is never worse on the sample than the planned merge, than REAP pruning
 * or than frequency pruning. Every candidate's expert outputs are computed once per layer on an evenly spaced token
 * sample (every token through every candidate expert, since new scores may route a token anywhere), so a candidate
 * costs one routing of the sample.
 *
 * The layer's own error is not the model's loss, so under --drop auto the model this decides layer by layer is one
 * candidate of a whole-model choice by next-token NLL (choose.ts).
 */
import type { ActivationSpec, RoutingRule } from '../model/types.js';
import { route } from '../runtime/routing.js';
import type { Routing, SwiGLUWeights } from '../runtime/api.js';
import { swiglu } from '../runtime/swiglu.js';
import type { RouterWeights } from './router.js';
import type { DecisionReport, ExpertGroup, GroupDecision, LayerChoice, LayerSignals } from './types.js';

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

/** merge strengths tried per group (1 = the planned merge; 0 with the anchor's row = drop to the anchor) */
export const MERGE_STRENGTHS = [0.25, 0.5, 0.75, 1] as const;

// the report types live in types.ts (which the merge plan and report import) so types.ts needs nothing from here
export type { DecisionReport, GroupDecision, LayerChoice } from './types.js';

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
  /** group g's members averaged with other weights (the planned permutations): what a plan with those weights writes */
  average(g: number, weights: number[]): SwiGLUWeights;
  maxTokens?: number;
}

export interface DecidedGroup {
  group: ExpertGroup;
  weights: number[];
  expert: SwiGLUWeights;
  /** planned: the planned merge; blend: its members at other weights (same permutations); single: one member's original expert (the others weight 0) */
  kind: 'planned' | 'blend' | 'single';
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
export function pruneGroups(kept: readonly number[], E: number, sig: LayerSignals): ExpertGroup[] {
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
  const N = input.groups.length;
  const le = new LayerError(input);
  const original = (j: number): Slot => ({ key: `e${j}`, expert: experts[j]!, ...rowOf(router, j, H) });
  const mergedSlot = (g: number): Slot =>
    input.groups[g]!.members.length === 1
      ? { key: `e${input.groups[g]!.anchor}`, expert: input.merged[g]!, ...rowOf(input.rows, g, H) }
      : { key: `g${g}`, expert: input.merged[g]!, ...rowOf(input.rows, g, H) };
  // the member a dropped group keeps: its most salient (REAP), ties to the group's order
  const keeper = (g: ExpertGroup): number => g.members.reduce((b, m) => (signals.saliency[m]! > signals.saliency[b]! ? m : b), g.members[0]!);

  // per group variants: 0 = drop to the keeper; then (strength, row) pairs, the last one the planned merge
  interface Variant {
    strength: number;
    row: GroupDecision['row'];
  }
  const variants: Variant[] = [{ strength: 0, row: 'anchor' }];
  for (const st of MERGE_STRENGTHS) for (const row of ['planned', 'anchor'] as const) if (!(st === 1 && row === 'anchor')) variants.push({ strength: st, row });
  variants.push({ strength: 1, row: 'anchor' });
  const PLANNED = variants.findIndex((v) => v.strength === 1 && v.row === 'planned');
  const blended = new Map<string, SwiGLUWeights>();
  const weightsAt = (g: number, st: number): number[] => input.weights[g]!.map((w, k) => (k === 0 ? 1 - st : 0) + st * w);
  const anchorRow = (g: number) => rowOf(router, input.groups[g]!.anchor, H);
  const blendRow = (g: number, st: number): Pick<Slot, 'row' | 'bias' | 'corr'> => {
    const a = anchorRow(g);
    const p = rowOf(input.rows, g, H);
    if (st === 1) return p;
    const mix = (x?: number, y?: number) => (x === undefined && y === undefined ? undefined : (1 - st) * (x ?? 0) + st * (y ?? 0));
    const row = Float32Array.from(a.row, (v, h) => (1 - st) * v + st * p.row[h]!);
    const b = mix(a.bias, p.bias);
    const c = mix(a.corr, p.corr);
    return { row, ...(b !== undefined ? { bias: b } : {}), ...(c !== undefined ? { corr: c } : {}) };
  };
  const variantSlot = (g: number, v: number): Slot => {
    const grp = input.groups[g]!;
    const { strength: st, row } = variants[v]!;
    if (st === 0) return original(keeper(grp));
    if (grp.members.length === 1) return mergedSlot(g);
    let expert: SwiGLUWeights;
    if (st === 1) expert = input.merged[g]!;
    else {
      const key = `${g}:${st}`;
      expert = blended.get(key) ?? input.average(g, weightsAt(g, st));
      blended.set(key, expert);
    }
    return { key: st === 1 ? `g${g}` : `g${g}s${st}`, expert, ...(row === 'anchor' ? anchorRow(g) : blendRow(g, st)) };
  };
  const pickV = new Array<number>(N).fill(PLANNED);
  const slotsOf = (p: readonly number[]) => p.map((v, g) => variantSlot(g, v));
  const mergeErr = le.error(slotsOf(pickV));
  let best = mergeErr;
  for (let pass = 0; pass < 2; pass++) {
    let moved = false;
    for (let g = 0; g < N; g++) {
      if (input.groups[g]!.members.length === 1) continue;
      let keep = pickV[g]!;
      for (let v = 0; v < variants.length; v++) {
        if (v === keep) continue;
        pickV[g] = v;
        const e = le.error(slotsOf(pickV));
        if (e < best) {
          best = e;
          keep = v;
          moved = true;
        }
      }
      pickV[g] = keep;
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
  let report: DecisionReport['groups'] | undefined;
  if (choice === 'merge' || choice === 'merge-drop') {
    groups = input.groups.map((g, i) => {
      const v = variants[pickV[i]!]!;
      if (g.members.length === 1 || v.strength === 1) return { group: g, weights: [...input.weights[i]!], expert: input.merged[i]!, kind: 'planned' };
      if (v.strength > 0) return { group: g, weights: weightsAt(i, v.strength), expert: variantSlot(i, pickV[i]!).expert, kind: 'blend' };
      const kj = keeper(g);
      const members = [kj, ...g.members.filter((m) => m !== kj)];
      return { group: { anchor: kj, members }, weights: members.map((_, k) => (k === 0 ? 1 : 0)), expert: experts[kj]!, kind: 'single' };
    });
    rows = rowsOf(slotsOf(pickV), router, input.rows);
    report = pickV.map((v) => ({ strength: variants[v]!.strength, row: variants[v]!.row }));
  } else {
    ({ groups, rows } = prunedLayer(choice === 'prune-reap' ? reapKept : freqKept, experts, router, signals, input.rows));
  }
  const dropped = groups.flatMap((g) => g.group.members.filter((_, k) => g.weights[k] === 0)).sort((a, b) => a - b);
  return { groups, rows, changed: choice !== 'merge', report: { choice, error, errors, dropped, ...(report ? { groups: report } : {}), tokens: le.T } };
}

/**
 * The layer pruned to `kept` as decided groups: each kept expert alone with its original row, every removed one
 * attached at weight 0 to the kept one nearest by mean output. `planned` (the merge's rows) only says which bias
 * fields the rows carry.
 */
export function prunedLayer(
  kept: readonly number[],
  experts: readonly SwiGLUWeights[],
  router: RouterWeights,
  signals: LayerSignals,
  planned: RouterWeights = router,
): Pick<Decision, 'groups' | 'rows'> {
  const groups = pruneGroups(kept, experts.length, signals).map((g) => ({
    group: g,
    weights: g.members.map((_, k) => (k === 0 ? 1 : 0)),
    expert: experts[g.anchor]!,
    kind: 'single' as const,
  }));
  return { groups, rows: keptRows(kept, router, signals.hidden, planned) };
}

/** The kept experts' own router rows [N, H] (bias and selection bias where the router, or `planned`, has them). */
export function keptRows(kept: readonly number[], router: RouterWeights, H: number, planned: RouterWeights = router): RouterWeights {
  return rowsOf(
    kept.map((j) => rowOf(router, j, H)),
    router,
    planned,
  );
}

/**
 * Whether a layer's merge can be decided (per layer here, per model in choose.ts): the candidates are routed by the
 * family's rule over N experts; group-limited routing would need per-group counts that pruning candidates do not
 * keep, and sparsemixer's routing is not the plain top-k the candidates are scored with.
 */
export function decisionApplies(rule: RoutingRule): boolean {
  return !(rule.groups && rule.groups.nGroup > 1) && !rule.sparsemixer;
}

/** Router rows [N, H] (and bias, selection bias where the router has them) of a layer's slots. */
function rowsOf(slots: readonly Pick<Slot, 'row' | 'bias' | 'corr'>[], router: RouterWeights, planned: RouterWeights): RouterWeights {
  const N = slots.length;
  const H = slots[0]!.row.length;
  const w = new Float32Array(N * H);
  slots.forEach((s, i) => w.set(s.row, i * H));
  const res: RouterWeights = { w };
  if (router.bias || planned.bias) res.bias = Float32Array.from(slots, (s) => s.bias ?? 0);
  if (router.correctionBias || planned.correctionBias) res.correctionBias = Float32Array.from(slots, (s) => s.corr ?? 0);
  return res;
}
