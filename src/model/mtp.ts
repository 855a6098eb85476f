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
 *
 * The `mtp.*` convention (qwen3_next, qwen3_5_moe; vLLM qwen3_next_mtp.py / qwen3_5_mtp.py): the decoder layers at
 * `mtp.layers.{i}.` (full attention, always the MoE block), sharing one `mtp.fc` [H, 2H] over
 * [pre_fc_norm_embedding(embed(t+1)); pre_fc_norm_hidden(h_t)] and the norm `mtp.norm` after each step; the count is
 * `mtp_num_hidden_layers` (vLLM reads `num_nextn_predict_layers`, default 1). The view numbers them after the decoder
 * layers (L + i) like the DeepSeek convention, and every `mtp.*` tensor outside `mtp.layers.{i}.` (fc and the three
 * norms) counts as layer L's, so edits, shards and drops treat the block as one more layer.
 */
import { fail } from '../errors.js';
import type { Checkpoint, HFConfig } from '../io/checkpoint.js';
import type { LayerView, MoeBlock, MtpLayerView } from './types.js';

/** Families whose checkpoints carry MTP layers in the model.layers.{L + i} convention, and the config key of their count. */
export const MTP_FAMILIES: Readonly<Record<string, string>> = {
  deepseek_v3: 'num_nextn_predict_layers',
  glm4_moe: 'num_nextn_predict_layers',
  glm4_moe_lite: 'num_nextn_predict_layers',
  glm_moe_dsa: 'num_nextn_predict_layers',
};

/** Families whose MTP layers are under `mtp.*`, and the config key of their count. */
export const MTP_PREFIX_FAMILIES: Readonly<Record<string, string>> = {
  qwen3_next: 'mtp_num_hidden_layers',
  qwen3_5_moe_text: 'mtp_num_hidden_layers',
};

const MTP_ROOT = 'mtp.';

/** Config key of the MTP layer count of a family (undefined: the family has no MTP layers moe reads). */
export function mtpCountKey(family: string): string | undefined {
  return MTP_FAMILIES[family] ?? MTP_PREFIX_FAMILIES[family];
}

/** Tensor-name prefix of MTP layer L + i: model.layers.{L + i}. (DeepSeek/GLM) or mtp.layers.{i}. */
export function mtpLayerPrefix(family: string, layers: number, l: number, decoderPrefix: (l: number) => string): string {
  return MTP_PREFIX_FAMILIES[family] ? `${MTP_ROOT}layers.${l - layers}.` : decoderPrefix(l);
}

/** The layer an `mtp.*` tensor belongs to (L + i inside mtp.layers.{i}., else L), or undefined outside that convention. */
export function mtpLayerOfTensor(family: string, layers: number, name: string): number | undefined {
  if (!MTP_PREFIX_FAMILIES[family] || !name.startsWith(MTP_ROOT)) return undefined;
  const m = /^mtp\.layers\.(\d+)\./.exec(name);
  return layers + (m ? Number(m[1]) : 0);
}

/**
 * How many MTP layers the checkpoint holds: the config's count, each present as tensors (`prefixL` is the layer
 * prefix of layer L = num_hidden_layers). Counted from the first: layer L + i counts only if L .. L + i do.
 */
export function mtpLayerCount(family: string, config: HFConfig, ckpt: Checkpoint, layers: number, prefixL: string): number {
  const pkey = MTP_PREFIX_FAMILIES[family];
  if (pkey) {
    // the fc is the block's marker; the count key may be missing (vLLM defaults to 1), never above what is stored
    if (!ckpt.has(`${MTP_ROOT}fc.weight`)) return 0;
    // its own embedding table (mtp_use_dedicated_embeddings) would be one more input the runtime does not feed
    if (config['mtp_use_dedicated_embeddings'] === true)
      fail(
        'UnsupportedArchitecture',
        `${ckpt.dir}: ${family} MTP block with mtp_use_dedicated_embeddings=true is not supported (the block's own embedding table is not read)`,
      );
    const given = config[pkey] ?? config['num_nextn_predict_layers'] ?? 1;
    if (typeof given !== 'number' || !Number.isInteger(given) || given <= 0) return 0;
    let k = 0;
    while (k < given && ckpt.has(`${MTP_ROOT}layers.${k}.input_layernorm.weight`)) k++;
    return k;
  }
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

export function mtpView(family: string, layer: LayerView, eps: number, unitOffset = false): MtpLayerView {
  const p = layer.prefix;
  const rms = (weight: string) => ({ weight, kind: 'rms' as const, eps, ...(unitOffset ? { unitOffset } : {}) });
  if (MTP_PREFIX_FAMILIES[family])
    return {
      layer: layer as LayerView & { block: MoeBlock },
      enorm: rms(`${MTP_ROOT}pre_fc_norm_embedding.weight`),
      hnorm: rms(`${MTP_ROOT}pre_fc_norm_hidden.weight`),
      ehProj: `${MTP_ROOT}fc.weight`,
      headNorm: rms(`${MTP_ROOT}norm.weight`),
    };
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
  // the mtp.* block's shared fc and norms sit outside its layers' prefixes: one rule for all of it
  if (MTP_PREFIX_FAMILIES[view.family]) return { dropped: [], config: {}, exclusions: [`-:^${escapeRe(MTP_ROOT)}`], layers };
  return { dropped: [], config: {}, exclusions: view.mtp!.map((m) => `-:^${escapeRe(m.layer.prefix)}`), layers };
}
