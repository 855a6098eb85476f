/**
 * Writing an edited checkpoint in the family's own format.
 *
 * Two layers:
 * - rewriteCheckpoint: the general per-tensor rewrite every pipeline shares. Each input tensor is kept (copied
 *   byte for byte, in chunks), dropped, or replaced by new tensors (a spec plus an async producer); new tensors
 *   may be added; config keys updated. The whole output plan (names, dtypes, shapes) is fixed before any byte is
 *   written, so the writer lays out shards and headers up front, and a dry run returns that plan. Tensors are
 *   produced one at a time in layer order, so memory stays bounded by the largest single tensor a producer makes.
 * - writeExpertEdit: prune/merge on top of it. Per MoE layer the new list of experts (copied from an input expert
 *   byte for byte, or new float32 weights encoded in the input's storage format), the router rows in lockstep
 *   (weight, bias, e_score_correction_bias), and the coupled config keys (expert count, top-k, expert groups).
 */
import { mtpCountKey, mtpIndices, mtpLayerOfTensor } from './mtp.js';
import { fail } from '../errors.js';
import type { HFConfig } from '../io/checkpoint.js';
import { DTYPE_BYTES, fromF32, type Dtype } from '../io/dtype.js';
import { OutputDir } from '../io/output.js';
import { quantizeFp8Blocks } from '../io/quantized.js';
import type { TensorSpec } from '../io/writer.js';
import type { Linear, SwiGLUWeights } from './types.js';
import { formatOf, linearTensors, transpose } from './load.js';
import type { Model } from './open.js';
import { encodeMxfp4 } from './quantized.js';
import { configStyle } from './configjson.js';
import { lowRankIdentityUpdates } from './lowrank.js';
import { isPerLayerSection, perLayerIdentityUpdates } from './perlayer.js';
import { containerConfigUpdates, viewArchitecture } from './container.js';
import type { LinearRef, MoeBlock, ModelView, SwiGLURefs } from './types.js';
import { planDigest, SHARD_MANIFEST, shardOwner, type ShardManifest, type ShardSpec } from './shard.js';
import { fillTemplate } from './view.js';

// ---- general per-tensor rewrite ------------------------------------------------------------------------------

export interface NewTensor {
  spec: TensorSpec;
  /** the tensor's raw little-endian bytes in spec.dtype; called once, when the tensor's turn comes */
  produce(): Promise<Uint8Array>;
}

export type TensorFate =
  | { kind: 'keep' }
  | { kind: 'drop' }
  /** replaced by these tensors (possibly under other names), written where the input tensor was */
  | { kind: 'replace'; tensors: NewTensor[] };

export interface RewritePlan {
  /** fate of input tensors by name; tensors without an entry are kept */
  fates?: ReadonlyMap<string, TensorFate>;
  /** extra tensors, written after the input tensors of `layer` (undefined: after everything) */
  added?: { layer?: number; tensor: NewTensor }[];
  /** config.json keys to set; null deletes a key */
  config?: Record<string, unknown>;
}

export interface RewriteOptions {
  force?: boolean;
  /** return the plan without writing anything */
  dryRun?: boolean;
  maxShardBytes?: number;
  /** layer-parallel job: write only this shard's layers plus the plan's manifest (src/model/shard.ts) */
  shard?: ShardSpec;
  onProgress?(done: number, total: number, name: string): void;
  /** the output is open: its staging directory, and whether a planned tensor is finished (by a killed earlier run too) */
  onOpen?(info: { dir: string; isWritten(name: string): boolean }): void | Promise<void>;
}

export interface PlannedTensor {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
  bytes: number;
  /** 'copy': an input tensor's bytes (source = its input name); 'new': produced */
  origin: 'copy' | 'new';
  source?: string;
}

export interface RewriteResult {
  out: string;
  dryRun: boolean;
  tensors: PlannedTensor[];
  totalBytes: number;
  config: HFConfig;
  /** shard files written (empty for a dry run) */
  shards: string[];
}

/** Copy in pieces of at most this many bytes so a multi-GB embedding never sits in memory whole. */
const COPY_CHUNK_BYTES = 64 << 20;

/** Decoder layer of a tensor name (-1 before all layers: embeddings; Infinity after: final norm, lm_head). */
const prefixParts = new Map<string, [string, string]>();

export function layerOfTensor(view: ModelView, name: string): number {
  const mtp = mtpLayerOfTensor(view.family, view.dims.layers, name);
  if (mtp !== undefined) return mtp;
  const key = `${view.container?.model_type ?? ''}/${view.family}`;
  let parts = prefixParts.get(key);
  if (!parts) prefixParts.set(key, (parts = viewArchitecture(view).tensors.layerPrefix.split('${layer}') as [string, string]));
  const [head, tail] = parts;
  if (name.startsWith(head)) {
    const rest = name.slice(head.length);
    const m = /^(\d+)/.exec(rest);
    if (m && rest.slice(m[1]!.length).startsWith(tail)) return Number(m[1]);
  }
  return name === view.embed || /embed/.test(name) ? -1 : Infinity;
}

