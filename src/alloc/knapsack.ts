/**
 * Multiple-choice knapsack: pick exactly one option per unit (a bit-width per expert, a rank per linear) so the
 * summed cost stays within the budget and the summed loss is smallest. Solved exactly as a 0/1 program by GLPK
 * (glpk.js, its synchronous `glpk.js/node` build): one binary per (unit, option), one equality row per unit and
 * one budget row. Options that another option of the same unit dominates (no more loss at no more cost) are
 * dropped first; that cannot change the optimum and shrinks large instances considerably.
 */
import { fail } from '../errors.js';

export interface AllocOption {
  cost: number;
  loss: number;
  label?: string;
}

export interface AllocUnit {
  id: string;
  options: AllocOption[];
}

export interface AllocResult {
  /** chosen option index per unit, in input order */
  choice: number[];
  cost: number;
  loss: number;
  solveMs: number;
  /** false when the solver stopped at its time limit with a feasible but unproven solution */
  optimal: boolean;
  /** certified relative optimality gap: (loss - LP lower bound) / loss; 0 when proven optimal */
  gap: number;
}

export interface AllocOptions {
  /** solver time limit in seconds (default 20); the best solution found is returned with optimal=false */
  timeLimitSec?: number;
  /** relative optimality gap at which the solver may stop (GLPK's mipgap; 0 = prove optimality) */
  mipGap?: number;
  /** renders a cost in the caller's unit for error messages (e.g. bits per weight) */
  describeCost?: (cost: number) => string;
}

type Glpk = Awaited<ReturnType<typeof import('glpk.js/node')['default']>>;
let glpkPromise: Promise<Glpk> | undefined;
async function glpk(): Promise<Glpk> {
  if (!glpkPromise) glpkPromise = import('glpk.js/node').then((m) => m.default());
  return glpkPromise;
}

/** Indices of the options not dominated by another option of the same unit, by increasing cost. */
export function paretoOptions(options: readonly AllocOption[]): number[] {
  const idx = options.map((_, i) => i).sort((a, b) => options[a]!.cost - options[b]!.cost || options[a]!.loss - options[b]!.loss);
  const keep: number[] = [];
  let bestLoss = Infinity;
  for (const i of idx) {
    if (options[i]!.loss < bestLoss) {
      keep.push(i);
      bestLoss = options[i]!.loss;
    }
  }
  return keep;
}

