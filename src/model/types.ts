/**
 * The canonical view of an MoE checkpoint that every pipeline and the runtime use: per decoder layer its
 * attention, norms, and either a dense MLP or a router + experts (+ shared experts), each linear named by where
 * it lives on disk. Families differ only in the data that builds this view (src/model/architectures/*.json) and
 * in a few code escape hatches (src/model/families.ts).
 *
 * Convention: every linear is presented to callers as W [out, in] in float32 (nn.Linear's layout), whatever the
 * on-disk layout is (per-expert 2-D tensors, fused 3-D tensors, transposed in-major fused tensors, interleaved
 * gate/up halves, FP8 with block scales, MXFP4 blocks).
 */
import type { HFConfig } from '../io/checkpoint.js';

/** A multimodal container description (src/model/containers.json, read by src/model/container.ts). */
export interface Container {
  /** the container's own model_type (llama4) */
  model_type: string;
  /** HF class names the container is saved as (config.json `architectures`) */
  architectures: string[];
  /** the key of the nested language-model config */
  textConfigKey: string;
  /** the text family (a data file in ./architectures); the nested config's own model_type must be this one */
  textModelType: string;
  /** the text family's name prefix -> the container's: `model.` -> `language_model.model.`; longest match first */
  prefixes: Record<string, string>;
  /** config keys an edit writes at the top level even when absent there (transformers reads them there) */
  topLevelKeys: string[];
  source: string;
}

/** Where one linear's weight lives on disk. */
export interface LinearRef {
  /** on-disk tensor name */
  tensor: string;
  /** fused 3-D layouts: index along dim 0 */
  expert?: number;
  /** fused gate_up: which half of the (de-transposed) [2I, H] rows this linear is: [begin, end) */
  rows?: readonly [number, number];
  /** gpt_oss fuses gate/up interleaved: gate = even rows, up = odd rows */
  interleave?: 'even' | 'odd';
  /** on disk as [in, out] (gpt_oss bf16 and llama4 fused experts) */
  transposed?: boolean;
  /** bias tensor, same addressing rules (expert index, rows, interleave) */
  bias?: string;
  /** out x in, as presented to callers */
  outFeatures: number;
  inFeatures: number;
}

export interface NormRef {
  weight: string;
  bias?: string;
  kind: 'rms' | 'layer';
  eps: number;
  /** zero-centred weight: the scale is 1 + weight (qwen3_next) */
  unitOffset?: boolean;
}

export interface SwiGLURefs {
  gate: LinearRef;
  up: LinearRef;
  down: LinearRef;
}

/** deltanet: Gated DeltaNet linear attention (qwen3_next / qwen3_5_moe linear_attention layers) */
export type AttentionKind = 'gqa' | 'mla' | 'deltanet';

export interface AttentionRefs {
  kind: AttentionKind;
  /** role -> tensor name. gqa: q_proj, k_proj, v_proj, o_proj (+ .bias roles q_bias ...), q_norm, k_norm, sinks.
   *  mla: q_proj | (q_a_proj, q_a_layernorm, q_b_proj), kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj */
  tensors: Readonly<Record<string, string>>;
}

export interface RouterRefs {
  weight: string;
  bias?: string;
  /** DeepSeek-V3 / GLM / Ernie / MiniMax: added to scores for selection only */
  correctionBias?: string;
}

export interface MoeBlock {
  kind: 'moe';
  router: RouterRefs;
  experts: SwiGLURefs[];
  shared?: SwiGLURefs & { gateWeight?: string };
}

export interface DenseBlock {
  kind: 'dense';
  mlp: SwiGLURefs;
}

export interface LayerView {
  index: number;
  /** tensor-name prefix of this layer, e.g. "model.layers.3." */
  prefix: string;
  inputNorm: NormRef;
  postAttnNorm: NormRef;
  attention: AttentionRefs;
  block: MoeBlock | DenseBlock;
  /** sliding-window attention span for this layer (mixtral sliding_window, gpt_oss sliding layers); undefined = full */
  slidingWindow?: number;
  /** llama4 chunked attention (attention_chunk_size on its chunked_attention layers): keys of the query's chunk only */
  attentionChunk?: number;
  /** llama4 NoPE layer (no_rope_layers[l] = 0): no rotary embedding */
  nope?: boolean;
}

/** Multi-head latent attention dimensions (DeepSeek V2/V3). */
export interface MlaDims {
  /** null: q_proj is one matrix (V2-Lite); else q_a_proj -> q_a_layernorm -> q_b_proj */
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
}

