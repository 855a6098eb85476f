/** Router rows fitted on calibration hidden states (Adam on the group-summed target distribution). */
import * as tf from '@tensorflow/tfjs-core';
import { fail } from '../../errors.js';
import {
  evaluate,
  groupTargets,
  logitsOf,
  rowsFrom,
  scoreKind,
  subsample,
  type RouterResult,
  type RouterRowsInput,
  type RouterWeights,
} from '../router-math.js';
import { MERGE_OPTION_DEFAULTS } from '../types.js';
import type { RouterRowMethod } from './common.js';

const F32 = 4;

/**
 * softmax families minimise KL(P_group || softmax(x R^T)), sigmoid families the binary KL against min(1, summed
 * sigmoid); started from the better of anchor and mean and keeping the best iterate, so the fit is never worse
 * than its start on the tokens it sees.
 */
function fitRows({ router, groups, H, E, rule, data, opts, mean }: RouterRowsInput): RouterResult {
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

export const routerFit: RouterRowMethod = {
  name: 'fit',
  summary: 'rows fitted on calibration hidden states so the new scores match the group-summed old ones (Adam from the better of anchor/mean)',
  needs: 'sequential',
  fromHiddenStates: 'fitted router rows',
  reads: ['fitSteps', 'fitTokens'],
  memory: (c) => {
    if (c.phase !== 'pass') return [];
    const Tf = Math.min(c.tokens, c.fitTokens);
    return [{ label: `router fit on ${Tf} tokens`, bytes: 2 * Tf * c.hidden * F32 + Tf * c.experts * F32 + Tf * c.groups * (8 + 4 + 4) }];
  },
  rows: fitRows,
};
