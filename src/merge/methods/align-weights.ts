/** Units matched by their weights: the assignment maximising the inner product of gate/up rows and down columns. */
import { weightSimilarity } from '../align.js';
import type { MergeMemoryContext } from '../types.js';
import type { Alignment } from './common.js';

/** signatures [I, 3H] of anchor and member and a transposed copy in JS, the backend's copies of one signature chunk,
 *  the transposed signatures and the I x I product, the product read back (float32) and the similarity (float64) */
const weightAlignment = (c: MergeMemoryContext) => ({
  label: 'weight alignment: unit signatures of two experts with their tensor-backend copies, the I x I similarity (float32 product and float64 copy)',
  bytes: 5 * c.expertBytes + 12 * c.intermediate * c.intermediate,
});

export const alignWeights: Alignment = {
  name: 'weights',
  summary: "linear assignment of each member's intermediate units to the anchor's by the inner product of their weights",
  paper: 'M-SMoE (extended to SwiGLU)',
  needs: 'none',
  // in the pass (permutations kept in the plan), or at the write when the plan has none
  memory: (c) => (c.phase === 'pass' || c.alignAtWrite ? [weightAlignment(c)] : []),
  similarity: (anchor, member) => weightSimilarity(anchor, member),
};