export function applyConfigUpdates(config: HFConfig, updates: Record<string, unknown> = {}): HFConfig {
  const out = structuredClone(config) as HFConfig;
  for (const [k, v] of Object.entries(updates)) {
    if (v === null) delete out[k];
    else out[k] = v;
  }
  return out;
}

interface Entry {
  planned: PlannedTensor;
  write(w: { write(n: string, b: Uint8Array): Promise<void>; writePart(n: string, off: number, b: Uint8Array): Promise<void> }): Promise<void>;
}

export async function rewriteCheckpoint(model: Model, plan: RewritePlan, out: string, opts: RewriteOptions = {}): Promise<RewriteResult> {
  const { ckpt, view } = model;
  const fates = plan.fates ?? new Map<string, TensorFate>();
  for (const name of fates.keys()) if (!ckpt.has(name)) fail('OutputError', `internal plan error: fate given for '${name}', which the input does not have`);

  const names = ckpt.tensorNames.map((n, i) => ({ n, i, layer: layerOfTensor(view, n) }));
  names.sort((a, b) => a.layer - b.layer || a.i - b.i);
  const added = [...(plan.added ?? [])];
  const entries: Entry[] = [];
  const pushNew = (t: NewTensor) =>
    entries.push({
      planned: { name: t.spec.name, dtype: t.spec.dtype, shape: t.spec.shape, bytes: bytesOf(t.spec), origin: 'new' },
      write: async (w) => {
        const b = await t.produce();
        await w.write(t.spec.name, b);
      },
    });
  const flushAdded = (upTo: number) => {
    for (let k = 0; k < added.length; ) {
      const a = added[k]!;
      if ((a.layer ?? Infinity) <= upTo && a.layer !== undefined) {
        pushNew(a.tensor);
        added.splice(k, 1);
      } else k++;
    }
  };
  let prevLayer = -Infinity;
  for (const { n, layer } of names) {
    if (layer !== prevLayer) {
      flushAdded(prevLayer);
      prevLayer = layer;
    }
    const fate = fates.get(n) ?? { kind: 'keep' };
    if (fate.kind === 'drop') continue;
    if (fate.kind === 'replace') {
      for (const t of fate.tensors) pushNew(t);
      continue;
    }
    const info = ckpt.info(n);
    const total = info.end - info.begin;
    const width = DTYPE_BYTES[info.dtype];
    entries.push({
      planned: { name: n, dtype: info.dtype, shape: info.shape, bytes: total, origin: 'copy', source: n },
      write: async (w) => {
        if (total <= COPY_CHUNK_BYTES) {
          await w.write(n, await ckpt.readBytes(n));
          return;
        }
        const step = Math.max(1, Math.floor(COPY_CHUNK_BYTES / width));
        const elems = total / width;
        for (let e = 0; e < elems; e += step) {
          await w.writePart(n, e * width, await ckpt.readBytes(n, e, Math.min(elems, e + step)));
        }
      },
    });
  }
  flushAdded(Infinity);
  for (const a of added) pushNew(a.tensor);

  // inside a multimodal container the language model's keys are edited in its text config (src/model/container.ts)
  const updates = view.container ? containerConfigUpdates(view.container, ckpt.config, plan.config ?? {}) : plan.config;
  const edited = applyConfigUpdates(ckpt.config, updates);
  // one `moe` section describes one format: a per-layer input cannot take another (decompose's factors)
  if (isPerLayerSection(ckpt.config.moe) && edited.moe !== undefined && !isPerLayerSection(edited.moe))
    fail('Usage', `${model.dir} has per-layer expert counts (moe_perlayer_*); low-rank factors cannot be added to it (prune it uniformly first)`);
  // factors in the output: its own model_type and class, so stock loaders refuse it; none: the stock names back
  const config = applyConfigUpdates(edited, lowRankIdentityUpdates(ckpt.config, edited));
  const planned = entries.map((e) => e.planned);
  const totalBytes = planned.reduce((a, t) => a + t.bytes, 0);
  const result: RewriteResult = { out, dryRun: !!opts.dryRun, tensors: planned, totalBytes, config, shards: [] };
  if (opts.dryRun) return result;

  const shard = opts.shard;
  const mine = (t: PlannedTensor) => !shard || shardOwner(layerOfTensor(model.view, t.name), shard.count) === shard.index;
  const dir = await OutputDir.create(out, { force: opts.force, inputDir: model.dir });
  let writer: Awaited<ReturnType<OutputDir['openWriter']>> | undefined;
  try {
    writer = await dir.openWriter(
      planned.filter(mine).map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })),
      opts.maxShardBytes ? { maxShardBytes: opts.maxShardBytes } : undefined,
    );
    const w = writer;
    await opts.onOpen?.({ dir: dir.staging, isWritten: (n) => w.isWritten(n) });
    for (let k = 0; k < entries.length; k++) {
      // another shard's tensor is neither produced nor written; producers are lazy, so its compute is skipped too,
      // and so is a tensor a killed earlier run of this command already finished
      if (mine(planned[k]!) && !writer.isWritten(planned[k]!.name)) await entries[k]!.write(writer);
      opts.onProgress?.(k + 1, entries.length, planned[k]!.name);
    }
    result.shards = await writer.finalize();
    if (shard) {
      const tensors = planned.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, ...(t.source ? { source: t.source } : {}) }));
      const manifest: ShardManifest = {
        format: 'moe-shard',
        version: 1,
        index: shard.index,
        count: shard.count,
        digest: planDigest(tensors, config, shard.plan),
        config,
        tensors,
        ...(shard.plan !== undefined ? { plan: shard.plan } : {}),
      };
      await dir.writeJson(SHARD_MANIFEST, manifest);
    }
    await dir.writeConfig(config, ckpt.configText, configStyle(view.family));
    await dir.copyPassthrough(model.dir);
    await dir.publish();
  } catch (e) {
    await writer?.abort();
    await dir.discard();
    throw e;
  }
  return result;
}

