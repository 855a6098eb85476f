/**
 * Write: the input checkpoint with every factored expert linear replaced, either by its factors (moe-lowrank,
 * see format.ts) or, with --materialize, by the dense product in the weight's own dtype (an ordinary checkpoint of
 * the family that any tool loads), through the shared per-tensor rewrite (src/model/rewrite.ts): other tensors
 * are copied byte for byte, new tensors take the place of the first tensor they replace.
 */
import { fail } from '../errors.js';
import { DTYPE_BYTES, fromF32, type Dtype } from '../io/dtype.js';
import type { TensorSpec } from '../io/writer.js';
import { describeStorage, linearTensors, transpose } from '../model/load.js';
import { getArchitecture } from '../model/registry.js';
import type { Model } from '../model/open.js';
import { layerOfTensor, rewriteCheckpoint, type TensorFate } from '../model/rewrite.js';
import { shardOwner, type ShardSpec } from '../model/shard.js';
import type { LinearRef } from '../model/types.js';
import { factorNames, LOWRANK_FORMAT, LOWRANK_VERSION, moduleKey, stemOf, type DecomposeMode, type LowRankModule, type LowRankSection } from './format.js';
import type { ExpertFactors, Proj } from './unitshape.js';

interface NewTensor {
  spec: TensorSpec;
  /** the float32 values, once the layer's factors exist */
  data: () => Promise<Float32Array>;
}

/**
 * One factored linear as the write plan sees it before any factor exists: which expert, which rank, which of its
 * factors is a tensor shared by the layer's experts, whether a base expert is added.
 */
export interface FactorSlot {
  layer: number;
  expert: number;
  proj: Proj;
  rank: number;
  shared?: 'u' | 'v';
  base?: boolean;
}

/** A layer's factors, by factorKey(expert, proj). */
export type LayerFactors = ReadonlyMap<string, ExpertFactors>;

export function factorKey(expert: number, proj: Proj): string {
  return `${expert}.${proj}`;
}

/** Where producers get a layer's factors when its turn comes (the apply pass hands them over one layer at a time). */
export type TakeLayer = (layer: number) => Promise<LayerFactors>;

export interface WriteOptions {
  out: string;
  force?: boolean;
  mode: DecomposeMode;
  ratio: number;
  materialize?: boolean;
  dryRun?: boolean;
  shard?: ShardSpec;
  onProgress?(done: number, total: number, name: string): void;
  /** the output is open: its staging directory, and which tensors a killed earlier run already finished */
  onOpen?(info: { dir: string; isWritten(name: string): boolean }): void | Promise<void>;
}

export interface WriteResult {
  /** tensors and bytes of the output (of this job's part, for a shard) */
  tensors: number;
  bytes: number;
  section?: LowRankSection;
}

export function expertRef(model: Model, f: Pick<ExpertFactors, 'layer' | 'expert' | 'proj'>): LinearRef {
  const layer = model.view.layers[f.layer];
  if (layer?.block.kind !== 'moe') fail('ComputeError', `internal: layer ${f.layer} is not an MoE layer`);
  const refs = layer.block.experts[f.expert];
  if (!refs) fail('ComputeError', `internal: layer ${f.layer} has no expert ${f.expert}`);
  return refs[f.proj];
}

/** Factors stay in the weights' float dtype (F32/F16/BF16, also when the input is itself factored); FP8 and MXFP4 inputs get bf16. */
function outputDtype(model: Model, ref: LinearRef): Dtype {
  const dtypes = new Set(
    linearTensors(model.ckpt, ref)
      .filter((t) => model.ckpt.has(t))
      .map((t) => model.ckpt.dtype(t)),
  );
  if (dtypes.size === 1) {
    const d = [...dtypes][0]!;
    if (d === 'F32' || d === 'F16' || d === 'BF16' || d === 'F64') return d;
  }
  return 'BF16';
}

function product(f: ExpertFactors, m: number, n: number): Float32Array {
  const out = new Float64Array(m * n);
  if (f.base) out.set(f.base);
  const k = f.rank;
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const a = f.u[i * k + p]!;
      if (a === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j]! += a * f.v[p * n + j]!;
    }
  }
  return Float32Array.from(out);
}

/**
 * A layer's fused expert tensor rebuilt dense (--materialize): per expert the product of each linear it holds
 * (gate and up of gate_up, interleaved or halves as the ref says; down alone), in the family's stored layout
 * (transposed where the family's data file says in-major: gpt_oss), dtype of the factors' output.
 */
