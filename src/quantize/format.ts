/**
 * The GPTQ checkpoint format as GPTQModel writes it (v1, checkpoint_format "gptq"): each quantized linear
 * `<module>.weight` becomes `<module>.qweight` (I32), `.qzeros` (I32), `.scales` (F16), `.g_idx` (I32); its bias
 * stays. config.json gets `quantization_config` with the base bits/group size and a `dynamic` map of per-module
 * overrides: "+:REGEX" -> {bits, group_size} for modules at other settings, "-:REGEX" -> {} for linears left
 * unquantized (routers first: a quantized router breaks vLLM loading).
 *
 * Registered as a linear format with the model loader, so loadLinear (and with it the runtime, `moe eval` and
 * every pipeline) reads GPTQ checkpoints transparently; bits and group size are read off the tensor shapes.
 */
import { fail } from '../errors.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { registerLinearFormat, type LinearFormat } from '../model/load.js';
import type { LinearRef } from '../model/types.js';
import { gptqShapes, packGptq, unpackGptq, type GptqTensors } from '../../kernels/quant/pack.js';
import { dequantize } from '../../kernels/quant/rtn.js';
import { QUANT_BITS, type QuantBits, type QuantizedLinear, type QuantSpec } from '../../kernels/quant/types.js';
import type { TensorSpec } from '../io/writer.js';
import { registerCtFormat } from './ct.js';

export const GPTQ_SUFFIXES = ['qweight', 'qzeros', 'scales', 'g_idx'] as const;

/** Module name of a linear weight tensor (`...w1.weight` -> `...w1`). */
export function moduleOf(tensor: string): string {
  return tensor.endsWith('.weight') ? tensor.slice(0, -'.weight'.length) : tensor;
}

export function gptqTensorSpecs(module: string, out: number, inF: number, spec: QuantSpec): TensorSpec[] {
  const sh = gptqShapes(out, inF, spec);
  return [
    { name: `${module}.qweight`, dtype: 'I32', shape: sh.qweight },
    { name: `${module}.qzeros`, dtype: 'I32', shape: sh.qzeros },
    { name: `${module}.scales`, dtype: 'F16', shape: sh.scales },
    { name: `${module}.g_idx`, dtype: 'I32', shape: sh.g_idx },
  ];
}

