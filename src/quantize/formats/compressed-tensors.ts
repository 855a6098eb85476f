/** compressed-tensors pack-quantized (src/quantize/ct.ts): vLLM's recommended layout for quantized MoE. */
import type { MethodDescriptor } from '../../pipeline/descriptor.js';

export const compressedTensorsFormat = {
  name: 'compressed-tensors',
  summary:
    "compressed-tensors pack-quantized (weight_packed int32, weight_scale, weight_shape; config_groups with regex targets, ignore list): vLLM's recommended path for quantized MoE; implies --serve vllm",
  needs: 'none',
} as const satisfies MethodDescriptor;
