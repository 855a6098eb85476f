/**
 * Tiny random checkpoints of every supported family, with the real tensor names and config keys of the released
 * models (written out here by hand from each family's modeling file, independently of src/model/architectures,
 * so the tests check the data files against a second source).
 *
 * Defaults: hidden 32, 4 heads (2 kv) of 8, vocab 64, 3 layers (layer 0 dense where the family has dense
 * layers), 4 experts of intermediate 16 (32 for gpt_oss, MXFP4 needs multiples of 32), top-2.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { fromF32, type Dtype } from '../../src/io/dtype.js';
import { quantizeFp8Blocks } from '../../src/io/quantized.js';
import { CheckpointWriter, type TensorSpec } from '../../src/io/writer.js';
import { seededRandom as rng } from '../../kernels/random.js';

export const FAMILIES = [
  'mixtral',
  'qwen2_moe',
  'qwen3_moe',
  'olmoe',
  'deepseek_v2',
  'deepseek_v3',
  'granitemoe',
  'gpt_oss',
  'phimoe',
  'glm4_moe',
  'minimax_m2',
  'ernie4_5_moe',
  'glm4_moe_lite',
  'dots1',
  'hunyuan_v1_moe',
  'mistral4',
  'deepseek_v32',
  'glm_moe_dsa',
  'qwen3_next',
  'qwen3_5_moe_text',
  'llama4_text',
] as const;
export type Family = (typeof FAMILIES)[number];

export interface TinyOptions {
  experts?: number;
  layers?: number;
  topK?: number;
  /** hidden size (default 32; head size follows as hidden / 4) */
  hidden?: number;
  /** routed-expert intermediate size (default 16; 32 for gpt_oss) */
  intermediate?: number;
  seed?: number;
  /** storage dtype of weights: F32 (default), BF16, or FP8 (block-scaled e4m3; deepseek_v3 only) */
  dtype?: 'F32' | 'BF16' | 'FP8';
  /** FP8 block size (square); small so tiny matrices span several blocks */
  fp8Block?: number;
  /** gpt_oss: experts as MXFP4 blocks/scales instead of bf16/f32 in-major tensors */
  mxfp4?: boolean;
  /** transformers-v5 layout: `mlp.experts.gate_up_proj` [E, 2I, H] (gate first) + `down_proj` [E, H, I]
   *  (mixtral also moves its router to `mlp.gate`); per-expert families with mlp.experts or block_sparse_moe only */
  fusedExperts?: boolean;
  /** write several shards with an index */
  maxShardBytes?: number;
  /** merged into config.json last (null deletes a key) */
  config?: Record<string, unknown>;
  /** tensors to leave out (to test missing-tensor errors) */
  omit?: string[];
  /** qwen3_next / qwen3_5_moe_text: one multi-token-prediction layer under `mtp.*` (vLLM qwen3_next_mtp.py): a full
   *  attention MoE decoder layer at mtp.layers.0., mtp.fc [H, 2H], pre_fc_norm_embedding / _hidden, mtp.norm */
  mtp?: boolean;
}

export interface TinyCheckpoint {
  dir: string;
  config: Record<string, unknown>;
  /** every tensor written, in order */
  tensors: TensorSpec[];
}