function bytesOf(t: TensorSpec): number {
  return t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
}

// ---- expert surgery -----------------------------------------------------------------------------------------

/** Where one output expert comes from: an input expert (copied byte for byte) or new float32 weights. */
export type ExpertSource =
  | { from: number }
  /** new weights (e.g. a merge); `group`: the expert group it belongs to under group-limited routing */
  | { weights: SwiGLUWeights | (() => Promise<SwiGLUWeights>); group?: number };

/** New router rows, in the runtime's convention (MoeLayerInput.router, loadRouter). */
export interface RouterRows {
  /** [E', H] */
  w: Float32Array;
  /** [E'] */
  bias?: Float32Array;
  /** [E'] */
  correctionBias?: Float32Array;
}

export interface LayerExpertEdit {
  layer: number;
  experts: ExpertSource[];
  /** new router rows; omitted: the input rows of the `from` experts (byte for byte), in the new order */
  router?: RouterRows;
}

export interface ExpertEditPlan {
  /** MoE layers to edit; a MoE layer not listed keeps all its experts */
  layers: readonly LayerExpertEdit[];
  /** group-limited routing of the output: kept (same n_group, each new group filled from its own input group)
   *  or flattened ({nGroup: 1, topkGroup: 1}); omitted: keep when the experts allow it, else refuse */
  groups?: { nGroup: number; topkGroup: number };
  /** new top-k (default: unchanged) */
  topK?: number;
  /** further config.json keys to set */
  config?: Record<string, unknown>;
  /**
   * allow MoE layers with different expert counts: the output is written in moe's own per-layer format
   * (src/model/perlayer.ts), which stock loaders refuse; without it unequal counts are an error
   */
  perLayer?: boolean;
}

export interface ExpertEditOptions extends RewriteOptions {
  /** lower top-k to the expert count when fewer experts than top-k remain (otherwise an error) */
  clampTopK?: boolean;
  /** drop the multi-token-prediction layers (num_nextn_predict_layers -> 0) instead of keeping them consistent */
  dropMtp?: boolean;
}

export interface ExpertEditResult extends RewriteResult {
  /** the count key's value (with per-layer counts: the largest) */
  numExperts: number;
  /** per-layer output (ExpertEditPlan.perLayer): each MoE layer's count, in moeLayers order */
  expertsPerLayer?: number[];
  topK: number;
  /** multi-token-prediction layers written (edited like the others, or copied) and dropped */
  mtp?: { kept: number[]; dropped: number[] };
  groups?: { nGroup: number; topkGroup: number };
}

function resolveWeights(src: Extract<ExpertSource, { weights: unknown }>): Promise<SwiGLUWeights> {
  return typeof src.weights === 'function' ? src.weights() : Promise.resolve(src.weights);
}

