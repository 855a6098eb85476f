/**
 * The router after merging: one row per group. A linear row cannot reproduce the group-summed probabilities of
 * the old router exactly, so three options:
 *
 * - anchor: the anchor's own row (REAM keeps the centroid's row);
 * - mean: the mean of the members' rows;
 * - fit: rows (and bias, when the router has one) fitted on calibration hidden states so the new scores match
 *   the group-summed old ones: softmax families minimise KL(P_group || softmax(x R^T)), sigmoid families the
 *   binary KL against min(1, summed sigmoid). Adam on float64 typed arrays, started from the better of anchor
 *   and mean and keeping the best iterate, so the fit is never worse than its start on the tokens it sees.
 *
 * The runtime then applies the family's own top-k to the new scores; the fit targets the full distribution,
 * which is what top-k selection and renormalisation read from.
 */
import * as tf from '@tensorflow/tfjs-core';
import { fail } from '../errors.js';
import type { RoutingRule } from '../model/types.js';
import { MERGE_OPTION_DEFAULTS, type ExpertGroup, type RouterMethod } from './types.js';

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

type ScoreKind = 'softmax' | 'sigmoid';

function scoreKind(rule: Pick<RoutingRule, 'score'>): ScoreKind {
  // families that select on raw logits (granite, gpt_oss) renormalise with a softmax: match a softmax over all
  return rule.score === 'sigmoid' ? 'sigmoid' : 'softmax';
}

function rowsFrom(router: RouterWeights, groups: readonly ExpertGroup[], H: number, how: 'anchor' | 'mean'): RouterWeights {
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
function evaluate(z: Float32Array, T: number, b: Float64Array, N: number, P: Float64Array, kind: ScoreKind, grad?: Float32Array): number {
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
function logitsOf(xt: tf.Tensor2D, R: ArrayLike<number>, N: number, H: number): Float32Array {
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
function subsample(data: RouterFitData, H: number, E: number, maxTokens: number): RouterFitData {
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

export function mergeRouter(
  method: RouterMethod,
  router: RouterWeights,
  groups: readonly ExpertGroup[],
  H: number,
  E: number,
  rule: Pick<RoutingRule, 'score'>,
  data?: RouterFitData,
  opts: RouterFitOptions = {},
): RouterResult {
  if (router.w.length !== E * H) fail('ComputeError', `router has ${router.w.length} weights, expected ${E}x${H}`);
  const mean = rowsFrom(router, groups, H, 'mean');
  if (method !== 'fit') {
    const chosen = method === 'anchor' ? rowsFrom(router, groups, H, 'anchor') : mean;
    if (!data) return { router: chosen };
    const d = subsample(data, H, E, opts.maxTokens ?? MERGE_OPTION_DEFAULTS.fitTokens);
    return { router: chosen, kl: routerKL(chosen, groups, d, H, E, rule), klMean: routerKL(mean, groups, d, H, E, rule), tokens: d.T };
  }
  if (!data || data.T === 0) fail('Usage', '--router fit needs calibration hidden states (--calib FILE)');
  const kind = scoreKind(rule);
  const N = groups.length;
  const d = subsample(data, H, E, opts.maxTokens ?? MERGE_OPTION_DEFAULTS.fitTokens);
  const T = d.T;
  const P = groupTargets(d.logits, T, E, groups, kind);
  const fitBias = !!router.bias;
  const steps = opts.steps ?? MERGE_OPTION_DEFAULTS.fitSteps;
  let klMean = Infinity;
  let best = Infinity;
  let bestR = new Float64Array(0);
  let bestB = new Float64Array(0);
  const anchor = rowsFrom(router, groups, H, 'anchor');
  const zeros = new Float64Array(N);
  const xt = tf.tensor2d(d.x, [T, H]);
  try {
    const klOf = (r: RouterWeights) => evaluate(logitsOf(xt, r.w, N, H), T, r.bias ? Float64Array.from(r.bias) : zeros, N, P, kind);
    klMean = klOf(mean);
    const klAnchor = klOf(anchor);
    const start = klAnchor < klMean ? anchor : mean;

    const R = Float64Array.from(start.w);
    const b = start.bias ? Float64Array.from(start.bias) : new Float64Array(N);
    // Adam: step size relative to the router's own scale, so the same settings serve any hidden size
    let rms = 0;
    for (const v of router.w) rms += v * v;
    rms = Math.sqrt(rms / router.w.length) || 1e-2;
    const lr0 = 0.05 * rms;
    const mR = new Float64Array(R.length);
    const vR = new Float64Array(R.length);
    const mb = new Float64Array(N);
    const vb = new Float64Array(N);
    const gz = new Float32Array(T * N);
    const gzT = new Float32Array(N * T);
    const gb = new Float64Array(N);
    const b1 = 0.9;
    const b2 = 0.999;
    for (let step = 0; step <= steps; step++) {
      const kl = evaluate(logitsOf(xt, R, N, H), T, b, N, P, kind, gz);
      if (!Number.isFinite(kl)) fail('NonFinite', 'router fit diverged (non-finite KL)');
      if (kl < best) {
        best = kl;
        bestR = R.slice();
        bestB = b.slice();
      }
      if (step === steps) break;
      // dKL/dR = G^T X: [N, T] x [T, H]
      gb.fill(0);
      for (let t = 0; t < T; t++)
        for (let g = 0; g < N; g++) {
          gzT[g * T + t] = gz[t * N + g];
          gb[g] += gz[t * N + g];
        }
      const gRt = tf.tidy(() => tf.matMul(tf.tensor2d(gzT, [N, T]), xt));
      const gR = gRt.dataSync() as Float32Array;
      gRt.dispose();
      const lr = lr0 * 0.5 * (1 + Math.cos((Math.PI * step) / steps));
      const c1 = 1 - Math.pow(b1, step + 1);
      const c2 = 1 - Math.pow(b2, step + 1);
      for (let i = 0; i < R.length; i++) {
        mR[i] = b1 * mR[i] + (1 - b1) * gR[i];
        vR[i] = b2 * vR[i] + (1 - b2) * gR[i] * gR[i];
        R[i] -= (lr * (mR[i] / c1)) / (Math.sqrt(vR[i] / c2) + 1e-12);
      }
      if (fitBias) {
        for (let g = 0; g < N; g++) {
          mb[g] = b1 * mb[g] + (1 - b1) * gb[g];
          vb[g] = b2 * vb[g] + (1 - b2) * gb[g] * gb[g];
          b[g] -= (lr * (mb[g] / c1)) / (Math.sqrt(vb[g] / c2) + 1e-12);
        }
      }
    }
  } finally {
    xt.dispose();
  }
  const fitted: RouterWeights = { w: Float32Array.from(bestR) };
  if (fitBias) fitted.bias = Float32Array.from(bestB);
  if (mean.correctionBias) fitted.correctionBias = mean.correctionBias;
  return { router: fitted, kl: best, klMean, tokens: T, steps };
}