export async function makeTinyCheckpoint(family: Family, dir: string, opts: TinyOptions = {}): Promise<TinyCheckpoint> {
  const rand = rng(opts.seed ?? 1);
  // `hidden: 128` (serving-shape fixtures: vLLM's Marlin MoE needs hidden % 128 == 0) widens the heads with it
  const H = opts.hidden ?? 32,
    heads = 4,
    // `config: { num_key_value_heads: 4 }` gives multi-head attention (the tensors follow the config)
    kv = typeof opts.config?.['num_key_value_heads'] === 'number' ? (opts.config['num_key_value_heads'] as number) : 2,
    hd = H / 4,
    V = 64;
  const E = opts.experts ?? 4;
  const L = opts.layers ?? 3;
  const K = opts.topK ?? 2;
  const I = opts.intermediate ?? (family === 'gpt_oss' ? 32 : 16);
  const DI = 48; // dense-layer intermediate
  const SI = 24; // shared-expert intermediate
  const dtype = opts.dtype ?? 'F32';
  if (dtype === 'FP8' && family !== 'deepseek_v3') throw new Error('FP8 fixtures are deepseek_v3 only');
  const block = opts.fp8Block ?? 8;
  const floatDtype: Dtype = dtype === 'BF16' ? 'BF16' : 'F32';

  const out: { spec: TensorSpec; bytes: Uint8Array }[] = [];
  const omit = new Set(opts.omit ?? []);
  const randn = (n: number, scale: number, offset = 0) => Float32Array.from({ length: n }, () => offset + (rand() * 2 - 1) * scale);
  const put = (name: string, shape: number[], values: Float32Array, dt: Dtype = floatDtype) => {
    if (!omit.has(name)) out.push({ spec: { name, dtype: dt, shape }, bytes: fromF32(values, dt) });
  };
  const raw = (name: string, shape: number[], dt: Dtype, bytes: Uint8Array) => {
    if (!omit.has(name)) out.push({ spec: { name, dtype: dt, shape }, bytes });
  };
  /** a linear weight [out, in]: FP8 with block scales when asked, else the float dtype */
  const linear = (name: string, rows: number, cols: number) => {
    const w = randn(rows * cols, 0.2);
    if (dtype === 'FP8') {
      const q = quantizeFp8Blocks(w, rows, cols, block);
      raw(name, [rows, cols], 'F8_E4M3', q.bytes);
      put(`${name}_scale_inv`, q.scaleShape, q.scaleInv, 'F32');
    } else put(name, [rows, cols], w);
  };
  const vec = (name: string, n: number) => put(name, [n], randn(n, 0.1));
  const normW = (name: string, n: number) => put(name, [n], randn(n, 0.05, 1));

  const base: Record<string, unknown> = {
    hidden_size: H,
    num_hidden_layers: L,
    num_attention_heads: heads,
    num_key_value_heads: kv,
    vocab_size: V,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: false,
    torch_dtype: dtype === 'BF16' ? 'bfloat16' : 'float32',
  };
  let config: Record<string, unknown>;
  let isMoe: (l: number) => boolean = () => true;
  switch (family) {
    case 'mixtral':
      config = {
        ...base,
        model_type: 'mixtral',
        architectures: ['MixtralForCausalLM'],
        intermediate_size: I,
        num_local_experts: E,
        num_experts_per_tok: K,
        sliding_window: null,
        router_jitter_noise: 0,
      };
      break;
    case 'phimoe':
      config = {
        ...base,
        model_type: 'phimoe',
        architectures: ['PhimoeForCausalLM'],
        intermediate_size: I,
        num_local_experts: E,
        num_experts_per_tok: K,
        attention_bias: true,
        lm_head_bias: false,
        router_jitter_noise: 0.01,
        input_jitter_noise: 0.01,
        sliding_window: null,
      };
      break;
    case 'qwen2_moe':
      config = {
        ...base,
        model_type: 'qwen2_moe',
        architectures: ['Qwen2MoeForCausalLM'],
        intermediate_size: DI,
        moe_intermediate_size: I,
        shared_expert_intermediate_size: SI,
        num_experts: E,
        num_experts_per_tok: K,
        decoder_sparse_step: 1,
        mlp_only_layers: [0],
        norm_topk_prob: false,
      };
      // read after opts.config is merged: `config: { mlp_only_layers: [] }` makes every layer MoE
      isMoe = (l) => !((config['mlp_only_layers'] as number[] | undefined) ?? []).includes(l);
      break;
    case 'qwen3_moe':
      config = {
        ...base,
        model_type: 'qwen3_moe',
        architectures: ['Qwen3MoeForCausalLM'],
        head_dim: hd,
        intermediate_size: DI,
        moe_intermediate_size: I,
        num_experts: E,
        num_experts_per_tok: K,
        decoder_sparse_step: 1,
        mlp_only_layers: [0],
        norm_topk_prob: true,
        attention_bias: false,
      };
      isMoe = (l) => !((config['mlp_only_layers'] as number[] | undefined) ?? []).includes(l);
      break;
    case 'qwen3_next':
      // transformers 5.18 configuration_qwen3_next.py: Gated DeltaNet layers (linear_attention) at even indices, gated
      // full attention at odd ones, partial RoPE 0.25 in rope_parameters; qwen2_moe's MoE with its shared expert
      config = {
        ...base,
        model_type: 'qwen3_next',
        architectures: ['Qwen3NextForCausalLM'],
        head_dim: hd,
        intermediate_size: DI,
        moe_intermediate_size: I,
        shared_expert_intermediate_size: SI,
        num_experts: E,
        num_experts_per_tok: K,
        decoder_sparse_step: 1,
        mlp_only_layers: [0],
        norm_topk_prob: true,
        attention_bias: false,
        layer_types: Array.from({ length: L }, (_, l) => (l % 2 === 1 ? 'full_attention' : 'linear_attention')),
        linear_num_key_heads: 2,
        linear_num_value_heads: 4,
        linear_key_head_dim: 8,
        linear_value_head_dim: 4,
        linear_conv_kernel_dim: 4,
        rope_parameters: { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 0.25 },
      };
      delete config['rope_theta'];
      isMoe = (l) => !((config['mlp_only_layers'] as number[] | undefined) ?? []).includes(l);
      break;
    case 'qwen3_5_moe_text':
      // transformers 5.18 configuration_qwen3_5_moe.py (Qwen3_5MoeTextConfig): qwen3_next's layers with separate
      // DeltaNet projections; every layer MoE (no mlp_only_layers / decoder_sparse_step), top-k always renormalized
      config = {
        ...base,
        model_type: 'qwen3_5_moe_text',
        architectures: ['Qwen3_5MoeForCausalLM'],
        head_dim: hd,
        moe_intermediate_size: I,
        shared_expert_intermediate_size: SI,
        num_experts: E,
        num_experts_per_tok: K,
        attention_bias: false,
        layer_types: Array.from({ length: L }, (_, l) => (l % 2 === 1 ? 'full_attention' : 'linear_attention')),
        linear_num_key_heads: 2,
        linear_num_value_heads: 4,
        linear_key_head_dim: 8,
        linear_value_head_dim: 4,
        linear_conv_kernel_dim: 4,
        rope_parameters: { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 0.25, mrope_section: [1, 0, 0], mrope_interleaved: true },
      };
      delete config['rope_theta'];
      break;
    case 'olmoe':
      config = {
        ...base,
        model_type: 'olmoe',
        architectures: ['OlmoeForCausalLM'],
        intermediate_size: I,
        num_experts: E,
        num_experts_per_tok: K,
        norm_topk_prob: false,
        clip_qkv: null,
      };
      break;
    case 'deepseek_v2':
    case 'deepseek_v3': {
      const v3 = family === 'deepseek_v3';
      config = {
        ...base,
        model_type: family,
        architectures: [v3 ? 'DeepseekV3ForCausalLM' : 'DeepseekV2ForCausalLM'],
        intermediate_size: DI,
        moe_intermediate_size: I,
        n_routed_experts: E,
        n_shared_experts: 1,
        num_experts_per_tok: K,
        first_k_dense_replace: 1,
        moe_layer_freq: 1,
        n_group: 2,
        topk_group: 1,
        routed_scaling_factor: 1.5,
        topk_method: v3 ? 'noaux_tc' : 'group_limited_greedy',
        norm_topk_prob: v3,
        q_lora_rank: v3 ? 16 : null,
        kv_lora_rank: 16,
        qk_nope_head_dim: 8,
        qk_rope_head_dim: 4,
        v_head_dim: 8,
        ...(v3 ? { scoring_func: 'sigmoid', rope_interleave: true } : {}),
      };
      if (dtype === 'FP8') config.quantization_config = { quant_method: 'fp8', fmt: 'e4m3', activation_scheme: 'dynamic', weight_block_size: [block, block] };
      isMoe = (l) => l >= 1;
      break;
    }
    case 'dots1':
      // transformers 5.18 configuration_dots1.py: DeepSeek-V3 MoE keys, Qwen3 attention (no head_dim key: H / heads)
      config = {
        ...base,
        model_type: 'dots1',
        architectures: ['Dots1ForCausalLM'],
        intermediate_size: DI,
        moe_intermediate_size: I,
        n_routed_experts: E,
        n_shared_experts: 1,
        num_experts_per_tok: K,
        first_k_dense_replace: 1,
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 2.5,
        norm_topk_prob: true,
        attention_bias: false,
        sliding_window: null,
      };
      isMoe = (l) => l >= 1;
      break;
    case 'mistral4':
      // transformers 5.18 configuration_mistral4.py: DeepSeek-V3's MLA keys (q-LoRA), softmax routing with groups,
      // RoPE in rope_parameters: YaRN plus the Llama-4 query scaling (original_max_position_embeddings 16, so the
      // tiny windows cross it)
      config = {
        ...base,
        model_type: 'mistral4',
        architectures: ['Mistral4ForCausalLM'],
        intermediate_size: DI,
        moe_intermediate_size: I,
        n_routed_experts: E,
        n_shared_experts: 1,
        num_experts_per_tok: K,
        first_k_dense_replace: 1,
        n_group: 2,
        topk_group: 1,
        routed_scaling_factor: 1.5,
        norm_topk_prob: true,
        q_lora_rank: 16,
        kv_lora_rank: 16,
        qk_nope_head_dim: 8,
        qk_rope_head_dim: 4,
        v_head_dim: 8,
        rope_interleave: true,
        rope_parameters: {
          rope_type: 'yarn',
          rope_theta: 10000,
          factor: 4,
          original_max_position_embeddings: 16,
          beta_fast: 32,
          beta_slow: 1,
          mscale: 1,
          mscale_all_dim: 1,
          llama_4_scaling_beta: 0.1,
          partial_rotary_factor: 4 / 12,
        },
      };
      delete config['rope_theta'];
      isMoe = (l) => l >= 1;
      break;
    case 'hunyuan_v1_moe':
      // transformers 5.18 configuration_hunyuan_v1_moe.py: every layer MoE, experts and the shared MLP both at
      // intermediate_size, top-k as moe_topk; RoPE in transformers 5's rope_parameters with the DynamicNTKAlpha base
      config = {
        ...base,
        model_type: 'hunyuan_v1_moe',
        architectures: ['HunYuanMoEV1ForCausalLM'],
        head_dim: hd,
        intermediate_size: I,
        num_experts: E,
        moe_topk: K,
        attention_bias: false,
        rope_parameters: { rope_type: 'dynamic', rope_theta: 10000, factor: 1, alpha: 1000 },
      };
      delete config['rope_theta'];
      break;
    case 'llama4_text':
      // transformers 5.18 configuration_llama4.py Llama4TextConfig as save_pretrained writes it (moe_layers,
      // no_rope_layers and layer_types expanded): MoE on odd layers (interleave_moe_layer_step 2), layer 2 NoPE, the
      // RoPE layers chunked; shared expert at intermediate_size, dense layers at intermediate_size_mlp
      config = {
        ...base,
        model_type: 'llama4_text',
        architectures: ['Llama4ForCausalLM'],
        head_dim: hd,
        intermediate_size: I,
        intermediate_size_mlp: DI,
        num_local_experts: E,
        num_experts_per_tok: K,
        interleave_moe_layer_step: 2,
        moe_layers: Array.from({ length: L }, (_, l) => l).filter((l) => l % 2 === 1),
        no_rope_layers: Array.from({ length: L }, (_, l) => (l === 2 ? 0 : 1)),
        layer_types: Array.from({ length: L }, (_, l) => (l === 2 ? 'full_attention' : 'chunked_attention')),
        attention_chunk_size: 4,
        use_qk_norm: true,
        attn_temperature_tuning: true,
        floor_scale: 2,
        attn_scale: 0.1,
        hidden_act: 'silu',
        rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 32 },
      };
      delete config['rope_theta'];
      isMoe = (l) => l % 2 === 1;
      break;
    case 'glm4_moe_lite':
      // transformers 5.18 configuration_glm4_moe_lite.py: DeepSeek-V3 attention keys, MoE layers from mlp_layer_types
      config = {
        ...base,
        model_type: 'glm4_moe_lite',
        architectures: ['Glm4MoeLiteForCausalLM'],
        num_key_value_heads: heads,
        intermediate_size: DI,
        moe_intermediate_size: I,
        n_routed_experts: E,
        n_shared_experts: 1,
        num_experts_per_tok: K,
        mlp_layer_types: Array.from({ length: L }, (_, l) => (l === 0 ? 'dense' : 'sparse')),
        // GLM-4.7-Flash ships n_group 1 (the group path is deepseek_v3's, covered there)
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 1.8,
        norm_topk_prob: true,
        q_lora_rank: 16,
        kv_lora_rank: 16,
        qk_nope_head_dim: 8,
        qk_rope_head_dim: 4,
        v_head_dim: 8,
        rope_interleave: true,
        rms_norm_eps: 1e-5,
      };
      isMoe = (l) => l >= 1;
      break;
    case 'deepseek_v32':
      // transformers 5.18 configuration_deepseek_v32.py: glm4_moe_lite's keys (mlp_layer_types, MLA with q-LoRA,
      // sigmoid group routing) plus the DSA indexer's (index_topk 64: the tiny windows stay exactly dense)
      config = {
        ...base,
        model_type: 'deepseek_v32',
        architectures: ['DeepseekV32ForCausalLM'],
        num_key_value_heads: heads,
        intermediate_size: DI,
        moe_intermediate_size: I,
        n_routed_experts: E,
        n_shared_experts: 1,
        num_experts_per_tok: K,
        first_k_dense_replace: 1,
        mlp_layer_types: Array.from({ length: L }, (_, l) => (l === 0 ? 'dense' : 'sparse')),
        layer_types: Array.from({ length: L }, () => 'indexed_attention'),
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 2.5,
        norm_topk_prob: true,
        q_lora_rank: 16,
        kv_lora_rank: 16,
        qk_nope_head_dim: 8,
        qk_rope_head_dim: 4,
        v_head_dim: 8,
        head_dim: 4,
        index_topk: 64,
        index_head_dim: 8,
        index_n_heads: 2,
      };
      isMoe = (l) => l >= 1;
      break;
    case 'glm_moe_dsa':
      // transformers 5.18 configuration_glm_moe_dsa.py (GLM-5): deepseek_v32's keys plus indexer_types, where a
      // "shared" layer stores no indexer and reuses the previous full layer's top-k
      config = {
        ...base,
        model_type: 'glm_moe_dsa',
        architectures: ['GlmMoeDsaForCausalLM'],
        num_key_value_heads: heads,
        intermediate_size: DI,
        moe_intermediate_size: I,
        n_routed_experts: E,
        n_shared_experts: 1,
        num_experts_per_tok: K,
        first_k_dense_replace: 1,
        mlp_layer_types: Array.from({ length: L }, (_, l) => (l === 0 ? 'dense' : 'sparse')),
        indexer_types: Array.from({ length: L }, (_, l) => (l % 2 === 0 ? 'full' : 'shared')),
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 2.5,
        norm_topk_prob: true,
        q_lora_rank: 16,
        kv_lora_rank: 16,
        qk_nope_head_dim: 8,
        qk_rope_head_dim: 4,
        v_head_dim: 8,
        head_dim: 4,
        index_topk: 64,
        index_head_dim: 8,
        index_n_heads: 2,
      };
      isMoe = (l) => l >= 1;
      break;
    case 'glm4_moe':
      config = {
        ...base,
        model_type: 'glm4_moe',
        architectures: ['Glm4MoeForCausalLM'],
        head_dim: hd,
        intermediate_size: DI,
        moe_intermediate_size: I,
        n_routed_experts: E,
        n_shared_experts: 1,
        num_experts_per_tok: K,
        first_k_dense_replace: 1,
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 2.5,
        norm_topk_prob: true,
        partial_rotary_factor: 0.5,
        use_qk_norm: true,
        attention_bias: true,
        num_nextn_predict_layers: 0,
      };
      isMoe = (l) => l >= 1;
      break;
    case 'ernie4_5_moe':
      config = {
        ...base,
        model_type: 'ernie4_5_moe',
        architectures: ['Ernie4_5_MoeForCausalLM'],
        intermediate_size: DI,
        moe_intermediate_size: I,
        moe_num_experts: E,
        moe_k: K,
        moe_num_shared_experts: 2,
        moe_layer_start_index: 1,
        moe_layer_end_index: -1,
        moe_layer_interval: 1,
        moe_norm_min: 1e-12,
        use_bias: false,
        rope_theta: 500000,
      };
      isMoe = (l) => l >= 1;
      break;
    case 'minimax_m2':
      config = {
        ...base,
        model_type: 'minimax_m2',
        architectures: ['MiniMaxM2ForCausalLM'],
        head_dim: hd,
        intermediate_size: I,
        num_local_experts: E,
        num_experts_per_tok: K,
        scoring_func: 'sigmoid',
        use_routing_bias: true,
        use_qk_norm: true,
        qk_norm_type: 'per_layer',
        rotary_dim: 4,
      };
      break;
    case 'granitemoe':
      config = {
        ...base,
        model_type: 'granitemoe',
        architectures: ['GraniteMoeForCausalLM'],
        intermediate_size: I,
        num_local_experts: E,
        num_experts_per_tok: K,
        embedding_multiplier: 12,
        residual_multiplier: 0.22,
        attention_multiplier: 0.0078125,
        logits_scaling: 6,
        attention_bias: false,
      };
      break;
    case 'gpt_oss':
      config = {
        ...base,
        model_type: 'gpt_oss',
        architectures: ['GptOssForCausalLM'],
        head_dim: hd,
        intermediate_size: I,
        num_local_experts: E,
        num_experts_per_tok: K,
        layer_types: Array.from({ length: L }, (_, l) => (l % 2 === 0 ? 'sliding_attention' : 'full_attention')),
        sliding_window: 4,
        swiglu_limit: 7,
        attention_bias: true,
        ...(opts.mxfp4
          ? {
              quantization_config: {
                quant_method: 'mxfp4',
                modules_to_not_convert: ['model.layers.*.self_attn', 'model.layers.*.mlp.router', 'model.embed_tokens', 'lm_head'],
              },
            }
          : {}),
      };
      break;
  }
  for (const [k, v] of Object.entries(opts.config ?? {})) {
    if (v === null) delete config[k];
    else config[k] = v;
  }

  const mtp = opts.mtp === true && (family === 'qwen3_next' || family === 'qwen3_5_moe_text');
  if (mtp) config['mtp_num_hidden_layers'] = 1;
  put('model.embed_tokens.weight', [V, H], randn(V * H, 0.5));
  // with `mtp`, one more pass writes the MTP decoder layer (layer L: full attention, MoE) under mtp.layers.0.
  for (let l = 0; l < L + (mtp ? 1 : 0); l++) {
    const p = l < L ? `model.layers.${l}.` : 'mtp.layers.0.';
    normW(`${p}input_layernorm.weight`, H);
    if (family === 'phimoe') vec(`${p}input_layernorm.bias`, H);
    // attention
    if (
      family === 'deepseek_v2' ||
      family === 'deepseek_v3' ||
      family === 'glm4_moe_lite' ||
      family === 'mistral4' ||
      family === 'deepseek_v32' ||
      family === 'glm_moe_dsa'
    ) {
      const qk = 8 + 4;
      // glm_moe_dsa: only the "full" layers of indexer_types hold an indexer
      if (family === 'deepseek_v32' || (family === 'glm_moe_dsa' && (config['indexer_types'] as string[])[l] === 'full')) {
        // the DSA indexer (not run: copied through); index_head_dim 8, index_n_heads 2, q_lora_rank 16
        linear(`${p}self_attn.indexer.wq_b.weight`, 2 * 8, 16);
        linear(`${p}self_attn.indexer.wk.weight`, 8, H);
        normW(`${p}self_attn.indexer.k_norm.weight`, 8);
        vec(`${p}self_attn.indexer.k_norm.bias`, 8);
        linear(`${p}self_attn.indexer.weights_proj.weight`, 2, H);
      }
      if (family !== 'deepseek_v2') {
        linear(`${p}self_attn.q_a_proj.weight`, 16, H);
        normW(`${p}self_attn.q_a_layernorm.weight`, 16);
        linear(`${p}self_attn.q_b_proj.weight`, heads * qk, 16);
      } else linear(`${p}self_attn.q_proj.weight`, heads * qk, H);
      linear(`${p}self_attn.kv_a_proj_with_mqa.weight`, 16 + 4, H);
      normW(`${p}self_attn.kv_a_layernorm.weight`, 16);
      linear(`${p}self_attn.kv_b_proj.weight`, heads * (8 + 8), 16);
      linear(`${p}self_attn.o_proj.weight`, H, heads * 8);
    } else if ((family === 'qwen3_next' || family === 'qwen3_5_moe_text') && l < L && l % 2 === 0) {
      // Gated DeltaNet: 2 key heads of 8, 4 value heads of 4, conv kernel 4 (modeling_qwen3_next.py); qwen3_5_moe
      // stores the projections separately (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a)
      const Kd = 2 * 8,
        Vd = 4 * 4;
      if (family === 'qwen3_next') {
        linear(`${p}linear_attn.in_proj_qkvz.weight`, 2 * Kd + 2 * Vd, H);
        linear(`${p}linear_attn.in_proj_ba.weight`, 2 * 4, H);
      } else {
        linear(`${p}linear_attn.in_proj_qkv.weight`, 2 * Kd + Vd, H);
        linear(`${p}linear_attn.in_proj_z.weight`, Vd, H);
        linear(`${p}linear_attn.in_proj_b.weight`, 4, H);
        linear(`${p}linear_attn.in_proj_a.weight`, 4, H);
      }
      put(`${p}linear_attn.conv1d.weight`, [2 * Kd + Vd, 1, 4], randn((2 * Kd + Vd) * 4, 0.4));
      put(`${p}linear_attn.dt_bias`, [4], randn(4, 0.5, 1));
      put(`${p}linear_attn.A_log`, [4], randn(4, 1));
      normW(`${p}linear_attn.norm.weight`, 4);
      linear(`${p}linear_attn.out_proj.weight`, H, Vd);
    } else {
      // qwen3_next's q_proj also yields the output gate: [query | gate] per head
      linear(`${p}self_attn.q_proj.weight`, heads * hd * (family === 'qwen3_next' || family === 'qwen3_5_moe_text' ? 2 : 1), H);
      linear(`${p}self_attn.k_proj.weight`, kv * hd, H);
      linear(`${p}self_attn.v_proj.weight`, kv * hd, H);
      linear(`${p}self_attn.o_proj.weight`, H, heads * hd);
      if (family === 'qwen2_moe' || family === 'gpt_oss' || family === 'phimoe' || family === 'glm4_moe') {
        vec(`${p}self_attn.q_proj.bias`, heads * hd);
        vec(`${p}self_attn.k_proj.bias`, kv * hd);
        vec(`${p}self_attn.v_proj.bias`, kv * hd);
      }
      if (family === 'gpt_oss' || family === 'phimoe') vec(`${p}self_attn.o_proj.bias`, H);
      if (family === 'qwen3_moe' || family === 'glm4_moe' || family === 'dots1' || family === 'qwen3_next' || family === 'qwen3_5_moe_text') {
        normW(`${p}self_attn.q_norm.weight`, hd);
        normW(`${p}self_attn.k_norm.weight`, hd);
      }
      if (family === 'hunyuan_v1_moe') {
        normW(`${p}self_attn.query_layernorm.weight`, hd);
        normW(`${p}self_attn.key_layernorm.weight`, hd);
      }
      if (family === 'olmoe' || family === 'minimax_m2') {
        normW(`${p}self_attn.q_norm.weight`, heads * hd);
        normW(`${p}self_attn.k_norm.weight`, kv * hd);
      }
      if (family === 'gpt_oss') put(`${p}self_attn.sinks`, [heads], randn(heads, 1));
    }
    normW(`${p}post_attention_layernorm.weight`, H);
    if (family === 'phimoe') vec(`${p}post_attention_layernorm.bias`, H);
    // feed-forward
    if (!isMoe(l)) {
      const mlp = family === 'llama4_text' ? 'feed_forward' : 'mlp';
      linear(`${p}${mlp}.gate_proj.weight`, DI, H);
      linear(`${p}${mlp}.up_proj.weight`, DI, H);
      linear(`${p}${mlp}.down_proj.weight`, H, DI);
      continue;
    }
    const fusedV5 = () => {
      put(`${p}mlp.experts.gate_up_proj`, [E, 2 * I, H], randn(E * 2 * I * H, 0.2));
      put(`${p}mlp.experts.down_proj`, [E, H, I], randn(E * H * I, 0.2));
    };
    if (opts.fusedExperts && family === 'mixtral') {
      put(`${p}mlp.gate.weight`, [E, H], randn(E * H, 0.5));
      fusedV5();
      continue;
    }
    switch (family) {
      case 'mixtral':
      case 'phimoe':
        put(`${p}block_sparse_moe.gate.weight`, [E, H], randn(E * H, 0.5));
        for (let e = 0; e < E; e++) {
          linear(`${p}block_sparse_moe.experts.${e}.w1.weight`, I, H);
          linear(`${p}block_sparse_moe.experts.${e}.w2.weight`, H, I);
          linear(`${p}block_sparse_moe.experts.${e}.w3.weight`, I, H);
        }
        break;
      case 'minimax_m2':
        put(`${p}block_sparse_moe.gate.weight`, [E, H], randn(E * H, 0.5));
        put(`${p}block_sparse_moe.e_score_correction_bias`, [E], randn(E, 0.1), 'F32');
        for (let e = 0; e < E; e++) {
          linear(`${p}block_sparse_moe.experts.${e}.w1.weight`, I, H);
          linear(`${p}block_sparse_moe.experts.${e}.w2.weight`, H, I);
          linear(`${p}block_sparse_moe.experts.${e}.w3.weight`, I, H);
        }
        break;
      case 'granitemoe':
        put(`${p}block_sparse_moe.router.layer.weight`, [E, H], randn(E * H, 0.5));
        put(`${p}block_sparse_moe.input_linear.weight`, [E, 2 * I, H], randn(E * 2 * I * H, 0.2));
        put(`${p}block_sparse_moe.output_linear.weight`, [E, H, I], randn(E * H * I, 0.2));
        break;
      case 'llama4_text':
        // Llama4TextMoe: router, experts fused in-major (gate_up_proj [E, H, 2I], gate = first I columns;
        // down_proj [E, I, H]) and the shared expert at intermediate_size
        put(`${p}feed_forward.router.weight`, [E, H], randn(E * H, 0.5));
        put(`${p}feed_forward.experts.gate_up_proj`, [E, H, 2 * I], randn(E * H * 2 * I, 0.2));
        put(`${p}feed_forward.experts.down_proj`, [E, I, H], randn(E * I * H, 0.2));
        linear(`${p}feed_forward.shared_expert.gate_proj.weight`, I, H);
        linear(`${p}feed_forward.shared_expert.up_proj.weight`, I, H);
        linear(`${p}feed_forward.shared_expert.down_proj.weight`, H, I);
        break;
      case 'gpt_oss':
        put(`${p}mlp.router.weight`, [E, H], randn(E * H, 0.5));
        vec(`${p}mlp.router.bias`, E);
        if (opts.mxfp4) {
          const mx = (name: string, rows: number, cols: number) => {
            const n = E * rows * (cols / 32);
            raw(
              `${name}_blocks`,
              [E, rows, cols / 32, 16],
              'U8',
              Uint8Array.from({ length: n * 16 }, () => Math.floor(rand() * 256)),
            );
            raw(
              `${name}_scales`,
              [E, rows, cols / 32],
              'U8',
              Uint8Array.from({ length: n }, () => 118 + Math.floor(rand() * 6)),
            );
          };
          mx(`${p}mlp.experts.gate_up_proj`, 2 * I, H);
          mx(`${p}mlp.experts.down_proj`, H, I);
        } else {
          put(`${p}mlp.experts.gate_up_proj`, [E, H, 2 * I], randn(E * H * 2 * I, 0.2));
          put(`${p}mlp.experts.down_proj`, [E, I, H], randn(E * I * H, 0.2));
        }
        put(`${p}mlp.experts.gate_up_proj_bias`, [E, 2 * I], randn(E * 2 * I, 0.1));
        put(`${p}mlp.experts.down_proj_bias`, [E, H], randn(E * H, 0.1));
        break;
      default: {
        // qwen2_moe, qwen3_moe, olmoe, deepseek_v2/v3: mlp.gate + mlp.experts.e.{gate,up,down}_proj
        // hunyuan's router is a float32 nn.Linear `wg` inside mlp.gate
        if (family === 'hunyuan_v1_moe') put(`${p}mlp.gate.wg.weight`, [E, H], randn(E * H, 0.5), 'F32');
        else put(`${p}mlp.gate.weight`, [E, H], randn(E * H, 0.5));
        if (
          family === 'deepseek_v3' ||
          family === 'glm4_moe' ||
          family === 'glm4_moe_lite' ||
          family === 'dots1' ||
          family === 'deepseek_v32' ||
          family === 'glm_moe_dsa'
        )
          put(`${p}mlp.gate.e_score_correction_bias`, [E], randn(E, 0.1), 'F32');
        if (family === 'ernie4_5_moe') put(`${p}mlp.moe_statics.e_score_correction_bias`, [1, E], randn(E, 0.1), 'F32');
        if (opts.fusedExperts) fusedV5();
        else {
          for (let e = 0; e < E; e++) {
            linear(`${p}mlp.experts.${e}.gate_proj.weight`, I, H);
            linear(`${p}mlp.experts.${e}.up_proj.weight`, I, H);
            linear(`${p}mlp.experts.${e}.down_proj.weight`, H, I);
          }
        }
        if (family === 'qwen2_moe' || family === 'qwen3_next' || family === 'qwen3_5_moe_text') {
          linear(`${p}mlp.shared_expert.gate_proj.weight`, SI, H);
          linear(`${p}mlp.shared_expert.up_proj.weight`, SI, H);
          linear(`${p}mlp.shared_expert.down_proj.weight`, H, SI);
          put(`${p}mlp.shared_expert_gate.weight`, [1, H], randn(H, 0.3));
        }
        if (family === 'hunyuan_v1_moe') {
          linear(`${p}mlp.shared_mlp.gate_proj.weight`, I, H);
          linear(`${p}mlp.shared_mlp.up_proj.weight`, I, H);
          linear(`${p}mlp.shared_mlp.down_proj.weight`, H, I);
        }
        if (family === 'ernie4_5_moe') {
          const S = 2 * I; // moe_intermediate_size x moe_num_shared_experts (2)
          linear(`${p}mlp.shared_experts.gate_proj.weight`, S, H);
          linear(`${p}mlp.shared_experts.up_proj.weight`, S, H);
          linear(`${p}mlp.shared_experts.down_proj.weight`, H, S);
        }
        if (
          family === 'deepseek_v2' ||
          family === 'deepseek_v3' ||
          family === 'glm4_moe' ||
          family === 'glm4_moe_lite' ||
          family === 'deepseek_v32' ||
          family === 'glm_moe_dsa' ||
          family === 'dots1' ||
          family === 'mistral4'
        ) {
          const S = I; // moe_intermediate_size x n_shared_experts (1)
          linear(`${p}mlp.shared_experts.gate_proj.weight`, S, H);
          linear(`${p}mlp.shared_experts.up_proj.weight`, S, H);
          linear(`${p}mlp.shared_experts.down_proj.weight`, H, S);
        }
      }
    }
  }
  if (mtp) {
    linear('mtp.fc.weight', H, 2 * H);
    normW('mtp.pre_fc_norm_embedding.weight', H);
    normW('mtp.pre_fc_norm_hidden.weight', H);
    normW('mtp.norm.weight', H);
  }
  normW('model.norm.weight', H);
  if (family === 'phimoe') vec('model.norm.bias', H);
  put('lm_head.weight', [V, H], randn(V * H, 0.5));

  await mkdir(dir, { recursive: true });
  await writeFile(`${dir}/config.json`, JSON.stringify(config, null, 2));
  const w = await CheckpointWriter.create(
    dir,
    out.map((o) => o.spec),
    opts.maxShardBytes ? { maxShardBytes: opts.maxShardBytes } : {},
  );
  for (const o of out) await w.write(o.spec.name, o.bytes);
  await w.finalize();
  return { dir, config, tensors: out.map((o) => o.spec) };
}

