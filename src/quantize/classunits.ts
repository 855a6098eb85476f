/**
 * Scores of the units `--allocate` adds to the program: a layer's attention, its shared expert, a dense layer's MLP.
 * They must be on the routed experts' scale, or the one budget would be split by units of measure:
 *
 * - a routed expert's loss is imp_e x (1/n_e) sum over its tokens of g^2 ||f_q(x) - f(x)||^2, while its share of
 *   the expected per-token error of the block output is (1/T) times the same sum. Over a layer's experts the
 *   ratio of the two is sum_e imp_e / sum_e (n_e / T) = sum_e imp_e / k (top-k routing): the factor `scale(l)`
 *   that turns an expected per-token output error into the program's loss units.
 * - shared expert: its block-output error on all T tokens (times its sigmoid gate where it has one), quantized with
 *   the run's quantizer exactly as the apply pass will (GPTQ from the same block input, or RTN), times scale(l)/T.
 * - attention and dense-MLP linears are applied with round-to-nearest (the runtime does not hand them to the apply
 *   pass), so each width's error is RTN's: tr(dW G dW^T) / T on the Gram G = X^T X of the linear's input as the
 *   runtime reports it (LinearInput roles), summed over the unit's linears, times scale(l); a dense layer (no
 *   routing) takes the mean of scale over the MoE layers.
 * The Gram of a layer's inputs lives only while that layer runs (one [in, in] float64 per input role).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '../io/checkpoint.js';
import { loadLinear } from '../model/load.js';
import type { ActivationSpec } from '../model/types.js';
import type { LinearInput, MoeLayerInput } from '../runtime/api.js';
import type { ScoreExpertTask } from '../runtime/linalg-tasks.js';
import { accumulateHessian } from '../../kernels/quant/gptq.js';
import { dequantize, quantizeRtn } from '../../kernels/quant/rtn.js';
import type { QuantBits } from '../../kernels/quant/types.js';
import type { ProjBits, QuantSettings } from './expert.js';
import { getQuantizer } from './methods.js';
import { inputRoleOf, type LinearDecision } from './plan.js';
import { optionBits, type Unit } from './types.js';

/** tr(dW G dW^T) for dW [out, in] and a symmetric G [in, in]: the summed squared output error over G's rows. */
export function gramError(dw: Float32Array, out: number, inF: number, g: Float64Array): number {
  return tf.tidy(() => {
    const D = tf.tensor2d(dw, [out, inF]);
    const G = tf.tensor2d(Float32Array.from(g), [inF, inF]);
    return tf.sum(tf.mul(tf.matMul(D, G), D)).dataSync()[0]!;
  });
}

/** The shared expert's gate per token (sigmoid of its gate row), or 1 without one. */
function sharedGates(inp: MoeLayerInput): Float32Array {
  const g = new Float32Array(inp.T).fill(1);
  const gw = inp.shared?.gateWeight;
  if (!gw) return g;
  const H = inp.hidden;
  for (let t = 0; t < inp.T; t++) {
    let s = 0;
    for (let i = 0; i < H; i++) s += inp.x[t * H + i]! * gw[i]!;
    g[t] = 1 / (1 + Math.exp(-s));
  }
  return g;
}

export class ClassUnitScores {
  /** per unit index: each option's expected per-token output error (before scale) */
  private readonly raw = new Map<number, Float64Array>();
  private readonly scales = new Map<number, number>();
  private readonly grams = new Map<string, Float64Array>();
  private readonly want = new Set<string>();
  private readonly byLayer = new Map<number, number[]>();

  constructor(
    private readonly units: readonly Unit[],
    private readonly ckpt: Checkpoint,
    private readonly settings: QuantSettings,
    /** calibration tokens of the pass (every window's rows) */
    private readonly T: number,
  ) {
    units.forEach((u, i) => {
      if (!u.cls) return;
      this.byLayer.set(u.layer, [...(this.byLayer.get(u.layer) ?? []), i]);
      if (u.cls !== 'shared') for (const d of u.free) this.want.add(`${d.layer}:${inputRoleOf(d)}`);
    });
  }

