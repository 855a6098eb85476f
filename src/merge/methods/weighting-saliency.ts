/** A member weighs its REAP saliency: what it contributes to the block's output where it is routed (REAM). */
import type { Weighting } from './common.js';

export const weightingSaliency: Weighting = {
  name: 'saliency',
  summary: 'proportional to REAP saliency (mean of g·‖f‖ over its routed tokens)',
  paper: 'REAM',
  needs: 'stats',
  weight: (sig, m) => sig.saliency[m],
};
