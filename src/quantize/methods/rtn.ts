/** Round-to-nearest: each group of weights on its own grid, no data (the baseline GPTQ is measured against). */
import type { Quantizer } from './common.js';

export const rtn = {
  name: 'rtn',
  summary: 'round-to-nearest per group (min-max or symmetric); no data unless widths are chosen by scores',
  needs: 'none',
  hessians: false,
  calibrationNote: () => 'none: round-to-nearest needs no activations',
} as const satisfies Quantizer<'rtn'>;
