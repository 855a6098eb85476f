/**
 * The merge plan: everything that decides the merged checkpoint and cannot be recomputed from the weights of one
 * layer alone. Saved with `--save-plan FILE` (src/model/planfile.ts adds the model fingerprint and the settings),
 * applied with `--plan FILE` by one run or by every `--shard i/n` job of one.
 *
 * Per MoE layer:
 * - the groups (anchor first) and each member's merge weight: they come from calibration statistics;
 * - the permutation of every merged member's hidden units, when the planning run computed it. A sequential plan
 *   (--calib) always has them: layer l was aligned during the forward pass (activation alignment on the hidden
 *   states it received through the merged layers before it), and only that pass could recompute them. A plan from
 *   --stats has none: weight alignment is a deterministic function of the two experts' weights, done at write time
 *   by whichever job writes the layer (that is the expensive O(I^3) part, so sharded jobs split it);
 * - the router rows when they were fitted on calibration hidden states (--router fit). Anchor and mean rows are
 *   recomputed from the input router.
 *
 * Applying a plan therefore needs no calibration data and no forward pass: a layer is produced from its members'
 * weights, the stored permutations and weights, and the router rows, exactly as the planning run produced it.
 *
 * In the file, permutations are base64 of little-endian int32 and router rows base64 of little-endian float32
 * (exact, and a quarter of the size of JSON numbers).
 */
import { createHash } from 'node:crypto';
import { fail } from '../errors.js';
import type { ModelView, MoeBlock } from '../model/types.js';
import { editedLayers } from '../model/mtp.js';
import { mergeRoutingGroups, routingGroupProblem } from './grouping.js';
import type { DecisionReport } from './decide.js';
import { fromHiddenStates, getAlign, getRouter } from './methods.js';
import type { RouterWeights } from './router.js';
import type { GroupReport, LayerReport, MergeChoices } from './types.js';

export type PlanMode = 'sequential' | 'stats';

export interface PlannedGroup extends GroupReport {
  /** per member, anchor first (null): the permutation of its hidden units; absent: computed when written */
  perms?: Array<Int32Array | null>;
}

export interface PlannedLayer {
  layer: number;
  groups: PlannedGroup[];
  router: LayerReport['router'];
  /** router rows fitted on calibration hidden states (--router fit) or decided (--drop auto); absent: anchor/mean rows of the input router */
  rows?: RouterWeights;
  /** --drop auto: what the layer became and why (report only) */
  decision?: DecisionReport;
}

export interface MergePlan {
  /** how the statistics were measured: sequentially through the merged layers (--calib) or on the input (--stats) */
  mode: PlanMode;
  /** calibration tokens the statistics came from */
  tokens: number;
  layers: PlannedLayer[];
}

interface SavedGroup extends GroupReport {
  perms?: Array<string | null>;
}

interface SavedLayer {
  layer: number;
  groups: SavedGroup[];
  router: LayerReport['router'];
  decision?: DecisionReport;
  rows?: { w: string; bias?: string; correctionBias?: string };
}

export interface SavedMergePlan {
  mode: PlanMode;
  tokens: number;
  layers: SavedLayer[];
}

