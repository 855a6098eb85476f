/**
 * GPTQ for experts stored fused in 3-D tensors. GPTQ addresses one 2-D module per linear, so a fused checkpoint is
 * written in the per-expert module layout that GPTQModel itself produces for the family (and its loaders read):
 *
 * - gpt_oss (GPTQModel gptqmodel/models/definitions/gpt_oss.py, GptOssExpertsNew): per expert e an
 *   `mlp.experts.gate_up.<e>` nn.Linear(H, 2I) with bias, weight = gate_up_proj[e]^T (rows interleaved as stored:
 *   gate even, up odd) and bias = gate_up_proj_bias[e]; and `mlp.experts.down.<e>` nn.Linear(I, H), weight =
 *   down_proj[e]^T, bias = down_proj_bias[e]. The router is not quantized.
 * - granitemoe (GPTQModel definitions/granitemoe.py over Defuser's patch_parallel_experts): per expert e
 *   `block_sparse_moe.input_linear.<e>.linear` (weight = input_linear.weight[e], [2I, H], gate first half) and
 *   `block_sparse_moe.output_linear.<e>.linear` ([H, I]), no biases. These are the original format's names: a
 *   checkpoint saved in transformers-5's layout (`block_sparse_moe.experts.gate_up_proj`, router at
 *   `block_sparse_moe.router`) gets them too, with its router renamed back to `block_sparse_moe.router.layer`.
 * - the transformers-5 fused layout of per-expert families (`mlp.experts.gate_up_proj` [E, 2I, H]): GPTQModel
 *   defuses it into the family's per-expert modules, so the GPTQ tensors go under the family's own per-expert
 *   names (mixtral's router moves back to `block_sparse_moe.gate` with them); such an output is an ordinary
 *   per-expert GPTQ checkpoint.
 *
 * A packed module (gate_up) holds two of our linears, gate and up, quantized with the same Hessian (the expert's
 * routed tokens) and the same bits. GPTQ treats the rows of a matrix independently given the Hessian (column
 * order, damping and act-order permutation come from the Hessian alone; each row's error feedback and group scales
 * are its own), so quantizing gate and up separately and interleaving their rows is exactly GPTQ on the fused
 * [2I, H] module, and the LP allocation keeps treating gate, up and down as three linears.
 *
 * The fused GPTQ layouts are registered as a linear format, so `moe eval`, `moe dequantize` and every pipeline
 * read them like the fused tensors they replace.
 */
import { fail } from '../errors.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { fromF32, type Dtype } from '../io/dtype.js';
import type { TensorSpec } from '../io/writer.js';
import { describeStorage, linearTensors, loadLinear, registerLinearFormat, selectRows, type LinearFormat } from '../model/load.js';
import type { NewTensor, TensorFate } from '../model/rewrite.js';
import { getArchitecture } from '../model/registry.js';
import type { LayerView, LinearRef, ModelView } from '../model/types.js';
import { fillTemplate } from '../model/view.js';
import type { Linear } from '../runtime/api.js';
import { dequantize, quantizeRtn } from '../../kernels/quant/rtn.js';
import { numGroups, type QuantBits, type QuantizedLinear } from '../../kernels/quant/types.js';
import { CT_SUFFIXES, ctTensorBytes, ctTensorSpecs, readCt } from './ct.js';
import { GPTQ_SUFFIXES, gptqTensorBytes, gptqTensorSpecs, moduleOf, readGptq } from './format.js';

type Proj = 'gate' | 'up' | 'down';

/** Where one expert linear of a fused checkpoint goes in the GPTQ output. */
export interface FusedTarget {
  /** GPTQ module name (its tensors are `<module>.qweight` ...) */
  module: string;
  /** the linear is row block `part` of `of` of the module (gate 0, up 1 of gate_up), halves or interleaved rows */
  pack?: { part: number; of: number; split: 'halves' | 'interleaved' };
  /** the module's bias `<module>.bias`: this fused bias tensor's slice for `expert`, in its stored row order */
  bias?: { tensor: string; expert: number };
}

