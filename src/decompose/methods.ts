/**
 * The factorisation modes of `moe decompose`, one registered unit each (the factors themselves: units.ts, the
 * on-disk layout: format.ts). The names are the --mode values and recipe values; all but `svd` whiten by the Gram
 * matrices of each expert's routed inputs, collected in a forward pass over calibration text.
 */
import type { MethodDescriptor } from '../pipeline/descriptor.js';
import type { DecomposeMode } from './format.js';

export const MODE_METHODS: readonly (MethodDescriptor & { name: DecomposeMode })[] = [
  { name: 'svd', summary: 'plain truncated SVD of each expert linear (weight-space error)', needs: 'none' },
  {
    name: 'whitened',
    summary: "SVD of W L with L L^T the Gram of the expert's routed inputs: the truncation error is the activation-space error, exactly",
    paper: 'SVD-LLM, https://arxiv.org/abs/2403.07378',
    needs: 'forward',
  },
  {
    name: 'shared-input',
    summary: 'one input basis per layer x projection shared by all experts, per-expert output factors; one common whitening',
    paper: 'MoE-SVD, MoLE',
    needs: 'forward',
  },
  {
    name: 'shared-output',
    summary: 'one output basis per layer x projection shared by all experts, each expert whitened by its own Gram',
    paper: 'Sub-MoE',
    needs: 'forward',
  },
  {
    name: 'base-delta',
    summary: 'frequency-weighted base expert per layer x projection (dense) plus whitened low-rank deltas per expert',
    paper: 'D²-MoE',
    needs: 'forward',
  },
];
