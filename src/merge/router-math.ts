/**
 * The router arithmetic every row method of `moe merge` shares (src/merge/methods/router-*.ts): the rows taken from
 * the anchor or the members' mean, the group-summed target distribution, the KL of a candidate router against it,
 * and the subsample of calibration tokens it is measured on. The methods and the dispatch (router.ts) import this.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { RoutingRule } from '../model/types.js';
import { MERGE_OPTION_DEFAULTS, type ExpertGroup } from './types.js';

export interface RouterWeights {
  /** [E, H] */
  w: Float32Array;
  bias?: Float32Array;
  correctionBias?: Float32Array;
}

export interface RouterFitData {
  /** [T, H] MoE-block inputs */
  x: Float32Array;
  T: number;
  /** [T, E] old router logits */
  logits: Float32Array;
}

export interface RouterFitOptions {
  steps?: number;
  /** tokens used for the fit (evenly spaced subsample); the report says how many */
  maxTokens?: number;
}

export interface RouterResult {
  router: RouterWeights;
  /** mean KL on the fit tokens: of the chosen rows, and of the mean-rows baseline (when data was given) */
  kl?: number;
  klMean?: number;
  tokens?: number;
  steps?: number;
}

export type ScoreKind = 'softmax' | 'sigmoid';

export function scoreKind(rule: Pick<RoutingRule, 'score'>): ScoreKind {
  // families that select on raw logits (granite, gpt_oss) renormalise with a softmax: match a softmax over all
  return rule.score === 'sigmoid' ? 'sigmoid' : 'softmax';
}

export function rowsFrom(router: RouterWeights, groups: readonly ExpertGroup[], H: number, how: 'anchor' | 'mean'): RouterWeights {
  const N = groups.length;
  const w = new Float32Array(N * H);
  const pick = (v: Float32Array | undefined, dim: number): Float32Array | undefined => {
    if (!v) return undefined;
    const out = new Float32Array(N * dim);
    groups.forEach((g, k) => {
      const ms = how === 'anchor' ? [g.anchor] : g.members;
      for (let d = 0; d < dim; d++) {
        let s = 0;
        for (const m of ms) s += v[m * dim + d];
        out[k * dim + d] = s / ms.length;
      }
    });
    return out;
  };
  w.set(pick(router.w, H)!);
  const res: RouterWeights = { w };
  if (router.bias) res.bias = pick(router.bias, 1);
  if (router.correctionBias) res.correctionBias = pick(router.correctionBias, 1);
  return res;
}

/** Group-summed old scores [T, N] from old logits [T, E]. */
export function groupTargets(logits: Float32Array, T: number, E: number, groups: readonly ExpertGroup[], kind: ScoreKind): Float64Array {
  const N = groups.length;
  const P = new Float64Array(T * N);
  const p = new Float64Array(E);
  for (let t = 0; t < T; t++) {
    const row = logits.subarray(t * E, (t + 1) * E);
    if (kind === 'softmax') {
      let mx = -Infinity;
      for (let e = 0; e < E; e++) mx = Math.max(mx, row[e]);
      let s = 0;
      for (let e = 0; e < E; e++) s += p[e] = Math.exp(row[e] - mx);
      for (let e = 0; e < E; e++) p[e] /= s;
    } else {
      for (let e = 0; e < E; e++) p[e] = 1 / (1 + Math.exp(-row[e]));
    }
    for (let g = 0; g < N; g++) {
      let s = 0;
      for (const m of groups[g].members) s += p[m];
      P[t * N + g] = kind === 'softmax' ? s : Math.min(1, s);
    }
  }
  return P;
}

/**
 * Mean KL(P || q) of scores q = score(z + b) [T, N], and optionally dKL/dz = (q - P) / T into `grad`.
 * The same gradient form holds for softmax cross-entropy and per-output binary cross-entropy.
 */