/** Everything about attention the forward pass needs beyond the tensor names. */
export interface AttentionSpec {
  kind: AttentionKind;
  /** q/k/v projections carry a bias (qwen2_moe, gpt_oss, phimoe, granite with attention_bias) */
  qkvBias: boolean;
  oBias: boolean;
  /**
   * RMSNorm on queries and keys before RoPE: 'per-head' = weight [head_dim] applied to each head (qwen3_moe);
   * 'full' = weight over the whole projection before the head reshape (olmoe: q [heads*hd], k [kvHeads*hd]).
   */
  qkNorm?: 'per-head' | 'full';
  /** hunyuan_v1_moe: the q/k norm is applied to the rotated queries and keys (after RoPE, not before) */
  qkNormAfterRope?: boolean;
  /** gpt_oss: learned per-head sink logit, an extra softmax column dropped after normalisation */
  sinks: boolean;
  /** multiplies q·k (default 1/sqrt(qk head dim); granite: attention_multiplier; deepseek: with YaRN mscale²) */
  softmaxScale: number;
  /** olmoe clip_qkv: q, k, v clamped to [-c, c] after projection */
  clipQkv?: number;
  /**
   * mistral4 (Llama-4 attention scaling, rope_parameters.llama_4_scaling_beta): the queries at position p are
   * multiplied by 1 + beta * ln(1 + floor(p / original)); 1 at every position below `original`
   */
  queryPositionScale?: { beta: number; original: number };
  /**
   * deepseek_v32's DSA indexer keeps the top `index_topk` keys of each query: windows of at most this many positions
   * keep every causal key, so attention is exactly dense; longer ones would need the indexer and are refused
   */
  denseKeysUpTo?: number;
  /** llama4 use_qk_norm: q and k heads divided by their RMS (no weight; eps rms_norm_eps) after RoPE, on RoPE layers */
  l2QkNorm?: { eps: number };
  /** llama4 attn_temperature_tuning: NoPE layers' queries at position p x (1 + attnScale * ln(1 + floor((p+1) / floorScale))) */
  temperatureTuning?: { floorScale: number; attnScale: number };
  mla?: MlaDims;
  /** qwen3_next: q_proj gives [query | gate] per head; output * sigmoid(gate) before o_proj */
  outputGate?: boolean;
  /** the Gated DeltaNet layers' dimensions, when the family has them (layers with attention.kind 'deltanet') */
  deltanet?: DeltaNetDims;
}

/** Gated DeltaNet dimensions (modeling_qwen3_next.py Qwen3NextGatedDeltaNet). */
export interface DeltaNetDims {
  /** 'qkvz': in_proj_qkvz / in_proj_ba grouped by key head; 'split': in_proj_qkv, in_proj_z, in_proj_b, in_proj_a */
  layout: 'qkvz' | 'split';
  numKHeads: number;
  numVHeads: number;
  headK: number;
  headV: number;
  convKernel: number;
  /** eps of the gated RMSNorm on each value head (rms_norm_eps) */
  eps: number;
}

/** Expert activation: act(gate) * up. */
export type ActivationSpec =
  | { kind: 'silu' }
  /** gpt_oss: gate = min(gate, limit); up = clamp(up, -limit, limit); out = (up + 1) * gate * sigmoid(alpha * gate) */
  | { kind: 'clamped-swiglu'; limit: number; alpha: number };

/** Scalar forward-pass facts outside attention and routing. */
export interface ForwardSpec {
  /** hidden = embed(ids) * embeddingMultiplier (granite) */
  embeddingMultiplier: number;
  /** x = x + residualMultiplier * sublayer(x) (granite) */
  residualMultiplier: number;
  /** logits = lm_head(x) / logitsDivisor (granite logits_scaling) */
  logitsDivisor: number;
  activation: ActivationSpec;
  /** phimoe lm_head.bias */
  lmHeadBias?: string;
}

