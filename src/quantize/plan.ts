/**
 * Every linear's fate, decided before any tensor data is read, in llama.cpp's order (llama_tensor_get_type):
 * eligibility (a 2-D linear that is not the router, a norm, an embedding or lm_head) -> --ignore patterns ->
 * --override patterns -> class default (routed experts: allocated by the program; attention, dense MLPs and
 * shared experts: --dense-bits) -> shape fallback (a width the GPTQ packing cannot express for this shape moves
 * up). Each decision records its reason, shown by --dry-run and in the report.
 */
import { fail } from '../errors.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { DTYPE_BYTES } from '../io/dtype.js';
import { linearTensors } from '../model/load.js';
import type { LinearRef, ModelView, SwiGLURefs } from '../model/types.js';
import { isAttentionLinearRole } from '../model/view.js';
import { gptqBytes } from '../../kernels/quant/pack.js';
import { QUANT_BITS, type QuantBits, type QuantSpec } from '../../kernels/quant/types.js';
import { ctBytes } from './ct.js';
import { moduleOf } from './format.js';
import { fusedGptqLayout, type FusedTarget } from './fused.js';

export type LinearClass = 'expert' | 'shared' | 'attention' | 'dense';
/** classes `--allocate` can make allocation units of their own (one per layer: its attention, shared expert, dense MLP) */
export const ALLOCATABLE_CLASSES = ['attention', 'shared', 'dense'] as const satisfies readonly LinearClass[];
export type AllocatableClass = (typeof ALLOCATABLE_CLASSES)[number];
export type Proj = 'gate' | 'up' | 'down';

export interface LinearDecision {
  /** the input weight tensor; for an expert slice of a fused tensor a key naming the slice (`<tensor>[e].gate`) */
  tensor: string;
  /** GPTQ module the linear is written as (gate and up of a fused gate_up share one) */
  module: string;
  ref: LinearRef;
  cls: LinearClass;
  layer: number;
  /** routed experts: expert index and projection */
  expert?: number;
  proj?: Proj;
  /** 'alloc': chosen by the program; a number: fixed; 'keep': left in its input dtype */
  bits: QuantBits | 'alloc' | 'keep';
  reason: string;
  params: number;
  /** bytes as stored in the input */
  inputBytes: number;
  /** expert slice of a fused 3-D tensor: where the GPTQ output puts it (src/quantize/fused.ts) */
  fused?: FusedTarget;
}

export interface Override {
  pattern: RegExp;
  bits: QuantBits;
  text: string;
}

export function parseOverride(s: string): Override {
  const eq = s.lastIndexOf('=');
  if (eq <= 0) fail('Usage', `--override must be REGEX=BITS, got '${s}'`);
  const re = s.slice(0, eq);
  const bits = Number(s.slice(eq + 1));
  if (!QUANT_BITS.includes(bits as QuantBits)) fail('Usage', `--override '${s}': bits must be one of ${QUANT_BITS.join(', ')}`);
  return { pattern: compile(re, '--override'), bits: bits as QuantBits, text: s };
}

export function compile(re: string, flag: string): RegExp {
  try {
    return new RegExp(re);
  } catch (e) {
    fail('Usage', `${flag} '${re}' is not a valid regular expression (${(e as Error).message})`);
  }
}

/** Whether the GPTQ layout can hold this shape at these bits (whole 32-bit words along both packed dims). */
export function packable(out: number, inF: number, bits: QuantBits): boolean {
  return (inF * bits) % 32 === 0 && (out * bits) % 32 === 0;
}

/** Formats whose every stored byte the budget counts (gguf has its own accounting, src/gguf). */
export type StoredFormat = 'gptq' | 'compressed-tensors';

/**
 * Stored bytes of one quantized linear in the output format: GPTQ's qweight, qzeros, scales and g_idx (all four
 * are written, symmetric or not), or compressed-tensors' weight_packed, weight_scale and weight_shape (symmetric:
 * no zero points), plus weight_g_idx with act order.
 */
export function linearBytesAt(out: number, inF: number, bits: QuantBits, groupSize: number, format: StoredFormat = 'gptq', actOrder = false): number {
  if (format === 'compressed-tensors') return ctBytes(out, inF, bits, groupSize, actOrder);
  return gptqBytes(out, inF, { bits, groupSize, sym: false } as QuantSpec);
}

/**
 * Bytes a decision's linear occupies in the output at `bits`: its own tensors, or its share of a packed
 * module's (gate and up of a fused gate_up are one module of twice the rows: one g_idx between them).
 */
export function decisionBytesAt(
  d: Pick<LinearDecision, 'ref' | 'inputBytes' | 'fused'>,
  bits: QuantBits | 'keep',
  groupSize: number,
  format: StoredFormat = 'gptq',
  actOrder = false,
): number {
  if (bits === 'keep') return d.inputBytes;
  const of = d.fused?.pack?.of ?? 1;
  return linearBytesAt(d.ref.outFeatures * of, d.ref.inFeatures, bits, groupSize, format, actOrder) / of;
}

