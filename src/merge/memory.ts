/**
 * Peak-memory estimate of `moe merge` (reported by every run, printed by --dry-run), from shapes and the plan.
 *
 * Two phases that do not overlap, the peak being the larger:
 * - the sequential forward pass (--calib): the runtime's streamed pass with a whole-layer hook (every expert of the
 *   layer in float32, src/runtime/memory.ts), plus the layer's merged experts handed back to the pass, one group's
 *   merge in progress, the alignment's working set and the router fit's token sample;
 * - the write: one tensor in flight, one group merged from lazily loaded members (anchor, member, its permuted
 *   copy, the float64 running sum, the result), the weight alignment when the plan leaves it to the write, and for
 *   fused expert layouts the layer's new experts until its stacked tensors are written.
 */
import { DTYPE_BYTES } from '../io/dtype.js';
import type { Model } from '../model/open.js';
import type { MoeBlock } from '../model/types.js';
import { estimatePeak, streamedPassParts, writerBytes, type MemoryEstimate, type MemoryPart } from '../runtime/memory.js';
import type { MergePlan } from './plan.js';
import type { MergeChoices } from './types.js';

const F32 = 4;

export interface MergeMemoryInput {
  choices: MergeChoices;
  plan: MergePlan;
  /** the sequential pass over calibration text (absent: --stats or --plan, no forward pass) */
  pass?: { tokens: number; seqLen: number };
  alignTokens: number;
  fitTokens: number;
}

export function mergeMemory(model: Model, m: MergeMemoryInput): MemoryEstimate {
  const { ckpt, view } = model;
  const block = view.layers.find((l) => l.block.kind === 'moe')!.block as MoeBlock;
  const e0 = block.experts[0]!;
  const H = view.dims.hidden;
  const I = e0.gate.outFeatures;
  const E = block.experts.length;
  const N = m.choices.groups;
  const X = (e0.gate.outFeatures * e0.gate.inFeatures + e0.up.outFeatures * e0.up.inFeatures + e0.down.outFeatures * e0.down.inFeatures) * F32;
  const merged = Math.max(0, ...m.plan.layers.map((l) => l.groups.filter((g) => g.members.length > 1).length));
  // signatures [I, 3H] of anchor and member and a transposed copy in JS, the backend's copies of one signature chunk,
  // the transposed signatures and the I x I product, the product read back (float32) and the similarity (float64)
  const weightAlign: MemoryPart = {
    label: 'weight alignment: unit signatures of two experts with their tensor-backend copies, the I x I similarity (float32 product and float64 copy)',
    bytes: 5 * X + 12 * I * I,
  };

  let pass: MemoryEstimate | undefined;
  if (m.pass) {
    const { tokens: T, seqLen: S } = m.pass;
    const k = view.routing.topK;
    const parts = streamedPassParts(ckpt, view, T, S, true);
    parts.push({ label: `merged experts of one layer handed to the pass (${merged} groups of more than one member)`, bytes: merged * X });
    parts.push({ label: 'one group being merged: the float64 running sum and a permuted member', bytes: 3 * X });
    parts.push({ label: "layer statistics: one expert's routed inputs, activations and outputs", bytes: 2 * Math.ceil((T * k) / E) * (2 * H + 3 * I) * F32 });
    if (m.choices.align === 'weights') parts.push(weightAlign);
    if (m.choices.align === 'activations') {
      const Ta = Math.min(T, m.alignTokens);
      // per expert: activations read back and a transposed copy (JS), gate/up/activation tensors in the backend;
      // the transposed gate and up weights (JS and backend); the I x I product as for weight alignment
      parts.push({
        label: `activation alignment: two experts' activations on ${Ta} tokens (with transposed and tensor-backend copies), the I x I similarity`,
        bytes: 11 * Ta * I * F32 + Ta * H * F32 + 1.5 * X + 12 * I * I,
      });
    }
    if (m.choices.router === 'fit') {
      const Tf = Math.min(T, m.fitTokens);
      parts.push({ label: `router fit on ${Tf} tokens`, bytes: 2 * Tf * H * F32 + Tf * E * F32 + Tf * N * (8 + 4 + 4) });
    }
    pass = estimatePeak(parts);
  }

  const inInfo = ckpt.info(e0.gate.tensor);
  const outWidth = DTYPE_BYTES[inInfo.dtype];
  const fused = view.expertLayout === 'fused';
  const largestNew = fused ? (inInfo.shape.reduce((a, b) => a * b, 1) / E) * N * outWidth * 2 : I * H * outWidth;
  const write: MemoryPart[] = [
    { label: 'writer: one tensor in flight', bytes: writerBytes(ckpt, largestNew) },
    { label: 'one group merged from lazily loaded members: anchor, member, permuted member, float64 running sum, result', bytes: 6 * X },
  ];
  const alignAtWrite = m.choices.align === 'weights' && m.plan.layers.some((l) => l.groups.some((g) => g.members.length > 1 && !g.perms));
  if (alignAtWrite) write.push(weightAlign);
  if (fused) write.push({ label: "fused layout: the layer's new experts until its stacked tensors are written", bytes: N * X });
  const w = estimatePeak(write);
  return pass && pass.peakBytes > w.peakBytes ? pass : w;
}
