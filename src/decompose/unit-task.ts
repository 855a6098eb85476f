/**
 * Decompose's per-unit work on the worker pool (src/runtime/pool.ts): one unit's factorisation (the whitening
 * Cholesky, the whitened product, the SVD) and, in the apply pass, its cut at the planned rank and the measured
 * error, as one task. Inputs in (the unit's weights and Grams), spectrum and factors out: a worker computes the same
 * bytes as the main thread (same code, same backend), and the passes consume the results in unit order, so what is
 * written does not depend on the thread count.
 *
 * The unit is the task because it is the whole independent step: the SVD alone would leave its whitening and the
 * error measurement (as costly as the SVD's products at these shapes) on the main thread.
 */
import type { TransferListItem } from 'node:worker_threads';
import { activeBackend } from '../runtime/backend.js';
import { runOrdered } from '../runtime/pool.js';
import type { SwiGLUWeights } from '../runtime/api.js';
import type { LayerGrams } from './grams.js';
import { applyUnit, layerUnitInputs, scoreUnit, summarize, type AppliedUnit, type ScoreOptions, type UnitInput, type UnitSummary } from './units.js';

export interface UnitTask {
  unit: UnitInput;
  opts: ScoreOptions;
  /** the apply pass: the planned rank to cut at (absent: the score pass, which keeps only the summary) */
  rank?: number;
}

export interface UnitResult {
  summary: UnitSummary;
  applied?: AppliedUnit;
}

/** Factorise one unit, keep its summary and, given a rank, cut and measure it (the task a worker runs). */
export function factorUnit(t: UnitTask): UnitResult {
  const u = scoreUnit(t.unit, t.opts);
  const summary = summarize(u);
  return t.rank === undefined ? { summary } : { summary, applied: applyUnit(u, t.rank, t.opts.engine) };
}

export const UNIT_TASK_MODULE = import.meta.url;

/**
 * One layer's units factorised (and, with `rankOf`, applied) in visiting order, on the pool when there is one: up to
 * 2 x threads units run ahead of the caller (runOrdered), each unit's own float64 copies of its weights moving to its
 * worker; the Grams and the base-delta base are shared by several units, so they are copied.
 */
export function factorLayer(
  layer: number,
  experts: readonly SwiGLUWeights[],
  grams: LayerGrams | undefined,
  opts: ScoreOptions,
  rankOf?: (id: string) => number,
): AsyncGenerator<UnitResult> {
  const tasks = (function* () {
    for (const unit of layerUnitInputs(layer, experts, grams, opts)) yield { unit, opts, ...(rankOf ? { rank: rankOf(unit.id) } : {}) } satisfies UnitTask;
  })();
  const transfer = (t: UnitTask): TransferListItem[] => t.unit.weights.map((w) => w.buffer as ArrayBuffer);
  return runOrdered<UnitTask, UnitResult>(activeBackend() ?? 'auto', UNIT_TASK_MODULE, 'factorUnit', tasks, transfer);
}
