/** The GPTQ v1 checkpoint layout (src/quantize/format.ts): what GPTQModel, our runtime and vLLM load. */
import type { MethodDescriptor } from '../../pipeline/descriptor.js';

export const gptqFormat = {
  name: 'gptq',
  summary:
    'GPTQ v1 checkpoint as GPTQModel writes it (safetensors + quantization_config); per-expert widths (our runtime, GPTQModel); with --serve vllm symmetric, one width per MoE layer, layer-level dynamic keys (vLLM)',
  needs: 'none',
} as const satisfies MethodDescriptor;