export interface FusedGptqLayout {
  /**
   * 'gptqmodel': the family's per-expert GPTQModel modules; 'per-expert': the family's own per-expert names;
   * 'vllm': compressed-tensors under the per-expert names vLLM's loader for the family reads
   */
  kind: 'gptqmodel' | 'per-expert' | 'vllm';
  target(layer: LayerView, expert: number, proj: Proj): FusedTarget;
  /** the router weight's name in the output, when it differs from the input's (transformers-5 mixtral) */
  routerName(layer: LayerView): string | undefined;
  /** the router's correction bias's name in the output, when it differs from the input's (transformers-5
   *  minimax_m2 `mlp.e_score_correction_bias`, ernie4_5_moe `mlp.gate.moe_statics.e_score_correction_bias`) */
  correctionBiasName(layer: LayerView): string | undefined;
}

/**
 * quantization_config key saying the input's experts were in the family's transformers-5 fused layout (the data
 * file's `fusedAlternative`: `mlp.experts.gate_up_proj` / `down_proj`, the router under that layout's names). The
 * GPTQ tensors themselves are in the per-expert module layout GPTQModel reads (transformers 5 has no fused GPTQ
 * layout), so without this record `moe dequantize` could not know to write the fused layout back. GPTQConfig and
 * GPTQModel keep unknown quantization_config keys as they are (moe writes `quantizer` and `damp_percent` too).
 */
export const SOURCE_LAYOUT_KEY = 'moe_source_expert_layout';
/** The value of SOURCE_LAYOUT_KEY for the transformers-5 fused layout. */
export const SOURCE_LAYOUT_FUSED = 'transformers5-fused';

/** Whether this view reads the family's transformers-5 fused layout (`fusedAlternative`) instead of its primary one. */
export function readsFusedAlternative(view: ModelView): boolean {
  const alt = getArchitecture(view.family, view.family).tensors.fusedAlternative;
  const layer = view.moeLayers.length ? view.layers[view.moeLayers[0]!] : undefined;
  if (!alt || !layer || layer.block.kind !== 'moe') return false;
  return layer.block.experts[0]?.gate.tensor === layer.prefix + alt.experts.gateUp.tensor;
}

/** GPTQModel's module names for natively fused families, relative to the layer prefix. */
const GPTQMODEL_MODULES: Readonly<Record<string, { gateUp: string; down: string }>> = {
  gpt_oss: { gateUp: 'mlp.experts.gate_up.${expert}', down: 'mlp.experts.down.${expert}' },
  granitemoe: { gateUp: 'block_sparse_moe.input_linear.${expert}.linear', down: 'block_sparse_moe.output_linear.${expert}.linear' },
};

/**
 * compressed-tensors module names vLLM loads for natively fused families, relative to the layer prefix, one module
 * per linear. granitemoe (vLLM models/granitemoe.py load_weights): the fused input_linear[e] is split into
 * `block_sparse_moe.experts.e.w1` and `.w3` (chunk(2): gate first) and output_linear[e] becomes `.w2`; every other
 * name goes to Mixtral's loader unchanged, whose expert mapping reads `experts.e.w1/w2/w3.<param>` (weight_packed,
 * weight_scale, ...) into the fused MoE module. gpt_oss has none: see CT_REFUSED.
 */
const VLLM_CT_MODULES: Readonly<Record<string, Record<Proj, string>>> = {
  granitemoe: {
    gate: 'block_sparse_moe.experts.${expert}.w1',
    up: 'block_sparse_moe.experts.${expert}.w3',
    down: 'block_sparse_moe.experts.${expert}.w2',
  },
};

/** Why compressed-tensors is refused for a natively fused family (vLLM could not load it). */
const CT_REFUSED: Readonly<Record<string, string>> = {
  gpt_oss:
    "vLLM's gpt_oss loader (models/gpt_oss.py load_weights) reads routed experts only as MXFP4 blocks or as unquantized fused gate_up_proj/down_proj tensors and skips per-expert names, so a compressed-tensors gpt_oss would load with empty experts; use --format gptq (our runtime, GPTQModel)",
};

