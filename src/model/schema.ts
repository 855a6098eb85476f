/**
 * The schema of a model-family data file (src/model/architectures/<model_type>.json), validated with zod when the
 * registry loads, so a malformed family file fails at start-up with the path of the bad field rather than as a
 * wrong tensor name deep inside a pipeline. A family is data first (like mergekit's _data/architectures); what
 * data cannot say lives in src/model/families.ts.
 *
 * Tensor names are templates: `${layer}` is the decoder layer index, `${expert}` the routed-expert index. Names
 * under `tensors.layer` are relative to `tensors.layerPrefix`.
 */
import { z } from 'zod';

/** A number read from config.json: a literal, or a key with an optional default (missing and no default = error). */
export const ConfigNumber = z.union([z.number(), z.object({ key: z.string(), default: z.number().nullable().optional() }).strict()]);
export type ConfigNumber = z.infer<typeof ConfigNumber>;

/** A flag read from config.json: a literal, or a key (truthy: not null/false/0) with a default. */
export const ConfigFlag = z.union([z.boolean(), z.object({ key: z.string(), default: z.boolean() }).strict()]);
export type ConfigFlag = z.infer<typeof ConfigFlag>;

/** A tensor template, always present, or present only when a config flag holds (or does not). */
export const TensorTemplate = z.union([z.string(), z.object({ name: z.string(), when: ConfigFlag.optional(), whenNot: ConfigFlag.optional() }).strict()]);
export type TensorTemplate = z.infer<typeof TensorTemplate>;

const SwiGLUTemplates = z.object({ gate: z.string(), up: z.string(), down: z.string() }).strict();

const PerExpert = z
  .object({
    layout: z.literal('per-expert'),
    gate: z.string(),
    up: z.string(),
    down: z.string(),
  })
  .strict();

const FusedLinear = z
  .object({
    /** the logical tensor name; quantized on-disk forms (MXFP4 `_blocks`/`_scales`) are found from it by the loader */
    tensor: z.string(),
    /** on disk as [E, in, out] instead of [E, out, in] */
    transposed: z.boolean(),
    bias: z.string().optional(),
  })
  .strict();

const Fused = z
  .object({
    layout: z.literal('fused'),
    /** gate and up in one [E, 2I, H] tensor: first half gate ('halves') or even rows gate ('interleaved') */
    gateUp: FusedLinear.extend({ split: z.enum(['halves', 'interleaved']) }).strict(),
    down: FusedLinear,
  })
  .strict();

const SparseLayers = z.discriminatedUnion('kind', [
  /** every layer is MoE */
  z.object({ kind: z.literal('all') }).strict(),
  /** qwen2_moe/qwen3_moe: MoE iff l not in denseListKey and (l+1) % step == 0 */
  z.object({ kind: z.literal('step'), stepKey: z.string(), denseListKey: z.string() }).strict(),
  /** deepseek: MoE iff l >= first_k_dense_replace and l % moe_layer_freq == 0 */
  z.object({ kind: z.literal('first-k'), firstKKey: z.string(), freqKey: z.string() }).strict(),
  /**
   * glm4_moe_lite: a list with one entry per layer (`mlp_layer_types`: "sparse" = MoE, "dense" = MLP); when the
   * config has none, the first `denseFirstDefault` layers are dense and the rest MoE (the configuration's default)
   */
  z.object({ kind: z.literal('types'), typesKey: z.string(), sparse: z.string(), dense: z.string(), denseFirstDefault: z.number().int().min(0) }).strict(),
  /**
   * llama4_text: the list of MoE layer indices (`moe_layers`) when the config has one, else every layer l with
   * (l+1) % step == 0 (range(step - 1, layers, step), the configuration's default from interleave_moe_layer_step)
   */
  z.object({ kind: z.literal('list'), listKey: z.string(), stepKey: z.string() }).strict(),
  /** ernie: MoE iff (l+1) % interval == 0 and start <= l <= end (end -1 = last layer) */
  z
    .object({
      kind: z.literal('range'),
      intervalKey: z.string(),
      startKey: z.string(),
      startDefault: z.number().int(),
      endKey: z.string(),
    })
    .strict(),
]);