export function evaluate(z: Float32Array, T: number, b: Float64Array, N: number, P: Float64Array, kind: ScoreKind, grad?: Float32Array): number {
  let kl = 0;
  const zz = new Float64Array(N);
  for (let t = 0; t < T; t++) {
    for (let g = 0; g < N; g++) zz[g] = z[t * N + g] + b[g];
    if (kind === 'softmax') {
      let mx = -Infinity;
      for (let g = 0; g < N; g++) mx = Math.max(mx, zz[g]);
      let s = 0;
      for (let g = 0; g < N; g++) s += Math.exp(zz[g] - mx);
      const lse = mx + Math.log(s);
      for (let g = 0; g < N; g++) {
        const pt = P[t * N + g];
        const lq = zz[g] - lse;
        if (pt > 0) kl += pt * (Math.log(pt) - lq);
        if (grad) grad[t * N + g] = (Math.exp(lq) - pt) / T;
      }
    } else {
      for (let g = 0; g < N; g++) {
        const pt = P[t * N + g];
        const q = 1 / (1 + Math.exp(-zz[g]));
        const qc = Math.min(Math.max(q, 1e-12), 1 - 1e-12);
        if (pt > 0) kl += pt * Math.log(pt / qc);
        if (pt < 1) kl += (1 - pt) * Math.log((1 - pt) / (1 - qc));
        if (grad) grad[t * N + g] = (q - pt) / T;
      }
    }
  }
  return kl / T;
}

/** x [T, H] (as a tensor) times rows R [N, H] transposed -> [T, N]. */
export function logitsOf(xt: tf.Tensor2D, R: ArrayLike<number>, N: number, H: number): Float32Array {
  const rt = new Float32Array(H * N);
  for (let g = 0; g < N; g++) for (let h = 0; h < H; h++) rt[h * N + g] = R[g * H + h];
  const z = tf.tidy(() => tf.matMul(xt, tf.tensor2d(rt, [H, N])));
  try {
    return z.dataSync() as Float32Array;
  } finally {
    z.dispose();
  }
}

/** Evenly spaced token subsample of x and logits. */
export function subsample(data: RouterFitData, H: number, E: number, maxTokens: number): RouterFitData {
  if (data.T <= maxTokens) return data;
  const T = maxTokens;
  const x = new Float32Array(T * H);
  const logits = new Float32Array(T * E);
  for (let i = 0; i < T; i++) {
    const t = Math.floor((i * data.T) / T);
    x.set(data.x.subarray(t * H, (t + 1) * H), i * H);
    logits.set(data.logits.subarray(t * E, (t + 1) * E), i * E);
  }
  return { x, T, logits };
}

/** Mean KL between group-summed old scores and the scores of `router` on the data. */
export function routerKL(
  router: RouterWeights,
  groups: readonly ExpertGroup[],
  data: RouterFitData,
  H: number,
  E: number,
  rule: Pick<RoutingRule, 'score'>,
): number {
  const kind = scoreKind(rule);
  const N = groups.length;
  const P = groupTargets(data.logits, data.T, E, groups, kind);
  const b = router.bias ? Float64Array.from(router.bias) : new Float64Array(N);
  const xt = tf.tensor2d(data.x, [data.T, H]);
  try {
    return evaluate(logitsOf(xt, router.w, N, H), data.T, b, N, P, kind);
  } finally {
    xt.dispose();
  }
}

/** What a router row method gets (src/merge/methods/router-*.ts): the old router, the groups, the shapes, the
 *  family's score, the fit data when there is calibration, and the members' mean rows (the report's baseline). */
export interface RouterRowsInput {
  router: RouterWeights;
  groups: readonly ExpertGroup[];
  H: number;
  E: number;
  rule: Pick<RoutingRule, 'score'>;
  data?: RouterFitData;
  opts: RouterFitOptions;
  mean: RouterWeights;
}

/** Rows taken as they are (anchor, mean): with calibration data, their KL and the mean baseline's on the fit tokens. */
export function fixedRows(c: RouterRowsInput, chosen: RouterWeights): RouterResult {
  if (!c.data) return { router: chosen };
  const d = subsample(c.data, c.H, c.E, c.opts.maxTokens ?? MERGE_OPTION_DEFAULTS.fitTokens);
  return { router: chosen, kl: routerKL(chosen, c.groups, d, c.H, c.E, c.rule), klMean: routerKL(c.mean, c.groups, d, c.H, c.E, c.rule), tokens: d.T };
}
