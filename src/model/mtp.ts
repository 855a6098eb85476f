/**
 * Multi-token-prediction layers, DeepSeek/GLM convention: `num_nextn_predict_layers` layers stored after the
 * decoder layers, at model.layers.{num_hidden_layers + i}, each holding `eh_proj` [H, 2H], `enorm`, `hnorm`,
 * `shared_head.norm` (and often `shared_head.head`, a copy of lm_head) beside an ordinary decoder layer whose MLP is
 * always the MoE block (transformers 5.18: MtpLayer / MtpModel in modeling_layers.py, `get_mtp_config` sets
 * first_k_dense_replace = 0; vLLM and SGLang use the layer for speculative decoding).
 *
 * transformers' causal-LM classes skip these tensors on load and save_pretrained drops them, so a checkpoint whose
 * config still says num_nextn_predict_layers = 1 often holds no MTP tensors: a layer counts only when its eh_proj
 * is there.
 */
import type { Checkpoint, HFConfig } from '../io/checkpoint.js';
import type { LayerView, MoeBlock, MtpLayerView } from './types.js';

/** Families whose checkpoints carry MTP layers in this convention, and the config key of their count. */
export const MTP_FAMILIES: Readonly<Record<string, string>> = {
  deepseek_v3: 'num_nextn_predict_layers',
  glm4_moe: 'num_nextn_predict_layers',
  glm4_moe_lite: 'num_nextn_predict_layers',
  glm_moe_dsa: 'num_nextn_predict_layers',
};

/** Config key of the MTP layer count of a family (undefined: the family has none in this convention). */
export function mtpCountKey(family: string): string | undefined {
  return MTP_FAMILIES[family];
}

/**
 * How many MTP layers the checkpoint holds: the config's count, each present as tensors (`prefixL` is the layer
 * prefix of layer L = num_hidden_layers). Counted from the first: layer L + i counts only if L .. L + i do.
 */
export function mtpLayerCount(family: string, config: HFConfig, ckpt: Checkpoint, layers: number, prefixL: string): number {
  const key = mtpCountKey(family);
  if (!key) return 0;
  const n = config[key];
  if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0) return 0;
  const base = prefixL.slice(0, prefixL.lastIndexOf(String(layers)));
  const after = prefixL.slice(prefixL.lastIndexOf(String(layers)) + String(layers).length);
  let k = 0;
  while (k < n && ckpt.has(`${base}${layers + k}${after}eh_proj.weight`)) k++;
  return k;
}

export function mtpView(layer: LayerView, eps: number): MtpLayerView {
  const p = layer.prefix;
  const rms = (weight: string) => ({ weight, kind: 'rms' as const, eps });
  return {
    layer: layer as LayerView & { block: MoeBlock },
    enorm: rms(`${p}enorm.weight`),
    hnorm: rms(`${p}hnorm.weight`),
    ehProj: `${p}eh_proj.weight`,
    headNorm: rms(`${p}shared_head.norm.weight`),
  };
}

/** The layer index of each MTP layer of a view. */
export function mtpIndices(view: { mtp?: MtpLayerView[] }): number[] {
  return (view.mtp ?? []).map((m) => m.layer.index);
}

/** The layers an expert edit covers: the decoder layers, then the multi-token-prediction layers unless dropped. */
export function editedLayers(view: { layers: LayerView[]; mtp?: MtpLayerView[] }, dropMtp: boolean): LayerView[] {
  return [...view.layers, ...(dropMtp ? [] : (view.mtp ?? []).map((m) => m.layer))];
}

/** The one-line refusal of saved statistics that lack an MTP layer (calibration artifacts score the decoder layers). */
export function mtpStatsMissing(layer: number): string {
  return `the statistics have no multi-token-prediction layer ${layer} (saved artifacts score the decoder layers only): give --calib FILE, or --drop-mtp`;
}

/** A regex of a literal string (for quantization_config `dynamic` keys). */
function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * What a pipeline that does not edit the MTP layers (quantize) writes for them: with `drop`, every tensor of the
 * MTP layers dropped and the count key set to 0; otherwise the layers copied as they are and one `-:` rule per
 * layer for quantization_config.dynamic, so GPTQ loaders (GPTQModel, vLLM) read the whole layer unquantized.
 */
export function mtpPassThrough(
  view: { family: string; mtp?: MtpLayerView[]; dims: { layers: number } },
  tensorNames: readonly string[],
  layerOf: (name: string) => number,
  drop: boolean,
): { dropped: string[]; config: Record<string, unknown>; exclusions: string[]; layers: number[] } {
  const layers = mtpIndices(view);
  if (layers.length === 0) return { dropped: [], config: {}, exclusions: [], layers };
  if (drop) {
    const set = new Set(layers);
    return { dropped: tensorNames.filter((n) => set.has(layerOf(n))), config: { [mtpCountKey(view.family)!]: 0 }, exclusions: [], layers };
  }
  return { dropped: [], config: {}, exclusions: view.mtp!.map((m) => `-:^${escapeRe(m.layer.prefix)}`), layers };
}
