/**
 * Scores of the units `--allocate` adds to the program: a layer's attention, its shared expert, a dense layer's MLP.
 * They must be on the routed experts' scale, or the one budget would be split by units of measure:
 *
 * - a routed expert's loss is imp_e x (1/n_e) sum over its tokens of g^2 ||f_q(x) - f(x)||^2, while its share of
 *   the expected per-token error of the block output is (1/T) times the same sum. Over a layer's experts the
 *   ratio of the two is sum_e imp_e / sum_e (n_e / T) = sum_e imp_e / k (top-k routing): the factor `scale(l)`
 *   that turns an expected per-token error of a block's output into the program's loss units.
 * - every added unit is scored by the error of its own block's output on the calibration tokens, (1/T) sum_t
 *   ||y_q(t) - y(t)||^2, quantized as the apply pass will quantize it, times scale(l) (a dense layer, with no
 *   routing, takes the mean of scale over the MoE layers):
 *   - shared expert: the run's quantizer (GPTQ from the block input, or RTN), its sigmoid gate included;
 *   - attention: the whole attention (all its linears at the option's width, RTN as applied) rerun by the runtime on
 *     the same input (StreamHooks.onAttention), times the residual multiplier;
 *   - dense MLP: its SwiGLU on its input (the runtime's 'mlp.in'), RTN as applied.
 *   (A proxy on each linear's own output error, tr(dW G dW^T), overstated attention's q/k/v against the experts by
 *   more than 4x on the trained fixture: q/k/v errors are not residual-stream errors.)
 */
import type { Checkpoint } from '../io/checkpoint.js';
import { loadLinear } from '../model/load.js';
import type { ActivationSpec } from '../model/types.js';
import type { AttentionDone, LinearInput, MoeLayerInput, SwiGLUWeights } from '../runtime/api.js';
import { scoreExpert, type ScoreExpertTask } from '../runtime/linalg-tasks.js';
import { dequantize, quantizeRtn } from '../../kernels/quant/rtn.js';
import type { QuantBits } from '../../kernels/quant/types.js';
import type { ProjBits, QuantSettings } from './expert.js';
import { getQuantizer } from './methods.js';
import type { LinearDecision } from './plan.js';
import { optionBits, type Unit, type UnitOption } from './types.js';
import { sharedGates } from './routed.js';

export class ClassUnitScores {
  /** per unit index: each option's expected per-token output error (before scale) */
  private readonly raw = new Map<number, Float64Array>();
  private readonly scales = new Map<number, number>();
  /** dense layers' MLP input [T, H], kept from the runtime's hook until the layer is done */
  private readonly mlpIn = new Map<number, Float32Array>();
  private readonly byLayer = new Map<number, number[]>();

  constructor(
    private readonly units: readonly Unit[],
    private readonly ckpt: Checkpoint,
    private readonly settings: QuantSettings,
    private readonly act: ActivationSpec,
    /** calibration tokens of the pass (every window's rows) */
    private readonly T: number,
  ) {
    units.forEach((u, i) => {
      if (u.cls) this.byLayer.set(u.layer, [...(this.byLayer.get(u.layer) ?? []), i]);
    });
  }

  get active(): boolean {
    return this.byLayer.size > 0;
  }

  private unitOf(layer: number, cls: Unit['cls']): number | undefined {
    return (this.byLayer.get(layer) ?? []).find((i) => this.units[i]!.cls === cls);
  }

  /** the width an option gives each linear of its unit (fixed ones keep theirs) */
  private bitsOf(u: Unit, o: UnitOption, d: LinearDecision): QuantBits | 'keep' {
    return u.free.includes(d) ? optionBits(o, d) : (d.bits as QuantBits | 'keep');
  }

  private rtn(w: Float32Array, d: LinearDecision, bits: QuantBits): Float32Array {
    return dequantize(quantizeRtn(w, d.ref.outFeatures, d.ref.inFeatures, { bits, groupSize: this.settings.groupSize, sym: this.settings.sym }));
  }

  onLinearInput = (info: LinearInput): void => {
    if (info.role !== 'mlp.in' || this.unitOf(info.layer, 'dense') === undefined) return;
    this.mlpIn.set(info.layer, info.x.slice(0, info.rows * info.cols));
  };

  /** a MoE layer's routing fixes its scale; its shared-expert unit (if any) becomes one scoring task */
  moeLayer(inp: MoeLayerInput, imp: Float64Array): { task: ScoreExpertTask; ui: number } | undefined {
    const li = inp.layer.index;
    this.scales.set(li, imp.reduce((a, b) => a + b, 0) / inp.routing.k);
    const ui = this.unitOf(li, 'shared');
    if (ui === undefined || !inp.shared) return undefined;
    const u = this.units[ui]!;
    const jobs = u.options.map((o) => {
      const pb: ProjBits = { gate: 'keep', up: 'keep', down: 'keep' };
      for (const d of [...u.free, ...u.fixed]) pb[d.proj!] = this.bitsOf(u, o, d);
      return pb;
    });
    const task: ScoreExpertTask = {
      w: inp.shared,
      x: inp.x,
      n: inp.T,
      gates: sharedGates(inp),
      activation: this.act,
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

  /** the layer's attention rerun at each option's widths: the residual-stream error of the attention block */
  onAttention = async (info: AttentionDone): Promise<void> => {
    const ui = this.unitOf(info.layer.index, 'attention');
    if (ui === undefined) return;
    const u = this.units[ui]!;
    const ds = [...u.free, ...u.fixed];
    const ws = new Map<LinearDecision, Float32Array>();
    for (const d of ds) ws.set(d, (await loadLinear(this.ckpt, d.ref)).w);
    const err = new Float64Array(u.options.length);
    const r2 = info.residualScale * info.residualScale;
    for (const [oi, o] of u.options.entries()) {
      const replaced = new Map<string, Float32Array>();
      for (const d of ds) {
        const b = this.bitsOf(u, o, d);
        if (b !== 'keep') replaced.set(d.ref.tensor, this.rtn(ws.get(d)!, d, b));
      }
      const y = await info.rerun(replaced);
      let e = 0;
      for (let k = 0; k < y.length; k++) {
        const dv = y[k]! - info.output[k]!;
        e += dv * dv;
      }
      err[oi] = (r2 * e) / this.T;
    }
    this.raw.set(ui, err);
  };

  /** after decoder layer `layer`: its dense-MLP unit scored on the MLP input kept from the hook */
  onLayerOutput = async (layer: number): Promise<void> => {
    const x = this.mlpIn.get(layer);
    const ui = this.unitOf(layer, 'dense');
    this.mlpIn.delete(layer);
    if (!x || ui === undefined) return;
    const u = this.units[ui]!;
    const ds = [...u.free, ...u.fixed];
    const lin = async (p: 'gate' | 'up' | 'down') => loadLinear(this.ckpt, ds.find((d) => d.proj === p)!.ref);
    const w: SwiGLUWeights = { gate: await lin('gate'), up: await lin('up'), down: await lin('down') };
    const jobs = u.options.map((o) => {
      const pb: ProjBits = { gate: 'keep', up: 'keep', down: 'keep' };
      for (const d of ds) pb[d.proj!] = this.bitsOf(u, o, d);
      return pb;
    });
    // applied with round-to-nearest: scored so
    const errs = scoreExpert({
      w,
      x,
      n: this.T,
      gates: new Float32Array(this.T).fill(1),
      activation: this.act,
      settings: { ...this.settings, method: 'rtn' },
      gptq: false,
      jobs,
      reuse: false,
    });
    this.raw.set(
      ui,
      errs.map((e) => e / this.T),
    );
  };

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
