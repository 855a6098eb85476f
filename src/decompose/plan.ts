/**
 * Rank planning under a parameter budget: the kept parameters of all factored experts must not exceed
 * ratio x the original expert parameters.
 *
 * - uniform: every unit gets the rank that keeps `ratio` of its own parameters, k = floor(m n rho / (m + n))
 *   for one linear (and the analogues for shared bases and base + deltas).
 * - allocated: each unit offers a ladder of ranks around its uniform rank, priced by its parameters and its
 *   truncation loss (activation-space for whitened modes, frequency-weighted weight-space for plain SVD); the
 *   shared multiple-choice knapsack (src/alloc/knapsack.ts, the one bit allocation uses) picks one rank per unit
 *   minimising the summed loss within the budget.
 */
import { allocate } from '../alloc/knapsack.js';
import { fail } from '../errors.js';

export interface RankUnit {
  id: string;
  /** parameters at rank 1 (all factors grow linearly in k) */
  perRank: number;
  /** parameters of the dense weights the unit replaces */
  dense: number;
  /** parameters this unit spends whatever its rank (base-delta's base) — counted once, outside the ladder */
  fixed: number;
  /** squared error at rank k, k = 0..maxRank */
  tail: Float64Array;
  maxRank: number;
  /** importance multiplier of the loss (1 for activation-space losses, which already carry frequency) */
  weight: number;
  /** smallest rank worth offering (0 allowed where the unit still has content without factors: deltas) */
  minRank: number;
  /** units whose losses share one scale (one layer x projection); see AllocLoss */
  group?: string;
}

/**
 * How unit losses are made comparable before the knapsack sums them:
 * - 'absolute': as measured (activation-space squared errors summed over tokens). Gate/up errors live in the
 *   intermediate space and down errors in the residual stream, so their scales differ.
 * - 'group': each loss divided by the total energy (loss at rank 0) of its layer x projection: the share of that
 *   projection's activation energy lost. Experts of one projection keep their relative (frequency) weights.
 */
export type AllocLoss = 'absolute' | 'group';

export function lossWeights(units: readonly RankUnit[], how: AllocLoss): number[] {
  if (how === 'absolute') return units.map((u) => u.weight);
  const energy = new Map<string, number>();
  for (const u of units) energy.set(u.group ?? u.id, (energy.get(u.group ?? u.id) ?? 0) + u.weight * u.tail[0]!);
  return units.map((u) => {
    const e = energy.get(u.group ?? u.id)!;
    return e > 0 ? u.weight / e : u.weight;
  });
}

export interface RankPlan {
  ranks: number[];
  /** parameters after (factors + fixed) and the budget they had to fit */
  params: number;
  budget: number;
  dense: number;
  loss: number;
  solver: 'uniform' | 'knapsack';
  optimal: boolean;
  solveMs: number;
}

export const LADDER = [0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 1, 1.1, 1.2, 1.35, 1.5, 1.75, 2, 2.5, 3];

/** What rank bounds and uniform ranks need of a unit: no spectrum. */
export type RankShape = Pick<RankUnit, 'perRank' | 'dense' | 'fixed' | 'maxRank' | 'minRank'>;

/** Highest rank worth storing: at most the matrix rank, and never more parameters than the dense weights. */
export function rankCap(u: RankShape): number {
  return Math.max(0, Math.min(u.maxRank, Math.floor((u.dense - u.fixed) / u.perRank)));
}

/** The rank that spends `ratio` of the unit's dense parameters (fixed parameters paid first). */
export function uniformRank(u: RankShape, ratio: number): number {
  const share = ratio * u.dense - u.fixed;
  return Math.max(0, Math.min(rankCap(u), Math.floor(share / u.perRank + 1e-9)));
}

export function rankLadder(u: RankShape, ratio: number): number[] {
  const base = uniformRank(u, ratio);
  const cap = rankCap(u);
  const set = new Set<number>([base]);
  for (const f of LADDER) set.add(Math.max(u.minRank, Math.min(cap, Math.round(base * f))));
  return [...set].filter((k) => k >= 0 && k <= cap).sort((a, b) => a - b);
}

