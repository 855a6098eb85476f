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
import {
  activationError2,
  compose,
  factorizeLinear,
  factorizeSharedInput,
  factorizeSharedOutput,
  factorRank,
  frequencyWeightedBase,
  type Factorization,
  type FactorizeOptions,
  type SharedFactorization,
} from './factorize.js';
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

export interface ScoredUnit extends UnitSummary {
  fact: Factorization | SharedFactorization;
  /** original weights and true (unridged) Grams of the covered experts, for the measured error */
  weights: Float64Array[];
  grams?: Float64Array[];
  /** base-delta: the layer x projection base expert */
  base?: Float64Array;
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

export interface ScoreOptions extends FactorizeOptions {
  mode: DecomposeMode;
  engine?: Engine;
  /** the budget's ratio, when known: large matrices then compute only the ranks the plan can choose */
  ratio?: number;
}

/** Highest rank any plan at `ratio` can give a unit (the top of its rank ladder). */
function ladderTop(perRank: number, dense: number, fixed: number, ratio: number | undefined): number | undefined {
  if (ratio === undefined) return undefined;
  return Math.ceil(((ratio * dense - fixed) / perRank) * LADDER[LADDER.length - 1]!) + 1;
}

function gramFor(g: LayerGrams | undefined, j: number, proj: Proj, n: number): Float64Array | undefined {
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

/**
 * The units of one layer, from shapes alone, in the order scoring and writing visit them (projection, then
 * expert). maxRank is the rank the factorisation will have: the matrix rank, or the ladder top where the
 * randomized SVD computes only what a plan at `ratio` can choose.
 */
export function layerUnitShapes(layer: number, E: number, shape: (proj: Proj) => ProjShape, opts: ScoreOptions): UnitShape[] {
  const out: UnitShape[] = [];
  for (const proj of PROJS) {
    const { m, n } = shape(proj);
    const common = { layer, proj, m, n, group: `L${layer}.${proj}` };
    if (opts.mode === 'svd' || opts.mode === 'whitened' || opts.mode === 'base-delta') {
      const delta = opts.mode === 'base-delta';
      const fixed = delta ? (m * n) / E : 0;
      const maxRank = factorRank(m, n, ladderTop(m + n, m * n, fixed, opts.ratio), opts);
      for (let j = 0; j < E; j++) {
        out.push({
          ...common,
          id: `L${layer}.e${j}.${proj}`,
          kind: delta ? 'delta' : 'expert',
          experts: [j],
          maxRank,
          // the base is paid once per layer x projection; spread over its experts so uniform ranks stay equal
          perRank: m + n,
          dense: m * n,
          fixed,
          weight: 1,
          minRank: delta ? 0 : 1,
        });
      }
    } else {
      const sharedIn = opts.mode === 'shared-input';
      const perRank = sharedIn ? n + E * m : m + E * n;
      const [rows, cols] = sharedIn ? [E * m, n] : [m, E * n];
      out.push({
        ...common,
        id: `L${layer}.shared.${proj}`,
        kind: sharedIn ? 'shared-input' : 'shared-output',
        experts: Array.from({ length: E }, (_, j) => j),
        maxRank: factorRank(rows, cols, ladderTop(perRank, E * m * n, 0, opts.ratio), opts),
        perRank,
        dense: E * m * n,
        fixed: 0,
        weight: 1,
        minRank: 1,
      });
    }
  }
  return out;
}

/**
 * Score one layer lazily: each unit is factorised when the iteration reaches it, so a caller that keeps only the
 * summary (or applies the unit and keeps its factors) holds one unit's factorisation at a time.
 */
export function* layerUnits(layer: number, experts: readonly SwiGLUWeights[], grams: LayerGrams | undefined, opts: ScoreOptions): Generator<ScoredUnit> {
  const E = experts.length;
  const tokens = grams?.experts.map((e) => e.tokens);
  const totalTokens = tokens?.reduce((a, b) => a + b, 0) ?? 0;
  // plain SVD's loss is in weight space: weight it by routing frequency (x E so the mean weight is 1)
  const freqWeight = (j: number) => (tokens && totalTokens > 0 ? (E * tokens[j]!) / totalTokens : 1);
  const whiten = opts.mode !== 'svd';
  const shapes = layerUnitShapes(layer, E, (proj) => ({ m: experts[0]![proj].out, n: experts[0]![proj].in }), opts);
  const fo: FactorizeOptions = { seed: opts.seed, randomizedAbove: opts.randomizedAbove };
  for (const proj of PROJS) {
    const { out: m, in: n } = experts[0]![proj];
    const W64 = (j: number) => Float64Array.from(experts[j]![proj].w);
    // measured errors use the Grams whenever calibration ran (plain SVD too, so modes compare in one space);
    // only the whitened modes factor with them
    const measureG = (j: number) => gramFor(grams, j, proj, n);
    const mine = shapes.filter((s) => s.proj === proj);
    if (opts.mode === 'svd' || opts.mode === 'whitened') {
      for (let j = 0; j < E; j++) {
        const W = W64(j);
        const G = measureG(j);
        const fact = factorizeLinear(W, m, n, whiten ? G : undefined, opts.engine, ladderTop(m + n, m * n, 0, opts.ratio), fo);
        yield {
          ...mine[j]!,
          tokens: tokens && [tokens[j]!],
          weights: [W],
          grams: G && [G],
          fact,
          tail: fact.tail,
          maxRank: fact.maxRank,
          ridge: fact.ridge,
          weight: whiten ? 1 : freqWeight(j),
        };
      }
    } else if (opts.mode === 'base-delta') {
      const base = frequencyWeightedBase(
        experts.map((w) => w[proj].w),
        tokens ?? new Array<number>(E).fill(1),
        m * n,
      );
      for (let j = 0; j < E; j++) {
        const W = W64(j);
        const G = measureG(j);
        const delta = W.map((v, i) => v - base[i]!);
        const fact = factorizeLinear(delta, m, n, G, opts.engine, ladderTop(m + n, m * n, (m * n) / E, opts.ratio), fo);
        yield {
          ...mine[j]!,
          tokens: tokens && [tokens[j]!],
          weights: [W],
          grams: G && [G],
          base,
          fact,
          tail: fact.tail,
          maxRank: fact.maxRank,
          ridge: fact.ridge,
        };
      }
    } else {
      const Ws = experts.map((_, j) => W64(j));
      const Gs = grams ? Ws.map((_, j) => measureG(j)!) : undefined;
      const sharedIn = opts.mode === 'shared-input';
      let fact: SharedFactorization;
      if (sharedIn) {
        let Gsum: Float64Array | undefined;
        if (Gs) {
          Gsum = new Float64Array(n * n);
          for (const G of Gs) for (let i = 0; i < n * n; i++) Gsum[i]! += G[i]!;
        }
        fact = factorizeSharedInput(Ws, m, n, Gsum, opts.engine, ladderTop(n + E * m, E * m * n, 0, opts.ratio), fo);
      } else {
        fact = factorizeSharedOutput(Ws, m, n, Gs, opts.engine, ladderTop(m + E * n, E * m * n, 0, opts.ratio), fo);
      }
      yield { ...mine[0]!, tokens, weights: Ws, grams: Gs, fact, tail: fact.tail, maxRank: fact.maxRank, ridge: fact.ridge };
    }
  }
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
