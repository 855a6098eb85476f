/**
 * The quantizers of `moe quantize`, one registered unit each (src/quantize/methods/<name>.ts: its descriptor, memory
 * part and the traits the pipelines branch on), and the allocation granularities. A new quantizer is one file there
 * plus its tests, listed below. The names are the --method / --granularity values and recipe values; `Method` and `Granularity` are derived from these lists.
 */
import { fail } from '../errors.js';
import type { MethodDescriptor } from '../pipeline/descriptor.js';
import type { Quantizer } from './methods/common.js';
import { gptq } from './methods/gptq.js';
import { rtn } from './methods/rtn.js';

export type { QuantizeMemoryContext, Quantizer } from './methods/common.js';

export const QUANTIZERS = [gptq, rtn] as const satisfies readonly Quantizer[];

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
 * Output formats of `moe quantize --format` (compressed-tensors: src/quantize/ct.ts, the per-format byte accounting
 * in plan.ts; `gguf` is src/gguf/quantize.ts, a pipeline of its own: one ggml type per tensor).
 */
export const OUTPUT_FORMATS = [
  {
    name: 'gptq',
    summary:
      'GPTQ v1 checkpoint as GPTQModel writes it (safetensors + quantization_config); per-expert widths (our runtime, GPTQModel); with --serve vllm symmetric, one width per MoE layer, layer-level dynamic keys (vLLM)',
    needs: 'none',
  },
  {
    name: 'compressed-tensors',
    summary:
      "compressed-tensors pack-quantized (weight_packed int32, weight_scale, weight_shape; config_groups with regex targets, ignore list): vLLM's recommended path for quantized MoE; implies --serve vllm",
    needs: 'none',
  },
  {
    name: 'gguf',
    summary:
      "one llama.cpp GGUF file (DIR/model.gguf) with llama.cpp's own block types, one per tensor (layer x projection for experts), GPTQ error compensation into them, plus the --tensor-type list and imatrix that make llama-quantize reproduce the choice",
    needs: 'none',
  },
] as const satisfies readonly MethodDescriptor[];
export type OutputFormat = (typeof OUTPUT_FORMATS)[number]['name'];
export const OUTPUT_FORMAT_NAMES = OUTPUT_FORMATS.map((f) => f.name) as [OutputFormat, ...OutputFormat[]];
