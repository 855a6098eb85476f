/**
 * The compressed-tensors `pack-quantized` format, as the compressed-tensors library defines it
 * (compressed_tensors/compressors/quantized_compressors/pack_quantized.py, config/base.py, quantization/quant_args.py,
 * read through the project's search tools; no code copied):
 *
 * - a quantized linear `<module>.weight` becomes `<module>.weight_packed` int32 [out, ceil(in / pf)] with
 *   pf = 32 / bits: the signed codes q in [-2^(b-1), 2^(b-1)) are offset by 2^(b-1) to unsigned and packed along
 *   the input dimension, value j of a row in word j / pf at shift bits * (j % pf) (LSB first, zero padded);
 *   `<module>.weight_scale` [out, groups] in a float dtype; `<module>.weight_shape` [2] = [out, in] (int64 as
 *   torch.tensor(weight.shape) saves it); `<module>.weight_zero_point` only for an asymmetric grid (signed zero
 *   points packed the same way along the output dimension, [ceil(out / pf), groups]); `<module>.weight_g_idx` I32
 *   [in] only for group-wise act order (`actorder: "group"`: column i uses scale group g_idx[i]; --act-order). Dequantized: w = scale * (q - zero_point).
 * - config.json `quantization_config`: quant_method "compressed-tensors", format "pack-quantized",
 *   quantization_status "compressed", `config_groups` {name: {targets, weights: {num_bits, type "int", symmetric,
 *   strategy "group"|"channel", group_size, ...}, input_activations null}} with targets matched by name ("re:" =
 *   a Python re.match from the start of the name) and `ignore` (modules left dense).
 *
 * Our quantizer's codes are unsigned with a zero point; symmetric ones have zero 2^(b-1), so the unsigned code is
 * exactly the packed value. Registered as a linear format: the runtime, `moe eval` and `moe dequantize` read it.
 */
import { fail } from '../errors.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { f32ToF16Bits, toF32 } from '../io/dtype.js';
import type { TensorSpec } from '../io/writer.js';
import { registerLinearFormat, type LinearFormat } from '../model/load.js';
import type { LinearRef } from '../model/types.js';
import { groupColumns, numGroups, type QuantBits, type QuantizedLinear } from '../../kernels/quant/types.js';

export const CT_SUFFIXES = ['weight_packed', 'weight_scale', 'weight_shape', 'weight_zero_point', 'weight_g_idx'] as const;

const moduleOfTensor = (t: string) => (t.endsWith('.weight') ? t.slice(0, -'.weight'.length) : t);

/**
 * Stored bytes of one symmetric pack-quantized linear: packed codes, F16 scales, the I64 shape, and with act order
 * (`actorder: group`) the I32 weight_g_idx, one group index per input column.
 */
export function ctBytes(out: number, inF: number, bits: number, groupSize: number, gIdx = false): number {
  const pf = Math.floor(32 / bits);
  const groups = numGroups(inF, groupSize);
  return out * Math.ceil(inF / pf) * 4 + out * groups * 2 + 16 + (gIdx ? inF * 4 : 0);
}

export function ctTensorSpecs(module: string, out: number, inF: number, bits: QuantBits, groupSize: number, gIdx = false): TensorSpec[] {
  const pf = Math.floor(32 / bits);
  const groups = numGroups(inF, groupSize);
  return [
    { name: `${module}.weight_packed`, dtype: 'I32', shape: [out, Math.ceil(inF / pf)] },
    { name: `${module}.weight_scale`, dtype: 'F16', shape: [out, groups] },
    { name: `${module}.weight_shape`, dtype: 'I64', shape: [2] },
    ...(gIdx ? [{ name: `${module}.weight_g_idx`, dtype: 'I32' as const, shape: [inF] }] : []),
  ];
}

/**
 * Raw little-endian bytes in ctTensorSpecs order. Symmetric only (what vLLM's MoE path runs); without `gIdx` the
 * groups must be the column-ordered ones, with it (act order) each column's group is stored as weight_g_idx.
 */