  get active(): boolean {
    return this.byLayer.size > 0;
  }

  onLinearInput = (info: LinearInput): void => {
    const key = `${info.layer}:${info.role}`;
    if (!this.want.has(key)) return;
    let g = this.grams.get(key);
    if (!g) this.grams.set(key, (g = new Float64Array(info.cols * info.cols)));
    accumulateHessian(g, info.x.length === info.rows * info.cols ? info.x : info.x.subarray(0, info.rows * info.cols), info.rows, info.cols);
  };

  /** a MoE layer's routing fixes its scale; its shared-expert unit (if any) becomes one scoring task */
  moeLayer(inp: MoeLayerInput, imp: Float64Array, act: ActivationSpec): { task: ScoreExpertTask; ui: number } | undefined {
    const li = inp.layer.index;
    this.scales.set(li, imp.reduce((a, b) => a + b, 0) / inp.routing.k);
    const ui = (this.byLayer.get(li) ?? []).find((i) => this.units[i]!.cls === 'shared');
    if (ui === undefined || !inp.shared) return undefined;
    const u = this.units[ui]!;
    const jobs = u.options.map((o) => {
      const pb: ProjBits = { gate: 'keep', up: 'keep', down: 'keep' };
      for (const d of u.free) pb[d.proj!] = optionBits(o, d);
      for (const d of u.fixed) pb[d.proj!] = d.bits as QuantBits | 'keep';
      return pb;
    });
    const task: ScoreExpertTask = {
      w: inp.shared,
      x: inp.x,
      n: inp.T,
      gates: sharedGates(inp),
      activation: act,
      settings: this.settings,
      gptq: getQuantizer(this.settings.method).hessians,
      jobs,
      reuse: false,
    };
    return { task, ui };
  }

  sharedErrors(ui: number, errs: Float64Array): void {
    this.raw.set(
      ui,
      errs.map((e) => e / this.T),
    );
  }

  /** after decoder layer `layer`: its attention / dense-MLP units scored from the Grams, which are then freed */
  onLayerOutput = async (layer: number): Promise<void> => {
    for (const ui of this.byLayer.get(layer) ?? []) {
      const u = this.units[ui]!;
      if (u.cls === 'shared') continue;
      const err = new Float64Array(u.options.length);
      for (const d of u.free) {
        const g = this.grams.get(`${d.layer}:${inputRoleOf(d)}`);
        if (!g) continue;
        const { w } = await loadLinear(this.ckpt, d.ref);
        u.options.forEach((o, oi) => (err[oi]! += this.linearError(d, w, optionBits(o, d), g)));
      }
      this.raw.set(
        ui,
        err.map((e) => e / this.T),
      );
    }
    for (const k of [...this.grams.keys()]) if (k.startsWith(`${layer}:`)) this.grams.delete(k);
  };

  private linearError(d: LinearDecision, w: Float32Array, bits: QuantBits, g: Float64Array): number {
    const { outFeatures: o, inFeatures: i } = d.ref;
    const q = dequantize(quantizeRtn(w, o, i, { bits, groupSize: this.settings.groupSize, sym: this.settings.sym }));
    for (let k = 0; k < q.length; k++) q[k]! -= w[k]!;
    return gramError(q, o, i, g);
  }

  /** write the scaled losses of these units into the program's loss table */
  finish(losses: number[][]): void {
    const all = [...this.scales.values()];
    const mean = all.length ? all.reduce((a, b) => a + b, 0) / all.length : 1;
    for (const [ui, raw] of this.raw) {
      const s = this.scales.get(this.units[ui]!.layer) ?? mean;
      raw.forEach((e, oi) => (losses[ui]![oi] = s * e));
    }
  }
}