function expertRefs(layer: LayerView, expert: number) {
  if (layer.block.kind !== 'moe') fail('ComputeError', `internal: layer ${layer.index} is not a MoE layer`);
  const refs = layer.block.experts[expert];
  if (!refs) fail('ComputeError', `internal: layer ${layer.index} has no expert ${expert}`);
  return refs;
}

/**
 * The GPTQ layout of this fused checkpoint's experts, or why there is none (quantize refuses then: a GPTQ tensor
 * set no loader reads would be worse than no output).
 */
export function fusedGptqLayout(view: ModelView, format: 'gptq' | 'compressed-tensors' = 'gptq'): FusedGptqLayout | { refuse: string } {
  const arch = getArchitecture(view.family, view.family);
  const t = arch.tensors;
  const native = GPTQMODEL_MODULES[view.family];
  // GPTQModel's modules are named in the family's original format; a checkpoint in another saved layout (the
  // transformers-5 one) gets its router back under the original name with them
  const routerName = (layer: LayerView): string | undefined => {
    if (layer.block.kind !== 'moe') return undefined;
    const name = layer.prefix + t.router.weight;
    return name === layer.block.router.weight ? undefined : name;
  };
  // the per-expert modules sit beside the original format's router names, the correction bias's too: left under
  // the fused layout's name, the output would be a mix no loader (moe dequantize included) reads. The input has the
  // bias only when the template's condition holds, and both layouts' templates test the same config key.
  const correctionBiasName = (layer: LayerView): string | undefined => {
    const have = layer.block.kind === 'moe' ? layer.block.router.correctionBias : undefined;
    const tpl = t.router.correctionBias;
    if (!have || !tpl) return undefined;
    const name = layer.prefix + (typeof tpl === 'string' ? tpl : tpl.name);
    return name === have ? undefined : name;
  };
  if (t.experts.layout === 'fused' && format === 'compressed-tensors') {
    const ct = VLLM_CT_MODULES[view.family];
    if (!ct)
      return { refuse: CT_REFUSED[view.family] ?? `${view.family} stores its experts fused and no vLLM per-expert compressed-tensors layout is known for it` };
    return {
      kind: 'vllm',
      target(layer, expert, proj) {
        const ref = expertRefs(layer, expert)[proj];
        if (ref.bias) fail('UnsupportedArchitecture', `${view.family}: fused expert biases ('${ref.bias}') have no compressed-tensors layout`);
        return { module: layer.prefix + fillTemplate(ct[proj], undefined, expert) };
      },
      routerName,
      correctionBiasName,
    };
  }
  if (t.experts.layout === 'fused') {
    if (!native)
      return {
        refuse: `${view.family} stores its experts fused in 3-D tensors and GPTQModel defines no per-expert module layout for it, so a GPTQ checkpoint of it would load nowhere`,
      };
    return {
      kind: 'gptqmodel',
      target(layer, expert, proj) {
        const ref = expertRefs(layer, expert)[proj];
        const module = layer.prefix + fillTemplate(proj === 'down' ? native.down : native.gateUp, undefined, expert);
        const out: FusedTarget = { module };
        if (proj !== 'down') out.pack = { part: proj === 'gate' ? 0 : 1, of: 2, split: ref.interleave ? 'interleaved' : 'halves' };
        if (ref.bias) out.bias = { tensor: ref.bias, expert };
        return out;
      },
      routerName,
      correctionBiasName,
    };
  }
  // a per-expert family saved in the transformers-5 fused layout: back to the family's per-expert module names
  const ex = t.experts;
  return {
    kind: 'per-expert',
    target(layer, expert, proj) {
      const ref = expertRefs(layer, expert)[proj];
      if (ref.bias) fail('UnsupportedArchitecture', `${view.family}: fused expert biases ('${ref.bias}') have no per-expert GPTQ layout`);
      return { module: moduleOf(layer.prefix + fillTemplate(ex[proj], undefined, expert)) };
    },
    routerName,
    correctionBiasName,
  };
}

/**
 * Rows of one module from its linears' quantized parts: halves stacked, or interleaved row by row (gpt_oss:
 * gate row r -> module row 2r, up row r -> 2r + 1); scales and zeros follow their rows. The parts share one
 * Hessian, hence one column order (g_idx).
 */
