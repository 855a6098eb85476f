/**
 * What the family data files cannot say: per-family adjustments applied after the data-driven view is built.
 * Keep this small; anything expressible as data belongs in architectures/<model_type>.json.
 */
import { fail } from '../errors.js';
import type { ConfigReader } from './config.js';
import type { ModelView } from './types.js';

export interface FamilyHooks {
  /** adjust the view in place (dimensions, attention specifics, per-layer attention windows) */
  adjust?(view: ModelView, cfg: ConfigReader): void;
}

/** YaRN attention-scale correction (DeepSeek): 0.1 * mscale * ln(factor) + 1 for factor > 1. */
function yarnMscale(factor: number, mscale: number): number {
  return factor <= 1 ? 1 : 0.1 * mscale * Math.log(factor) + 1;
}

const mla: FamilyHooks = {
  adjust(view, cfg) {
    const qkNope = cfg.int('qk_nope_head_dim');
    const qkRope = cfg.int('qk_rope_head_dim');
    const vHead = cfg.int('v_head_dim');
    const kvLora = cfg.int('kv_lora_rank');
    const qLora = cfg.has('q_lora_rank') ? cfg.int('q_lora_rank') : null;
    view.attention.mla = { qLoraRank: qLora, kvLoraRank: kvLora, qkNopeHeadDim: qkNope, qkRopeHeadDim: qkRope, vHeadDim: vHead };
    view.dims.headDim = qkNope + qkRope;
    view.rope.rotaryDim = qkRope;
    // DeepSeek-V3 configs may switch the rope slice to the half-split layout (transformers: rope_interleave)
    if (cfg.raw('rope_interleave') === false) view.rope.style = 'half';
    let scale = 1 / Math.sqrt(qkNope + qkRope);
    const rs = view.rope.scaling;
    if (rs && typeof rs.factor === 'number' && typeof rs.mscale_all_dim === 'number' && rs.mscale_all_dim) {
      const m = yarnMscale(rs.factor, rs.mscale_all_dim);
      scale *= m * m;
    }
    view.attention.softmaxScale = scale;
  },
};

/** Mixtral / PhiMoE: one sliding_window for every layer when set. */
const uniformWindow: FamilyHooks = {
  adjust(view, cfg) {
    if (!cfg.has('sliding_window')) return;
    const w = cfg.int('sliding_window');
    for (const l of view.layers) l.slidingWindow = w;
  },
};

/** Per-layer attention windows from `layer_types` (transformers' newer configs; gpt_oss alternates them). */
function applyLayerTypes(view: ModelView, cfg: ConfigReader, defaultWindow?: number): boolean {
  const types = cfg.raw('layer_types');
  if (types === undefined || types === null) return false;
  if (!Array.isArray(types) || types.length < view.layers.length) {
    fail('InvalidConfig', `${cfg.where}: 'layer_types' must list one attention type per layer (${view.layers.length})`);
  }
  types.slice(0, view.layers.length).forEach((t, i) => {
    if (t === 'sliding_attention') view.layers[i]!.slidingWindow = cfg.int('sliding_window', defaultWindow);
    else if (t !== 'full_attention')
      fail('InvalidConfig', `${cfg.where}: layer_types[${i}] = ${JSON.stringify(t)} (expected sliding_attention or full_attention)`);
  });
  return true;
}

const gptOss: FamilyHooks = {
  adjust(view, cfg) {
    view.forward.activation = { kind: 'clamped-swiglu', limit: cfg.num('swiglu_limit', 7), alpha: 1.702 };
    applyLayerTypes(view, cfg, 128);
  },
};

/** Qwen MoE: sliding attention only when use_sliding_window, on layers from max_window_layers on. */
const qwenWindow: FamilyHooks = {
  adjust(view, cfg) {
    if (applyLayerTypes(view, cfg)) return;
    if (!cfg.flag('use_sliding_window', false) || !cfg.has('sliding_window')) return;
    const from = cfg.int('max_window_layers', 0, false);
    for (const l of view.layers) if (l.index >= from) l.slidingWindow = cfg.int('sliding_window');
  },
};

/**
 * dots1 (configuration_dots1.py): `layer_types` when given, else sliding from max_window_layers on whenever
 * sliding_window is set (no use_sliding_window switch, unlike Qwen).
 */