/** How a family turns router logits into the experts chosen and their weights (see src/runtime/routing.ts). */
export interface RoutingRule {
  /** applied to all logits before selection: softmax, sigmoid, or none (select on logits) */
  score: 'softmax' | 'sigmoid' | 'none';
  /** after selection, for score 'none': softmax over the k selected logits (granite, gpt_oss) or sigmoid (llama4) */
  afterTopk: 'none' | 'softmax' | 'sigmoid';
  /** e_score_correction_bias is added to scores for selection only */
  selectionBias: boolean;
  /** group-limited selection (DeepSeek): groups ranked by max score (v2) or sum of top-2 (v3), keep topkGroup */
  groups?: { nGroup: number; topkGroup: number; groupScore: 'max' | 'top2sum' };
  topK: number;
  /** divide selected weights by their sum (plus eps; ernie: by max(sum, normMin)) */
  normalize: boolean;
  normMin?: number;
  normEps?: number;
  /** multiply selected weights (routed_scaling_factor) */
  scale: number;
  /** PhiMoE sparsemixer (eval form) */
  sparsemixer?: { jitterEps: number };
  /**
   * llama4 (Llama4TextMoe.forward): the routed weight multiplies the expert's INPUT (routed_in = x * w) and the
   * expert outputs are summed unweighted, y = sum_k f_k(w_k x), where every other family computes sum_k w_k f_k(x)
   */
  weightsInput?: boolean;
}

export interface RopeSpec {
  style: 'half' | 'interleaved';
  theta: number;
  /** number of rotated dims per head (partial rotary); equals head_dim when not partial */
  rotaryDim: number;
  /** HF rope_scaling dict, passed through (yarn, longrope, llama3 ...) */
  scaling?: Record<string, unknown>;
}

export interface ModelDims {
  hidden: number;
  layers: number;
  vocab: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** routed experts per MoE layer, and per-token top-k */
  numExperts: number;
  topK: number;
  expertIntermediate: number;
  sharedIntermediate: number;
  denseIntermediate: number;
  tieEmbeddings: boolean;
  maxPositions: number;
}

export interface ModelView {
  /** model_type of the family, e.g. "mixtral" (a container's text family: llama4_text inside llama4) */
  family: string;
  /** the family's config: config.json, or inside a container the nested text config */
  config: HFConfig;
  /**
   * the multimodal container the language model sits in (src/model/container.ts): every tensor name of the view is
   * already under its prefixes; config edits of the family go into its text config
   */
  container?: Container;
  dims: ModelDims;
  routing: RoutingRule;
  rope: RopeSpec;
  embed: string;
  finalNorm: NormRef;
  /** undefined when tied to the embedding */
  lmHead?: string;
  layers: LayerView[];
  /** config key that holds the routed-expert count (num_local_experts, num_experts, n_routed_experts, ...) */
  numExpertsKey: string;
  /** layout of the routed experts on disk */
  expertLayout: 'per-expert' | 'fused';
  attention: AttentionSpec;
  forward: ForwardSpec;
  /** config key that holds top-k (num_experts_per_tok, moe_k, moe_topk ...) */
  topKKey: string;
  /** indices of the MoE layers (the others are dense) */
  moeLayers: number[];
  /**
   * a per-layer checkpoint (src/model/perlayer.ts): experts of each MoE layer, in moeLayers order (dims.numExperts is
   * the largest); undefined when every MoE layer has dims.numExperts
   */
  expertsPerLayer?: number[];
  /**
   * multi-token-prediction layers stored after the decoder layers (DeepSeek-V3 / GLM-4.5: model.layers.{L + i}),
   * when the checkpoint holds them; src/model/mtp.ts
   */
  mtp?: MtpLayerView[];
}

/**
 * One MTP layer (transformers' MtpLayer): h' = layer(eh_proj([enorm(embed(t+1)); hnorm(h)])), then
 * shared_head.norm; its decoder layer is an ordinary MoE layer at index L + i.
 */
export interface MtpLayerView {
  layer: LayerView & { block: MoeBlock };
  enorm: NormRef;
  hnorm: NormRef;
  /** [H, 2H] */
  ehProj: string;
  /** shared_head.norm: the norm before the (shared) head */
  headNorm: NormRef;
  /** shared_head.head, when the checkpoint stores a copy of lm_head there */
  head?: string;
}

/** A linear layer's weights as float32: w is [out, in] row-major, b optional [out]. */
export interface Linear {
  out: number;
  in: number;
  w: Float32Array;
  b?: Float32Array;
}

export interface SwiGLUWeights {
  gate: Linear;
  up: Linear;
  down: Linear;
}

/** Routing of T tokens: the k experts chosen per token and their weights, as the model uses them. */
export interface Routing {
  T: number;
  k: number;
  /** [T, k] expert indices */
  idx: Int32Array;
  /** [T, k] weights (after the family's renormalisation and scaling) */
  w: Float32Array;
}