/** Stored bytes of a linear; for an expert slice of a fused tensor, its share of the tensors (any stored form: MXFP4 too). */
function storedBytes(ckpt: Checkpoint, ref: LinearRef): number {
  if (ref.expert !== undefined) {
    const names = linearTensors(ckpt, ref).filter((t) => ckpt.has(t));
    if (names.length === 0) return ref.outFeatures * ref.inFeatures * 2;
    const bytes = names.reduce((a, t) => a + ckpt.info(t).end - ckpt.info(t).begin, 0);
    return bytes / ckpt.shape(names[0]!)[0]! / (ref.rows || ref.interleave ? 2 : 1);
  }
  if (!ckpt.has(ref.tensor)) return ref.outFeatures * ref.inFeatures * 2;
  const info = ckpt.info(ref.tensor);
  if (ref.rows || ref.interleave) return ref.outFeatures * ref.inFeatures * DTYPE_BYTES[info.dtype];
  return info.end - info.begin;
}

export interface PlanOptions {
  denseBits: QuantBits;
  candidates: QuantBits[];
  groupSize: number;
  overrides: Override[];
  ignores: RegExp[];
  /** classes allocated as units of their own (--allocate) */
  allocate?: readonly AllocatableClass[];
  /** output format: fused experts are written under its per-expert layout (fused.ts) */
  format?: StoredFormat;
}

/** All linears of the model that the GPTQ format can address, with their class. */
export function collectLinears(view: ModelView, ckpt: Checkpoint): { ref: LinearRef; cls: LinearClass; layer: number; expert?: number; proj?: Proj }[] {
  const out: { ref: LinearRef; cls: LinearClass; layer: number; expert?: number; proj?: Proj }[] = [];
  const swi = (r: SwiGLURefs, cls: LinearClass, layer: number, expert?: number) => {
    for (const p of ['gate', 'up', 'down'] as const) out.push({ ref: r[p], cls, layer, proj: p, ...(expert !== undefined ? { expert } : {}) });
  };
  for (const layer of view.layers) {
    for (const [role, name] of Object.entries(layer.attention.tensors)) {
      if (!isAttentionLinearRole(role) || !ckpt.has(name)) continue;
      const sh = ckpt.shape(name);
      if (sh.length !== 2) continue;
      out.push({ ref: { tensor: name, outFeatures: sh[0]!, inFeatures: sh[1]! }, cls: 'attention', layer: layer.index });
    }
    const b = layer.block;
    if (b.kind === 'dense') swi(b.mlp, 'dense', layer.index);
    else {
      b.experts.forEach((e, j) => swi(e, 'expert', layer.index, j));
      if (b.shared) swi(b.shared, 'shared', layer.index);
    }
  }
  return out;
}

export function decide(view: ModelView, ckpt: Checkpoint, opts: PlanOptions): LinearDecision[] {
  // experts fused in 3-D tensors are written as the per-expert modules GPTQModel defines for the family, or refused
  const fusedLayout = view.expertLayout === 'fused' ? fusedGptqLayout(view, opts.format) : undefined;
  if (fusedLayout && 'refuse' in fusedLayout) fail('UnsupportedArchitecture', `cannot quantize: ${fusedLayout.refuse}`);
  return collectLinears(view, ckpt).map(({ ref, cls, layer, expert, proj }) => {
    const fused = fusedLayout && !('refuse' in fusedLayout) && ref.expert !== undefined ? fusedLayout.target(view.layers[layer]!, expert!, proj!) : undefined;
    const module = fused ? fused.module : moduleOf(ref.tensor);
    const base = {
      tensor: fused ? `${ref.tensor}[${expert}].${proj}` : ref.tensor,
      module,
      ref,
      cls,
      layer,
      params: ref.outFeatures * ref.inFeatures,
      inputBytes: storedBytes(ckpt, ref),
      ...(expert !== undefined ? { expert } : {}),
      ...(proj ? { proj } : {}),
      ...(fused ? { fused } : {}),
    };
    const odd = !fused && (ref.expert !== undefined || !!ref.rows || !!ref.interleave || !!ref.transposed || !ref.tensor.endsWith('.weight'));
    if (odd) return { ...base, bits: 'keep' as const, reason: 'fused or transposed layout: GPTQ addresses one 2-D module per linear' };
    const ign = opts.ignores.find((r) => r.test(module));
    if (ign) return { ...base, bits: 'keep' as const, reason: `--ignore ${ign.source}` };
    const ov = opts.overrides.find((o) => o.pattern.test(module));
    let bits: QuantBits | 'alloc';
    let reason: string;
    if (ov) {
      bits = ov.bits;
      reason = `--override ${ov.text}`;
    } else if (cls === 'expert') {
      bits = 'alloc';
      reason = 'routed expert: bits chosen by the allocation program';
    } else if (opts.allocate?.includes(cls)) {
      bits = 'alloc';
      reason = `${cls}: its layer's own allocation unit (--allocate ${cls})`;
    } else {
      bits = opts.denseBits;
      reason = `${cls}: --dense-bits ${opts.denseBits}`;
    }
    const { outFeatures: o, inFeatures: i } = ref;
    if (bits === 'alloc') {
      if (!opts.candidates.some((b) => packable(o, i, b))) return { ...base, bits: 'keep' as const, reason: `shape [${o}, ${i}] fits no candidate width` };
      return { ...base, bits, reason };
    }
    if (!packable(o, i, bits)) {
      const up = QUANT_BITS.find((b) => b > (bits as number) && packable(o, i, b));
      if (!up) return { ...base, bits: 'keep' as const, reason: `shape [${o}, ${i}] cannot be packed at ${bits} bits` };
      return { ...base, bits: up, reason: `${reason}; shape fallback ${bits} -> ${up} bits` };
    }
    return { ...base, bits, reason };
  });
}
