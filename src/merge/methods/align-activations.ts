/** Units matched by their activations: the same assignment on the correlation over the group's routed tokens (REAM). */
import { activationSimilarity, weightSimilarity } from '../align.js';
import type { Alignment } from './common.js';

const F32 = 4;

export const alignActivations: Alignment = {
  name: 'activations',
  summary: "the same assignment on the correlation of the units' activations on calibration tokens routed to the group",
  paper: 'REAM',
  needs: 'sequential',
  fromHiddenStates: 'activation alignment',
  reads: ['alignTokens'],
  memory: (c) => {
    if (c.phase !== 'pass') return [];
    const Ta = Math.min(c.tokens, c.alignTokens);
    const I = c.intermediate;
    // per expert: activations read back and a transposed copy (JS), gate/up/activation tensors in the backend;
    // the transposed gate and up weights (JS and backend); the I x I product as for weight alignment
    return [
      {
        label: `activation alignment: two experts' activations on ${Ta} tokens (with transposed and tensor-backend copies), the I x I similarity`,
        bytes: 11 * Ta * I * F32 + Ta * c.hidden * F32 + 1.5 * c.expertBytes + 12 * I * I,
      },
    ];
  },
  similarity: (anchor, member, tokens, activation) => {
    const t = tokens();
    // a group no calibration token reached has no activations to correlate: its weights are the only evidence
    return t.T >= 2 ? activationSimilarity(anchor, member, t.x, t.T, activation) : weightSimilarity(anchor, member);
  },
};
