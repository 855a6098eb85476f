/**
 * Memory-estimate composition, once for every pipeline: a run is a few phases that do not overlap in time (a
 * scoring pass, then apply + write), and each phase's peak is the sum of the shared terms the engine knows (the
 * runtime, the streamed forward pass over the calibration tokens, the writer's tensor in flight) and the working
 * set that only the pipeline and its methods know (GPTQ's Hessians, Gram matrices, an alignment's similarity...).
 * A pipeline describes its phases; each method's descriptor gives its own part (`MethodDescriptor.memory`); this
 * composes the total that every report carries and `--dry-run` prints (src/runtime/memory.ts has the terms).
 */
import type { Model } from '../model/open.js';
import { estimatePeak, maxEstimate, streamedPassParts, writerBytes, type MemoryEstimate, type MemoryPart } from '../runtime/memory.js';

export interface MemoryPhase {
  /** the streamed calibration forward pass of this phase; `allExperts`: its hook sees every expert of a layer at once */
  pass?: { tokens: number; seqLen: number; allExperts: boolean };
  /** the pipeline's own working set in this phase, with its methods' parts (from their descriptors) */
  parts: readonly MemoryPart[];
  /**
   * the writer runs in this phase: its label, the bytes of the largest tensor it produces (in the output dtype) and
   * what the pipeline holds next to it (a float32 copy of that tensor, say)
   */
  writer?: { label: string; largestNewBytes?: number; extraBytes?: number };
  /** false: nothing in this phase starts the tensor backend (the runtime term is Node's alone) */
  tensorBackend?: boolean;
}

/** The parts of one phase, in the order they are summed: the forward pass, the pipeline's own, the writer. */
export function phaseParts(model: Model, p: MemoryPhase): MemoryPart[] {
  const parts: MemoryPart[] = [];
  if (p.pass) parts.push(...streamedPassParts(model.ckpt, model.view, p.pass.tokens, p.pass.seqLen, p.pass.allExperts));
  parts.push(...p.parts);
  if (p.writer) parts.push({ label: p.writer.label, bytes: writerBytes(model.ckpt, p.writer.largestNewBytes) + (p.writer.extraBytes ?? 0) });
  return parts;
}

/** The run's estimated peak: the largest phase's (phases listed first win a tie). */
export function composeMemory(model: Model, phases: readonly MemoryPhase[]): MemoryEstimate {
  if (phases.length === 0) return estimatePeak([], { tensorBackend: false });
  return maxEstimate(...phases.map((p) => estimatePeak(phaseParts(model, p), p.tensorBackend === false ? { tensorBackend: false } : {})));
}