const b64 = (a: Int32Array | Float32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');

function fromB64<T extends Int32Array | Float32Array>(
  s: unknown,
  make: (b: ArrayBuffer, n: number) => T,
  n: number,
  what: string,
  bad: (why: string) => never,
): T {
  if (typeof s !== 'string') bad(`${what} is not a base64 string`);
  const buf = Buffer.from(s as string, 'base64');
  if (buf.byteLength !== n * 4) bad(`${what} holds ${buf.byteLength / 4} values, expected ${n}`);
  const copy = new ArrayBuffer(buf.byteLength);
  new Uint8Array(copy).set(buf);
  return make(copy, n);
}

export function serializePlan(plan: MergePlan): SavedMergePlan {
  return {
    mode: plan.mode,
    tokens: plan.tokens,
    layers: plan.layers.map((l) => ({
      layer: l.layer,
      groups: l.groups.map((g) => ({
        anchor: g.anchor,
        members: g.members,
        weights: g.weights,
        alignment: g.alignment,
        ...(g.perms ? { perms: g.perms.map((p) => (p ? b64(p) : null)) } : {}),
      })),
      router: l.router,
      ...(l.decision ? { decision: l.decision } : {}),
      ...(l.rows
        ? {
            rows: {
              w: b64(l.rows.w),
              ...(l.rows.bias ? { bias: b64(l.rows.bias) } : {}),
              ...(l.rows.correctionBias ? { correctionBias: b64(l.rows.correctionBias) } : {}),
            },
          }
        : {}),
    })),
  };
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A loaded plan, checked in detail against this model and these choices: every MoE layer exactly once, N groups
 * that partition its experts with the anchor first (inside one routing group each, under group-limited routing), weights that are a distribution over the members, a
 * permutation of 0..I-1 for every merged member when the alignment needs one, router rows of the right shape when
 * the router was fitted. Every problem is one line naming the file and the layer.
 */
export function checkSavedPlan(view: ModelView, raw: unknown, choices: MergeChoices, path: string, dropMtp = false): MergePlan {
  const bad = (why: string): never => fail('InvalidData', `${path}: ${why}`);
  if (!isObject(raw)) bad('the plan is not an object');
  const r = raw as Record<string, unknown>;
  if (r.mode !== 'sequential' && r.mode !== 'stats') bad(`mode must be 'sequential' or 'stats', got ${JSON.stringify(r.mode)}`);
  if (!Number.isInteger(r.tokens) || (r.tokens as number) < 0) bad('tokens must be a whole number');
  if (!Array.isArray(r.layers)) bad('layers is not a list');
  const H = view.dims.hidden;
  const N = choices.groups;
  // the decoder's MoE layers, then the multi-token-prediction layers unless dropped (src/model/mtp.ts)
  const edited = editedLayers(view, dropMtp).filter((l) => l.block.kind === 'moe');
  const planned = edited.map((l) => l.index);
  const byLayer = new Map<number, unknown>();
  for (const l of r.layers as unknown[]) {
    if (!isObject(l) || !Number.isInteger(l.layer)) bad('a layer entry has no whole-number layer');
    const li = (l as Record<string, unknown>).layer as number;
    if (byLayer.has(li)) bad(`layer ${li} is planned twice`);
    if (!planned.includes(li)) bad(`layer ${li} is not a MoE layer of this model (MoE layers: ${planned.join(', ')})`);
    byLayer.set(li, l);
  }
  const layers: PlannedLayer[] = [];
  for (const layer of edited) {
    const block = layer.block as MoeBlock;
    const E = block.experts.length;
    const I = block.experts[0]!.gate.outFeatures;
    const L = layer.index;
    const raw = byLayer.get(L) as Record<string, unknown> | undefined;
    if (!raw) bad(`MoE layer ${L} is missing from the plan`);
    const at = (why: string): never => bad(`layer ${L}: ${why}`);
    if (!Array.isArray(raw!.groups)) at('groups is not a list');
    const gs = raw!.groups as unknown[];
    if (gs.length !== N) at(`${gs.length} groups, this command merges to ${N} (--groups)`);
    // first the partition: every expert in exactly one group
    const seen = new Int32Array(E).fill(-1);
    gs.forEach((gRaw, gi) => {
      if (!isObject(gRaw) || !Array.isArray(gRaw.members) || gRaw.members.length === 0) at(`group ${gi} has no members`);
      for (const m of (gRaw as Record<string, unknown>).members as unknown[]) {
        if (!Number.isInteger(m) || (m as number) < 0 || (m as number) >= E) at(`group ${gi}: expert ${JSON.stringify(m)} is not one of 0..${E - 1}`);
        if (seen[m as number] >= 0) at(`expert ${m} is in groups ${seen[m as number]} and ${gi}`);
        seen[m as number] = gi;
      }
    });
    const missing = seen.findIndex((s) => s < 0);
    if (missing >= 0) at(`expert ${missing} is in no group`);
    const groups: PlannedGroup[] = (gs as Record<string, unknown>[]).map((gRaw, gi) => {
      const members = gRaw.members as number[];
      if (gRaw.anchor !== members[0]) at(`group ${gi}: the anchor (${JSON.stringify(gRaw.anchor)}) must be listed first among its members`);
      const weights = gRaw.weights;
      if (!Array.isArray(weights) || weights.length !== members.length || weights.some((w) => typeof w !== 'number' || !Number.isFinite(w) || w < 0)) {
        at(`group ${gi}: weights must be ${members.length} non-negative numbers, one per member`);
      }
      const sum = (weights as number[]).reduce((a, b) => a + b, 0);
      if (Math.abs(sum - 1) > 1e-9) at(`group ${gi}: member weights sum to ${sum}, not 1`);
      const alignment =
        Array.isArray(gRaw.alignment) && gRaw.alignment.length === members.length ? (gRaw.alignment as GroupReport['alignment']) : members.map(() => null);
      const g: PlannedGroup = { anchor: members[0]!, members, weights: weights as number[], alignment };
      if (gRaw.perms !== undefined) {
        if (!Array.isArray(gRaw.perms) || gRaw.perms.length !== members.length || gRaw.perms[0] !== null)
          at(`group ${gi}: perms must list one entry per member, null for the anchor`);
        g.perms = (gRaw.perms as unknown[]).map((p, k) => {
          if (p === null) return null;
          const perm = fromB64(p, (b, n) => new Int32Array(b, 0, n), I, `group ${gi}, member ${members[k]}: the permutation`, at);
          const hit = new Uint8Array(I);
          for (const v of perm) {
            if (v < 0 || v >= I || hit[v]) at(`group ${gi}, member ${members[k]}: the permutation is not one of 0..${I - 1}`);
            hit[v] = 1;
          }
          return perm;
        });
      }
      // a member of weight 0 (dropped by --drop auto) is not averaged and needs no permutation
      if (members.length > 1 && fromHiddenStates(getAlign(choices.align)) && !members.every((_, k) => k === 0 || g.weights[k] === 0 || g.perms?.[k])) {
        at(`group ${gi}: ${getAlign(choices.align).fromHiddenStates} is data-dependent and the plan lacks the members' permutations`);
      }
      return g;
    });
    const crossing = routingGroupProblem(groups, E, mergeRoutingGroups(view.routing));
    if (crossing) at(`the groups break group-limited routing: ${crossing}`);
    const router = isObject(raw!.router) ? (raw!.router as LayerReport['router']) : at('router is missing');
    if (router.method !== choices.router) at(`router rows are '${router.method}', this command has --router ${choices.router}`);
    const planned: PlannedLayer = { layer: L, groups, router };
    if (isObject(raw!.decision)) planned.decision = raw!.decision as unknown as DecisionReport;
    if (raw!.rows !== undefined) {
      if (!isObject(raw!.rows)) at('rows is not an object');
      const rr = raw!.rows as Record<string, unknown>;
      const floats = (v: unknown, n: number, what: string) => {
        const a = fromB64(v, (b, k) => new Float32Array(b, 0, k), n, `router ${what}`, at);
        if (a.some((x) => !Number.isFinite(x))) at(`router ${what} holds a non-finite value`);
        return a;
      };
      const rows: RouterWeights = { w: floats(rr.w, N * H, 'rows') };
      for (const [key, ref] of [
        ['bias', block.router.bias],
        ['correctionBias', block.router.correctionBias],
      ] as const) {
        if (ref && rr[key] === undefined) at(`the model's router has a ${key === 'bias' ? 'bias' : 'selection bias'}; the plan's rows lack it`);
        if (!ref && rr[key] !== undefined) at(`the plan has a router ${key} this model's router does not have`);
        if (ref) rows[key] = floats(rr[key], N, key);
      }
      planned.rows = rows;
    }
    if (fromHiddenStates(getRouter(choices.router)) && !planned.rows)
      at(`the ${getRouter(choices.router).fromHiddenStates} are data-dependent and missing from the plan`);
    layers.push(planned);
  }
  return { mode: r.mode as PlanMode, tokens: r.tokens as number, layers };
}

/**
 * What the shard manifest digests besides the tensor list: the choices, the groups and weights, and a hash of the
 * stored permutations and rows (new tensors carry no input source, so two plans can share every name and shape).
 */
export function shardDecisions(plan: MergePlan, choices: MergeChoices): unknown {
  const h = createHash('sha256');
  for (const l of plan.layers) {
    for (const g of l.groups) for (const p of g.perms ?? []) h.update(p ? Buffer.from(p.buffer, p.byteOffset, p.byteLength) : Buffer.alloc(0)).update('|');
    for (const v of [l.rows?.w, l.rows?.bias, l.rows?.correctionBias]) if (v) h.update(Buffer.from(v.buffer, v.byteOffset, v.byteLength)).update('|');
  }
  return {
    choices: { grouping: choices.grouping, align: choices.align, weighting: choices.weighting, router: choices.router },
    mode: plan.mode,
    layers: plan.layers.map((l) => [l.layer, l.groups.map((g) => [g.members, g.weights])]),
    application: h.digest('hex'),
  };
}

/** The report's view of a planned layer (no permutations or rows). */
export function layerReport(l: PlannedLayer): LayerReport {
  return {
    layer: l.layer,
    groups: l.groups.map((g) => ({ anchor: g.anchor, members: g.members, weights: g.weights, alignment: g.alignment })),
    router: l.router,
    ...(l.decision ? { decision: l.decision } : {}),
  };
}