export async function allocate(units: readonly AllocUnit[], budget: number, opts: AllocOptions = {}): Promise<AllocResult> {
  const t0 = performance.now();
  const show = opts.describeCost ?? ((c: number) => String(c));
  let minCost = 0;
  let maxCost = 0;
  for (const u of units) {
    if (u.options.length === 0) fail('Usage', `allocation unit '${u.id}' has no options`);
    for (const o of u.options) {
      if (!Number.isFinite(o.cost) || !Number.isFinite(o.loss)) fail('NonFinite', `allocation unit '${u.id}' has a non-finite cost or loss`);
    }
    minCost += Math.min(...u.options.map((o) => o.cost));
    maxCost += Math.max(...u.options.map((o) => o.cost));
  }
  if (minCost > budget * (1 + 1e-12)) {
    fail('ImpossibleBudget', `budget ${show(budget)} is below the smallest achievable ${show(minCost)} (largest ${show(maxCost)})`);
  }
  const keep = units.map((u) => paretoOptions(u.options));
  const total = (ch: number[]) => ch.reduce((a, c, u) => a + units[u]!.options[c]!.cost, 0);
  const lossOf = (ch: number[]) => ch.reduce((a, c, u) => a + units[u]!.options[c]!.loss, 0);
  // everything fits at its least-loss option: nothing to solve
  const best = keep.map((k) => k[k.length - 1]!);
  if (total(best) <= budget) {
    return { choice: best, cost: total(best), loss: lossOf(best), solveMs: performance.now() - t0, optimal: true, gap: 0 };
  }
  // Reduce before branching: the LP relaxation (exact by a greedy over convex hulls) gives a lower bound and the
  // critical price lambda; its rounding gives an incumbent. An option whose reduced cost at lambda exceeds
  // incumbent - bound cannot be in any better solution (reduced-cost fixing), so only the units near the
  // critical price reach GLPK. Exact, and it turns 58 x 256 units from hours of branching into a small core.
  const bound = lagrangianBound(units, keep, budget);
  const incumbent = bound.incumbent;
  const gap = lossOf(incumbent) - bound.lower;
  const tol = 1e-12 * Math.max(1, Math.abs(lossOf(incumbent)));
  const free: number[][] = keep.map((k, u) => {
    const us = units[u]!.options;
    const m = Math.min(...k.map((o) => us[o]!.loss + bound.lambda * us[o]!.cost));
    const ok = k.filter((o) => us[o]!.loss + bound.lambda * us[o]!.cost - m <= gap + tol);
    // the incumbent's option always survives (its reduced cost is at most the gap)
    return ok.includes(incumbent[u]!) ? ok : [...ok, incumbent[u]!];
  });
  const choice = incumbent.slice();
  const core = free.map((f, u) => (f.length > 1 ? u : -1)).filter((u) => u >= 0);
  if (core.length === 0 || gap <= tol) {
    return { choice, cost: total(choice), loss: lossOf(choice), solveMs: performance.now() - t0, optimal: true, gap: 0 };
  }
  let fixedCost = 0;
  free.forEach((f, u) => {
    if (f.length === 1) {
      choice[u] = f[0]!;
      fixedCost += units[u]!.options[f[0]!]!.cost;
    }
  });
  const coreBudget = budget - fixedCost;
  const g = await glpk();
  // scale both sides to O(1) so GLPK's tolerances mean the same on any model size
  const lossScale = Math.max(1e-300, ...core.flatMap((u) => free[u]!.map((o) => Math.abs(units[u]!.options[o]!.loss))));
  const costScale = Math.max(1e-300, Math.abs(coreBudget), ...core.flatMap((u) => free[u]!.map((o) => Math.abs(units[u]!.options[o]!.cost))));
  const name = (u: number, o: number) => `x${u}_${o}`;
  const objective: { name: string; coef: number }[] = [];
  const budgetRow: { name: string; coef: number }[] = [];
  const subjectTo: { name: string; vars: { name: string; coef: number }[]; bnds: { type: number; ub: number; lb: number } }[] = [];
  const binaries: string[] = [];
  for (const u of core) {
    const row: { name: string; coef: number }[] = [];
    for (const o of free[u]!) {
      const v = name(u, o);
      binaries.push(v);
      objective.push({ name: v, coef: units[u]!.options[o]!.loss / lossScale });
      budgetRow.push({ name: v, coef: units[u]!.options[o]!.cost / costScale });
      row.push({ name: v, coef: 1 });
    }
    subjectTo.push({ name: `one${u}`, vars: row, bnds: { type: g.GLP_FX, ub: 1, lb: 1 } });
  }
  subjectTo.push({ name: 'budget', vars: budgetRow, bnds: { type: g.GLP_UP, ub: coreBudget / costScale, lb: 0 } });
  const res = g.solve(
    { name: 'mck', objective: { direction: g.GLP_MIN, name: 'loss', vars: objective }, subjectTo, binaries },
    { msglev: g.GLP_MSG_OFF, tmlim: opts.timeLimitSec ?? 20, presol: true, mipgap: opts.mipGap ?? 0 },
  );
  const status = res.result.status;
  let optimal = status === g.GLP_OPT;
  if (status === g.GLP_OPT || status === g.GLP_FEAS) {
    const cand = choice.slice();
    for (const u of core) {
      let pick = free[u]![0]!;
      let bestV = -1;
      for (const o of free[u]!) {
        const v = res.result.vars[name(u, o)] ?? 0;
        if (v > bestV) {
          bestV = v;
          pick = o;
        }
      }
      cand[u] = pick;
    }
    if (total(cand) <= budget * (1 + 1e-9) && lossOf(cand) <= lossOf(incumbent)) for (const u of core) choice[u] = cand[u]!;
    else for (const u of core) choice[u] = incumbent[u]!;
  } else {
    // time limit without an integer solution in the core: keep the LP rounding, flagged as not proven optimal
    for (const u of core) choice[u] = incumbent[u]!;
    optimal = false;
  }
  const cost = total(choice);
  if (cost > budget * (1 + 1e-9)) fail('ComputeError', `the solver's allocation costs ${show(cost)}, over the budget ${show(budget)}`);
  const loss = lossOf(choice);
  const certified = loss > 0 ? Math.max(0, (loss - bound.lower) / loss) : 0;
  return { choice, cost, loss, solveMs: performance.now() - t0, optimal, gap: optimal ? 0 : certified };
}

