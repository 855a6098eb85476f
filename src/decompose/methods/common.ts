/**
 * What every factorisation mode of `moe decompose` is: a method descriptor with the units it cuts a layer x
 * projection into, how it scores them (factorises each with its truncation spectrum), and its own memory part (the
 * factorisation workspace of its largest unit). units.ts walks the layers and calls these; the pipeline never
 * branches on a mode's name.
 */
import type { MethodDescriptor } from '../../pipeline/descriptor.js';
import type { MemoryPart } from '../../runtime/memory.js';
import type { SwiGLUWeights } from '../../runtime/api.js';
import { factorizeLinear, type Factorization, type FactorizeOptions, type SharedFactorization } from '../factorize.js';
import type { DecomposeMode } from '../format.js';
import { ladderTop, type Proj, type ScoreOptions, type UnitInput, type UnitShape } from '../unitshape.js';

const F64 = 8;

/** One layer x projection, from shapes alone. */
export interface ShapeInput {
  layer: number;
  proj: Proj;
  /** [out, in] of each expert's linear */
  m: number;
  n: number;
  /** experts of the layer */
  E: number;
  opts: ScoreOptions;
}

/** One layer x projection to cut into units: the experts' weights, Grams and the unit shapes of shapes(). */
export interface ScoreInput {
  experts: readonly SwiGLUWeights[];
  proj: Proj;
  m: number;
  n: number;
  E: number;
  /** tokens routed to each expert (calibrated runs) */
  tokens?: number[];
  /** routing-frequency weight of expert j (mean 1), for losses in weight space */
  freqWeight(j: number): number;
  /** expert j's weights in float64 */
  W64(j: number): Float64Array;
  /** expert j's Gram for this projection's input (calibrated runs) */
  measureG(j: number): Float64Array | undefined;
  calibrated: boolean;
  units: readonly UnitShape[];
  opts: ScoreOptions;
}

/** What a mode's memory part sees: every unit of the run, from shapes. */
export interface DecomposeMemoryContext {
  units: readonly UnitShape[];
  /** worker threads factorising units (1: the main thread alone) */
  threads?: number;
}

export interface DecomposeModeMethod extends MethodDescriptor<DecomposeMemoryContext> {
  name: DecomposeMode;
  shapes(c: ShapeInput): UnitShape[];
  /** the units of one layer x projection with their inputs, lazily (cheap: copies, sums, the base expert) */
  units(c: ScoreInput): Iterable<UnitInput>;
  /** factorise one unit: its truncation spectrum and factors (pure, on plain data: it may run on a worker thread) */
  factorize(u: UnitInput, opts: ScoreOptions): Factorization | SharedFactorization;
  memory(c: DecomposeMemoryContext): MemoryPart[];
  /** a refusal that needs the model's shape, before any work (base-delta's ratio floor) */
  check?(c: { ratio: number; E: number }): void;
}

/**
 * Host float64 elements of one SVD of an [r, c] matrix computed to `maxRank`: randomized (sketch, range basis
 * with two copies during CholeskyQR2, co-range, projected matrix, small SVD) when maxRank is below the matrix rank,
 * else the Gram route (the smaller Gram, its eigenvectors and the eigensolver's copy, U, V^T and M V).
 */
export function svdElements(r: number, c: number, maxRank: number): number {
  const p = Math.min(r, c);
  if (maxRank < p) {
    const l = Math.min(maxRank + 10, p);
    return c * l + 2 * r * l + c * l + l * c + 3 * l * l + r * maxRank + maxRank * c;
  }
  return 3 * p * p + 2 * r * p + p * c;
}

/**
 * A unit's workspace in bytes: the weights it holds, the matrix it decomposes (plus the whitening factor), its SVD,
 * and the error measurement's products (A B, the difference, D G: three [m, n]).
 */
