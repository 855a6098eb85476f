/**
 * The vocabulary of decompose's rank units, shared by the units' dispatch (units.ts), the modes that make them
 * (src/decompose/methods/<mode>.ts), planning and the writer: shapes, scored units, factors, score options.
 */
import type { Engine } from '../../kernels/linalg/matmul.js';
import type { Factorization, FactorizeOptions, SharedFactorization } from './factorize.js';
import type { DecomposeMode } from './format.js';
import type { LayerGrams } from './grams.js';
import { LADDER, type RankUnit } from './plan.js';

export type Proj = 'gate' | 'up' | 'down';
export const PROJS: readonly Proj[] = ['gate', 'up', 'down'];

/** A rank unit as far as shapes tell: what planning and plan validation need before any weight is read. */
export interface UnitShape extends Omit<RankUnit, 'tail'> {
  layer: number;
  proj: Proj;
  kind: 'expert' | 'delta' | 'shared-input' | 'shared-output';
  /** experts the unit covers (one, or all of the layer for shared bases) */
  experts: number[];
  m: number;
  n: number;
}

/** What the score pass keeps of a unit: its shape and truncation spectrum (small), not its factorisation. */
export interface UnitSummary extends UnitShape, RankUnit {
  ridge: number;
  /** tokens routed to each covered expert (undefined without calibration) */
  tokens?: number[];
}

/**
 * A unit before its factorisation: its shape and everything the factorisation and the error measurement read. Plain
 * data (structured-cloneable), so the factorisation can run on a worker thread (unit-task.ts).
 */
export interface UnitInput extends UnitShape {
  /** tokens routed to each covered expert (undefined without calibration) */
  tokens?: number[];
  /** original weights and true (unridged) Grams of the covered experts, for the measured error */
  weights: Float64Array[];
  grams?: Float64Array[];
  /** base-delta: the layer x projection base expert */
  base?: Float64Array;
}

export interface ScoredUnit extends UnitSummary, UnitInput {
  fact: Factorization | SharedFactorization;
}

/** Factors of one expert linear after planning: W ≈ base + u v. */
export interface ExpertFactors {
  layer: number;
  expert: number;
  proj: Proj;
  rank: number;
  /** [m, k] */
  u: Float64Array;
  /** [k, n] */
  v: Float64Array;
  /** which of u / v is one shared tensor of the layer (shared-input: v; shared-output: u) */
  shared?: 'u' | 'v';
  base?: Float64Array;
}

export interface ScoreOptions extends FactorizeOptions {
  mode: DecomposeMode;
  engine?: Engine;
  /** the budget's ratio, when known: large matrices then compute only the ranks the plan can choose */
  ratio?: number;
}

/** Highest rank any plan at `ratio` can give a unit (the top of its rank ladder). */
export function ladderTop(perRank: number, dense: number, fixed: number, ratio: number | undefined): number | undefined {
  if (ratio === undefined) return undefined;
  return Math.ceil(((ratio * dense - fixed) / perRank) * LADDER[LADDER.length - 1]!) + 1;
}

export function gramFor(g: LayerGrams | undefined, j: number, proj: Proj, n: number): Float64Array | undefined {
  if (!g) return undefined;
  const e = g.experts[j]!;
  // an expert no token reached has a zero Gram: its whitened spectrum is (almost) zero and the allocator gives it
  // the smallest rank, which is right for an expert the calibration data never uses
  return (proj === 'down' ? e.mid : e.input) ?? new Float64Array(n * n);
}

/** Shapes of one projection of a layer's experts: [m, n] = [out, in] (the same for every expert). */
export interface ProjShape {
  m: number;
  n: number;
}
