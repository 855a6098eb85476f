/**
 * Score: turn one MoE layer's experts (and, when calibrated, their Gram matrices) into rank units, each with the
 * full truncation spectrum of its factorisation. Apply: cut every unit at its planned rank and measure the error
 * that is actually left.
 *
 * Units per mode (per layer, per projection gate/up/down):
 *   svd, whitened     one unit per expert linear                         params k (m + n)
 *   base-delta        one unit per expert delta W_j - W_base             params k (m + n) (+ m n / E of the base)
 *   shared-input      one unit per layer x projection: shared V, U_j     params k n + E k m
 *   shared-output     one unit per layer x projection: shared U, V_j     params k m + E k n
 */

import type { Engine } from '../../kernels/linalg/matmul.js';
import type { SwiGLUWeights } from '../runtime/api.js';
import { activationError2, compose, type Factorization, type SharedFactorization } from './factorize.js';
import type { LayerGrams } from './grams.js';
import { getMode } from './methods.js';
import {
  gramFor,
  PROJS,
  type ExpertFactors,
  type Proj,
  type ProjShape,
  type ScoredUnit,
  type ScoreOptions,
  type UnitInput,
  type UnitShape,
  type UnitSummary,
} from './unitshape.js';

export {
  ladderTop,
  PROJS,
  type ExpertFactors,
  type Proj,
  type ProjShape,
  type ScoredUnit,
  type ScoreOptions,
  type UnitInput,
  type UnitShape,
  type UnitSummary,
} from './unitshape.js';

export interface AppliedUnit {
  id: string;
  rank: number;
  params: number;
  /** sqrt of the planned loss (before the importance weight): what the spectrum says the error will be */
  predicted: number;
  /** the same quantity measured on the factors: activation space with each expert's own Gram, else weight space */
  measured: number;
  /** measured / the same norm of the original weights */
  relative: number;
  factors: ExpertFactors[];
}

/**
 * The units of one layer, from shapes alone, in the order scoring and writing visit them (projection, then
 * expert). maxRank is the rank the factorisation will have: the matrix rank, or the ladder top where the
 * randomized SVD computes only what a plan at `ratio` can choose. Each mode's file says its units.
 */
export function layerUnitShapes(layer: number, E: number, shape: (proj: Proj) => ProjShape, opts: ScoreOptions): UnitShape[] {
  const mode = getMode(opts.mode);
  const out: UnitShape[] = [];
  for (const proj of PROJS) {
    const { m, n } = shape(proj);
    out.push(...mode.shapes({ layer, proj, m, n, E, opts }));
  }
  return out;
}

/**
 * One layer's units with their inputs, lazily, in visiting order (projection, then expert): what each factorisation
 * reads, before it runs (layerUnits factorises them here; unit-task.ts on the worker pool).
 */
export function* layerUnitInputs(layer: number, experts: readonly SwiGLUWeights[], grams: LayerGrams | undefined, opts: ScoreOptions): Generator<UnitInput> {
  const mode = getMode(opts.mode);
  const E = experts.length;
  const tokens = grams?.experts.map((e) => e.tokens);
  const totalTokens = tokens?.reduce((a, b) => a + b, 0) ?? 0;
  // plain SVD's loss is in weight space: weight it by routing frequency (x E so the mean weight is 1)
  const freqWeight = (j: number) => (tokens && totalTokens > 0 ? (E * tokens[j]!) / totalTokens : 1);
  const shapes = layerUnitShapes(layer, E, (proj) => ({ m: experts[0]![proj].out, n: experts[0]![proj].in }), opts);
  for (const proj of PROJS) {
    const { out: m, in: n } = experts[0]![proj];
    yield* mode.units({
      experts,
      proj,
      m,
      n,
      E,
      ...(tokens ? { tokens } : {}),
      freqWeight,
      W64: (j) => Float64Array.from(experts[j]![proj].w),
      // measured errors use the Grams whenever calibration ran (plain SVD too, so modes compare in one space);
      // only the whitened modes factor with them
      measureG: (j) => gramFor(grams, j, proj, n),
      calibrated: !!grams,
      units: shapes.filter((s) => s.proj === proj),
      opts,
    });
  }
}

