/**
 * `moe prune --refit-router`: after pruning, the kept experts' router rows are refitted on calibration hidden
 * states so that they receive the routing mass of the removed experts, and each layer keeps the refit only where
 * it lowers the measured error.
 *
 * Each removed expert is assigned to the kept expert whose mean output on calibration tokens is closest (cosine),
 * as merging would group them. The target of a kept expert's new logit is its group's combined logit,
 * log Σ_{j in group} exp(z_j) (softmax routers: softmax over these is exactly the group-summed old probabilities),
 * or logit(min(1, Σ sigmoid(z_j))) for sigmoid routers; a kept expert with no removed member keeps its row. The new
 * row (and bias, where the router has one) is the least-squares fit of that target on the calibration hidden
 * states: one ridge-regularised normal-equation solve per layer, all refitted rows at once.
 *
 * The measured error is the MoE block's output error ‖F − F'‖² / ‖F‖² on a calibration token sample (the same
 * measure as merge's decision, src/merge/decide.ts), with the original rows of the kept experts against the refit
 * rows and with blends (1 − alpha)·own + alpha·fitted, alpha in REFIT_BLENDS: a layer takes the lowest, so the refit
 * is kept only where it lowers the error. The pass is sequential: layer l is refitted on the hidden
 * states that the pruned (and refitted) layers before it produce.
 */
import * as tf from '@tensorflow/tfjs-core';
import { cholesky } from '../../kernels/linalg/cholesky.js';
import { solveLower, solveLowerT } from '../../kernels/linalg/triangular.js';
import { loadWindows } from '../data/windows.js';
import { allocationReport, errorCurve, type AllocationReport } from '../merge/allocate.js';
import { decideTokens, LayerError, pruneGroups } from '../merge/decide.js';
import { signalsFromInput } from '../merge/signals.js';
import type { Model } from '../model/open.js';
import type { RoutingRule } from '../model/types.js';
import type { MoeLayerInput } from '../runtime/api.js';
import { initBackend } from '../runtime/backend.js';
import { setThreads } from '../runtime/pool.js';
import { streamModel } from '../runtime/stream.js';
import { swiglu } from '../runtime/swiglu.js';
import { maskedEdit } from '../runtime/mask.js';
import type { LayerReport, PruneRun, RefitReport } from './types.js';

/** calibration tokens of the least-squares fit, at most (evenly spaced) */
export const REFIT_TOKENS = 8192;
/** blends of the least-squares rows with the own rows that are measured */
export const REFIT_BLENDS = [0.25, 0.5, 0.75, 1] as const;
/** ridge of the normal equations, relative to the mean diagonal of XᵀX */
const RIDGE = 1e-4;

// the report type lives in types.ts with the layer report that holds it
export type { RefitReport } from './types.js';

export interface RouterRows {
  w: Float32Array;
  bias?: Float32Array;
  correctionBias?: Float32Array;
}

/** The group's combined logit at every token: the target of the kept expert's refitted row. */
function targets(logits: Float32Array, T: number, E: number, members: readonly number[], sigmoid: boolean, pick: Int32Array): Float64Array {
  const z = new Float64Array(pick.length);
  pick.forEach((t, i) => {
    if (sigmoid) {
      let s = 0;
      for (const j of members) s += 1 / (1 + Math.exp(-logits[t * E + j]!));
      const p = Math.min(s, 1 - 1e-6);
      z[i] = Math.log(p / (1 - p));
    } else {
      let m = -Infinity;
      for (const j of members) m = Math.max(m, logits[t * E + j]!);
      let s = 0;
      for (const j of members) s += Math.exp(logits[t * E + j]! - m);
      z[i] = m + Math.log(s);
    }
  });
  void T;
  return z;
}

/**
 * One layer: least-squares rows for the kept experts that absorb removed ones, and the error with and without them.
 * `kept` ascending; the returned rows are in that order.
 */
