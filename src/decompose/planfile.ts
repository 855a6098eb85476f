/**
 * `moe decompose --save-plan FILE` / `--plan FILE`: the rank of every unit, saved once and applied by later runs or
 * by the `--shard i/n` jobs of one run (src/model/planfile.ts does the file format, the model fingerprint and the
 * settings check; this module says what decompose's settings and plan are and validates a loaded plan against the
 * model's units).
 */
import { createHash } from 'node:crypto';
import { fail } from '../errors.js';
import type { DecomposeMode } from './format.js';
import { budgetOf, rankCap, unitParams, type AllocLoss } from './plan.js';
import type { UnitShape } from './unitshape.js';

/** The `plan` field of a decompose plan file. */
export interface DecomposePlan {
  /** rank per unit id (L<layer>.e<expert>.<proj>, or L<layer>.shared.<proj>), in the order units are visited */
  ranks: Record<string, number>;
  solver: 'uniform' | 'knapsack';
  /** the allocation was proven optimal (uniform: always) */
  optimal: boolean;
  solveMs: number;
  /** the planned loss, when the plan was made from spectra */
  loss?: number;
}

export interface PlanSettingsInput {
  ratio: number;
  mode: DecomposeMode;
  uniform?: boolean;
  materialize?: boolean;
  calibTokens?: number;
  allocLoss?: AllocLoss;
  seed: number;
  randomizedAbove?: number;
}

/**
 * Every setting that shapes the plan or how it is applied. The calibration enters as a digest of the token windows
 * (the Gram matrices, hence spectra and whitened factors, are functions of them), so every job of a sharded run must
 * tokenize the same text the same way; the solver's time limit is left out (it bounds the search, it does not define
 * the problem).
 */
export function planSettings(s: PlanSettingsInput, calibration: string | null): Record<string, unknown> {
  return {
    ratio: s.ratio,
    mode: s.mode,
    uniform: !!s.uniform,
    materialize: !!s.materialize,
    calibration,
    calibTokens: s.calibTokens ?? null,
    allocLoss: s.allocLoss ?? 'absolute',
    seed: s.seed,
    randomizedAbove: s.randomizedAbove,
  };
}

/** sha256 over the calibration windows (lengths and token ids). */
export function windowsDigest(windows: readonly Int32Array[]): string {
  const h = createHash('sha256');
  for (const w of windows) {
    h.update(Int32Array.of(w.length));
    h.update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
  }
  return `tokens:${windows.reduce((a, w) => a + w.length, 0)}:${h.digest('hex')}`;
}

export function planRecord(shapes: readonly UnitShape[], ranks: readonly number[]): Record<string, number> {
  const out: Record<string, number> = {};
  shapes.forEach((u, i) => (out[u.id] = ranks[i]!));
  return out;
}

/**
 * Check a loaded plan against this model's units: every unit present once, nothing else, every rank a whole number
 * between 0 and the unit's cap (matrix rank, break-even rank), the total within the budget. Returns the ranks in
 * unit order.
 */
export function validatePlan(raw: unknown, path: string, shapes: readonly UnitShape[], ratio: number): DecomposePlan & { list: number[] } {
  const p = raw as Partial<DecomposePlan> | null;
  if (!p || typeof p !== 'object' || !p.ranks || typeof p.ranks !== 'object' || Array.isArray(p.ranks))
    fail('InvalidData', `${path}: the plan has no 'ranks' object`);
  if (p.solver !== 'uniform' && p.solver !== 'knapsack')
    fail('InvalidData', `${path}: the plan's solver must be 'uniform' or 'knapsack', got ${JSON.stringify(p.solver)}`);
  if (typeof p.optimal !== 'boolean' || typeof p.solveMs !== 'number' || (p.loss !== undefined && typeof p.loss !== 'number'))
    fail('InvalidData', `${path}: the plan's optimal, solveMs or loss field is malformed`);
  const ranks = p.ranks as Record<string, unknown>;
  const ids = new Set(shapes.map((u) => u.id));
  const extra = Object.keys(ranks).find((id) => !ids.has(id));
  if (extra !== undefined) fail('InvalidData', `${path}: unit '${extra}' is not a unit of this model in this mode`);
  const list = shapes.map((u) => {
    if (!(u.id in ranks)) fail('InvalidData', `${path}: unit '${u.id}' has no rank (the plan covers ${Object.keys(ranks).length} of ${shapes.length} units)`);
    const k = ranks[u.id];
    const cap = rankCap(u);
    if (typeof k !== 'number' || !Number.isInteger(k) || k < 0 || k > cap)
      fail('InvalidData', `${path}: unit '${u.id}' has rank ${JSON.stringify(k)}, expected a whole number in [0, ${cap}]`);
    return k;
  });
  const { budget, fixed } = budgetOf(shapes, ratio);
  const params = fixed + shapes.reduce((a, u, i) => a + unitParams(u, list[i]!) - u.fixed, 0);
  if (params > budget) fail('InvalidData', `${path}: the plan keeps ${params} expert parameters, over the budget of ${budget} at --ratio ${ratio}`);
  return {
    ranks: p.ranks as Record<string, number>,
    solver: p.solver,
    optimal: p.optimal,
    solveMs: p.solveMs,
    ...(p.loss !== undefined ? { loss: p.loss } : {}),
    list,
  };
}