export function stackQuantized(parts: readonly QuantizedLinear[], split: 'halves' | 'interleaved'): QuantizedLinear {
  const p0 = parts[0]!;
  if (parts.length === 1) return p0;
  const n = parts.length;
  const inF = p0.in;
  const G = numGroups(inF, p0.spec.groupSize);
  for (const p of parts) {
    if (p.in !== inF || p.out !== p0.out || p.spec.bits !== p0.spec.bits || p.spec.groupSize !== p0.spec.groupSize)
      fail('ComputeError', `internal: parts of one GPTQ module differ (${p.out}x${p.in} at ${p.spec.bits} bits vs ${p0.out}x${inF} at ${p0.spec.bits})`);
    for (let i = 0; i < inF; i++) if (p.gIdx[i] !== p0.gIdx[i]) fail('ComputeError', 'internal: parts of one GPTQ module have different column orders');
  }
  const rows = p0.out;
  const out = rows * n;
  // module row of part k's row r
  const at = (k: number, r: number) => (split === 'interleaved' ? r * n + k : k * rows + r);
  const q = new Uint8Array(out * inF);
  const scales = new Float32Array(G * out);
  const zeros = new Uint8Array(G * out);
  parts.forEach((p, k) => {
    for (let r = 0; r < rows; r++) {
      const o = at(k, r);
      q.set(p.q.subarray(r * inF, (r + 1) * inF), o * inF);
      for (let g = 0; g < G; g++) {
        scales[g * out + o] = p.scales[g * rows + r]!;
        zeros[g * out + o] = p.zeros[g * rows + r]!;
      }
    }
  });
  return { out, in: inF, spec: p0.spec, q, scales, zeros, gIdx: Int32Array.from(p0.gIdx) };
}

/** Float rows of one module from its linears' rows (the dense form of a packed module), same order as stackQuantized. */
export function stackRows(parts: readonly Float32Array[], rows: number, cols: number, split: 'halves' | 'interleaved'): Float32Array {
  const n = parts.length;
  if (n === 1) return parts[0]!;
  const out = new Float32Array(n * rows * cols);
  parts.forEach((p, k) => {
    for (let r = 0; r < rows; r++) {
      const o = split === 'interleaved' ? r * n + k : k * rows + r;
      out.set(p.subarray(r * cols, (r + 1) * cols), o * cols);
    }
  });
  return out;
}

// ---- reading the GPTQModel layouts back ------------------------------------------------------------------------

/** The module that holds a fused ref's expert slice in a GPTQModel-layout checkpoint (undefined: not this layout). */
export function gptqModuleOfFusedRef(ckpt: Checkpoint, ref: LinearRef): string | undefined {
  if (ref.expert === undefined) return undefined;
  const family = ckpt.config.model_type;
  if (typeof family !== 'string') return undefined;
  const native = GPTQMODEL_MODULES[family];
  if (!native) return undefined;
  const ex = getArchitecture(family, ckpt.dir).tensors.experts;
  if (ex.layout !== 'fused') return undefined;
  for (const [tensor, tpl] of [
    [ex.gateUp.tensor, native.gateUp],
    [ex.down.tensor, native.down],
  ] as const) {
    if (ref.tensor.endsWith(tensor)) return ref.tensor.slice(0, ref.tensor.length - tensor.length) + fillTemplate(tpl, undefined, ref.expert);
  }
  return undefined;
}

const moduleTensors = (ckpt: Checkpoint, module: string) => [...GPTQ_SUFFIXES, 'weight', 'bias'].map((s) => `${module}.${s}`).filter((n) => ckpt.has(n));

/** Rows of the module a ref reads: both halves of gate_up for gate/up refs, the ref's own rows otherwise. */
const moduleRows = (ref: LinearRef) => (ref.rows || ref.interleave ? 2 * ref.outFeatures : ref.outFeatures);