export function refitLayer(
  input: Pick<MoeLayerInput, 'x' | 'T' | 'hidden' | 'logits' | 'routing' | 'experts' | 'router'>,
  kept: readonly number[],
  rule: RoutingRule,
  activation: Parameters<typeof swiglu>[3],
  maxTokens = REFIT_TOKENS,
): { rows: RouterRows; report: RefitReport } {
  const { x, T, hidden: H, logits, router } = input;
  const E = input.experts.length;
  const N = kept.length;
  const signals = signalsFromInput(input, (w, xx, n) => swiglu(w, xx, n, activation));
  const groups = pruneGroups(kept, E, signals);
  const hasBias = !!router.bias;
  const D = H + (hasBias ? 1 : 0);
  const n = Math.min(T, maxTokens);
  const pick = Int32Array.from({ length: n }, (_, i) => Math.floor((i * T) / n));
  const xs = new Float32Array(n * D);
  pick.forEach((t, i) => {
    xs.set(x.subarray(t * H, (t + 1) * H), i * D);
    if (hasBias) xs[i * D + H] = 1;
  });
  const fitted = groups.map((g, i) => ({ i, g })).filter(({ g }) => g.members.length > 1);
  const own = (): RouterRows => {
    const w = new Float32Array(N * H);
    kept.forEach((j, i) => w.set(router.w.subarray(j * H, (j + 1) * H), i * H));
    const r: RouterRows = { w };
    if (router.bias) r.bias = Float32Array.from(kept, (j) => router.bias![j]!);
    if (router.correctionBias) r.correctionBias = Float32Array.from(kept, (j) => router.correctionBias![j]!);
    return r;
  };
  const rows = own();
  if (fitted.length > 0) {
    // XᵀX [D, D] and XᵀZ [D, F] for the F refitted rows (the matmuls on the tensor backend, solved in float64)
    const Z = new Float32Array(n * fitted.length);
    fitted.forEach(({ g }, f) => {
      const z = targets(logits, T, E, g.members, rule.score === 'sigmoid', pick);
      for (let i = 0; i < n; i++) Z[i * fitted.length + f] = z[i]!;
    });
    const X = tf.tensor2d(xs, [n, D]);
    const Zt = tf.tensor2d(Z, [n, fitted.length]);
    const G = tf.matMul(X, X, true, false);
    const XZ = tf.matMul(X, Zt, true, false);
    const gram = G.dataSync();
    const xz = XZ.dataSync();
    for (const t of [X, Zt, G, XZ]) t.dispose();
    const A = Float64Array.from(gram);
    const { L } = cholesky(A, D, { ridge: RIDGE });
    const W = solveLowerT(L, D, solveLower(L, D, Float64Array.from(xz), fitted.length), fitted.length); // [D, F]
    fitted.forEach(({ i }, f) => {
      for (let h = 0; h < H; h++) rows.w[i * H + h] = W[h * fitted.length + f]!;
      if (hasBias) rows.bias![i] = W[H * fitted.length + f]!;
    });
  }
  const le = new LayerError({ x, T, H, routing: input.routing, experts: input.experts, rule, activation, maxTokens: decideTokens(E, 0, H) });
  const slots = (r: RouterRows) =>
    kept.map((j, i) => ({
      key: `e${j}`,
      expert: input.experts[j]!,
      row: r.w.subarray(i * H, (i + 1) * H),
      ...(r.bias ? { bias: r.bias[i] } : {}),
      ...(r.correctionBias ? { corr: r.correctionBias[i] } : {}),
    }));
  // the least-squares rows, and blends of them with the own rows (a full refit can overshoot: it moves every
  // token's logit toward the group's), the lowest error taken
  const ownRows = own();
  const errorOwnRows = le.error(slots(ownRows));
  let best = { alpha: 0, rows: ownRows, error: errorOwnRows };
  if (fitted.length > 0) {
    for (const alpha of REFIT_BLENDS) {
      const r: RouterRows = {
        w: Float32Array.from(rows.w, (v, i) => (1 - alpha) * ownRows.w[i]! + alpha * v),
        ...(rows.bias ? { bias: Float32Array.from(rows.bias, (v, i) => (1 - alpha) * ownRows.bias![i]! + alpha * v) } : {}),
        ...(rows.correctionBias ? { correctionBias: rows.correctionBias } : {}),
      };
      const e = le.error(slots(r));
      if (e < best.error) best = { alpha, rows: r, error: e };
    }
  }
  const applied = best.alpha > 0;
  const errorRefit = best.error;
  const receives = Object.fromEntries(groups.filter((g) => g.members.length > 1).map((g) => [String(g.anchor), g.members.slice(1)]));
  return { rows: best.rows, report: { applied, alpha: best.alpha, errorOwnRows, errorRefit, receives, tokens: le.T } };
}

