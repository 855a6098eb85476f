import type { PruneMethod } from './common.js';

/** The search itself is src/prune/reconstruct.ts, run inside the forward pass by src/prune/calibrated.ts. */
export const reconstruct: PruneMethod = {
  name: 'reconstruct',
  summary:
    'kept set minimising ‖F(X) − F_S(X)‖_F of the MoE block output, routing redone among kept experts (exact for few subsets, else beam search seeded by REAP)',
  paper: 'https://arxiv.org/abs/2402.14800',
  needs: 'sequential',
  // every expert's output on the token sample (and the MoE block's, and its reconstruction), float32
  memory: (c) => [
    { label: "reconstruct: every expert's output on the token sample", bytes: Math.min(c.tokens, c.sampleTokens) * (c.experts + 2) * c.hidden * 4 },
  ],
};
