/**
 * How each family we read becomes a llama.cpp model: the architecture name, its hyperparameter metadata, and
 * every tensor with its llama.cpp name, ggml shape and float32 values in ggml order. Facts from llama.cpp's
 * convert_hf_to_gguf.py (conversion/*.py) and src/llama-arch.cpp, checked against the converter's own output on
 * tiny checkpoints of each family:
 *
 * - names: token_embd, output_norm, output; per layer blk.L.attn_norm, attn_q/k/v/output (+ .bias), attn_q_norm,
 *   attn_k_norm, attn_sinks, ffn_norm (post_attention_norm for gpt-oss), the router ffn_gate_inp (+ .bias), the
 *   routed experts as one 3-D tensor per projection ffn_{gate,up,down}_exps [in, out, E] (+ .bias [out, E]),
 *   shared experts ffn_{gate,up,down}_shexp and their gate ffn_gate_inp_shexp, dense layers ffn_{gate,up,down},
 *   exp_probs_b.bias (DeepSeek-V3's selection bias); MLA: attn_q | attn_q_a + attn_q_a_norm + attn_q_b,
 *   attn_kv_a_mqa, attn_kv_a_norm, and kv_b_proj split per head into attn_k_b (transposed) and attn_v_b.
 * - rope: llama.cpp's LLAMA, DEEPSEEK2 and GRANITE_MOE rotate adjacent pairs (ROPE_TYPE_NORM); a checkpoint that
 *   rotates halves (HF's rotate_half) has its q/k rows permuted per head, as the converter's LlamaModel.permute
 *   does. QWEN2MOE, QWEN3MOE, OLMOE and OPENAI_MOE rotate halves (NEOX): no permutation.
 * - types: 1-D tensors, norms, routers and biases stay F32 (the converter's rule); the rest take the file's type.
 */
import { fail } from '../errors.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { loadLinear, loadNorm } from '../model/load.js';
import type { Model } from '../model/open.js';
import type { LinearRef, ModelView, SwiGLURefs } from '../model/types.js';
import { kv, type GgufValue } from './format.js';

/** What a tensor is, for type decisions and size summaries. */
export type TensorClass = 'embed' | 'output' | 'norm' | 'router' | 'bias' | 'attn' | 'expert' | 'shared' | 'dense';
export type Proj = 'gate' | 'up' | 'down';

export interface GgufSourceTensor {
  name: string;
  /** ggml order, ne[0] innermost */
  ne: number[];
  cls: TensorClass;
  layer?: number;
  proj?: Proj;
  /** must stay F32 (1-D, norms, routers, biases) */
  f32: boolean;
  /** the values in ggml order (row-major over ne reversed); for 3-D experts, expert after expert */
  load(): Promise<Float32Array>;
  /** routed experts: one expert's W [out, in] (the slice of load() for expert e) */
  loadExpert?(e: number): Promise<Float32Array>;
}

interface ArchInfo {
  arch: string;
  /** llama.cpp rotates adjacent pairs (NORM) or halves (NEOX) */
  rope: 'norm' | 'neox';
  /** the ffn-input norm's name */
  ffnNorm: 'ffn_norm' | 'post_attention_norm';
  /** families whose converter writes vocab_size and rope.dimension_count (the LlamaModel subclasses, DeepSeek) */
  llamaLike: boolean;
}

export const GGUF_ARCHS: Readonly<Record<string, ArchInfo>> = {
  mixtral: { arch: 'llama', rope: 'norm', ffnNorm: 'ffn_norm', llamaLike: true },
  qwen2_moe: { arch: 'qwen2moe', rope: 'neox', ffnNorm: 'ffn_norm', llamaLike: false },
  qwen3_moe: { arch: 'qwen3moe', rope: 'neox', ffnNorm: 'ffn_norm', llamaLike: false },
  olmoe: { arch: 'olmoe', rope: 'neox', ffnNorm: 'ffn_norm', llamaLike: false },
  deepseek_v2: { arch: 'deepseek2', rope: 'norm', ffnNorm: 'ffn_norm', llamaLike: true },
  deepseek_v3: { arch: 'deepseek2', rope: 'norm', ffnNorm: 'ffn_norm', llamaLike: true },
  granitemoe: { arch: 'granitemoe', rope: 'norm', ffnNorm: 'ffn_norm', llamaLike: true },
  gpt_oss: { arch: 'gpt-oss', rope: 'neox', ffnNorm: 'post_attention_norm', llamaLike: false },
};

export function ggufArchOf(view: ModelView): ArchInfo {
  const a = GGUF_ARCHS[view.family];
  if (!a) fail('UnsupportedArchitecture', `${view.family} cannot be written as GGUF (supported: ${Object.keys(GGUF_ARCHS).join(', ')})`);
  return a;
}

