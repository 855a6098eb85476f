/**
 * Forward-pass work that runs on the worker pool (pool.ts): pure functions of structured-cloneable arguments, so a
 * worker and the main thread compute the same bytes.
 */
import type { ActivationSpec } from '../model/types.js';
import type { SwiGLUWeights } from './api.js';
import { swiglu } from './swiglu.js';

export interface ExpertTask {
  w: SwiGLUWeights;
  /** [n, in] the expert's tokens */
  x: Float32Array;
  n: number;
  activation: ActivationSpec;
  /** also return the down projection's input, chunk by chunk (for Gram hooks) */
  down: boolean;
}

export interface DownChunk {
  a: Float32Array;
  rows: number;
  r0: number;
}

export interface ExpertResult {
  /** [n, H] */
  out: Float32Array;
  down?: DownChunk[];
}

/** One expert (or shared expert) MLP over its tokens: swiglu() with the down inputs collected instead of streamed. */
export function expertForward(t: ExpertTask): ExpertResult {
  const down: DownChunk[] | undefined = t.down ? [] : undefined;
  const out = swiglu(
    t.w,
    t.x,
    t.n,
    t.activation,
    down ? (a, rows, r0) => down.push({ a: a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice(), rows, r0 }) : undefined,
  );
  return { out, ...(down ? { down } : {}) };
}

export const TASKS_MODULE = import.meta.url;