export const ArchitectureSchema = z
  .object({
    model_type: z.string().min(1),
    /** HF architectures[] class names this family is written as */
    architectures: z.array(z.string()).min(1),
    /** where the conventions were read (modeling file), for maintainers */
    source: z.string(),
    config: z
      .object({
        numExperts: z.string(),
        topK: z.string(),
        expertIntermediate: z.string(),
        /** intermediate size of dense (non-MoE) layers */
        denseIntermediate: z.string().optional(),
        /** shared-expert intermediate size: config[key] (x config[times] when given); absent or 0 = no shared expert */
        sharedIntermediate: z.object({ key: z.string(), times: z.string().optional() }).strict().optional(),
        /** other keys some released configs carry with the same value (gpt_oss experts_per_token); surgery updates
         *  them together with the main key when present */
        numExpertsAliases: z.array(z.string()).default([]),
        topKAliases: z.array(z.string()).default([]),
        tieEmbeddingsDefault: z.boolean().default(false),
        ropeThetaDefault: z.number().default(10000),
        /** fields transformers 5 types as float only (its strict config validation refuses an int literal there):
         *  new values written into them get a '.0', and inspect warns about an input with an int in one */
        floatKeys: z.array(z.string()).default([]),
      })
      .strict(),
    sparseLayers: SparseLayers,
    routing: z
      .object({
        score: z.enum(['softmax', 'sigmoid', 'none']),
        afterTopk: z.enum(['none', 'softmax', 'sigmoid']),
        selectionBias: z.boolean(),
        normalize: ConfigFlag,
        normEps: z.number().optional(),
        /** ernie: divide by max(sum, normMin) */
        normMinKey: z.string().optional(),
        normMinDefault: z.number().optional(),
        scale: ConfigNumber,
        /** group-limited selection applies when config[nGroupKey] > 1 and (methodKey absent or its value in methods) */
        groups: z
          .object({
            nGroupKey: z.string(),
            topkGroupKey: z.string(),
            groupScore: z.enum(['max', 'top2sum']),
            methodKey: z.string().optional(),
            methods: z.array(z.string()).optional(),
          })
          .strict()
          .optional(),
        sparsemixer: z.object({ jitterKey: z.string(), default: z.number() }).strict().optional(),
        /** llama4: each routed expert's weight multiplies the expert's input, and its output is added unweighted */
        weightsInput: z.boolean().optional(),
      })
      .strict(),
    attention: z
      .object({
        kind: z.enum(['gqa', 'mla']),
        qkNorm: z.enum(['per-head', 'full']).optional(),
        /** hunyuan_v1_moe: the q/k norm comes after RoPE (every other family normalises before it) */
        qkNormAfterRope: z.boolean().optional(),
        clipQkvKey: z.string().optional(),
        /** config key of the q·k multiplier replacing 1/sqrt(head_dim) (granite attention_multiplier) */
        softmaxScaleKey: z.string().optional(),
        /** qwen3_next: q_proj yields each head's query and an output gate ([q | gate] per head); the attention
         *  output is multiplied by sigmoid(gate) before o_proj */
        outputGate: z.boolean().optional(),
      })
      .strict(),
    /**
     * Gated DeltaNet linear-attention layers (qwen3_next, qwen3_5_moe): which layers they are (config[typesKey][l] =
     * linearType, else every layer l with (l+1) % config[intervalKey] != 0) and their tensors (role -> template
     * under layerPrefix). layout 'qkvz': in_proj_qkvz / in_proj_ba grouped by key head (qwen3_next); 'split':
     * in_proj_qkv, in_proj_z, in_proj_b, in_proj_a (qwen3_5_moe)
     */
    linearAttention: z
      .object({
        layout: z.enum(['qkvz', 'split']),
        typesKey: z.string(),
        linearType: z.string(),
        fullType: z.string(),
        intervalKey: z.string(),
        intervalDefault: z.number().int().positive(),
        tensors: z.record(z.string(), z.string()),
      })
      .strict()
      .optional(),
    rope: z.object({ style: z.enum(['half', 'interleaved']) }).strict(),
    norm: z
      .object({
        kind: z.enum(['rms', 'layer']),
        epsKey: z.string(),
        epsDefault: z.number().optional(),
        /** zero-centred norm weights: the scale is 1 + weight (qwen3_next's RMSNorm), q/k norms included */
        unitOffset: z.boolean().optional(),
      })
      .strict(),
    forward: z
      .object({
        activation: z.enum(['silu', 'clamped-swiglu']),
        embeddingMultiplierKey: z.string().optional(),
        residualMultiplierKey: z.string().optional(),
        logitsScalingKey: z.string().optional(),
      })
      .strict(),
    tensors: z
      .object({
        embed: z.string(),
        finalNorm: z.string(),
        finalNormBias: z.string().optional(),
        lmHead: z.string(),
        lmHeadBias: TensorTemplate.optional(),
        layerPrefix: z.string().includes('${layer}'),
        inputNorm: z.string(),
        inputNormBias: z.string().optional(),
        postAttnNorm: z.string(),
        postAttnNormBias: z.string().optional(),
        /** attention role -> tensor (roles: q_proj k_proj v_proj o_proj q_bias k_bias v_bias o_bias q_norm k_norm sinks;
         *  MLA: q_proj | q_a_proj q_a_layernorm q_b_proj, kv_a_proj_with_mqa kv_a_layernorm kv_b_proj o_proj) */
        attention: z.record(z.string(), TensorTemplate),
        router: z
          .object({
            weight: z.string(),
            bias: TensorTemplate.optional(),
            correctionBias: TensorTemplate.optional(),
          })
          .strict(),
        experts: z.discriminatedUnion('layout', [PerExpert, Fused]),
        /** the same family saved with fused expert tensors (transformers v5 layout, mergekit outputs): used when the
         *  first MoE layer has this gate_up tensor instead of the primary layout's (per-expert tensors, or a
         *  natively fused family's own names: granitemoe input_linear); may rename the router too */
        fusedAlternative: z
          .object({
            /** router tensors under other names in that layout (transformers 5 moves some: phimoe `mlp.router`,
             *  minimax_m2 `mlp.e_score_correction_bias`, ernie `mlp.gate.moe_statics.e_score_correction_bias`) */
            router: z.object({ weight: z.string().optional(), bias: TensorTemplate.optional(), correctionBias: TensorTemplate.optional() }).strict().optional(),
            experts: Fused,
          })
          .strict()
          .optional(),
        shared: SwiGLUTemplates.extend({ gateWeight: z.string().optional() }).strict().optional(),
        dense: SwiGLUTemplates.optional(),
      })
      .strict(),
  })
  .strict();

export type Architecture = z.infer<typeof ArchitectureSchema>;