/** Validate the plan against the model and decide the output expert count, top-k and group keys. */
function checkExpertPlan(
  view: ModelView,
  plan: ExpertEditPlan,
  opts: ExpertEditOptions,
): { E2: number; topK: number; groups?: { nGroup: number; topkGroup: number }; edits: Map<number, LayerExpertEdit>; perLayer?: number[] } {
  const E = view.dims.numExperts;
  // a layer's own count (a per-layer input's differ; dims.numExperts is the largest)
  const countOf = (l: number): number => {
    const b = l < view.dims.layers ? view.layers[l]?.block : view.mtp?.find((m) => m.layer.index === l)?.layer.block;
    return b?.kind === 'moe' ? b.experts.length : E;
  };
  const H = view.dims.hidden;
  const edits = new Map<number, LayerExpertEdit>();
  const mtp = mtpIndices(view);
  for (const le of plan.layers) {
    if (!view.moeLayers.includes(le.layer) && !mtp.includes(le.layer))
      fail('Usage', `layer ${le.layer} is not a MoE layer of this ${view.family} model (MoE layers: ${[...view.moeLayers, ...mtp].join(', ')})`);
    if (edits.has(le.layer)) fail('Usage', `layer ${le.layer} is edited twice`);
    if (le.experts.length === 0) fail('Usage', `layer ${le.layer}: at least one expert must remain`);
    for (const s of le.experts) {
      if ('from' in s && (!Number.isInteger(s.from) || s.from < 0 || s.from >= countOf(le.layer)))
        fail('Usage', `layer ${le.layer}: expert ${s.from} does not exist (the model has ${countOf(le.layer)})`);
    }
    const allFrom = le.experts.every((s) => 'from' in s);
    if (!allFrom && !le.router) fail('Usage', `layer ${le.layer}: new expert weights need new router rows (router.w [${le.experts.length}, ${H}])`);
    if (le.router) {
      const n = le.experts.length;
      if (le.router.w.length !== n * H) fail('Usage', `layer ${le.layer}: router weight has ${le.router.w.length} values, expected ${n}x${H}`);
      for (const k of ['bias', 'correctionBias'] as const) {
        const v = le.router[k];
        if (v && v.length !== n) fail('Usage', `layer ${le.layer}: router ${k} has ${v.length} values, expected ${n}`);
      }
    }
    edits.set(le.layer, le);
  }
  // MTP layers count when edited (one left unedited is kept or dropped by writeExpertEdit)
  const counted = [...view.moeLayers, ...mtp.filter((l) => edits.has(l))];
  const counts = counted.map((l) => edits.get(l)?.experts.length ?? countOf(l));
  const first = counts[0] ?? E;
  const odd = counted.find((_, i) => counts[i] !== first);
  let perLayer: number[] | undefined;
  if (odd !== undefined) {
    if (!plan.perLayer)
      fail(
        'Usage',
        `every MoE layer must have the same number of experts (stock loaders read one '${view.numExpertsKey}'): layer ${counted[0]} has ${first}, layer ${odd} has ${counts[counted.indexOf(odd)]}`,
      );
    // the per-layer format records one count per decoder MoE layer, under one routing rule
    if (view.container) fail('Usage', `per-layer expert counts: ${view.family} inside ${view.container.model_type} is not supported`);
    if (view.routing.groups) fail('Usage', `per-layer expert counts: ${view.family} routes within expert groups, which would have to stay even`);
    if (mtp.length && !opts.dropMtp) fail('Usage', 'per-layer expert counts: the multi-token-prediction layers are not planned per layer (give --drop-mtp)');
    perLayer = counts.slice(0, view.moeLayers.length);
  }
  // the count key holds the largest count; top-k must fit the smallest
  const E2 = perLayer ? Math.max(...perLayer) : first;
  const Emin = perLayer ? Math.min(...perLayer) : first;
  let topK = plan.topK ?? view.dims.topK;
  if (!Number.isInteger(topK) || topK < 1) fail('Usage', `top-k must be a positive integer, got ${topK}`);
  if (topK > Emin) {
    if (!opts.clampTopK || plan.topK !== undefined)
      fail('Usage', `${Emin} experts cannot serve top-k ${topK}: keep at least ${topK} experts or lower '${view.topKKey}'`);
    topK = Emin;
  }
  if (perLayer) return { E2, topK, edits, perLayer };

  const g = view.routing.groups;
  if (!g) {
    if (plan.groups && plan.groups.nGroup !== 1) fail('Usage', `this model has no group-limited routing; groups ${plan.groups.nGroup} cannot be set`);
    return { E2, topK, edits };
  }
  const groupOf = (s: ExpertSource): number | undefined => ('from' in s ? Math.floor(s.from / (E / g.nGroup)) : s.group);
  const membershipOk = (nGroup: number) => [...edits.values()].every((le) => le.experts.every((s, i) => groupOf(s) === Math.floor(i / (E2 / nGroup))));
  let groups = plan.groups;
  if (!groups) {
    if (E2 % g.nGroup === 0 && membershipOk(g.nGroup)) groups = { nGroup: g.nGroup, topkGroup: g.topkGroup };
    else {
      fail(
        'Usage',
        `group-limited routing (n_group ${g.nGroup}, topk_group ${g.topkGroup}): the experts kept must fill every group equally, in group order; ` +
          `keep the same number from each group (new experts must name their group), or flatten the groups with {nGroup: 1, topkGroup: 1} (this changes routing)`,
      );
    }
  }
  if (
    !Number.isInteger(groups.nGroup) ||
    groups.nGroup < 1 ||
    !Number.isInteger(groups.topkGroup) ||
    groups.topkGroup < 1 ||
    groups.topkGroup > groups.nGroup
  ) {
    fail('Usage', `invalid expert groups: n_group ${groups.nGroup}, topk_group ${groups.topkGroup}`);
  }
  if (groups.nGroup > 1) {
    if (groups.nGroup !== g.nGroup) fail('Usage', `n_group can stay ${g.nGroup} or become 1 (flattened), not ${groups.nGroup}`);
    if (E2 % groups.nGroup !== 0) fail('Usage', `${E2} experts do not split into ${groups.nGroup} equal groups`);
    if (!membershipOk(groups.nGroup))
      fail(
        'Usage',
        `with n_group ${groups.nGroup} each group of the output must be filled from the same input group, in order (${E2 / groups.nGroup} per group)`,
      );
    if (g.groupScore === 'top2sum' && E2 / groups.nGroup < 2)
      fail('Usage', `group scores sum each group's top-2 experts: keep at least 2 per group (${2 * groups.nGroup} experts)`);
    if (groups.topkGroup * (E2 / groups.nGroup) < topK)
      fail('Usage', `topk_group ${groups.topkGroup} groups of ${E2 / groups.nGroup} experts cannot supply top-k ${topK}`);
  }
  return { E2, topK, groups, edits };
}