export const FUSED_GPTQ_FORMAT: LinearFormat = {
  name: 'gptq-fused',
  storesBias: true,
  detect(ckpt, ref) {
    if (ref.expert === undefined || ckpt.has(ref.tensor) || ckpt.has(`${ref.tensor}_blocks`)) return false;
    const m = gptqModuleOfFusedRef(ckpt, ref);
    return m !== undefined && (ckpt.has(`${m}.qweight`) || ckpt.has(`${m}.weight`));
  },
  async load(ckpt, ref): Promise<Linear> {
    const m = gptqModuleOfFusedRef(ckpt, ref)!;
    const rows = moduleRows(ref);
    const inF = ref.inFeatures;
    let w: Float32Array;
    if (ckpt.has(`${m}.qweight`)) w = dequantize(await readGptq(ckpt, m, rows, inF));
    else {
      const sh = ckpt.shape(`${m}.weight`);
      if (sh.length !== 2 || sh[0] !== rows || sh[1] !== inF)
        fail('InvalidShape', `${ckpt.dir}: '${m}.weight' is [${sh.join(', ')}], expected [${rows}, ${inF}]`);
      w = await ckpt.readF32(`${m}.weight`);
    }
    const lin: Linear = { out: ref.outFeatures, in: inF, w: selectRows(w, rows, inF, ref).w };
    if (ckpt.has(`${m}.bias`)) {
      const b = await ckpt.readF32(`${m}.bias`);
      if (b.length !== rows) fail('InvalidShape', `${ckpt.dir}: '${m}.bias' has ${b.length} values, expected ${rows}`);
      lin.b = selectRows(b, rows, 1, ref).w;
    }
    return lin;
  },
  tensors: (ckpt, ref) => moduleTensors(ckpt, gptqModuleOfFusedRef(ckpt, ref)!),
};

let registered = false;
/** The compressed-tensors module of a fused ref's linear in a vLLM-layout checkpoint (undefined: not this layout). */
export function ctModuleOfFusedRef(ckpt: Checkpoint, ref: LinearRef): string | undefined {
  if (ref.expert === undefined) return undefined;
  const family = ckpt.config.model_type;
  const ct = typeof family === 'string' ? VLLM_CT_MODULES[family] : undefined;
  if (!ct) return undefined;
  const ex = getArchitecture(family as string, ckpt.dir).tensors.experts;
  if (ex.layout !== 'fused') return undefined;
  const at = (tensor: string, tpl: string) => ref.tensor.slice(0, ref.tensor.length - tensor.length) + fillTemplate(tpl, undefined, ref.expert);
  if (ref.tensor.endsWith(ex.gateUp.tensor)) return at(ex.gateUp.tensor, ct[(ref.rows?.[0] ?? 0) === 0 && ref.interleave !== 'odd' ? 'gate' : 'up']);
  if (ref.tensor.endsWith(ex.down.tensor)) return at(ex.down.tensor, ct.down);
  return undefined;
}

/** Fused experts written as vLLM's per-expert compressed-tensors modules: each module holds exactly one linear. */
export const FUSED_CT_FORMAT: LinearFormat = {
  name: 'compressed-tensors-fused',
  detect(ckpt, ref) {
    if (ref.expert === undefined || ckpt.has(ref.tensor)) return false;
    const m = ctModuleOfFusedRef(ckpt, ref);
    return m !== undefined && ckpt.has(`${m}.weight_packed`);
  },
  async load(ckpt, ref): Promise<Linear> {
    const m = ctModuleOfFusedRef(ckpt, ref)!;
    return { out: ref.outFeatures, in: ref.inFeatures, w: await readCt(ckpt, m, ref.outFeatures, ref.inFeatures) };
  },
  tensors: (ckpt, ref) => {
    const m = ctModuleOfFusedRef(ckpt, ref)!;
    return CT_SUFFIXES.map((s) => `${m}.${s}`).filter((n) => ckpt.has(n));
  },
};

/** Make loadLinear read GPTQModel-layout and vLLM compressed-tensors fused experts (idempotent; quantize, dequantize and inspect import this). */
export function registerFusedGptqFormat(): void {
  if (registered) return;
  registerLinearFormat(FUSED_GPTQ_FORMAT);
  registerLinearFormat(FUSED_CT_FORMAT);
  registered = true;
}
registerFusedGptqFormat();