export function ctTensorBytes(ql: QuantizedLinear, gIdx = false): Uint8Array[] {
  const { out, in: inF, spec } = ql;
  const bits = spec.bits;
  if (32 % bits !== 0) fail('ComputeError', `compressed-tensors pack-quantized holds 32/bits values per word: ${bits} bits do not divide 32`);
  const pf = 32 / bits;
  const half = 1 << (bits - 1);
  const G = ql.scales.length / out;
  const gs = groupColumns(inF, spec.groupSize);
  if (!gIdx) {
    for (let i = 0; i < inF; i++) {
      if (ql.gIdx[i] !== Math.floor(i / gs)) fail('ComputeError', 'compressed-tensors output written without weight_g_idx has columns out of group order');
    }
  }
  for (let k = 0; k < ql.zeros.length; k++) {
    if (ql.zeros[k] !== half) fail('ComputeError', `compressed-tensors output is symmetric: zero point ${ql.zeros[k]} is not ${half}`);
  }
  const words = Math.ceil(inF / pf);
  const packed = new Uint32Array(out * words);
  for (let o = 0; o < out; o++) {
    const row = o * inF;
    for (let i = 0; i < inF; i++) packed[o * words + Math.floor(i / pf)]! |= ql.q[row + i]! << (bits * (i % pf));
  }
  // our scales are [groups, out]; compressed-tensors stores [out, groups]
  const scales = new Uint16Array(out * G);
  for (let g = 0; g < G; g++) for (let o = 0; o < out; o++) scales[o * G + g] = f32ToF16Bits(ql.scales[g * out + o]!);
  const shape = new BigInt64Array([BigInt(out), BigInt(inF)]);
  const arrays: ArrayBufferView[] = [packed, scales, shape];
  if (gIdx) arrays.push(Int32Array.from(ql.gIdx));
  return arrays.map((a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
}

export interface CtWeights {
  num_bits: number;
  type?: string;
  symmetric: boolean;
  strategy: string;
  group_size?: number | null;
  actorder?: string | null;
}

/** The weight scheme compressed-tensors gives `module` (first config group whose target matches), or undefined when ignored or unmatched. */
export function ctSchemeFor(qc: Record<string, unknown>, module: string): CtWeights | undefined {
  const match = (target: string) => (target.startsWith('re:') ? new RegExp(`^(?:${target.slice(3)})`).test(module) : target === module);
  const ignore = (qc['ignore'] ?? []) as string[];
  if (ignore.some(match)) return undefined;
  const groups = (qc['config_groups'] ?? {}) as Record<string, { targets: string[]; weights?: CtWeights | null }>;
  for (const g of Object.values(groups)) if (g.targets.some(match) && g.weights) return g.weights;
  return undefined;
}

function asI32(b: Uint8Array): Int32Array {
  return new Int32Array(b.slice().buffer);
}

/** Unpack `n` values of `bits` along rows of `words`-wide int32 rows (LSB first), returning unsigned codes. */
function unpackRow(src: Int32Array, base: number, n: number, bits: number, dst: Int32Array, dbase: number): void {
  const pf = 32 / bits;
  const mask = (1 << bits) - 1;
  for (let i = 0; i < n; i++) dst[dbase + i] = (src[base + Math.floor(i / pf)]! >>> (bits * (i % pf))) & mask;
}

/** Read a pack-quantized linear back to float32 [out, in] (symmetric or with packed zero points, with or without g_idx). */
export async function readCt(ckpt: Checkpoint, module: string, out: number, inF: number): Promise<Float32Array> {
  const bad = (why: string) => fail('InvalidShape', `${ckpt.dir}: compressed-tensors module '${module}' ${why}`);
  const qc = ckpt.config['quantization_config'] as Record<string, unknown> | undefined;
  if (qc?.['quant_method'] !== 'compressed-tensors' || !qc) return bad('has weight_packed but config.json has no compressed-tensors quantization_config');
  if (qc['format'] !== 'pack-quantized') bad(`format '${String(qc['format'])}' is not pack-quantized (the only compressed-tensors format read)`);
  const w = ctSchemeFor(qc, module);
  if (!w) return bad('matches no config group (or is in ignore) but is stored packed');
  const bits = w.num_bits;
  if (![2, 4, 8].includes(bits)) bad(`has num_bits ${bits} (2, 4 or 8 supported)`);
  const pf = 32 / bits;
  const shapeT = `${module}.weight_shape`;
  if (ckpt.has(shapeT)) {
    const b = await ckpt.readBytes(shapeT);
    const dt = ckpt.dtype(shapeT);
    const v = dt === 'I64' ? Array.from(new BigInt64Array(b.slice().buffer), Number) : dt === 'I32' ? Array.from(asI32(b)) : bad(`weight_shape is ${dt}`);
    if (v.length !== 2 || v[0] !== out || v[1] !== inF) bad(`weight_shape is [${v.join(', ')}], expected [${out}, ${inF}]`);
  }
  const pk = ckpt.shape(`${module}.weight_packed`);
  if (ckpt.dtype(`${module}.weight_packed`) !== 'I32' || pk.length !== 2 || pk[0] !== out || pk[1] !== Math.ceil(inF / pf)) {
    bad(`weight_packed is ${ckpt.dtype(`${module}.weight_packed`)} [${pk.join(', ')}], expected I32 [${out}, ${Math.ceil(inF / pf)}]`);
  }
  const sc = ckpt.shape(`${module}.weight_scale`);
  const G = sc[1] ?? 1;
  if (sc.length !== 2 || sc[0] !== out) bad(`weight_scale is [${sc.join(', ')}], expected [${out}, groups]`);
  const gs = w.strategy === 'channel' ? inF : (w.group_size ?? inF);
  if (w.strategy === 'group' && Math.ceil(inF / gs) !== G) bad(`weight_scale has ${G} groups; group_size ${gs} gives ${Math.ceil(inF / gs)}`);
  const scales = toF32(await ckpt.readBytes(`${module}.weight_scale`), ckpt.dtype(`${module}.weight_scale`));
  const q = new Int32Array(out * inF);
  const packed = asI32(await ckpt.readBytes(`${module}.weight_packed`));
  for (let o = 0; o < out; o++) unpackRow(packed, o * pk[1]!, inF, bits, q, o * inF);
  const half = 1 << (bits - 1);
  // signed zero points (0 when symmetric), unpacked along the output dimension
  const zp = new Int32Array(out * G);
  const zpT = `${module}.weight_zero_point`;
  if (!w.symmetric) {
    if (!ckpt.has(zpT)) bad('is asymmetric but has no weight_zero_point');
    const zs = ckpt.shape(zpT);
    if (zs.length !== 2 || zs[0] !== Math.ceil(out / pf) || zs[1] !== G)
      bad(`weight_zero_point is [${zs.join(', ')}], expected [${Math.ceil(out / pf)}, ${G}]`);
    const z = asI32(await ckpt.readBytes(zpT));
    const mask = (1 << bits) - 1;
    for (let o = 0; o < out; o++) for (let g = 0; g < G; g++) zp[o * G + g] = ((z[Math.floor(o / pf) * G + g]! >>> (bits * (o % pf))) & mask) - half;
  }
  let gIdx: Int32Array | undefined;
  if (ckpt.has(`${module}.weight_g_idx`)) gIdx = asI32(await ckpt.readBytes(`${module}.weight_g_idx`));
  const res = new Float32Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      const g = gIdx ? gIdx[i]! : Math.floor(i / gs);
      res[o * inF + i] = scales[o * G + g]! * (q[o * inF + i]! - half - zp[o * G + g]!);
    }
  }
  return res;
}