/** The common tensor-name prefix of an expert's three linears, cut at a dot ("...experts.3."). */
function expertPrefix(refs: SwiGLURefs): string {
  const a = refs.gate.tensor,
    b = refs.up.tensor,
    c = refs.down.tensor;
  let n = 0;
  while (n < a.length && a[n] === b[n] && a[n] === c[n]) n++;
  return a.slice(0, a.lastIndexOf('.', n - 1) + 1);
}

/** Encode one new float32 linear in the storage format of the input tensor it replaces. */
function encodeLike(model: Model, ref: LinearRef, lin: Linear, outName: string): NewTensor[] {
  const { ckpt } = model;
  if (formatOf(ckpt, ref))
    fail('Usage', `'${ref.tensor}' is stored as ${formatOf(ckpt, ref)!.name}; new expert weights cannot be written in that format (dequantize first)`);
  const st = ckpt.storage(ref.tensor);
  const [rows, cols] = [ref.outFeatures, ref.inFeatures];
  if (lin.out !== rows || lin.in !== cols) fail('Usage', `new weights for '${outName}' are [${lin.out}, ${lin.in}], expected [${rows}, ${cols}]`);
  if (st.blockScale) {
    const [b0, b1] = st.blockScale.block;
    if (b0 !== b1) fail('Usage', `'${ref.tensor}': FP8 blocks ${b0}x${b1} are not square; cannot re-quantize`);
    const q = quantizeFp8Blocks(lin.w, rows, cols, b0);
    return [
      { spec: { name: outName, dtype: st.dtype, shape: [rows, cols] }, produce: async () => q.bytes },
      {
        spec: { name: `${outName}_scale_inv`, dtype: ckpt.dtype(st.blockScale.scaleName), shape: q.scaleShape },
        produce: async () => fromF32(q.scaleInv, ckpt.dtype(st.blockScale!.scaleName)),
      },
    ];
  }
  return [{ spec: { name: outName, dtype: st.dtype, shape: [rows, cols] }, produce: async () => fromF32(lin.w, st.dtype) }];
}

/** Byte slices along dim 0 of a tensor [E, ...] for the given experts, concatenated, with new parts encoded. */
async function stackExperts(
  model: Model,
  name: string,
  sources: ExpertSource[],
  encodeNew: (w: SwiGLUWeights) => Uint8Array,
  weights: (i: number) => Promise<SwiGLUWeights>,
): Promise<Uint8Array> {
  const info = model.ckpt.info(name);
  const per = info.shape.slice(1).reduce((a, b) => a * b, 1);
  const perBytes = per * DTYPE_BYTES[info.dtype];
  const out = new Uint8Array(sources.length * perBytes);
  for (let i = 0; i < sources.length; i++) {
    const s = sources[i]!;
    const part = 'from' in s ? await model.ckpt.readBytes(name, s.from * per, (s.from + 1) * per) : encodeNew(await weights(i));
    if (part.byteLength !== perBytes) fail('Usage', `new expert ${i} for '${name}' encodes to ${part.byteLength} bytes, expected ${perBytes}`);
    out.set(part, i * perBytes);
  }
  return out;
}

/** Fused gate_up (or down) of one expert, [out, in] float32, in the on-disk row order. */
function fusedRows(ref: LinearRef, w: SwiGLUWeights, which: 'gateUp' | 'down', what: 'w' | 'b'): Float32Array {
  if (which === 'down') {
    if (what === 'b') return w.down.b ?? fail('Usage', `new expert weights need a down bias for '${ref.bias}'`);
    return w.down.w;
  }
  const g = what === 'w' ? w.gate.w : (w.gate.b ?? fail('Usage', `new expert weights need gate/up biases for '${ref.bias}'`));
  const u = what === 'w' ? w.up.w : (w.up.b ?? fail('Usage', `new expert weights need gate/up biases for '${ref.bias}'`));
  const cols = what === 'w' ? w.gate.in : 1;
  const I = w.gate.out;
  const out = new Float32Array(2 * I * cols);
  if (ref.interleave) {
    for (let r = 0; r < I; r++) {
      out.set(g.subarray(r * cols, (r + 1) * cols), 2 * r * cols);
      out.set(u.subarray(r * cols, (r + 1) * cols), (2 * r + 1) * cols);
    }
  } else {
    out.set(g, 0);
    out.set(u, I * cols);
  }
  return out;
}

