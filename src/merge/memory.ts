/**
 * Peak-memory estimate of `moe merge` (reported by every run, printed by --dry-run), from shapes and the plan: the
 * phases and merge's own working set; the engine adds the shared terms and composes the peak (src/pipeline/memory.ts).
 *
 * Two phases that do not overlap, the peak being the larger:
 * - the sequential forward pass (--calib): the runtime's streamed pass with a whole-layer hook (every expert of the
 *   layer in float32), plus the layer's merged experts handed back to the pass, one group's merge in progress, the
 *   layer statistics and the chosen methods' own parts (alignment, router fit: their descriptors, methods.ts); under
 *   --drop auto the pass runs once per candidate (src/merge/choose.ts), one at a time, each scored through the head,
 *   with the other candidates' plans and the REAP candidate's statistics held;
 * - the write: one tensor in flight, one group merged from lazily loaded members (anchor, member, its permuted
 *   copy, the float64 running sum, the result), the weight alignment when the plan leaves it to the write, and for
 *   fused expert layouts the layer's new experts until its stacked tensors are written.
 */
import { DEFAULT_LOGIT_SAMPLE_ROWS } from '../calibrate/collect.js';
import { DTYPE_BYTES } from '../io/dtype.js';
import type { Model } from '../model/open.js';
import type { MoeBlock } from '../model/types.js';
import type { MemoryPhase } from '../pipeline/memory.js';
import type { MemoryPart } from '../runtime/memory.js';
import { ALIGNS, find, GROUPINGS, ROUTERS, WEIGHTINGS } from './methods.js';
import type { MergePlan } from './plan.js';
import type { MergeChoices, MergeMemoryContext } from './types.js';

const F32 = 4;

export interface MergeMemoryInput {
  choices: MergeChoices;
  plan: MergePlan;
  /** the sequential pass over calibration text (absent: --stats or --plan, no forward pass) */
  pass?: { tokens: number; seqLen: number };
  alignTokens: number;
  fitTokens: number;
  /** --drop auto's whole-model choice (src/merge/choose.ts): every candidate's pass also scores the calibration tokens; `plans` merge candidates' plans are held */
  choose?: { plans: number };
}

export function mergeMemoryPhases(model: Model, m: MergeMemoryInput): MemoryPhase[] {
  const { ckpt, view } = model;
  const block = view.layers.find((l) => l.block.kind === 'moe')!.block as MoeBlock;
  const e0 = block.experts[0]!;
  const H = view.dims.hidden;
  const I = e0.gate.outFeatures;
  const E = block.experts.length;
  const N = m.choices.groups;
  const X = (e0.gate.outFeatures * e0.gate.inFeatures + e0.up.outFeatures * e0.up.inFeatures + e0.down.outFeatures * e0.down.inFeatures) * F32;
  const merged = Math.max(0, ...m.plan.layers.map((l) => l.groups.filter((g) => g.members.length > 1).length));
  const ctx = (phase: MergeMemoryContext['phase']): MergeMemoryContext => ({
    phase,
    hidden: H,
    intermediate: I,
    experts: E,
    groups: N,
    expertBytes: X,
    tokens: m.pass?.tokens ?? 0,
    alignTokens: m.alignTokens,
    fitTokens: m.fitTokens,
    alignAtWrite: m.plan.layers.some((l) => l.groups.some((g) => g.members.length > 1 && !g.perms)),
  });
  // the chosen methods' own parts, from their descriptors
  const chosen = [find(GROUPINGS, m.choices.grouping), find(ALIGNS, m.choices.align), find(WEIGHTINGS, m.choices.weighting), find(ROUTERS, m.choices.router)];
  const own = (phase: MergeMemoryContext['phase']): MemoryPart[] => chosen.flatMap((d) => d?.memory?.(ctx(phase)) ?? []);

  const inInfo = ckpt.info(e0.gate.tensor);
  const outWidth = DTYPE_BYTES[inInfo.dtype];
  const fused = view.expertLayout === 'fused';
  const largestNew = fused ? (inInfo.shape.reduce((a, b) => a * b, 1) / E) * N * outWidth * 2 : I * H * outWidth;
  const write: MemoryPhase = {
    parts: [
      { label: 'one group merged from lazily loaded members: anchor, member, permuted member, float64 running sum, result', bytes: 6 * X },
      ...own('write'),
      ...(fused ? [{ label: "fused layout: the layer's new experts until its stacked tensors are written", bytes: N * X }] : []),
    ],
    writer: { label: 'writer: one tensor in flight', largestNewBytes: largestNew },
  };
  if (!m.pass) return [write];
  const { tokens: T } = m.pass;
  const k = view.routing.topK;
  const pass: MemoryPhase = {
    pass: { tokens: T, seqLen: m.pass.seqLen, allExperts: true },
    parts: [
      { label: `merged experts of one layer handed to the pass (${merged} groups of more than one member)`, bytes: merged * X },
      { label: 'one group being merged: the float64 running sum and a permuted member', bytes: 3 * X },
      { label: "layer statistics: one expert's routed inputs, activations and outputs", bytes: 2 * Math.ceil((T * k) / E) * (2 * H + 3 * I) * F32 },
      ...own('pass'),
      ...(m.choose
        ? [
            {
              label:
                "whole-model choice: the head's scoring of a candidate (final hidden rows, one token chunk of logits), the other candidates' plans, the REAP candidate's statistics",
              bytes:
                T * H * F32 +
                Math.min(T, 2048) * Math.min(view.dims.vocab, 8192) * F32 +
                m.plan.layers.length * (m.choose.plans * N * (H + 2) * F32 + E * H * 8 + DEFAULT_LOGIT_SAMPLE_ROWS * E * F32 + 8 * E * 8),
            },
          ]
        : []),
    ],
  };
  // the write is listed first: it is the peak when both are equal
  return [write, pass];
}
