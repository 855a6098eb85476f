/**
 * The choices of `moe merge`, one registered unit each: how experts are grouped, how a group's members are aligned
 * onto its anchor, how they are weighted in the average, and where the group's router row comes from. Each says
 * what data it needs; the engine derives the checks from that (a --stats artifact holds no hidden states, so the
 * choices that need a sequential pass refuse it). The names are the option values and recipe values.
 */
import type { MethodDescriptor, MethodFamily } from '../pipeline/descriptor.js';
import type { AlignMethod, GroupingMethod, MergeMemoryContext, RouterMethod, WeightingMethod } from './types.js';

type Named<T extends string> = MethodDescriptor<MergeMemoryContext> & { name: T };

const F32 = 4;

/** signatures [I, 3H] of anchor and member and a transposed copy in JS, the backend's copies of one signature chunk,
 *  the transposed signatures and the I x I product, the product read back (float32) and the similarity (float64) */
const weightAlignment = (c: MergeMemoryContext) => ({
  label: 'weight alignment: unit signatures of two experts with their tensor-backend copies, the I x I similarity (float32 product and float64 copy)',
  bytes: 5 * c.expertBytes + 12 * c.intermediate * c.intermediate,
});

export const GROUPINGS: readonly Named<GroupingMethod>[] = [
  {
    name: 'msmoe',
    summary: 'the N most frequently routed experts are dominant; every other expert joins the dominant one whose router logits are most similar',
    paper: 'M-SMoE (Merge, Then Compress), https://arxiv.org/abs/2310.01334',
    needs: 'stats',
  },
  {
    name: 'hierarchical',
    summary: "average-linkage clustering of the experts' mean outputs (cosine distance) down to N clusters; anchor = most frequent member",
    paper: 'HC-SMoE',
    needs: 'stats',
  },
  {
    name: 'saliency',
    summary: 'the N experts of highest REAP saliency are centroids; each takes its nearest unassigned experts (mean-output cosine)',
    paper: 'REAM-style',
    needs: 'stats',
  },
];

export const ALIGNS: readonly Named<AlignMethod>[] = [
  { name: 'none', summary: 'average as stored', needs: 'none' },
  {
    name: 'weights',
    summary: "linear assignment of each member's intermediate units to the anchor's by the inner product of their weights",
    paper: 'M-SMoE (extended to SwiGLU)',
    needs: 'none',
    // in the pass (permutations kept in the plan), or at the write when the plan has none
    memory: (c) => (c.phase === 'pass' || c.alignAtWrite ? [weightAlignment(c)] : []),
  },
  {
    name: 'activations',
    summary: "the same assignment on the correlation of the units' activations on calibration tokens routed to the group",
    paper: 'REAM',
    needs: 'sequential',
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
  },
];

export const WEIGHTINGS: readonly Named<WeightingMethod>[] = [
  { name: 'frequency', summary: 'member weight proportional to the tokens routed to it', paper: 'M-SMoE, HC-SMoE', needs: 'stats' },
  { name: 'saliency', summary: 'proportional to REAP saliency (mean of g·‖f‖ over its routed tokens)', paper: 'REAM', needs: 'stats' },
  { name: 'uniform', summary: 'equal weights', needs: 'none' },
];

export const ROUTERS: readonly Named<RouterMethod>[] = [
  { name: 'mean', summary: "mean of the members' router rows", needs: 'none' },
  { name: 'anchor', summary: "the anchor's row", paper: 'REAM', needs: 'none' },
  {
    name: 'fit',
    summary: 'rows fitted on calibration hidden states so the new scores match the group-summed old ones (Adam from the better of anchor/mean)',
    needs: 'sequential',
    memory: (c) => {
      if (c.phase !== 'pass') return [];
      const Tf = Math.min(c.tokens, c.fitTokens);
      return [{ label: `router fit on ${Tf} tokens`, bytes: 2 * Tf * c.hidden * F32 + Tf * c.experts * F32 + Tf * c.groups * (8 + 4 + 4) }];
    },
  },
];

export const MERGE_METHODS: readonly MethodFamily[] = [
  { option: '--grouping', title: 'Grouping', methods: GROUPINGS },
  { option: '--align', title: 'Alignment', methods: ALIGNS },
  { option: '--weighting', title: 'Weighting', methods: WEIGHTINGS },
  { option: '--router', title: 'Router rows', methods: ROUTERS },
];

export const find = <T extends MethodDescriptor>(list: readonly T[], name: string): T | undefined => list.find((m) => m.name === name);