/**
 * A tiny multimodal container of a text family, as transformers 5.18 saves it: Llama4ForConditionalGeneration
 * holds the language model at `language_model.model.*` / `language_model.lm_head.*` (its config under
 * `text_config`) beside `vision_model.*` and `multi_modal_projector.*` (names as a tiny model saved by
 * transformers 5.18 has them). Returns the text tensors under their container names and the vision ones.
 */
export async function makeTinyContainer(
  container: 'llama4',
  dir: string,
  opts: TinyOptions = {},
): Promise<TinyCheckpoint & { vision: TensorSpec[]; bytes: Map<string, Uint8Array> }> {
  const text = await makeTinyCheckpoint('llama4_text', `${dir}.text`, opts);
  const { Checkpoint } = await import('../../src/io/checkpoint.js');
  const src = await Checkpoint.open(text.dir);
  const rand = rng((opts.seed ?? 1) + 99);
  const bytes = new Map<string, Uint8Array>();
  const specs: TensorSpec[] = [];
  try {
    for (const t of text.tensors) {
      // model.* -> language_model.model.*, lm_head.* -> language_model.lm_head.*
      const name = `language_model.${t.name}`;
      specs.push({ ...t, name });
      bytes.set(name, await src.readBytes(t.name));
    }
  } finally {
    await src.close();
  }
  const vision: TensorSpec[] = [];
  const vput = (name: string, shape: number[], dt: Dtype = 'F32') => {
    const n = shape.reduce((a, b) => a * b, 1);
    const spec = { name, dtype: dt, shape };
    vision.push(spec);
    bytes.set(
      name,
      fromF32(
        Float32Array.from({ length: n }, () => rand() * 2 - 1),
        dt,
      ),
    );
  };
  vput('multi_modal_projector.linear_1.weight', [32, 32]);
  vput('vision_model.class_embedding', [16]);
  vput('vision_model.layernorm_pre.weight', [16]);
  vput('vision_model.layernorm_pre.bias', [16]);
  vput('vision_model.model.layers.0.self_attn.q_proj.weight', [16, 16]);
  vput('vision_model.model.layers.0.self_attn.q_proj.bias', [16]);
  vput('vision_model.model.layers.0.mlp.fc1.weight', [32, 16]);
  vput('vision_model.patch_embedding.linear.weight', [16, 588]);
  vput('vision_model.positional_embedding_vlm', [5, 16]);
  vput('vision_model.vision_adapter.mlp.fc1.weight', [32, 32]);
  const { architectures: _a, torch_dtype: dtype, ...textConfig } = text.config;
  const config: Record<string, unknown> = {
    architectures: ['Llama4ForConditionalGeneration'],
    boi_token_index: 200080,
    dtype,
    eoi_token_index: 200081,
    image_token_index: 200092,
    model_type: container,
    text_config: textConfig,
    tie_word_embeddings: false,
    vision_config: { hidden_size: 16, model_type: 'llama4_vision_model', num_hidden_layers: 1, projector_input_dim: 32, vision_output_dim: 32 },
  };
  await mkdir(dir, { recursive: true });
  await writeFile(`${dir}/config.json`, JSON.stringify(config, null, 2));
  const all = [...specs.slice(0, 1), ...vision, ...specs.slice(1)];
  const w = await CheckpointWriter.create(dir, all, opts.maxShardBytes ? { maxShardBytes: opts.maxShardBytes } : {});
  for (const t of all) await w.write(t.name, bytes.get(t.name)!);
  await w.finalize();
  return { dir, config, tensors: all, vision, bytes };
}