function layerTensorsFused(
  model: Model,
  block: MoeBlock,
  sources: ExpertSource[],
  weights: (i: number) => Promise<SwiGLUWeights>,
): { drop: string[]; make: NewTensor[] } {
  const { ckpt } = model;
  const E2 = sources.length;
  const drop: string[] = [];
  const make: NewTensor[] = [];
  const e0 = block.experts[0]!;
  for (const [which, ref] of [
    ['gateUp', e0.gate],
    ['down', e0.down],
  ] as const) {
    const outF = which === 'gateUp' ? 2 * ref.outFeatures : ref.outFeatures;
    const inF = ref.inFeatures;
    const fmt = formatOf(ckpt, ref);
    const weightTensors = linearTensors(ckpt, ref);
    for (const name of weightTensors) {
      const info = ckpt.info(name);
      // a format that stores each expert as its own module (GPTQModel's layout of fused experts) has no expert axis
      if (info.shape[0] !== block.experts.length)
        fail(
          'Usage',
          `'${ref.tensor}' is stored per expert as ${fmt?.name ?? 'separate tensors'} ('${name}'); edit the experts before quantizing, or dequantize first`,
        );
      drop.push(name);
      let encode: (w: SwiGLUWeights) => Uint8Array;
      if (fmt?.name === 'mxfp4') {
        const isBlocks = name.endsWith('_blocks');
        encode = (w) => {
          const m = encodeMxfp4(fusedRows(ref, w, which, 'w'), outF, inF);
          return isBlocks ? m.blocks : m.scales;
        };
      } else if (fmt) {
        encode = () => fail('Usage', `'${ref.tensor}' is stored as ${fmt.name}; new expert weights cannot be written in that format (dequantize first)`);
      } else {
        encode = (w) => {
          const rows = fusedRows(ref, w, which, 'w');
          return fromF32(ref.transposed ? transpose(rows, outF, inF) : rows, info.dtype);
        };
      }
      make.push({ spec: { name, dtype: info.dtype, shape: [E2, ...info.shape.slice(1)] }, produce: () => stackExperts(model, name, sources, encode, weights) });
    }
    if (ref.bias) {
      const info = ckpt.info(ref.bias);
      drop.push(ref.bias);
      make.push({
        spec: { name: ref.bias, dtype: info.dtype, shape: [E2, ...info.shape.slice(1)] },
        produce: () => stackExperts(model, ref.bias!, sources, (w) => fromF32(fusedRows(ref, w, which, 'b'), info.dtype), weights),
      });
    }
  }
  return { drop, make };
}

function layerTensorsPerExpert(
  model: Model,
  layer: number,
  layerNames: readonly string[],
  block: MoeBlock,
  sources: ExpertSource[],
  weights: (i: number) => Promise<SwiGLUWeights>,
): { drop: string[]; make: NewTensor[] } {
  const { ckpt, view } = model;
  const arch = viewArchitecture(view);
  const ex = arch.tensors.experts;
  if (ex.layout !== 'per-expert') throw new Error('unreachable');
  // the layer's own prefix: an mtp.* MTP layer is not under the decoder layers' template
  const layerPrefix = layer < view.dims.layers ? fillTemplate(arch.tensors.layerPrefix, layer) : view.mtp!.find((m) => m.layer.index === layer)!.layer.prefix;
  const outRefs = (i: number): SwiGLURefs => {
    const mk = (tpl: string, o: number, n: number): LinearRef => ({ tensor: layerPrefix + fillTemplate(tpl, undefined, i), outFeatures: o, inFeatures: n });
    const { hidden: H, expertIntermediate: I } = view.dims;
    return { gate: mk(ex.gate, I, H), up: mk(ex.up, I, H), down: mk(ex.down, H, I) };
  };
  const inPrefixes = block.experts.map(expertPrefix);
  // each expert's tensors (weights, FP8 scales, a registered format's parts): a name belongs to the expert whose
  // prefix it starts with, found by looking up each of its dot-terminated prefixes (no scan per expert)
  const prefixIndex = new Map(inPrefixes.map((p, j) => [p, j]));
  const byExpert: string[][] = inPrefixes.map(() => []);
  for (const n of layerNames) {
    for (let dot = n.indexOf('.'); dot >= 0; dot = n.indexOf('.', dot + 1)) {
      const j = prefixIndex.get(n.slice(0, dot + 1));
      if (j !== undefined) {
        byExpert[j]!.push(n);
        break;
      }
    }
  }
  const drop = byExpert.flat();
  const make: NewTensor[] = [];
  sources.forEach((s, i) => {
    const outPrefix = expertPrefix(outRefs(i));
    if ('from' in s) {
      for (const n of byExpert[s.from]!) {
        const info = ckpt.info(n);
        make.push({ spec: { name: outPrefix + n.slice(inPrefixes[s.from]!.length), dtype: info.dtype, shape: info.shape }, produce: () => ckpt.readBytes(n) });
      }
      return;
    }
    const refs = block.experts[0]!;
    const outs = outRefs(i);
    // encoded lazily, one expert at a time: the first of its tensors loads the weights, the last releases them
    let cached: Promise<SwiGLUWeights> | undefined;
    const get = () => (cached ??= weights(i));
    const parts: NewTensor[] = [];
    for (const role of ['gate', 'up', 'down'] as const) {
      const specs = encodeSpecs(model, refs[role], outs[role].tensor);
      specs.forEach((spec, k) =>
        parts.push({
          spec,
          produce: async () => encodeLike(model, refs[role], (await get())[role], outs[role].tensor)[k]!.produce(),
        }),
      );
    }
    const last = parts[parts.length - 1]!;
    const lastProduce = last.produce;
    last.produce = async () => {
      const b = await lastProduce();
      cached = undefined;
      return b;
    };
    make.push(...parts);
  });
  return { drop, make };
}