/** Reasons llama.cpp's model for this architecture cannot represent the checkpoint (empty when it can). */
export function unsupportedFeatures(view: ModelView): string[] {
  const a = ggufArchOf(view);
  const why: string[] = [];
  const moe = new Set(view.moeLayers);
  const dense = view.layers.filter((l) => !moe.has(l.index)).map((l) => l.index);
  if (a.arch === 'deepseek2') {
    if (dense.some((l, i) => l !== i)) why.push(`${a.arch} has dense layers only at the start (dense layers: ${dense.join(', ')})`);
  } else if (dense.length) why.push(`llama.cpp's ${a.arch} has no dense layers (dense layers: ${dense.join(', ')})`);
  // src/models/olmoe.cpp creates attn_k_norm over n_embd: llama.cpp's OLMoE is multi-head (as the released models are)
  if (a.arch === 'olmoe' && view.dims.kvHeads !== view.dims.heads)
    why.push(`llama.cpp's olmoe has as many key/value heads as query heads (this model: ${view.dims.kvHeads} of ${view.dims.heads})`);
  return why;
}

function cfgNum(view: ModelView, key: string): number | undefined {
  const v = view.config[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/** The architecture's hyperparameters, as the converter writes them. */
export function archMetadata(view: ModelView): [string, GgufValue][] {
  const a = ggufArchOf(view);
  const p = (k: string) => `${a.arch}.${k}`;
  const d = view.dims;
  const out: [string, GgufValue][] = [];
  const put = (k: string, v: GgufValue) => out.push([p(k), v]);
  put('block_count', kv.u32(d.layers));
  if (d.maxPositions) put('context_length', kv.u32(d.maxPositions));
  put('embedding_length', kv.u32(d.hidden));
  // the converter's feed_forward_length: the dense intermediate size where there is one, else the experts'
  const ff = cfgNum(view, 'intermediate_size') ?? (d.denseIntermediate || d.expertIntermediate);
  put('feed_forward_length', kv.u32(ff));
  put('attention.head_count', kv.u32(d.heads));
  put('attention.head_count_kv', kv.u32(a.arch === 'deepseek2' ? 1 : d.kvHeads));
  ropeScaling(view, put);
  put('rope.freq_base', kv.f32(view.rope.theta));
  put('attention.layer_norm_rms_epsilon', kv.f32(view.finalNorm.eps));
  put('expert_count', kv.u32(d.numExperts));
  put('expert_used_count', kv.u32(d.topK));
  if (view.routing.groups) {
    put('expert_group_count', kv.u32(view.routing.groups.nGroup));
    put('expert_group_used_count', kv.u32(view.routing.groups.topkGroup));
  }
  const scoreKey = ['scoring_func', 'score_function', 'score_func'].find((k) => typeof view.config[k] === 'string');
  if (scoreKey) {
    const s = view.config[scoreKey];
    if (s === 'sigmoid') put('expert_gating_func', kv.u32(2));
    else if (s === 'softmax') put('expert_gating_func', kv.u32(1));
  }
  if (typeof view.config['head_dim'] === 'number' && a.arch !== 'granitemoe' && a.arch !== 'deepseek2') {
    put('attention.key_length', kv.u32(d.headDim));
    put('attention.value_length', kv.u32(d.headDim));
  }
  switch (a.arch) {
    case 'llama':
      put('vocab_size', kv.u32(d.vocab));
      put('rope.dimension_count', kv.u32(view.rope.rotaryDim));
      break;
    case 'qwen2moe':
      put('expert_feed_forward_length', kv.u32(d.expertIntermediate));
      if (d.sharedIntermediate) put('expert_shared_feed_forward_length', kv.u32(d.sharedIntermediate));
      break;
    case 'qwen3moe':
      put('expert_feed_forward_length', kv.u32(d.expertIntermediate));
      break;
    case 'olmoe':
      if (view.attention.clipQkv !== undefined) put('attention.clamp_kqv', kv.f32(view.attention.clipQkv));
      break;
    case 'granitemoe': {
      put('vocab_size', kv.u32(d.vocab));
      put('rope.dimension_count', kv.u32(view.rope.rotaryDim));
      const am = cfgNum(view, 'attention_multiplier');
      if (am) put('attention.scale', kv.f32(am));
      const em = cfgNum(view, 'embedding_multiplier');
      if (em) put('embedding_scale', kv.f32(em));
      const rm = cfgNum(view, 'residual_multiplier');
      if (rm) put('residual_scale', kv.f32(rm));
      const ls = cfgNum(view, 'logits_scaling');
      if (ls) put('logit_scale', kv.f32(ls));
      if (d.sharedIntermediate) put('expert_shared_feed_forward_length', kv.u32(d.sharedIntermediate));
      break;
    }
    case 'deepseek2': {
      const m = view.attention.mla!;
      put('leading_dense_block_count', kv.u32(view.layers.length - view.moeLayers.length));
      put('vocab_size', kv.u32(d.vocab));
      // q_proj without a low-rank split (V2-Lite): llama.cpp infers it from the layer count (26 or 27) when the key
      // is absent, as the converter leaves it; 0 says it for any depth (src/models/deepseek2.cpp reads n_lora_q = 0
      // as "use attn_q")
      put('attention.q_lora_rank', kv.u32(m.qLoraRank ?? 0));
      put('attention.kv_lora_rank', kv.u32(m.kvLoraRank));
      put('attention.key_length', kv.u32(m.kvLoraRank + m.qkRopeHeadDim));
      put('attention.value_length', kv.u32(m.kvLoraRank));
      put('attention.key_length_mla', kv.u32(m.qkNopeHeadDim + m.qkRopeHeadDim));
      put('attention.value_length_mla', kv.u32(m.vHeadDim));
      put('expert_feed_forward_length', kv.u32(d.expertIntermediate));
      const ns = cfgNum(view, 'n_shared_experts');
      if (ns !== undefined) put('expert_shared_count', kv.u32(ns));
      if (view.routing.scale !== 1 || cfgNum(view, 'routed_scaling_factor') !== undefined) put('expert_weights_scale', kv.f32(view.routing.scale));
      if (view.routing.normalize) put('expert_weights_norm', kv.bool(true));
      put('rope.dimension_count', kv.u32(m.qkRopeHeadDim));
      const ms = view.rope.scaling?.['mscale_all_dim'];
      if (typeof ms === 'number') put('rope.scaling.yarn_log_multiplier', kv.f32(0.1 * ms));
      break;
    }
    case 'gpt-oss': {
      const sw = cfgNum(view, 'sliding_window');
      if (sw) put('attention.sliding_window', kv.u32(sw));
      put('expert_feed_forward_length', kv.u32(d.expertIntermediate));
      break;
    }
  }
  return out;
}

function ropeScaling(view: ModelView, put: (k: string, v: GgufValue) => void): void {
  const s = view.rope.scaling;
  if (!s) return;
  const type = (s['rope_type'] ?? s['type']) as string | undefined;
  const factor = typeof s['factor'] === 'number' ? s['factor'] : undefined;
  if (type === 'linear' && factor !== undefined) {
    put('rope.scaling.type', kv.str('linear'));
    put('rope.scaling.factor', kv.f32(factor));
  } else if (type === 'yarn' && factor !== undefined) {
    put('rope.scaling.type', kv.str('yarn'));
    put('rope.scaling.factor', kv.f32(factor));
    const o = s['original_max_position_embeddings'];
    if (typeof o === 'number') put('rope.scaling.original_context_length', kv.u32(o));
    const num = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : undefined);
    const ext = num('extrapolation_factor');
    if (ext !== undefined) put('rope.scaling.yarn_ext_factor', kv.f32(ext));
    const af = num('attention_factor') ?? num('attn_factor');
    if (af !== undefined) put('rope.scaling.yarn_attn_factor', kv.f32(af));
    const bf = num('beta_fast');
    if (bf !== undefined) put('rope.scaling.yarn_beta_fast', kv.f32(bf));
    const bs = num('beta_slow');
    if (bs !== undefined) put('rope.scaling.yarn_beta_slow', kv.f32(bs));
  } else if (type === 'longrope' || type === 'su') put('rope.scaling.type', kv.str('longrope'));
}

/**
 * HF rotate_half layout -> llama.cpp adjacent pairs: within each head, row j of the first half and row j of the
 * second half become rows 2j and 2j+1 (the converter's permute). Works on W [rows, cols] (cols = 1 for a bias).
 */
export function permuteRope(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const hd = rows / heads;
  if (!Number.isInteger(hd) || hd % 2) fail('InvalidShape', `rope permutation: ${rows} rows do not split into ${heads} heads of even size`);
  const half = hd / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < half; j++)
      for (let p = 0; p < 2; p++) out.set(w.subarray((h * hd + p * half + j) * cols, (h * hd + p * half + j + 1) * cols), (h * hd + 2 * j + p) * cols);
  return out;
}

