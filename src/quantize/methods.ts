/**
 * The quantizers of `moe quantize`, one registered unit each (src/quantize/methods/<name>.ts: its descriptor, memory
 * part and the traits the pipelines branch on), and the allocation granularities. A new quantizer is one file there
 * plus its tests, listed below. The names are the --method / --granularity values and recipe values; `Method` and `Granularity` are derived from these lists.
 */
import { fail } from '../errors.js';
import type { MethodDescriptor } from '../pipeline/descriptor.js';
import { compressedTensorsFormat } from './formats/compressed-tensors.js';
import { gptqFormat } from './formats/gptq.js';
import { ggufFormat } from './formats/gguf.js';
import type { Quantizer } from './methods/common.js';
import { auto } from './methods/auto.js';
import { gptq } from './methods/gptq.js';
import { rtn } from './methods/rtn.js';

export type { QuantizeMemoryContext, Quantizer } from './methods/common.js';

export const QUANTIZERS = [gptq, rtn, auto] as const satisfies readonly Quantizer[];

export type Method = (typeof QUANTIZERS)[number]['name'];
export const METHOD_NAMES = QUANTIZERS.map((m) => m.name) as [Method, ...Method[]];

export function getQuantizer(name: string): Quantizer {
  const q = (QUANTIZERS as readonly Quantizer[]).find((x) => x.name === name);
  if (!q) fail('Usage', `unknown quantizer '${name}' (choose one of: ${METHOD_NAMES.join(', ')})`);
  return q;
}

/** Whether `method` compensates an expert's rounding through its Hessian, given the tokens routed to it. */
export function compensates(method: string, tokens: number, minTokens: number): boolean {
  return getQuantizer(method).hessians && tokens >= minTokens;
}

/**
 * expert: one expert (its three projections); projection: one projection of all experts of a layer (GGUF's
 * unit; before 2026-12 this was called 'layer'); layer: all experts and all three projections of a MoE layer
 * (vLLM's unit: one fused module, one scheme).
 */
export const GRANULARITIES = ['expert', 'projection', 'layer'] as const;
export type Granularity = (typeof GRANULARITIES)[number];

/**
 * Output formats of `moe quantize --format`, one descriptor file each (src/quantize/formats/<name>.ts); their writers
 * are format.ts (gptq), ct.ts (compressed-tensors, with the per-format byte accounting in plan.ts) and
 * src/gguf/quantize.ts (gguf, a pipeline of its own: one ggml type per tensor).
 */
export const OUTPUT_FORMATS = [gptqFormat, compressedTensorsFormat, ggufFormat] as const satisfies readonly MethodDescriptor[];
export type OutputFormat = (typeof OUTPUT_FORMATS)[number]['name'];
export const OUTPUT_FORMAT_NAMES = OUTPUT_FORMATS.map((f) => f.name) as [OutputFormat, ...OutputFormat[]];
