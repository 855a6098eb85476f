/** One llama.cpp GGUF file (src/gguf/quantize.ts, a pipeline of its own: one ggml type per tensor). */
import type { MethodDescriptor } from '../../pipeline/descriptor.js';

export const ggufFormat = {
  name: 'gguf',
  summary:
    "one llama.cpp GGUF file (DIR/model.gguf) with llama.cpp's own block types, one per tensor (layer x projection for experts), GPTQ error compensation into them, plus the --tensor-type list and imatrix that make llama-quantize reproduce the choice",
  needs: 'none',
} as const satisfies MethodDescriptor;
