/**
 * One forward pass over calibration windows -> CalibStats (types.ts): per MoE layer and expert the routed-token
 * count, router-probability mass, applied gate sum, REAP sum g*||f(x)||, EASY-EP sum g*||f(x)||*max(1-cos,0)
 * (cos between the residual stream before and after the MoE block, per token), the sum of expert outputs, and
 * a sample of router logits. Everything is a sum, so runs over different text add up (artifact.ts sumStats).
 * Experts are never all loaded at once: the statistics come from the stream's routing / output hooks.
 */
import type { Model } from '../model/open.js';
import type { StreamHooks } from '../runtime/api.js';
import { streamModel } from '../runtime/stream.js';
import { STATS_VERSION, type CalibStats, type LayerStats } from './types.js';

export const DEFAULT_LOGIT_SAMPLE_ROWS = 512;

export interface CollectOptions {
  /** router-logit rows kept per layer (first tokens seen) */
  logitSampleRows?: number;
  onProgress?(layer: number, layers: number): void;
  /** also run the multi-token-prediction layers (their statistics are layers L + i: not for saved artifacts) */
  mtp?: boolean;
  /** more hooks riding on the same pass (Gram accumulation, grams.ts) */
  extraHooks?: Pick<StreamHooks, 'onLinearInput' | 'onMoeLayerDone' | 'onLayerOutput'>;
}

function emptyLayer(layer: number, E: number, H: number): LayerStats {
  return {
    layer,
    numExperts: E,
    hidden: H,
    tokens: 0,
    count: new Float64Array(E),
    probMass: new Float64Array(E),
    gateSum: new Float64Array(E),
    reapSum: new Float64Array(E),
    easyEpSum: new Float64Array(E),
    outputSum: new Float64Array(E * H),
    logitSample: new Float32Array(0),
    logitSampleRows: 0,
  };
}

export async function collectStats(model: Model, windows: readonly Int32Array[], opts: CollectOptions = {}): Promise<CalibStats> {
  const v = model.view;
  const E = v.dims.numExperts;
  const H = v.dims.hidden;
  const maxRows = opts.logitSampleRows ?? DEFAULT_LOGIT_SAMPLE_ROWS;
  const layers = new Map<number, LayerStats>();
  // a layer's own count: a per-layer checkpoint's (src/model/perlayer.ts) differ, dims.numExperts is the largest
  const layerExperts = (l: number): number => {
    const b = l < v.dims.layers ? v.layers[l]?.block : v.mtp?.find((m) => m.layer.index === l)?.layer.block;
    return b?.kind === 'moe' ? b.experts.length : E;
  };
  const at = (l: number) => {
    let s = layers.get(l);
    if (!s) layers.set(l, (s = emptyLayer(l, layerExperts(l), H)));
    return s;
  };
  const hooks: StreamHooks = {
    onRouting(l, r, logits, probs) {
      const s = at(l);
      s.tokens += r.T;
      for (let i = 0; i < r.T * r.k; i++) {
        const e = r.idx[i]!;
        s.count[e]!++;
        s.gateSum[e]! += r.w[i]!;
      }
      const El = s.numExperts;
      for (let t = 0; t < r.T; t++) for (let e = 0; e < El; e++) s.probMass[e]! += probs[t * El + e]!;
      const rows = Math.min(maxRows, r.T);
      s.logitSample = logits.slice(0, rows * El);
      s.logitSampleRows = rows;
    },
    onExpertOutput(l, e, tokens, _slots, out) {
      const s = at(l);
      const o = s.outputSum;
      for (let i = 0; i < tokens.length; i++) for (let j = 0; j < H; j++) o[e * H + j]! += out[i * H + j]!;
    },
    async onMoeLayerDone(info) {
      const s = at(info.layer.index);
      const { routing: r, slotNorm, residualIn: a, residualOut: b } = info;
      for (let t = 0; t < r.T; t++) {
        let ab = 0,
          aa = 0,
          bb = 0;
        for (let j = 0; j < H; j++) {
          const x = a[t * H + j]!,
            y = b[t * H + j]!;
          ab += x * y;
          aa += x * x;
          bb += y * y;
        }
        const cos = aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 1;
        const contrib = Math.max(1 - cos, 0);
        for (let k = 0; k < r.k; k++) {
          const i = t * r.k + k;
          // the norm of the slot's contribution to the block output: w ||f(x)||, or ||f(w x)|| where the weight
          // scales the expert's input (llama4: slotNorm is already of the contribution)
          const g = (v.routing.weightsInput ? 1 : r.w[i]!) * slotNorm[i]!;
          s.reapSum[r.idx[i]!]! += g;
          s.easyEpSum[r.idx[i]!]! += g * contrib;
        }
      }
      await opts.extraHooks?.onMoeLayerDone?.(info);
    },
    ...(opts.extraHooks?.onLinearInput ? { onLinearInput: opts.extraHooks.onLinearInput } : {}),
    ...(opts.extraHooks?.onLayerOutput ? { onLayerOutput: opts.extraHooks.onLayerOutput } : {}),
  };
  await streamModel(model, windows, hooks, { ...(opts.onProgress ? { onProgress: opts.onProgress } : {}), ...(opts.mtp ? { mtp: true } : {}) });
  const tokens = windows.reduce((a, w) => a + w.length, 0);
  return {
    version: STATS_VERSION,
    family: v.family,
    numLayers: v.layers.length,
    numExperts: E,
    topK: v.dims.topK,
    hidden: H,
    tokens,
    runs: 1,
    layers: [...layers.values()].sort((x, y) => x.layer - y.layer),
  };
}
