/**
 * Per-expert linear algebra that runs on the worker pool (pool.ts `runTasks`): GPTQ of one SwiGLU expert (its
 * Hessians, Cholesky factors and column updates) and the SVD of one matrix. Pure functions of structured-cloneable
 * arguments: a worker computes the same bytes as the caller's thread, and callers combine results in input order.
 */
import type { ActivationSpec } from '../model/types.js';
import { quantizeMlp, type ExpertQuant, type ProjBits, type QuantSettings } from '../quantize/expert.js';
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