export function checkRatio(ratio: unknown): number {
  if (typeof ratio !== 'number' || !Number.isFinite(ratio) || ratio <= 0 || ratio > 1)
    fail('Usage', `--ratio must be a number in (0, 1] (the fraction of expert parameters kept), got ${String(ratio)}`);
  return ratio;
}

/**
 * Seconds the knapsack solver may spend. Rank ladders are integer multiples of one cost per unit, so many
 * allocations tie and GLPK finds a near-best answer fast but proves optimality slowly; the report says whether
 * the answer was proven optimal.
 */
export const DEFAULT_ALLOC_SECONDS = 10;

/** The parameter budget of a set of units at `ratio`; refused when the fixed parameters alone exceed it. */
export function budgetOf(units: readonly RankShape[], ratio: number): { budget: number; dense: number; fixed: number } {
  const dense = units.reduce((a, u) => a + u.dense, 0);
  const fixed = units.reduce((a, u) => a + u.fixed, 0);
  const budget = Math.floor(ratio * dense);
  if (fixed > budget)
    fail(
      'ImpossibleBudget',
      `--ratio ${ratio} keeps ${budget} expert parameters but the shared base experts alone need ${fixed}: use a ratio above ${(fixed / dense).toFixed(3)}`,
    );
  return { budget, dense, fixed };
}

/** Parameters of a unit at rank k (factors plus its fixed share). */
export function unitParams(u: RankShape, k: number): number {
  return u.perRank * k + u.fixed;
}

/** Uniform ranks from shapes alone (no spectrum needed): what --uniform plans, and what --shard jobs can agree on. */
export function uniformPlan(units: readonly RankShape[], ratio: number): Omit<RankPlan, 'loss'> {
  const { budget, dense, fixed } = budgetOf(units, ratio);
  const ranks = units.map((u) => uniformRank(u, ratio));
  const params = fixed + units.reduce((a, u, i) => a + ranks[i]! * u.perRank, 0);
  if (ranks.some((k, i) => k < units[i]!.minRank || k === 0) && units.some((u) => u.minRank > 0)) {
    fail('ImpossibleBudget', `--ratio ${ratio} is too small for rank 1 in every expert linear`);
  }
  return { ranks, params, budget, dense, solver: 'uniform', optimal: true, solveMs: 0 };
}

/** The planned loss of ranks over units (each unit's truncation loss, weighted as the allocator weighs it). */
export function planLoss(units: readonly RankUnit[], ranks: readonly number[], allocLoss: AllocLoss = 'absolute'): number {
  const weights = lossWeights(units, allocLoss);
  return units.reduce((a, u, i) => a + weights[i]! * u.tail[Math.min(ranks[i]!, u.tail.length - 1)]!, 0);
}

export async function planRanks(
  units: readonly RankUnit[],
  ratio: number,
  uniform: boolean,
  allocSeconds = DEFAULT_ALLOC_SECONDS,
  allocLoss: AllocLoss = 'absolute',
): Promise<RankPlan> {
  if (uniform) {
    const plan = uniformPlan(units, ratio);
    return { ...plan, loss: planLoss(units, plan.ranks, allocLoss) };
  }
  const { budget, dense, fixed } = budgetOf(units, ratio);
  const weights = lossWeights(units, allocLoss);
  const index = new Map(units.map((u, i) => [u, i]));
  const lossOf = (u: RankUnit, k: number) => weights[index.get(u)!]! * u.tail[Math.min(k, u.tail.length - 1)]!;
  const ladders = units.map((u) => rankLadder(u, ratio));
  const res = await allocate(
    units.map((u, i) => ({ id: u.id, options: ladders[i]!.map((k) => ({ cost: k * u.perRank, loss: lossOf(u, k), label: `rank ${k}` })) })),
    budget - fixed,
    { timeLimitSec: allocSeconds },
  );
  const ranks = res.choice.map((c, i) => ladders[i]![c]!);
  const params = fixed + units.reduce((a, u, i) => a + ranks[i]! * u.perRank, 0);
  if (params > budget) fail('ComputeError', `internal: allocation spends ${params} parameters over the budget ${budget}`);
  return {
    ranks,
    params,
    budget,
    dense,
    loss: units.reduce((a, u, i) => a + lossOf(u, ranks[i]!), 0),
    solver: 'knapsack',
    optimal: res.optimal,
    solveMs: res.solveMs,
  };
}