function refOf(ckpt: Checkpoint, tensor: string, outF: number, inF: number): LinearRef {
  const bias = tensor.endsWith('.weight') ? tensor.slice(0, -'.weight'.length) + '.bias' : undefined;
  return { tensor, outFeatures: outF, inFeatures: inF, ...(bias && ckpt.has(bias) ? { bias } : {}) };
}

/** Every tensor of the llama.cpp model, in file order (embedding, layers, final norm, output). */
export function ggufTensors(model: Model): GgufSourceTensor[] {
  const { view, ckpt } = model;
  const a = ggufArchOf(view);
  const why = unsupportedFeatures(view);
  if (why.length) fail('UnsupportedArchitecture', `${model.dir}: cannot be written as GGUF: ${why.join('; ')}`);
  const d = view.dims;
  const H = d.hidden;
  const out: GgufSourceTensor[] = [];
  const f32 = (name: string, ne: number[], cls: TensorClass, load: () => Promise<Float32Array>, layer?: number) =>
    out.push({ name, ne, cls, f32: true, load, ...(layer !== undefined ? { layer } : {}) });
  const mat = (name: string, outF: number, inF: number, cls: TensorClass, load: () => Promise<Float32Array>, layer?: number, proj?: Proj) =>
    out.push({ name, ne: [inF, outF], cls, f32: false, load, ...(layer !== undefined ? { layer } : {}), ...(proj ? { proj } : {}) });

  mat('token_embd.weight', d.vocab, H, 'embed', () => ckpt.readF32(view.embed));
  const permute = a.rope === 'norm' && view.rope.style === 'half';
  for (const layer of view.layers) {
    const L = layer.index;
    const b = `blk.${L}.`;
    const t = layer.attention.tensors;
    const need = (role: string): string => {
      const n = t[role];
      if (!n) fail('InvalidConfig', `${model.dir}: layer ${L} attention has no '${role}' tensor`);
      return n;
    };
    f32(`${b}attn_norm.weight`, [H], 'norm', async () => (await loadNorm(ckpt, layer.inputNorm)).weight, L);
    // a linear with its optional bias; `rows` permutes q/k for llama.cpp's rope
    const linear = (gname: string, role: string, outF: number, inF: number, heads?: number) => {
      const ref = refOf(ckpt, need(role), outF, inF);
      const get = async () => {
        const l = await loadLinear(ckpt, ref);
        return heads ? { w: permuteRope(l.w, outF, inF, heads), b: l.b && permuteRope(l.b, outF, 1, heads) } : l;
      };
      mat(`${b}${gname}.weight`, outF, inF, 'attn', async () => (await get()).w, L);
      if (ref.bias) f32(`${b}${gname}.bias`, [outF], 'bias', async () => (await get()).b!, L);
    };
    if (layer.attention.kind === 'gqa') {
      const hd = d.headDim;
      linear('attn_q', 'q_proj', d.heads * hd, H, permute ? d.heads : undefined);
      linear('attn_k', 'k_proj', d.kvHeads * hd, H, permute ? d.kvHeads : undefined);
      linear('attn_v', 'v_proj', d.kvHeads * hd, H);
      linear('attn_output', 'o_proj', H, d.heads * hd);
      if (view.attention.qkNorm) {
        const qn = view.attention.qkNorm === 'per-head' ? hd : d.heads * hd;
        const kn = view.attention.qkNorm === 'per-head' ? hd : d.kvHeads * hd;
        f32(`${b}attn_q_norm.weight`, [qn], 'norm', () => ckpt.readF32(need('q_norm')), L);
        f32(`${b}attn_k_norm.weight`, [kn], 'norm', () => ckpt.readF32(need('k_norm')), L);
      }
      if (view.attention.sinks) f32(`${b}attn_sinks.weight`, [d.heads], 'norm', () => ckpt.readF32(need('sinks')), L);
    } else {
      const m = view.attention.mla!;
      const dq = m.qkNopeHeadDim + m.qkRopeHeadDim;
      if (m.qLoraRank === null) linear('attn_q', 'q_proj', d.heads * dq, H);
      else {
        linear('attn_q_a', 'q_a_proj', m.qLoraRank, H);
        f32(`${b}attn_q_a_norm.weight`, [m.qLoraRank], 'norm', () => ckpt.readF32(need('q_a_layernorm')), L);
        linear('attn_q_b', 'q_b_proj', d.heads * dq, m.qLoraRank);
      }
      linear('attn_kv_a_mqa', 'kv_a_proj_with_mqa', m.kvLoraRank + m.qkRopeHeadDim, H);
      f32(`${b}attn_kv_a_norm.weight`, [m.kvLoraRank], 'norm', () => ckpt.readF32(need('kv_a_layernorm')), L);
      // kv_b [heads * (nope + v), kv_lora] -> per head k_b^T [kv_lora -> nope] and v_b [v, kv_lora]
      const kvbRef = refOf(ckpt, need('kv_b_proj'), d.heads * (m.qkNopeHeadDim + m.vHeadDim), m.kvLoraRank);
      const R = m.kvLoraRank;
      const per = m.qkNopeHeadDim + m.vHeadDim;
      out.push({
        name: `${b}attn_k_b.weight`,
        ne: [m.qkNopeHeadDim, R, d.heads],
        cls: 'attn',
        f32: false,
        layer: L,
        load: async () => {
          const w = (await loadLinear(ckpt, kvbRef)).w;
          const o = new Float32Array(d.heads * R * m.qkNopeHeadDim);
          for (let h = 0; h < d.heads; h++)
            for (let r = 0; r < R; r++) for (let j = 0; j < m.qkNopeHeadDim; j++) o[(h * R + r) * m.qkNopeHeadDim + j] = w[(h * per + j) * R + r]!;
          return o;
        },
      });
      out.push({
        name: `${b}attn_v_b.weight`,
        ne: [R, m.vHeadDim, d.heads],
        cls: 'attn',
        f32: false,
        layer: L,
        load: async () => {
          const w = (await loadLinear(ckpt, kvbRef)).w;
          const o = new Float32Array(d.heads * m.vHeadDim * R);
          for (let h = 0; h < d.heads; h++) o.set(w.subarray((h * per + m.qkNopeHeadDim) * R, (h + 1) * per * R), h * m.vHeadDim * R);
          return o;
        },
      });
      linear('attn_output', 'o_proj', H, d.heads * m.vHeadDim);
    }
    f32(`${b}${a.ffnNorm}.weight`, [H], 'norm', async () => (await loadNorm(ckpt, layer.postAttnNorm)).weight, L);
    const mlp = (refs: SwiGLURefs, suffix: string, cls: TensorClass) => {
      for (const p of ['gate', 'up', 'down'] as const) {
        const r = refs[p];
        mat(`${b}ffn_${p}${suffix}.weight`, r.outFeatures, r.inFeatures, cls, async () => (await loadLinear(ckpt, r)).w, L, p);
        if (r.bias) f32(`${b}ffn_${p}${suffix}.bias`, [r.outFeatures], 'bias', async () => (await loadLinear(ckpt, r)).b!, L);
      }
    };
    const blk = layer.block;
    if (blk.kind === 'dense') mlp(blk.mlp, '', 'dense');
    else {
      const E = blk.experts.length;
      f32(`${b}ffn_gate_inp.weight`, [H, E], 'router', () => ckpt.readF32(blk.router.weight), L);
      if (blk.router.bias) f32(`${b}ffn_gate_inp.bias`, [E], 'bias', () => ckpt.readF32(blk.router.bias!), L);
      if (blk.router.correctionBias) f32(`${b}exp_probs_b.bias`, [E], 'bias', () => ckpt.readF32(blk.router.correctionBias!), L);
      for (const p of ['gate', 'up', 'down'] as const) {
        const r0 = blk.experts[0]![p];
        const [o, i] = [r0.outFeatures, r0.inFeatures];
        const loadExpert = async (e: number) => (await loadLinear(ckpt, blk.experts[e]![p])).w;
        out.push({
          name: `${b}ffn_${p}_exps.weight`,
          ne: [i, o, E],
          cls: 'expert',
          f32: false,
          layer: L,
          proj: p,
          loadExpert,
          load: async () => {
            const all = new Float32Array(E * o * i);
            for (let e = 0; e < E; e++) all.set(await loadExpert(e), e * o * i);
            return all;
          },
        });
        if (r0.bias)
          f32(
            `${b}ffn_${p}_exps.bias`,
            [o, E],
            'bias',
            async () => {
              const all = new Float32Array(E * o);
              for (let e = 0; e < E; e++) all.set((await loadLinear(ckpt, blk.experts[e]![p])).b!, e * o);
              return all;
            },
            L,
          );
      }
      if (blk.shared) {
        mlp(blk.shared, '_shexp', 'shared');
        if (blk.shared.gateWeight) f32(`${b}ffn_gate_inp_shexp.weight`, [H, 1], 'router', () => ckpt.readF32(blk.shared!.gateWeight!), L);
      }
    }
  }
  f32('output_norm.weight', [H], 'norm', async () => (await loadNorm(ckpt, view.finalNorm)).weight);
  if (view.lmHead) mat('output.weight', d.vocab, H, 'output', () => ckpt.readF32(view.lmHead!));
  return out;
}