/**
 * The sequential refit pass over calibration text: at each MoE layer the planned kept set, refitted (or not), and
 * the pruned layer handed back to the pass so later layers see it. Returns the rows of the layers that took the refit.
 */
export async function refitRouters(model: Model, req: PruneRun, layers: LayerReport[]): Promise<{ rows: Map<number, RouterRows>; tokens: number }> {
  await initBackend(req.backend);
  if (req.threads !== undefined) await setThreads(req.threads);
  const windows = await loadWindows(model.dir, req.calib!, {
    ...(req.calibTokens !== undefined ? { maxTokens: req.calibTokens } : {}),
    ...(req.seqLen !== undefined ? { seqLen: req.seqLen } : {}),
  });
  const byLayer = new Map(layers.map((l) => [l.layer, l]));
  const rule = model.view.routing;
  const act = model.view.forward.activation;
  const out = new Map<number, RouterRows>();
  let tokens = 0;
  const phase = req.progress?.phase('refit-router: least-squares router rows layer by layer');
  await streamModel(model, windows, {
    onMoeLayer(input) {
      tokens = input.T;
      const l = byLayer.get(input.layer.index)!;
      const r = refitLayer(input, l.kept, { ...rule, topK: Math.min(rule.topK, l.kept.length) }, act);
      l.refit = r.report;
      if (r.report.applied) out.set(l.layer, r.rows);
      phase?.tick(out.size, model.view.moeLayers.length, 'layers');
      // the pruned layer with the chosen rows, as the checkpoint will route
      const w = input.router.w.slice();
      const bias = input.router.bias ? input.router.bias.slice() : undefined;
      const H = input.hidden;
      l.kept.forEach((j, i) => {
        w.set(r.rows.w.subarray(i * H, (i + 1) * H), j * H);
        if (bias && r.rows.bias) bias[j] = r.rows.bias[i]!;
      });
      return maskedEdit(
        {
          experts: input.experts,
          router: { w, ...(bias ? { bias } : {}), ...(input.router.correctionBias ? { correctionBias: input.router.correctionBias } : {}) },
        },
        l.kept,
      );
    },
  });
  phase?.succeed(`refit-router: ${out.size} of ${layers.length} layers refitted`);
  return { rows: out, tokens };
}

/**
 * --keep-per-layer auto: one pass over the unpruned model on calibration text; per MoE layer the output-error curve
 * of keeping its n best experts by the method's scores (n = top-k .. E), then the knapsack at the same total.
 */
export async function perLayerReport(model: Model, req: PruneRun, layers: LayerReport[], keep: number): Promise<AllocationReport> {
  await initBackend(req.backend);
  if (req.threads !== undefined) await setThreads(req.threads);
  const windows = await loadWindows(model.dir, req.calib!, {
    ...(req.calibTokens !== undefined ? { maxTokens: req.calibTokens } : {}),
    ...(req.seqLen !== undefined ? { seqLen: req.seqLen } : {}),
  });
  const byLayer = new Map(layers.map((l) => [l.layer, l]));
  const rule = model.view.routing;
  const act = model.view.forward.activation;
  const curves: number[][] = [];
  const phase = req.progress?.phase('keep-per-layer: error curves layer by layer');
  await streamModel(model, windows, {
    onMoeLayer(input) {
      const l = byLayer.get(input.layer.index)!;
      const E = input.experts.length;
      const le = new LayerError({
        x: input.x,
        T: input.T,
        H: input.hidden,
        routing: input.routing,
        experts: input.experts,
        rule,
        activation: act,
        maxTokens: decideTokens(E, 0, input.hidden),
      });
      curves.push(errorCurve(le, Float64Array.from(l.scores), input.experts, input.router, input.hidden, rule.topK));
      phase?.tick(curves.length, model.view.moeLayers.length, 'layers');
      return undefined;
    },
  });
  phase?.succeed(`keep-per-layer: ${curves.length} layers measured`);
  return allocationReport(model.view.moeLayers, curves, keep, rule.topK);
}