// ---- writing ------------------------------------------------------------------------------------------------------

/** What the writer needs of a linear's decision (plan.ts LinearDecision has these fields). */
export interface FusedDecision {
  module: string;
  layer: number;
  ref: LinearRef;
  fused?: FusedTarget;
}

/** One output module of fused experts: its linears (by part), width, and the tensors it is written as. */
export interface FusedModuleWrite<D extends FusedDecision = FusedDecision> {
  module: string;
  layer: number;
  bits: QuantBits | 'keep';
  parts: D[];
  /** output tensor names of the module */
  names: string[];
}

export interface FusedWriteContext<D extends FusedDecision> {
  ckpt: Checkpoint;
  finalBits(d: D): QuantBits | 'keep';
  groupSize: number;
  sym: boolean;
  /** the tensors a quantized module is written as (default gptq); compressed-tensors with weight_g_idx under act order */
  format?: 'gptq' | 'compressed-tensors';
  actOrder?: boolean;
  /** the apply pass's quantization of d, when the pass quantizes d's layer (resolves once the layer is done) */
  fromPass?(d: D): Promise<QuantizedLinear | undefined>;
  /** the module's tensors are all produced: its parts' pass results can go */
  release?(parts: readonly D[]): void;
}

/** Float dtype a dense module keeps: the input's, or BF16 for quantized storage (FP8, MXFP4). */
function denseDtype(ckpt: Checkpoint, ref: LinearRef): Dtype {
  const d = ckpt.has(ref.tensor) ? ckpt.dtype(ref.tensor) : 'BF16';
  return d === 'F32' || d === 'F16' || d === 'BF16' ? d : 'BF16';
}

/**
 * The rewrite of a fused checkpoint's experts into GPTQ modules. Per fused input tensor (a layer's gate_up or down,
 * or its MXFP4 blocks/scales): when every module it holds stays unquantized the tensor is copied as it is;
 * otherwise it is replaced by all its modules' tensors in expert order (quantized: qweight, qzeros, scales, g_idx;
 * unquantized: a dense `<module>.weight`; plus `<module>.bias` from the fused bias, which is dropped).
 */