function fusedDense(model: Model, layer: number, ref: LinearRef, dtype: Dtype, take: TakeLayer | undefined): NewTensor {
  const block = model.view.layers[layer]!.block;
  if (block.kind !== 'moe') fail('ComputeError', `internal: layer ${layer} is not an MoE layer`);
  const E = block.experts.length;
  const packed = !!(ref.rows || ref.interleave);
  const projs: Proj[] = packed ? ['gate', 'up'] : ['down'];
  const m = ref.outFeatures;
  const n = ref.inFeatures;
  const rows = m * projs.length;
  // the dense form's orientation: as stored; MXFP4 blocks (out-major, only in natively fused families) become the
  // family's own float layout, which may be in-major (gpt_oss)
  let transposed = !!ref.transposed;
  if (!model.ckpt.has(ref.tensor)) {
    const ex = getArchitecture(model.view.family, model.view.family).tensors.experts;
    if (ex.layout === 'fused') transposed = packed ? ex.gateUp.transposed : ex.down.transposed;
  }
  return {
    spec: { name: ref.tensor, dtype, shape: transposed ? [E, n, rows] : [E, rows, n] },
    data: async () => {
      if (!take) fail('ComputeError', 'internal: a dry-run write plan has no factors');
      const lf = await take(layer);
      const out = new Float32Array(E * rows * n);
      for (let e = 0; e < E; e++) {
        const parts = projs.map((p) => {
          const x = lf.get(factorKey(e, p));
          if (!x) fail('ComputeError', `internal: layer ${layer} expert ${e} ${p}: factors missing`);
          return product(x, m, n);
        });
        let w: Float32Array;
        if (parts.length === 1) w = parts[0]!;
        else {
          w = new Float32Array(rows * n);
          for (let r = 0; r < m; r++) {
            const [g, u] = ref.interleave ? [2 * r, 2 * r + 1] : [r, m + r];
            w.set(parts[0]!.subarray(r * n, (r + 1) * n), g * n);
            w.set(parts[1]!.subarray(r * n, (r + 1) * n), u * n);
          }
        }
        out.set(transposed ? transpose(w, rows, n) : w, e * rows * n);
      }
      return out;
    },
  };
}

/** Plan the replacement tensors and the `moe` config section for a set of factored linears. */
export function planReplacements(
  model: Model,
  slots: readonly FactorSlot[],
  opts: Pick<WriteOptions, 'materialize' | 'mode' | 'ratio'>,
  take?: TakeLayer,
): {
  removed: Map<string, NewTensor[]>;
  section: LowRankSection;
} {
  const removed = new Map<string, NewTensor[]>();
  const made = new Set<string>();
  const section: LowRankSection = { format: LOWRANK_FORMAT, version: LOWRANK_VERSION, mode: opts.mode, ratio: opts.ratio, modules: {} };
  for (const f of slots) {
    const ref = expertRef(model, f);
    const fused = ref.expert !== undefined;
    if (!fused && (ref.rows || ref.interleave || ref.transposed)) {
      fail('UnsupportedArchitecture', `moe decompose writes 2-D expert weights or fused 3-D expert tensors; '${ref.tensor}' is neither`);
    }
    const old = linearTensors(model.ckpt, ref);
    const dtype = outputDtype(model, ref);
    const m = ref.outFeatures;
    const n = ref.inFeatures;
    const k = f.rank;
    const fresh: NewTensor[] = [];
    const factors = async (): Promise<ExpertFactors> => {
      if (!take) fail('ComputeError', 'internal: a dry-run write plan has no factors');
      const got = (await take(f.layer)).get(factorKey(f.expert, f.proj));
      if (!got || got.rank !== k)
        fail('ComputeError', `internal: layer ${f.layer} expert ${f.expert} ${f.proj}: factors ${got ? `of rank ${got.rank}` : 'missing'}, planned rank ${k}`);
      return got;
    };
    const add = (name: string, shape: number[], data: (x: ExpertFactors) => Float32Array) => {
      if (made.has(name)) return;
      made.add(name);
      fresh.push({ spec: { name, dtype, shape }, data: async () => data(await factors()) });
    };
    if (opts.materialize && fused) {
      // the whole fused tensor of the layer, every expert's product in the family's stored layout
      const t = fusedDense(model, f.layer, ref, dtype, take);
      if (!made.has(t.spec.name)) {
        made.add(t.spec.name);
        fresh.push(t);
      }
    } else if (opts.materialize) {
      add(ref.tensor, [m, n], (x) => product(x, m, n));
    } else {
      // per-expert names: the linear's own; for a slice of a fused tensor, the tensor's stem + expert + part
      const own = fused ? `${stemOf(ref.tensor)}.${ref.expert}${ref.rows || ref.interleave ? `.${f.proj}` : ''}.weight` : ref.tensor;
      const prefix = fused ? stemOf(ref.tensor) : factorNames.expertsPrefix(ref.tensor);
      const proj = fused ? f.proj : stemOf(ref.tensor).split('.').pop()!;
      const mod: LowRankModule = {
        rank: k,
        u: f.shared === 'u' ? factorNames.sharedOut(prefix, proj) : factorNames.u(own),
        v: f.shared === 'v' ? factorNames.sharedIn(prefix, proj) : factorNames.v(own),
      };
      if (f.base) mod.base = factorNames.base(prefix, proj);
      section.modules[moduleKey(ref)] = mod;
      add(mod.u, [m, k], (x) => Float32Array.from(x.u));
      add(mod.v, [k, n], (x) => Float32Array.from(x.v));
      if (f.base && mod.base) add(mod.base, [m, n], (x) => Float32Array.from(x.base!));
    }
    // the new tensors sit where the first old tensor was
    removed.set(old[0]!, [...(removed.get(old[0]!) ?? []), ...fresh]);
    for (const t of old.slice(1)) if (!removed.has(t)) removed.set(t, []);
  }
  return { removed, section };
}