const dots1: FamilyHooks = {
  adjust(view, cfg) {
    if (applyLayerTypes(view, cfg)) return;
    if (!cfg.has('sliding_window')) return;
    const from = cfg.int('max_window_layers', 62, false);
    for (const l of view.layers) if (l.index >= from) l.slidingWindow = cfg.int('sliding_window');
  },
};

/** MiniMax-M2: partial RoPE given as a dimension (rotary_dim) rather than a factor. */
const minimax: FamilyHooks = {
  adjust(view, cfg) {
    if (cfg.has('rotary_dim')) view.rope.rotaryDim = cfg.int('rotary_dim');
  },
};

/** Ernie 4.5: use_bias puts a bias on every linear, experts included, which the expert templates do not describe. */
const ernie: FamilyHooks = {
  adjust(_view, cfg) {
    if (cfg.flag('use_bias', false))
      fail('UnsupportedArchitecture', `${cfg.where}: ernie4_5_moe with use_bias=true (biases on every expert linear) is not supported`);
  },
};

/**
 * Mistral 4: DeepSeek-V3 attention (MLA, YaRN mscale²) plus Llama-4 attention scaling of the queries by position,
 * from rope_parameters' llama_4_scaling_beta and original_max_position_embeddings (Mistral4Attention.forward).
 */
const mistral4: FamilyHooks = {
  adjust(view, cfg) {
    mla.adjust!(view, cfg);
    const rp = cfg.raw('rope_parameters');
    const p = (rp && typeof rp === 'object' && !Array.isArray(rp) ? rp : {}) as Record<string, unknown>;
    const beta = p['llama_4_scaling_beta'];
    if (beta === undefined || beta === null || beta === 0) return;
    const original = p['original_max_position_embeddings'];
    if (typeof beta !== 'number' || typeof original !== 'number' || !(original > 0))
      fail('InvalidConfig', `${cfg.where}: rope_parameters.llama_4_scaling_beta needs a number and a positive original_max_position_embeddings`);
    view.attention.queryPositionScale = { beta, original };
  },
};

/**
 * DeepSeek-V3.2: glm4_moe_lite's MLA and routing plus the DSA lightning indexer, whose top-`index_topk` key
 * selection is exact dense attention while a window has no more positions than index_topk. The runtime runs that
 * case and refuses longer windows (it does not run the indexer); the indexer's tensors are copied through.
 */
const deepseekV32: FamilyHooks = {
  adjust(view, cfg) {
    mla.adjust!(view, cfg);
    view.attention.denseKeysUpTo = cfg.int('index_topk', 2048);
  },
};

/**
 * GLM-5 (glm_moe_dsa): DeepSeek-V3.2's attention, routing and indexer, except that only the layers whose
 * `indexer_types` entry is "full" hold an indexer; "shared" layers reuse the previous full layer's top-k and store
 * none. The list is derived as GlmMoeDsaConfig.__post_init__ does when config.json lacks it: from
 * `index_topk_pattern` ("F"/"S" per layer), else from `index_topk_freq` and `index_skip_topk_offset`.
 */
const glmMoeDsa: FamilyHooks = {
  adjust(view, cfg) {
    deepseekV32.adjust!(view, cfg);
    const L = view.dims.layers;
    const types = indexerTypes(cfg, L);
    for (const layer of view.layers)
      if (types[layer.index] === 'shared')
        layer.attention = {
          ...layer.attention,
          tensors: Object.fromEntries(Object.entries(layer.attention.tensors).filter(([role]) => !role.startsWith('indexer_'))),
        };
  },
};