export function fusedModuleWrites<D extends FusedDecision>(
  decisions: readonly D[],
  ctx: FusedWriteContext<D>,
): { fates: Map<string, TensorFate>; modules: FusedModuleWrite<D>[] } {
  const { ckpt } = ctx;
  const byModule = new Map<string, D[]>();
  for (const d of decisions) {
    if (!d.fused) continue;
    let list = byModule.get(d.module);
    if (!list) byModule.set(d.module, (list = []));
    list.push(d);
  }
  const bySource = new Map<string, { sources: string[]; modules: { write: FusedModuleWrite<D>; tensors: NewTensor[] }[] }>();
  const modules: FusedModuleWrite<D>[] = [];
  for (const [module, list] of byModule) {
    const parts = [...list].sort((a, b) => (a.fused!.pack?.part ?? 0) - (b.fused!.pack?.part ?? 0));
    const p0 = parts[0]!;
    const t0 = p0.fused!;
    const widths = new Set(parts.map((d) => ctx.finalBits(d)));
    if (widths.size !== 1) fail('ComputeError', `internal: the linears of GPTQ module '${module}' got different widths (${[...widths].join(', ')})`);
    const bits = [...widths][0]!;
    const rows = p0.ref.outFeatures * parts.length;
    const inF = p0.ref.inFeatures;
    const split = t0.pack?.split ?? 'halves';
    const specs: TensorSpec[] =
      bits === 'keep'
        ? [{ name: `${module}.weight`, dtype: denseDtype(ckpt, p0.ref), shape: [rows, inF] }]
        : ctx.format === 'compressed-tensors'
          ? ctTensorSpecs(module, rows, inF, bits, ctx.groupSize, !!ctx.actOrder)
          : gptqTensorSpecs(module, rows, inF, { bits, groupSize: ctx.groupSize, sym: ctx.sym });
    if (t0.bias) {
      const info = ckpt.info(t0.bias.tensor);
      if (info.shape.length !== 2 || info.shape[1] !== rows)
        fail('InvalidShape', `${ckpt.dir}: fused bias '${t0.bias.tensor}' is [${info.shape.join(', ')}], expected [experts, ${rows}]`);
      specs.push({ name: `${module}.bias`, dtype: info.dtype, shape: [rows] });
    }
    const write: FusedModuleWrite<D> = { module, layer: p0.layer, bits, parts, names: specs.map((s) => s.name) };
    modules.push(write);
    let made: Promise<Uint8Array[]> | undefined;
    const make = async (): Promise<Uint8Array[]> => {
      const out: Uint8Array[] = [];
      if (bits === 'keep') {
        const ws = await Promise.all(parts.map(async (d) => (await loadLinear(ckpt, d.ref)).w));
        out.push(fromF32(stackRows(ws, p0.ref.outFeatures, inF, split), specs[0]!.dtype));
      } else {
        const spec = { bits, groupSize: ctx.groupSize, sym: ctx.sym };
        const qs: QuantizedLinear[] = [];
        for (const d of parts) qs.push((await ctx.fromPass?.(d)) ?? quantizeRtn((await loadLinear(ckpt, d.ref)).w, d.ref.outFeatures, inF, spec));
        const stacked = stackQuantized(qs, split);
        out.push(...(ctx.format === 'compressed-tensors' ? ctTensorBytes(stacked, !!ctx.actOrder) : gptqTensorBytes(stacked)));
      }
      if (t0.bias) out.push(await ckpt.readBytes(t0.bias.tensor, t0.bias.expert * rows, (t0.bias.expert + 1) * rows));
      return out;
    };
    const tensors: NewTensor[] = specs.map((spec, k) => ({
      spec,
      produce: async () => {
        const all = await (made ??= make());
        if (k === specs.length - 1) {
          made = undefined;
          ctx.release?.(parts);
        }
        return all[k]!;
      },
    }));
    const sources = [...linearTensors(ckpt, p0.ref), ...(t0.bias ? [t0.bias.tensor] : [])];
    let group = bySource.get(sources[0]!);
    if (!group) bySource.set(sources[0]!, (group = { sources, modules: [] }));
    group.modules.push({ write, tensors });
  }
  const fates = new Map<string, TensorFate>();
  for (const [first, g] of bySource) {
    if (g.modules.every((m) => m.write.bits === 'keep')) continue;
    fates.set(first, { kind: 'replace', tensors: g.modules.flatMap((m) => m.tensors) });
    for (const s of g.sources.slice(1)) if (!fates.has(s)) fates.set(s, { kind: 'drop' });
  }
  return { fates, modules };
}

/** What a fused checkpoint's experts were read as and are written as, for the report. */
export function describeFusedExperts(ckpt: Checkpoint, view: ModelView, layout: FusedGptqLayout): { read: string; written: string } {
  const layer = view.layers[view.moeLayers[0]!]!;
  if (layer.block.kind !== 'moe') fail('ComputeError', 'internal: not a MoE layer');
  const relative = (n: string) => n.slice(layer.prefix.length);
  const read = `${describeStorage(ckpt, layer.block.experts[0]!.gate, layer.prefix)}, then quantized from those values`;
  const t = layout.target(layer, 0, 'gate');
  const d = layout.target(layer, 0, 'down');
  const written =
    layout.kind === 'vllm'
      ? `the per-expert compressed-tensors modules vLLM's ${view.family} loader reads (${relative(t.module)}, ${relative(d.module)} ... for expert 0)`
      : layout.kind === 'gptqmodel'
        ? `GPTQModel's per-expert modules (${relative(t.module)}, ${relative(d.module)} ... for expert 0${t.pack ? `; gate and up share one module, rows ${t.pack.split}` : ''}${t.bias ? '; biases unquantized as <module>.bias' : ''})`
        : `the family's per-expert GPTQ modules (${relative(t.module)} ... for expert 0)`;
  const back = readsFusedAlternative(view) ? `; moe dequantize writes them back fused (quantization_config.${SOURCE_LAYOUT_KEY})` : '';
  return { read, written: written + back };
}
