/**
 * Per-expert linear algebra that runs on the worker pool (pool.ts `runTasks`): GPTQ of one SwiGLU expert (its
 * Hessians, Cholesky factors and column updates) and the SVD of one matrix. Pure functions of structured-cloneable
 * arguments: a worker computes the same bytes as the caller's thread, and callers combine results in input order.
 */
import type { ActivationSpec } from '../model/types.js';
import {
  activate,
  linearT,
  mlpForward,
  outputError,
  prepareInput,
  quantizeMlp,
  requantizeDown,
  type ExpertQuant,
  type ProjBits,
  type QuantSettings,
} from '../quantize/expert.js';
import { svd, type Svd, type SvdOptions } from '../../kernels/linalg/svd.js';
import type { SwiGLUWeights } from './api.js';

export interface GptqExpertTask {
  w: SwiGLUWeights;
  /** [n, in] the expert's routed tokens */
  x: Float32Array;
  n: number;
  bits: ProjBits;
  settings: QuantSettings;
  activation: ActivationSpec;
}

/** quantizeMlp on a worker; the down projection's preparation stays behind (it is large and only the caller's own
 *  width search reuses it). */
export function gptqExpert(t: GptqExpertTask): Omit<ExpertQuant, 'downPrep'> {
  const { quant, deq, fallback } = quantizeMlp(t.w, t.x, t.n, t.bits, t.settings, t.activation);
  return { quant, deq, fallback };
}

export interface ScoreExpertTask {
  w: SwiGLUWeights;
  x: Float32Array;
  n: number;
  /** the routing weight of each of the n tokens (outputError's weighting) */
  gates: Float32Array;
  activation: ActivationSpec;
  settings: QuantSettings;
  /** GPTQ with Hessians (else the settings' method without them) */
  gptq: boolean;
  /** the widths to score, in order */
  jobs: ProjBits[];
  /** options differing only in down's width share the gate/up quantization (requantizeDown) */
  reuse: boolean;
}

/**
 * The quantize pipeline's scoring of one expert: its output error at each candidate width, unscaled, in `jobs`
 * order (the caller scales and combines them in expert order, so sums do not depend on where this ran). Scoring
 * takes down's Hessian from the full-precision gate/up, once for all widths (its Cholesky is the costliest step).
 */
export function scoreExpert(t: ScoreExpertTask): Float64Array {
  const ref = mlpForward(t.w, t.x, t.n, t.activation);
  const hx = t.gptq ? prepareInput(t.x, t.n, t.w.gate.in, t.settings) : undefined;
  const hd = t.gptq ? prepareInput(activate(linearT(t.x, t.n, t.w.gate), linearT(t.x, t.n, t.w.up), t.activation), t.n, t.w.down.in, t.settings) : undefined;
  const done = new Map<string, ExpertQuant>();
  return Float64Array.from(
    t.jobs.map((pb) => {
      const key = `${pb.gate}/${pb.up}`;
      const prev = t.reuse ? done.get(key) : undefined;
      const q =
        prev && pb.down !== 'keep' && prev.quant.down
          ? requantizeDown(prev, t.w, pb.down, t.settings)
          : quantizeMlp(t.w, t.x, t.n, pb, t.settings, t.activation, hx, hd);
      if (t.reuse && !prev) done.set(key, q);
      return outputError(ref, q.deq, t.x, t.n, t.gates, t.activation);
    }),
  );
}

export interface SvdTask {
  /** [m, n] row-major */
  M: Float64Array;
  m: number;
  n: number;
  opts?: SvdOptions;
}

export function svdMatrix(t: SvdTask): Svd {
  return svd(t.M, t.m, t.n, t.opts ?? {});
}

export const LINALG_TASKS_MODULE = import.meta.url;