export const CT_FORMAT: LinearFormat = {
  name: 'compressed-tensors',
  detect: (ckpt, ref) => ref.expert === undefined && !ckpt.has(ref.tensor) && ckpt.has(`${moduleOfTensor(ref.tensor)}.weight_packed`),
  async load(ckpt: Checkpoint, ref: LinearRef) {
    return { out: ref.outFeatures, in: ref.inFeatures, w: await readCt(ckpt, moduleOfTensor(ref.tensor), ref.outFeatures, ref.inFeatures) };
  },
  tensors: (ckpt, ref) => CT_SUFFIXES.map((s) => `${moduleOfTensor(ref.tensor)}.${s}`).filter((n) => ckpt.has(n)),
};

let registered = false;
/** Make loadLinear read compressed-tensors linears (idempotent; format.ts calls it on import). */
export function registerCtFormat(): void {
  if (registered) return;
  registerLinearFormat(CT_FORMAT);
  registered = true;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The routed experts' container of an expert module (`model.layers.3.mlp.experts.5.gate_proj` -> `model.layers.3.mlp.experts`): vLLM's fused-MoE prefix. */
export function fusedPrefix(module: string): string {
  return module.replace(/\.\d+\.[^.]+$/, '');
}

/**
 * quantization_config of a compressed-tensors checkpoint: one config group per (class, width), named
 * `<class>_w<bits>a16` (the routed experts, attention, shared experts and dense MLPs each in groups of their own,
 * as vLLM's MoE recipes write them), holding
 *  - each MoE layer at that width as one target `re:<experts prefix>\.\d+\.` (it matches our module names and the
 *    names vLLM looks up for the fused module, `experts.0.gate_proj`, whatever the family calls its projections),
 *  - the other quantized linears at that width by pattern (layer index generalised: `re:^model\.layers\.\d+\.self_attn\.q_proj$`).
 * Targets never overlap (so no module matches two groups); `ignore` lists the unquantized linears (routers
 * included) and, for readers that match by class, lm_head, embeddings and norms.
 */
export function ctQuantizationConfig(
  experts: readonly { prefix: string; bits: QuantBits }[],
  dense: readonly { module: string; bits: QuantBits; cls: string }[],
  unquantized: readonly string[],
  spec: { groupSize: number; actOrder?: boolean },
): Record<string, unknown> {
  const byGroup = new Map<string, { bits: number; targets: Set<string> }>();
  const add = (cls: string, bits: number, target: string) => {
    const name = `${cls}_w${bits}a16`;
    if (!byGroup.has(name)) byGroup.set(name, { bits, targets: new Set() });
    byGroup.get(name)!.targets.add(target);
  };
  for (const e of experts) add('experts', e.bits, `re:^${escapeRe(e.prefix)}\\.\\d+\\.`);
  // a dense pattern may only generalise the layer index if every layer's module of that pattern has the same width
  const pattern = (m: string) => `re:^${escapeRe(m).replace(/(layers\\\.)\d+(\\\.)/, '$1\\d+$2')}$`;
  const widthsOf = new Map<string, Set<number>>();
  for (const d of dense) {
    const p = pattern(d.module);
    if (!widthsOf.has(p)) widthsOf.set(p, new Set());
    widthsOf.get(p)!.add(d.bits);
  }
  for (const d of dense) {
    const p = pattern(d.module);
    add(d.cls, d.bits, widthsOf.get(p)!.size === 1 ? p : `re:^${escapeRe(d.module)}$`);
  }
  const config_groups: Record<string, unknown> = {};
  const order = ['experts', 'shared', 'attention', 'dense'];
  [...byGroup]
    .sort(([a, x], [b, y]) => order.indexOf(a.split('_')[0]!) - order.indexOf(b.split('_')[0]!) || x.bits - y.bits)
    .forEach(([name, { bits, targets }]) => {
      config_groups[name] = {
        targets: [...targets],
        weights: {
          num_bits: bits,
          type: 'int',
          symmetric: true,
          strategy: spec.groupSize === -1 ? 'channel' : 'group',
          group_size: spec.groupSize === -1 ? null : spec.groupSize,
          dynamic: false,
          actorder: spec.actOrder ? 'group' : null,
          observer: 'minmax',
          observer_kwargs: {},
          block_structure: null,
        },
        input_activations: null,
        output_activations: null,
        format: 'pack-quantized',
      };
    });
  return {
    quant_method: 'compressed-tensors',
    format: 'pack-quantized',
    quantization_status: 'compressed',
    config_groups,
    ignore: [...unquantized, 'lm_head', 're:.*embed_tokens$', 're:.*norm$'],
    kv_cache_scheme: null,
    global_compression_ratio: null,
    sparsity_config: {},
    quantizer: ['moe'],
  };
}