/** Factorise one unit: its spectrum, rank and ridge come from the factorisation. */
export function scoreUnit(u: UnitInput, opts: ScoreOptions): ScoredUnit {
  const fact = getMode(opts.mode).factorize(u, opts);
  return { ...u, fact, tail: fact.tail, maxRank: fact.maxRank, ridge: fact.ridge };
}

/**
 * Score one layer lazily: each unit is factorised when the iteration reaches it, so a caller that keeps only the
 * summary (or applies the unit and keeps its factors) holds one unit's factorisation at a time. The passes run the
 * same steps as tasks (unit-task.ts `factorLayer`); this is the in-thread form the tests and tools use.
 */
export function* layerUnits(layer: number, experts: readonly SwiGLUWeights[], grams: LayerGrams | undefined, opts: ScoreOptions): Generator<ScoredUnit> {
  for (const u of layerUnitInputs(layer, experts, grams, opts)) yield scoreUnit(u, opts);
}

/** Score one layer: the units of every projection for the given mode. */
export function scoreLayer(layer: number, experts: readonly SwiGLUWeights[], grams: LayerGrams | undefined, opts: ScoreOptions): ScoredUnit[] {
  return [...layerUnits(layer, experts, grams, opts)];
}

/** The summary of a scored unit (drops its factorisation, weights and Grams). */
export function summarize(u: ScoredUnit): UnitSummary {
  const { fact: _f, weights: _w, grams: _g, base: _b, ...rest } = u;
  return rest;
}

/** the reference norm of a unit's weights under its Grams: the same for every rank, so computed once */
const referenceNorms = new WeakMap<object, number>();

/** Cut a unit at rank k, and measure what is left. */
export function applyUnit(u: ScoredUnit, k: number, engine?: Engine): AppliedUnit {
  const { m, n } = u;
  let factors: ExpertFactors[];
  if (u.kind === 'expert' || u.kind === 'delta') {
    const f = (u.fact as Factorization).factors(k);
    factors = [{ layer: u.layer, expert: u.experts[0]!, proj: u.proj, rank: f.k, u: f.A, v: f.B, base: u.base }];
    k = f.k;
  } else {
    const f = (u.fact as SharedFactorization).factors(k);
    k = f.k;
    factors = u.experts.map((j, i) =>
      u.kind === 'shared-input'
        ? { layer: u.layer, expert: j, proj: u.proj, rank: k, u: f.perExpert[i]!, v: f.shared, shared: 'v' as const }
        : { layer: u.layer, expert: j, proj: u.proj, rank: k, u: f.shared, v: f.perExpert[i]!, shared: 'u' as const },
    );
  }
  let err2 = 0;
  let ref2 = 0;
  const refKey = u.grams ?? u.weights;
  const knownRef = referenceNorms.get(refKey);
  factors.forEach((f, i) => {
    const W = u.weights[i]!;
    const approx = compose(f.u, f.v, m, f.rank, n, engine);
    const D = new Float64Array(m * n);
    for (let p = 0; p < m * n; p++) D[p] = W[p]! - approx[p]! - (f.base ? f.base[p]! : 0);
    const G = u.grams?.[i];
    if (G) {
      err2 += activationError2(D, m, n, G, engine);
      if (knownRef === undefined) ref2 += activationError2(W, m, n, G, engine);
    } else {
      for (let p = 0; p < m * n; p++) {
        err2 += D[p]! ** 2;
        if (knownRef === undefined) ref2 += W[p]! ** 2;
      }
    }
  });
  if (knownRef === undefined) referenceNorms.set(refKey, ref2);
  else ref2 = knownRef;
  const sharedParams = u.kind === 'shared-input' || u.kind === 'shared-output' ? u.perRank * k : (m + n) * k;
  return {
    id: u.id,
    rank: k,
    params: sharedParams + (u.kind === 'delta' ? u.fixed : 0),
    predicted: Math.sqrt(u.tail[Math.min(k, u.tail.length - 1)]!),
    measured: Math.sqrt(err2),
    relative: ref2 > 0 ? Math.sqrt(err2 / ref2) : 0,
    factors,
  };
}