/** Raw little-endian bytes of the four tensors, in gptqTensorSpecs order. */
export function gptqTensorBytes(ql: QuantizedLinear): Uint8Array[] {
  const t = packGptq(ql);
  return [t.qweight, t.qzeros, t.scales, t.gIdx].map((a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
}

function asI32(b: Uint8Array): Int32Array {
  return new Int32Array(b.slice().buffer);
}

/** Bits and group size of a stored GPTQ linear, from its tensor shapes. */
export function inferSpec(ckpt: Checkpoint, module: string, out: number, inF: number): QuantSpec {
  const qw = ckpt.shape(`${module}.qweight`);
  const sc = ckpt.shape(`${module}.scales`);
  const bad = (why: string) => fail('InvalidShape', `${ckpt.dir}: GPTQ module '${module}' ${why}`);
  if (qw.length !== 2 || qw[1] !== out) bad(`qweight is [${qw.join(', ')}], expected [*, ${out}]`);
  const bits = (qw[0]! * 32) / inF;
  if (!QUANT_BITS.includes(bits as QuantBits)) bad(`qweight rows ${qw[0]} for ${inF} inputs give ${bits} bits (2, 3, 4 or 8 supported)`);
  if (sc.length !== 2 || sc[1] !== out) bad(`scales is [${sc.join(', ')}], expected [groups, ${out}]`);
  const G = sc[0]!;
  const gs = Math.ceil(inF / G);
  if (Math.ceil(inF / gs) !== G) bad(`has ${G} groups, which no group size gives for ${inF} inputs`);
  const sym = false; // zeros are stored either way; sym only changes how they were chosen
  return { bits: bits as QuantBits, groupSize: gs, sym };
}

export async function readGptq(ckpt: Checkpoint, module: string, out: number, inF: number): Promise<QuantizedLinear> {
  const spec = inferSpec(ckpt, module, out, inF);
  for (const [s, d] of [
    ['qweight', 'I32'],
    ['qzeros', 'I32'],
    ['scales', 'F16'],
    ['g_idx', 'I32'],
  ] as const) {
    if (ckpt.dtype(`${module}.${s}`) !== d) fail('InvalidShape', `${ckpt.dir}: GPTQ tensor '${module}.${s}' is ${ckpt.dtype(`${module}.${s}`)}, expected ${d}`);
  }
  const t: GptqTensors = {
    qweight: asI32(await ckpt.readBytes(`${module}.qweight`)),
    qzeros: asI32(await ckpt.readBytes(`${module}.qzeros`)),
    scales: new Uint16Array((await ckpt.readBytes(`${module}.scales`)).slice().buffer),
    gIdx: asI32(await ckpt.readBytes(`${module}.g_idx`)),
  };
  return unpackGptq(t, out, inF, spec);
}

export const GPTQ_FORMAT: LinearFormat = {
  name: 'gptq',
  detect: (ckpt, ref) => ref.expert === undefined && !ckpt.has(ref.tensor) && ckpt.has(`${moduleOf(ref.tensor)}.qweight`),
  async load(ckpt: Checkpoint, ref: LinearRef) {
    const ql = await readGptq(ckpt, moduleOf(ref.tensor), ref.outFeatures, ref.inFeatures);
    return { out: ref.outFeatures, in: ref.inFeatures, w: dequantize(ql) };
  },
  tensors: (_ckpt, ref) => GPTQ_SUFFIXES.map((s) => `${moduleOf(ref.tensor)}.${s}`),
};

let registered = false;
/** Make loadLinear read GPTQ linears (idempotent; called by the quantize/dequantize/eval entry points). */
export function registerGptqFormat(): void {
  if (registered) return;
  registerLinearFormat(GPTQ_FORMAT);
  registered = true;
}
registerGptqFormat();
// compressed-tensors checkpoints are read wherever GPTQ ones are
registerCtFormat();

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export interface ModuleQuant {
  module: string;
  bits: QuantBits;
}

/**
 * quantization_config for a mixed-precision checkpoint: the most common bit-width is the base; every module at
 * another width gets an exact "+:" override (experts whose three projections agree get one key for the expert);
 * unquantized linears get "-:" exclusions.
 */
export function quantizationConfig(
  mods: readonly ModuleQuant[],
  unquantized: readonly string[],
  spec: { groupSize: number; sym: boolean; actOrder: boolean; damp: number },
): Record<string, unknown> {
  const count = new Map<number, number>();
  for (const m of mods) count.set(m.bits, (count.get(m.bits) ?? 0) + 1);
  const base = [...count].sort((a, b) => b[1] - a[1] || b[0] - a[0])[0]?.[0] ?? 4;
  const dynamic: Record<string, Record<string, number>> = {};
  // group per parent (an expert, an attention block): one key when all its quantized children share bits
  const byParent = new Map<string, ModuleQuant[]>();
  for (const m of mods) {
    if (m.bits === base) continue;
    const parent = m.module.slice(0, m.module.lastIndexOf('.') + 1);
    if (!byParent.has(parent)) byParent.set(parent, []);
    byParent.get(parent)!.push(m);
  }
  const siblings = new Map<string, ModuleQuant[]>();
  for (const m of mods) {
    const parent = m.module.slice(0, m.module.lastIndexOf('.') + 1);
    if (!siblings.has(parent)) siblings.set(parent, []);
    siblings.get(parent)!.push(m);
  }
  const excluded = new Set(unquantized.map((u) => u.slice(0, u.lastIndexOf('.') + 1)));
  for (const [parent, ms] of byParent) {
    const all = siblings.get(parent)!;
    if (ms.length === all.length && new Set(ms.map((m) => m.bits)).size === 1 && !excluded.has(parent)) {
      dynamic[`+:^${escapeRe(parent)}`] = { bits: ms[0]!.bits, group_size: spec.groupSize };
    } else {
      for (const m of ms) dynamic[`+:^${escapeRe(m.module)}$`] = { bits: m.bits, group_size: spec.groupSize };
    }
  }
  for (const u of unquantized) dynamic[`-:^${escapeRe(u)}$`] = {};
  return {
    quant_method: 'gptq',
    bits: base,
    group_size: spec.groupSize,
    desc_act: spec.actOrder,
    sym: spec.sym,
    damp_percent: spec.damp,
    true_sequential: true,
    checkpoint_format: 'gptq',
    lm_head: false,
    dynamic,
    quantizer: ['moe'],
  };
}

/** The bits a GPTQ-aware loader would give `module` under this config (first matching dynamic rule wins). */
export function bitsForModule(qc: Record<string, unknown>, module: string): number | undefined {
  const dyn = (qc['dynamic'] ?? {}) as Record<string, Record<string, number>>;
  for (const [k, v] of Object.entries(dyn)) {
    const neg = k.startsWith('-:');
    const pat = k.replace(/^[+-]:/, '');
    if (new RegExp(pat).test(module)) return neg ? undefined : (v['bits'] ?? (qc['bits'] as number));
  }
  return qc['bits'] as number;
}

/**
 * quantization_config for vLLM (--serve vllm --format gptq): vLLM builds one fused module per MoE layer and looks
 * its `dynamic` override up by that module's prefix (`model.layers.L.mlp.experts`, re.match), so a layer at a
 * width other than the base gets one key `+:^<prefix>(\.|$)` (which GPTQModel-style per-module loaders also match
 * for every expert module under it); other linears get exact keys; unquantized linears `-:` exclusions.
 */
export function vllmGptqConfig(
  experts: readonly { prefix: string; bits: QuantBits }[],
  dense: readonly ModuleQuant[],
  unquantized: readonly string[],
  spec: { groupSize: number; sym: boolean; actOrder: boolean; damp: number },
): Record<string, unknown> {
  const count = new Map<number, number>();
  for (const e of experts) count.set(e.bits, (count.get(e.bits) ?? 0) + 1);
  const base = [...count].sort((a, b) => b[1] - a[1] || b[0] - a[0])[0]?.[0] ?? dense[0]?.bits ?? 4;
  const dynamic: Record<string, Record<string, number>> = {};
  for (const e of experts) if (e.bits !== base) dynamic[`+:^${escapeRe(e.prefix)}(\\.|$)`] = { bits: e.bits, group_size: spec.groupSize };
  for (const m of dense) if (m.bits !== base) dynamic[`+:^${escapeRe(m.module)}$`] = { bits: m.bits, group_size: spec.groupSize };
  for (const u of unquantized) dynamic[`-:^${escapeRe(u)}$`] = {};
  return {
    quant_method: 'gptq',
    bits: base,
    group_size: spec.groupSize,
    desc_act: spec.actOrder,
    sym: spec.sym,
    damp_percent: spec.damp,
    true_sequential: true,
    checkpoint_format: 'gptq',
    lm_head: false,
    dynamic,
    quantizer: ['moe'],
  };
}
