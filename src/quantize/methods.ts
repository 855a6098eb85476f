/**
 * The quantizers of `moe quantize`, one registered unit each, and the allocation granularities. The names are the
 * --method / --granularity values and recipe values; `Method` and `Granularity` are derived from these lists.
 */
import type { MethodDescriptor } from '../pipeline/descriptor.js';

export const QUANTIZERS = [
  {
    name: 'gptq',
    summary:
      "GPTQ: columns quantized in order, each one's error compensated on the rest through the Hessian of the expert's routed inputs; layers sequential through the quantized ones before them",
    paper: 'GPTQ, https://arxiv.org/abs/2210.17323',
    needs: 'sequential',
  },
  { name: 'rtn', summary: 'round-to-nearest per group (min-max or symmetric); no data unless widths are chosen by scores', needs: 'none' },
] as const satisfies readonly MethodDescriptor[];

export type Method = (typeof QUANTIZERS)[number]['name'];
export const METHOD_NAMES = QUANTIZERS.map((m) => m.name) as [Method, ...Method[]];

export const GRANULARITIES = ['expert', 'layer'] as const;
export type Granularity = (typeof GRANULARITIES)[number];
