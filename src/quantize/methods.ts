/**
 * The quantizers of `moe quantize`, one registered unit each, and the allocation granularities. The names are the
 * --method / --granularity values and recipe values; `Method` and `Granularity` are derived from these lists.
 */
import type { MethodDescriptor } from '../pipeline/descriptor.js';
import type { MemoryPart } from '../runtime/memory.js';

/** What a quantizer's memory estimate sees (src/quantize/memory.ts): the phase, the worker threads, the linears. */
export interface QuantizeMemoryContext {
  /** the scoring pass (each unit quantized at every candidate width) or the apply pass */
  phase: 'score' | 'apply';
  /** worker threads: each runs one expert's working set */
  threads: number;
  /** input features of each linear the phase quantizes */
  inputs: readonly number[];
}

/**
 * GPTQ's preparation of one input of n features (kernels/quant/gptq.ts prepareGptq and
 * kernels/linalg/cholesky.ts upperCholeskyOfInverse): the Hessian, its damped copies, the reversed copy, the
 * Cholesky factor, its inverse and the upper factor, seven n x n float64 arrays at the high-water mark.
 */
const GPTQ_SQUARES = 7;

/** gate/up share the expert's input (hidden), down reads the intermediate: the larger input is prepared while the
 *  other's factor is still alive */
export function gptqWorkingSet(inputs: readonly number[]): number {
  let big = 0;
  let small = 0;
  for (const n of inputs) {
    if (n > big) {
      small = Math.max(small, big);
      big = n;
    } else if (n < big) small = Math.max(small, n);
  }
  return 8 * (GPTQ_SQUARES * big * big + small * small);
}

function gptqMemory(c: QuantizeMemoryContext): MemoryPart[] {
  const perThread = c.threads > 1 ? ` (one per worker thread, ${c.threads})` : '';
  return [
    c.phase === 'score'
      ? {
          label: `GPTQ scoring: float64 Hessians, Cholesky factor and inverse of the largest input, prepared factor of the other${perThread}`,
          bytes: c.threads * gptqWorkingSet(c.inputs),
        }
      : { label: `GPTQ: float64 Hessian, Cholesky factor and inverse of the largest input in flight${perThread}`, bytes: c.threads * gptqWorkingSet(c.inputs) },
  ];
}

export const QUANTIZERS = [
  {
    name: 'gptq',
    summary:
      "GPTQ: columns quantized in order, each one's error compensated on the rest through the Hessian of the expert's routed inputs; layers sequential through the quantized ones before them",
    paper: 'GPTQ, https://arxiv.org/abs/2210.17323',
    needs: 'sequential',
    memory: gptqMemory,
  },
  { name: 'rtn', summary: 'round-to-nearest per group (min-max or symmetric); no data unless widths are chosen by scores', needs: 'none' },
] as const satisfies readonly MethodDescriptor<QuantizeMemoryContext>[];

export type Method = (typeof QUANTIZERS)[number]['name'];
export const METHOD_NAMES = QUANTIZERS.map((m) => m.name) as [Method, ...Method[]];

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