export function workspaceBytes(u: UnitShape, weights: number, matrix: readonly [number, number], whitening: number): number {
  const [r, c] = matrix;
  return (weights + r * c + whitening + svdElements(r, c, u.maxRank) + 3 * u.m * u.n) * F64;
}

/**
 * Allocation churn. Every unit allocates its workspace afresh, and every product through tfjs leaves float32
 * copies on the host, tens of MB of JS-heap garbage and a wasm heap that grows in steps and never shrinks; V8
 * frees large arrays late, so the peak RSS sits above the live set by several units' worth. Fitted on
 * bench/decompose-memory.ts (measured peak - live estimate): whitened H 512 / I 1408 +450 MiB (unit workspace
 * 58 MiB), whitened H 256 / I 704 +174 MiB (14.5 MiB), svd H 512 / I 1408 +332 MiB (46.5 MiB).
 */
export const CHURN_PER_WORKSPACE = 6;
export const CHURN_BASE_BYTES = 80 * 2 ** 20;

/**
 * A mode's memory part: its largest unit's workspace, and the churn that workspace leaves. With worker threads each
 * worker factorises one unit at a time in its own heap (unit-task.ts), so the workspace and its churn are counted
 * once per thread; the fitted base stays once (it was fitted at one thread and is mostly the main thread's).
 */
export function factorisationParts(units: readonly UnitShape[], bytes: (u: UnitShape) => number, threads = 1): MemoryPart[] {
  const work = units.reduce((a, u) => Math.max(a, bytes(u)), 0);
  const t = Math.max(1, threads);
  if (t === 1) {
    return [
      { label: 'factorisation of the largest unit (float64 SVD workspace)', bytes: work },
      { label: 'allocation churn not yet collected (fitted: 6 x the unit workspace + 80 MiB)', bytes: CHURN_PER_WORKSPACE * work + CHURN_BASE_BYTES },
    ];
  }
  return [
    { label: `factorisation of the largest unit (float64 SVD workspace) (one per worker thread, ${t})`, bytes: t * work },
    {
      label: `allocation churn not yet collected (fitted at one thread: 6 x the unit workspace per worker thread, ${t}, + 80 MiB)`,
      bytes: t * CHURN_PER_WORKSPACE * work + CHURN_BASE_BYTES,
    },
  ];
}

/** One unit per expert linear (svd, whitened, base-delta): the shapes of one layer x projection. */
export function perExpertShapes(c: ShapeInput, delta: boolean, maxRank: number): UnitShape[] {
  const { layer, proj, m, n, E } = c;
  const out: UnitShape[] = [];
  const fixed = delta ? (m * n) / E : 0;
  for (let j = 0; j < E; j++) {
    out.push({
      layer,
      proj,
      m,
      n,
      group: `L${layer}.${proj}`,
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
  return out;
}

/** The randomized SVD's knobs of a run's score options. */
export function factorOptions(o: ScoreOptions): FactorizeOptions {
  return { seed: o.seed, randomizedAbove: o.randomizedAbove };
}

/**
 * One unit per expert linear (svd, whitened): the expert's weights as stored, its Gram for the measured error, each
 * unit weighted by `weight`.
 */
export function* perExpertInputs(c: ScoreInput, weight: (j: number) => number): Iterable<UnitInput> {
  for (let j = 0; j < c.E; j++) {
    const G = c.measureG(j);
    yield { ...c.units[j]!, tokens: c.tokens && [c.tokens[j]!], weights: [c.W64(j)], grams: G && [G], weight: weight(j) };
  }
}

/**
 * One expert linear factorised as stored, or whitened by the Gram of the expert's routed inputs (`whiten`: the
 * truncation error is then the activation-space error).
 */
export function perExpertFactorize(u: UnitInput, opts: ScoreOptions, whiten: boolean): Factorization {
  const { m, n } = u;
  return factorizeLinear(u.weights[0]!, m, n, whiten ? u.grams?.[0] : undefined, opts.engine, ladderTop(m + n, m * n, 0, opts.ratio), factorOptions(opts));
}