/** Lower convex hull of a unit's Pareto options (by increasing cost): the options an LP relaxation can use. */
function convexHull(options: readonly AllocOption[], pareto: readonly number[]): number[] {
  const hull: number[] = [];
  for (const i of pareto) {
    while (hull.length >= 2) {
      const a = options[hull[hull.length - 2]!]!,
        b = options[hull[hull.length - 1]!]!,
        c = options[i]!;
      // drop b when it lies on or above the segment a-c
      if ((b.loss - a.loss) * (c.cost - a.cost) >= (c.loss - a.loss) * (b.cost - a.cost)) hull.pop();
      else break;
    }
    hull.push(i);
  }
  return hull;
}

/**
 * The LP relaxation of the multiple-choice knapsack: from every unit's cheapest option, take hull upgrades in
 * order of loss saved per cost until the budget runs out. Returns the lower bound, the critical price lambda (the
 * slope of the first upgrade that did not fit) and the integer rounding (that upgrade left out, then any
 * remaining single upgrades that still fit, best ratio first).
 */
export function lagrangianBound(
  units: readonly AllocUnit[],
  pareto: readonly number[][],
  budget: number,
): { lower: number; lambda: number; incumbent: number[] } {
  const hulls = units.map((u, i) => convexHull(u.options, pareto[i]!));
  const steps: { u: number; k: number; slope: number; dc: number; dl: number }[] = [];
  hulls.forEach((h, u) => {
    for (let k = 0; k + 1 < h.length; k++) {
      const a = units[u]!.options[h[k]!]!,
        b = units[u]!.options[h[k + 1]!]!;
      steps.push({ u, k: k + 1, slope: (a.loss - b.loss) / (b.cost - a.cost), dc: b.cost - a.cost, dl: a.loss - b.loss });
    }
  });
  steps.sort((x, y) => y.slope - x.slope);
  const level = hulls.map(() => 0);
  let cost = hulls.reduce((a, h, u) => a + units[u]!.options[h[0]!]!.cost, 0);
  let loss = hulls.reduce((a, h, u) => a + units[u]!.options[h[0]!]!.loss, 0);
  let lambda = 0;
  let lower = loss;
  for (const s of steps) {
    // hull steps of one unit come in decreasing slope, so they are taken in order
    if (cost + s.dc <= budget) {
      cost += s.dc;
      loss -= s.dl;
      level[s.u] = s.k;
      continue;
    }
    lambda = s.slope;
    lower = loss - s.dl * ((budget - cost) / s.dc);
    break;
  }
  if (lambda === 0) lower = loss;
  const incumbent = level.map((k, u) => hulls[u]![k]!);
  // fill what budget is left with any single upgrade (any Pareto option, not only the hull) that fits
  let left = budget - cost;
  for (;;) {
    let bu = -1,
      bo = -1,
      bestRatio = 0;
    for (let u = 0; u < units.length; u++) {
      const cur = units[u]!.options[incumbent[u]!]!;
      for (const o of pareto[u]!) {
        const c = units[u]!.options[o]!;
        const dc = c.cost - cur.cost;
        const dl = cur.loss - c.loss;
        if (dl > 0 && dc <= left) {
          const r = dc > 0 ? dl / dc : Infinity;
          if (r > bestRatio) {
            bestRatio = r;
            bu = u;
            bo = o;
          }
        }
      }
    }
    if (bu < 0) break;
    left -= units[bu]!.options[bo]!.cost - units[bu]!.options[incumbent[bu]!]!.cost;
    incumbent[bu] = bo;
  }
  return { lower, lambda, incumbent };
}