/** The largest tensor the plan makes, in elements and in bytes of its dtype (for memory estimates). */
export function largestNewTensor(
  model: Model,
  slots: readonly FactorSlot[],
  opts: Pick<WriteOptions, 'materialize' | 'mode' | 'ratio'>,
): { elems: number; bytes: number } {
  let elems = 0;
  let bytes = 0;
  for (const fresh of planReplacements(model, slots, opts).removed.values()) {
    for (const t of fresh) {
      const e = t.spec.shape.reduce((a, b) => a * b, 1);
      elems = Math.max(elems, e);
      bytes = Math.max(bytes, e * DTYPE_BYTES[t.spec.dtype]);
    }
  }
  return { elems, bytes };
}

export async function writeDecomposed(model: Model, slots: readonly FactorSlot[], take: TakeLayer, opts: WriteOptions): Promise<WriteResult> {
  const { removed, section } = planReplacements(model, slots, opts, take);
  const fates = new Map<string, TensorFate>();
  for (const [name, fresh] of removed) {
    fates.set(
      name,
      fresh.length === 0
        ? { kind: 'drop' }
        : {
            kind: 'replace',
            tensors: fresh.map((t) => ({ spec: t.spec, produce: async () => fromF32(await t.data(), t.spec.dtype) })),
          },
    );
  }
  const config: Record<string, unknown> = { moe: opts.materialize ? null : section };
  // gpt_oss MXFP4 experts were read dequantized and are written as factors (or dense bf16): once no MXFP4 tensor is
  // left, the mxfp4 quantization_config would make loaders look for blocks that are gone
  const qc = model.ckpt.config.quantization_config as { quant_method?: unknown } | undefined;
  if (qc?.quant_method === 'mxfp4' && model.ckpt.tensorNames.filter((t) => t.endsWith('_blocks')).every((t) => removed.has(t)))
    config.quantization_config = null;
  const res = await rewriteCheckpoint(model, { fates, config }, opts.out, {
    force: opts.force,
    dryRun: opts.dryRun,
    shard: opts.shard,
    onProgress: opts.onProgress,
    onOpen: opts.onOpen,
  });
  // a shard's part: the tensors of its layers (the plan's whole list is in its moe-shard.json)
  const shard = opts.shard;
  const mine = shard ? res.tensors.filter((t) => shardOwner(layerOfTensor(model.view, t.name), shard.count) === shard.index) : res.tensors;
  return { tensors: mine.length, bytes: mine.reduce((a, t) => a + t.bytes, 0), section: opts.materialize ? undefined : section };
}

/** What a fused checkpoint's experts were read as and are written as (undefined for per-expert layouts), for the report. */
export function describeFusedExperts(model: Model, materialize: boolean): { read: string; written: string } | undefined {
  const { view, ckpt } = model;
  if (view.expertLayout !== 'fused' || view.moeLayers.length === 0) return undefined;
  const layer = view.layers[view.moeLayers[0]!]!;
  if (layer.block.kind !== 'moe') return undefined;
  const ref = layer.block.experts[0]!.gate;
  const stem = stemOf(ref.tensor).slice(layer.prefix.length);
  return {
    read: describeStorage(ckpt, ref, layer.prefix),
    written: materialize
      ? `dense fused tensors in the family's layout (${ref.tensor.slice(layer.prefix.length)} [E, ...]), biases copied`
      : `factors per expert slice (${stem}.<e>.<gate|up>.weight_u/_v, shared bases ${stem}.shared_basis_*), listed in config.json moe.modules; biases copied`,
  };
}