/** Output specs encodeLike will produce for a linear stored like `ref` (known before the weights exist). */
function encodeSpecs(model: Model, ref: LinearRef, outName: string): TensorSpec[] {
  const { ckpt } = model;
  if (formatOf(ckpt, ref))
    fail('Usage', `'${ref.tensor}' is stored as ${formatOf(ckpt, ref)!.name}; new expert weights cannot be written in that format (dequantize first)`);
  const st = ckpt.storage(ref.tensor);
  const specs: TensorSpec[] = [{ name: outName, dtype: st.dtype, shape: [ref.outFeatures, ref.inFeatures] }];
  if (st.blockScale) specs.push({ name: `${outName}_scale_inv`, dtype: ckpt.dtype(st.blockScale.scaleName), shape: st.blockScale.scaleShape });
  return specs;
}

/** Router tensors of the edited layer: input rows in the new order (byte for byte), or the given rows. */
function routerTensors(model: Model, block: MoeBlock, edit: LayerExpertEdit): { drop: string[]; make: NewTensor[] } {
  const { ckpt } = model;
  const E2 = edit.experts.length;
  const drop: string[] = [];
  const make: NewTensor[] = [];
  const parts = [
    ['w', block.router.weight],
    ['bias', block.router.bias],
    ['correctionBias', block.router.correctionBias],
  ] as const;
  for (const [key, name] of parts) {
    if (!name) continue;
    const info = ckpt.info(name);
    // the layer's own count (a per-layer input's differ)
    const E = block.experts.length;
    // [E, H] weights, [E] biases, or ernie's [1, E] correction bias (experts on the last axis, one row)
    const oneRow = key !== 'w' && info.shape.length === 2 && info.shape[0] === 1 && info.shape[1] === E;
    if (!oneRow && (info.shape[0] !== E || (info.shape.length === 2 && key !== 'w'))) {
      fail('Usage', `router tensor '${name}' has shape [${info.shape.join(', ')}]; expected the experts on its first axis`);
    }
    const per = oneRow ? 1 : info.shape.slice(1).reduce((a, b) => a * b, 1);
    drop.push(name);
    const given = edit.router?.[key];
    if (edit.router && !given && key !== 'w')
      fail('Usage', `layer ${edit.layer}: the router has a ${key === 'bias' ? 'bias' : 'e_score_correction_bias'}; give router.${key} with the new rows`);
    make.push({
      spec: { name, dtype: info.dtype, shape: oneRow ? [1, E2] : [E2, ...info.shape.slice(1)] },
      produce: given
        ? async () => fromF32(given, info.dtype)
        : async () => {
            const out = new Uint8Array(E2 * per * DTYPE_BYTES[info.dtype]);
            for (let i = 0; i < E2; i++) {
              const s = edit.experts[i] as { from: number };
              out.set(await ckpt.readBytes(name, s.from * per, (s.from + 1) * per), i * per * DTYPE_BYTES[info.dtype]);
            }
            return out;
          },
    });
  }
  return { drop, make };
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Per-module overrides in quantization_config.dynamic ("+:REGEX" / "-:REGEX", GPTQModel's convention) name experts
 * by index; when experts are removed or reordered those keys must follow them, or a mixed-precision checkpoint
 * would load kept experts with another expert's bit-width. A key naming input expert j of an edited layer becomes
 * one key per output expert copied from j, and is dropped when j is gone (new weights carry no override).
 */
export function renumberDynamic(dynamic: Record<string, unknown>, view: ModelView, edits: ReadonlyMap<number, LayerExpertEdit>): Record<string, unknown> {
  const arch = viewArchitecture(view);
  const ex = arch.tensors.experts;
  if (ex.layout !== 'per-expert' || view.expertLayout !== 'per-expert') return dynamic;
  const [head, mid0] = arch.tensors.layerPrefix.split('${layer}') as [string, string];
  const mid = mid0 + ex.gate.slice(0, ex.gate.indexOf('${expert}'));
  const prefix = (l: number, e: number) => `${head}${l}${mid}${e}.`;
  // keys are regexes: look for the expert prefix with dots escaped (as the quantize pipeline writes) or bare
  const find = new RegExp(`${escapeRe(head)}(\\d+)${escapeRe(mid)}(\\d+)\\.`);
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(dynamic)) {
    const m = find.exec(key.replace(/\\\./g, '.'));
    const edit = m ? edits.get(Number(m[1])) : undefined;
    if (!m || !edit) {
      out[key] = value;
      continue;
    }
    const l = Number(m[1]);
    const j = Number(m[2]);
    const oldEsc = escapeRe(prefix(l, j));
    edit.experts.forEach((s, i) => {
      if (!('from' in s) || s.from !== j) return;
      const k = key.includes(oldEsc) ? key.replace(oldEsc, escapeRe(prefix(l, i))) : key.replace(prefix(l, j), prefix(l, i));
      out[k] = value;
    });
  }
  return out;
}

/**
 * Write a checkpoint whose MoE layers have the experts the plan lists, in the input family's format. Shared
 * experts, dense layers, attention and embeddings are copied byte for byte. Layers beyond num_hidden_layers
 * (DeepSeek/GLM multi-token-prediction heads, which would keep the old expert count) are dropped and
 * num_nextn_predict_layers set to 0.
 */
export async function writeExpertEdit(model: Model, plan: ExpertEditPlan, out: string, opts: ExpertEditOptions = {}): Promise<ExpertEditResult> {
  const { view, ckpt } = model;
  const { E2, topK, groups, edits, perLayer } = checkExpertPlan(view, plan, opts);
  const fates = new Map<string, TensorFate>();
  const namesByLayer = new Map<number, string[]>();
  for (const n of ckpt.tensorNames) {
    const l = layerOfTensor(view, n);
    let list = namesByLayer.get(l);
    if (!list) namesByLayer.set(l, (list = []));
    list.push(n);
  }
  for (const [l, edit] of edits) {
    const block = (l < view.dims.layers ? view.layers[l]! : view.mtp!.find((m) => m.layer.index === l)!.layer).block as MoeBlock;
    const cache = new Map<number, Promise<SwiGLUWeights>>();
    const weights = (i: number) => {
      const s = edit.experts[i] as Extract<ExpertSource, { weights: unknown }>;
      // fused layouts read each new expert once per fused tensor; keep it until the layer is written
      if (view.expertLayout === 'per-expert') return resolveWeights(s);
      let p = cache.get(i);
      if (!p) cache.set(i, (p = resolveWeights(s)));
      return p;
    };
    const experts =
      view.expertLayout === 'fused'
        ? layerTensorsFused(model, block, edit.experts, weights)
        : layerTensorsPerExpert(model, l, namesByLayer.get(l) ?? [], block, edit.experts, weights);
    if (view.expertLayout === 'fused') {
      // release the layer's new experts once its last fused tensor is written, so memory stays one layer
      let left = experts.make.length;
      for (const t of experts.make) {
        const produce = t.produce;
        t.produce = async () => {
          const b = await produce();
          if (--left === 0) cache.clear();
          return b;
        };
      }
    }
    const router = routerTensors(model, block, edit);
    for (const n of [...experts.drop, ...router.drop]) fates.set(n, { kind: 'drop' });
    // everything new goes where the router weight was, router first (the layer order stock writers use varies)
    fates.set(block.router.weight, { kind: 'replace', tensors: [...router.make, ...experts.make] });
  }
  const arch = viewArchitecture(view);
  const config: Record<string, unknown> = { [view.numExpertsKey]: E2, [view.topKKey]: topK };
  // the family's keys are the view's config (a container's text config); quantization_config is the top level's
  for (const k of arch.config.numExpertsAliases) if (k in view.config) config[k] = E2;
  for (const k of arch.config.topKAliases) if (k in view.config) config[k] = topK;
  const qc = ckpt.config.quantization_config as Record<string, unknown> | undefined;
  if (qc?.dynamic && typeof qc.dynamic === 'object' && !Array.isArray(qc.dynamic)) {
    config.quantization_config = { ...qc, dynamic: renumberDynamic(qc.dynamic as Record<string, unknown>, view, edits) };
  }
  Object.assign(config, plan.config);
  // unequal counts: moe's own per-layer identity; equal counts from a per-layer input: the stock identity back
  Object.assign(config, perLayerIdentityUpdates(ckpt.config, perLayer));
  if (groups && view.routing.groups) {
    const g = arch.routing.groups!;
    config[g.nGroupKey] = groups.nGroup;
    config[g.topkGroupKey] = groups.topkGroup;
  }
  // layers after the decoder layers: recognised MTP layers are kept (edited like the others) unless dropMtp; others
  // (an MTP layer moe does not recognise) are dropped when their experts would no longer match
  const mtp = mtpIndices(view);
  const kept: number[] = [];
  const dropped: number[] = [];
  const changed = E2 !== view.dims.numExperts || perLayer !== undefined || view.expertsPerLayer !== undefined;
  if (changed && !opts.dropMtp) {
    const missing = mtp.find((l) => !edits.has(l));
    if (missing !== undefined)
      fail(
        'Usage',
        `multi-token-prediction layer ${missing} has no edit: its ${view.dims.numExperts} experts would not match the other layers' ${E2} (plan it with them, or give --drop-mtp)`,
      );
  }
  const extra = [...namesByLayer.keys()].filter((l) => Number.isFinite(l) && l >= view.dims.layers).sort((a, b) => a - b);
  for (const l of extra) {
    if (opts.dropMtp || (changed && !mtp.includes(l))) {
      for (const n of namesByLayer.get(l)!) fates.set(n, { kind: 'drop' });
      dropped.push(l);
    } else if (mtp.includes(l)) kept.push(l);
  }
  const key = mtpCountKey(view.family) ?? 'num_nextn_predict_layers';
  if (kept.length === 0 && (dropped.length || (changed && view.config[key]))) config[key] = 0;
  else if (kept.length && dropped.length) config[key] = kept.length;
  const r = await rewriteCheckpoint(model, { fates, config }, out, opts);
  return {
    ...r,
    numExperts: E2,
    topK,
    ...(perLayer ? { expertsPerLayer: perLayer } : {}),
    ...(groups ? { groups } : {}),
    ...(kept.length || dropped.length ? { mtp: { kept, dropped } } : {}),
  };
}
