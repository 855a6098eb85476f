/** Checkpoint sizes for the prune and merge reports: whole model and routed experts, before and after. */
import type { Checkpoint } from '../io/checkpoint.js';
import { stagedPath } from '../io/output.js';
import { openModel } from './open.js';
import type { ModelView, SwiGLURefs } from './types.js';

export interface SizeSummary {
  bytes: number;
  params: number;
  /** routed experts only (all MoE layers) */
  expertBytes: number;
  expertParams: number;
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** One expert's share of bytes and parameters: whole tensors per expert, 1/E of a fused 3-D tensor. */
function expertShare(ckpt: Checkpoint, refs: SwiGLURefs): { bytes: number; params: number } {
  const seen = new Set<string>();
  let bytes = 0;
  let params = 0;
  for (const ref of [refs.gate, refs.up, refs.down]) {
    for (const name of [ref.tensor, ref.bias]) {
      if (!name || seen.has(name) || !ckpt.has(name)) continue;
      seen.add(name);
      const info = ckpt.info(name);
      const div = ref.expert !== undefined ? info.shape[0] : 1;
      bytes += (info.end - info.begin) / div;
      params += numel(info.shape) / div;
    }
  }
  return { bytes, params };
}

export function checkpointSizes(ckpt: Checkpoint, view: ModelView): SizeSummary {
  let bytes = 0;
  let params = 0;
  for (const name of ckpt.tensorNames) {
    const info = ckpt.info(name);
    bytes += info.end - info.begin;
    params += numel(info.shape);
  }
  let expertBytes = 0;
  let expertParams = 0;
  for (const layer of view.layers) {
    if (layer.block.kind !== 'moe') continue;
    for (const e of layer.block.experts) {
      const s = expertShare(ckpt, e);
      expertBytes += s.bytes;
      expertParams += s.params;
    }
  }
  return { bytes, params, expertBytes, expertParams };
}

/** What removing `removed[l]` experts per layer takes away (for --dry-run, before anything is written). */
export function predictedSizes(ckpt: Checkpoint, view: ModelView, before: SizeSummary, removedPerLayer: Map<number, number[]>): SizeSummary {
  let expertBytes = 0;
  let expertParams = 0;
  let routerBytes = 0;
  let routerParams = 0;
  for (const layer of view.layers) {
    if (layer.block.kind !== 'moe') continue;
    const removed = removedPerLayer.get(layer.index) ?? [];
    const E = layer.block.experts.length;
    for (const j of removed) {
      const s = expertShare(ckpt, layer.block.experts[j]);
      expertBytes += s.bytes;
      expertParams += s.params;
    }
    // router rows (and bias / correction bias entries) go with their experts
    for (const name of [layer.block.router.weight, layer.block.router.bias, layer.block.router.correctionBias]) {
      if (!name || !ckpt.has(name)) continue;
      const info = ckpt.info(name);
      routerBytes += ((info.end - info.begin) / E) * removed.length;
      routerParams += (numel(info.shape) / E) * removed.length;
    }
  }
  return {
    bytes: before.bytes - expertBytes - routerBytes,
    params: before.params - expertParams - routerParams,
    expertBytes: before.expertBytes - expertBytes,
    expertParams: before.expertParams - expertParams,
  };
}

/** Sizes of a checkpoint as written: opened again, so the report states what is on disk, not what was planned. */
export async function writtenSizes(dir: string): Promise<SizeSummary> {
  // the output is still staged (published with its report, src/io/output.ts): read it where it is
  const m = await openModel(stagedPath(dir));
  try {
    return checkpointSizes(m.ckpt, m.view);
  } finally {
    await m.ckpt.close();
  }
}