function indexerTypes(cfg: ConfigReader, L: number): string[] {
  const bad = (why: string): never => fail('InvalidConfig', `${cfg.where}: ${why}`);
  const given = cfg.raw('indexer_types') ?? cfg.raw('index_topk_pattern');
  if (given !== undefined && given !== null) {
    const list = typeof given === 'string' ? [...given].map((c) => ({ F: 'full', S: 'shared' })[c] ?? c) : given;
    if (!Array.isArray(list) || list.length !== L || list.some((t) => t !== 'full' && t !== 'shared'))
      bad(`indexer_types (or index_topk_pattern) must give "full" or "shared" for each of the ${L} layers, got ${JSON.stringify(given)}`);
    if ((list as string[])[0] !== 'full') bad('the first layer must run its own indexer (indexer_types[0] = "full")');
    return list as string[];
  }
  const freq = Math.max(cfg.int('index_topk_freq', 1), 1);
  const offset = cfg.int('index_skip_topk_offset', 2, false);
  return Array.from({ length: L }, (_, i) => (Math.max(i - offset + 1, 0) % freq === 0 ? 'full' : 'shared'));
}

/**
 * Llama 4 text (modeling_llama4.py Llama4TextAttention, configuration_llama4.py __post_init__): NoPE layers from
 * `no_rope_layers` (1 = RoPE; empty or missing: every `no_rope_layer_interval`-th layer is NoPE), chunked attention
 * on the `layer_types` "chunked_attention" layers (default: the RoPE layers) with `attention_chunk_size`, the
 * weightless L2 q/k norm on RoPE layers (`use_qk_norm`), and temperature tuning of NoPE layers' queries
 * (`attn_temperature_tuning`, `floor_scale`, `attn_scale`).
 */
const llama4Text: FamilyHooks = {
  adjust(view, cfg) {
    const L = view.dims.layers;
    const act = cfg.raw('hidden_act');
    if (act !== undefined && act !== 'silu') fail('UnsupportedArchitecture', `${cfg.where}: hidden_act '${String(act)}' is not supported (silu only)`);
    const raw = cfg.raw('no_rope_layers');
    let rope: number[];
    if (raw === undefined || raw === null || (Array.isArray(raw) && raw.length === 0)) {
      const interval = cfg.int('no_rope_layer_interval', 4);
      rope = Array.from({ length: L }, (_, l) => ((l + 1) % interval !== 0 ? 1 : 0));
    } else {
      if (!Array.isArray(raw) || raw.length < L || raw.some((x) => x !== 0 && x !== 1 && x !== true && x !== false))
        fail('InvalidConfig', `${cfg.where}: 'no_rope_layers' must list 0 or 1 for each of the ${L} layers`);
      rope = (raw as unknown[]).slice(0, L).map((x) => (x === 1 || x === true ? 1 : 0));
    }
    const typesRaw = cfg.raw('layer_types');
    let types: string[];
    if (typesRaw === undefined || typesRaw === null) types = rope.map((r) => (r ? 'chunked_attention' : 'full_attention'));
    else {
      if (!Array.isArray(typesRaw) || typesRaw.length < L || typesRaw.some((t) => t !== 'chunked_attention' && t !== 'full_attention'))
        fail('InvalidConfig', `${cfg.where}: 'layer_types' must list chunked_attention or full_attention for each of the ${L} layers`);
      types = (typesRaw as string[]).slice(0, L);
    }
    const chunked = types.some((t) => t === 'chunked_attention');
    const chunk = chunked ? cfg.int('attention_chunk_size') : 0;
    view.layers.forEach((layer, l) => {
      if (!rope[l]) layer.nope = true;
      if (types[l] === 'chunked_attention') layer.attentionChunk = chunk;
    });
    if (cfg.flag('use_qk_norm', true)) view.attention.l2QkNorm = { eps: cfg.num('rms_norm_eps', 1e-5) };
    if (cfg.flag('attn_temperature_tuning', true))
      view.attention.temperatureTuning = { floorScale: cfg.num('floor_scale', 8192), attnScale: cfg.num('attn_scale', 0.1) };
  },
};

export const FAMILY_HOOKS: Readonly<Record<string, FamilyHooks>> = {
  deepseek_v2: mla,
  deepseek_v3: mla,
  glm4_moe_lite: mla,
  deepseek_v32: deepseekV32,
  glm_moe_dsa: glmMoeDsa,
  mistral4,
  mixtral: uniformWindow,
  phimoe: uniformWindow,
  gpt_oss: gptOss,
  qwen2_moe: qwenWindow,
  qwen3_moe: qwenWindow,
  dots1,
  minimax_m2: minimax,
  ernie4_5_moe: ernie,
  llama4_text: llama4Text,
};
