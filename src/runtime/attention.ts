/**
 * Causal self-attention of one decoder layer over whole windows, as HF computes it in eager mode:
 * projections (+ biases), q/k norms where the family places them, RoPE, softmax(q k^T * scale + mask) v, o_proj.
 *
 * - GQA (mixtral, qwen*, olmoe, granite, gpt_oss, phimoe): query head j uses key/value head floor(j / g),
 *   g = heads / kvHeads (repeat_kv). Qwen3-MoE normalises each head with a [head_dim] RMSNorm before RoPE
 *   (modeling_qwen3_moe.py); OLMoE normalises the whole q [heads*hd] and k [kvHeads*hd] projections before the
 *   head reshape, then clamps q/k/v to clip_qkv when set (modeling_olmoe.py).
 * - MLA (deepseek v2/v3, modeling_deepseek_v3.py DeepseekV3Attention): q from q_proj or q_b(norm(q_a(x))); k/v
 *   from kv_b(norm(kv_a[:kv_lora])); one shared rotary key slice kv_a[kv_lora:] for all heads; q/k head =
 *   [nope | rope], value head v_head_dim; softmax scale from the view (YaRN mscale^2 folded in).
 * - qwen3_next gated attention (modeling_qwen3_next.py Qwen3NextAttention): q_proj yields each head's query and a
 *   gate of the same size, [q | gate] per head; the attention output is multiplied by sigmoid(gate) before o_proj.
 * - gpt_oss sinks: one learned logit per head joins the softmax as an extra column and is dropped after it
 *   (modeling_gpt_oss.py eager_attention_forward). Sliding windows: key j is visible from query i iff
 *   0 <= i - j < window.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { AttentionSpec } from '../model/types.js';
import { applyRope, type RopeTables } from './rope.js';
import { clampInPlace, linearRows, rmsNorm, type DeviceLinear, type NormWeights } from './ops.js';

export interface GqaWeights {
  kind: 'gqa';
  /** q, k and v stacked [heads*d + 2*kvHeads*d, H]: one matmul, split on the host */
  qkv: DeviceLinear;
  o: DeviceLinear;
  qNorm?: NormWeights;
  kNorm?: NormWeights;
  sinks?: Float32Array;
}

export interface MlaWeights {
  kind: 'mla';
  q?: DeviceLinear;
  qA?: DeviceLinear;
  qANorm?: NormWeights;
  qB?: DeviceLinear;
  kvA: DeviceLinear;
  kvANorm: NormWeights;
  kvB: DeviceLinear;
  o: DeviceLinear;
}

export type AttentionWeights = GqaWeights | MlaWeights;

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  rope: RopeTables;
  ropeStyle: 'half' | 'interleaved';
  spec: AttentionSpec;
  /** sliding window for this layer, if any */
  window?: number;
  /** llama4 chunked attention: key j is visible from query i iff j <= i and both lie in the same chunk of this size */
  chunk?: number;
  /** llama4 NoPE layer: no rotary embedding (and the temperature tuning of spec.temperatureTuning instead) */
  nope?: boolean;
  /** receives o_proj's input [rows, heads*dv] chunk by chunk (r0 = first row) */
  onOInput?: (a: Float32Array, rows: number, r0: number) => void;
}

const NEG = -1e30;

const masks = new Map<string, tf.Tensor2D>();

/** additive causal (optionally sliding or chunked) mask [S, S], kept across layers and chunks */
function maskFor(S: number, window?: number, chunk?: number): tf.Tensor2D {
  const key = `${S}:${window ?? ''}:${chunk ?? ''}`;
  let t = masks.get(key);
  if (!t) {
    const m = new Float32Array(S * S);
    for (let i = 0; i < S; i++) {
      for (let j = 0; j < S; j++) {
        // chunks (transformers' chunked_overlay): floor(j / chunk) == floor(i / chunk)
        const ok = j <= i && (window === undefined || i - j < window) && (chunk === undefined || Math.floor(i / chunk) === Math.floor(j / chunk));
        if (!ok) m[i * S + j] = NEG;
      }
    }
    if (masks.size >= 8) {
      for (const old of masks.values()) old.dispose();
      masks.clear();
    }
    t = tf.keep(tf.tensor2d(m, [S, S]));
    masks.set(key, t);
  }
  return t;
}

/** score-tensor budget (floats) per attention chunk of windows: bounds host buffers at long sequence lengths */
const SCORE_BUDGET = 16 * 1024 * 1024;

/**
 * softmax(q k^T * scale + mask) v for B windows of S tokens.
 * q [B*S, heads*dq], k [B*S, kvHeads*dq], v [B*S, kvHeads*dv] (row-major, head-major inside a row).
 * Returns [B*S, heads*dv].
 *
 * One 2-D matmul pair per (window, kv head), the g query heads of that kv head stacked along rows
 * ([g*S, dq] x [dq, S]): the wasm backend's batched 3-D matmul is an order of magnitude slower than its 2-D one,
 * and the host-side gathers cost O(S * heads * d), nothing next to the products.
 */
export function attentionCore(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  B: number,
  S: number,
  heads: number,
  kvHeads: number,
  dq: number,
  dv: number,
  scale: number,
  window?: number,
  sinks?: Float32Array,
  chunk?: number,
): Float32Array {
  const g = heads / kvHeads;
  const mask = maskFor(S, window, chunk);
  const out = new Float32Array(B * S * heads * dv);
  const qb = new Float32Array(g * S * dq);
  const kb = new Float32Array(dq * S);
  const vb = new Float32Array(S * dv);
  const qRow = heads * dq;
  const kRow = kvHeads * dq;
  const vRow = kvHeads * dv;
  const oRow = heads * dv;
  for (let b = 0; b < B; b++) {
    for (let c = 0; c < kvHeads; c++) {
      // gather: q rows (gi, i) <- q[b, i, c*g + gi, :]; k^T [dq, S]; v [S, dv]
      for (let gi = 0; gi < g; gi++) {
        const j = c * g + gi;
        for (let i = 0; i < S; i++) qb.set(q.subarray((b * S + i) * qRow + j * dq, (b * S + i) * qRow + (j + 1) * dq), (gi * S + i) * dq);
      }
      for (let i = 0; i < S; i++) {
        const ko = (b * S + i) * kRow + c * dq;
        for (let a = 0; a < dq; a++) kb[a * S + i] = k[ko + a]!;
        vb.set(v.subarray((b * S + i) * vRow + c * dv, (b * S + i) * vRow + (c + 1) * dv), i * dv);
      }
      const res = tf.tidy(() => {
        const scores = tf.add(tf.reshape(tf.mul(tf.matMul(tf.tensor2d(qb, [g * S, dq]), tf.tensor2d(kb, [dq, S])), scale), [g, S, S]), mask);
        let p: tf.Tensor;
        if (sinks) {
          const col = tf.broadcastTo(tf.tensor3d(sinks.subarray(c * g, (c + 1) * g), [g, 1, 1]), [g, S, 1]);
          p = tf.slice(tf.softmax(tf.concat([scores, col], 2)), [0, 0, 0], [g, S, S]);
        } else {
          p = tf.softmax(scores);
        }
        return tf.matMul(tf.reshape(p, [g * S, S]) as tf.Tensor2D, tf.tensor2d(vb, [S, dv]));
      });
      const o = res.dataSync() as Float32Array;
      res.dispose();
      // scatter: out[b, i, c*g + gi, :] <- o[(gi, i), :]
      for (let gi = 0; gi < g; gi++) {
        const j = c * g + gi;
        for (let i = 0; i < S; i++) out.set(o.subarray((gi * S + i) * dv, (gi * S + i + 1) * dv), (b * S + i) * oRow + j * dv);
      }
    }
  }
  return out;
}

/** windows per attention chunk: bounds the score tensor to about 16M floats */
function windowsPerChunk(S: number, heads: number, N: number): number {
  return Math.max(1, Math.min(N, Math.floor(SCORE_BUDGET / (heads * S * S))));
}

/**
 * Attention output [N*S, H] (before the residual add) for N windows of S tokens, x = normed hidden [N*S, H].
 */
export function attention(x: Float32Array, N: number, S: number, H: number, w: AttentionWeights, sh: AttentionShape): Float32Array {
  const out = new Float32Array(N * S * H);
  const B = windowsPerChunk(S, sh.heads, N);
  for (let n0 = 0; n0 < N; n0 += B) {
    const b = Math.min(B, N - n0);
    const xs = x.subarray(n0 * S * H, (n0 + b) * S * H);
    const y = w.kind === 'gqa' ? gqaChunk(xs, b, S, w, sh, n0 * S) : mlaChunk(xs, b, S, w, sh, n0 * S);
    out.set(y, n0 * S * H);
  }
  return out;
}

function gqaChunk(x: Float32Array, B: number, S: number, w: GqaWeights, sh: AttentionShape, r0: number): Float32Array {
  const R = B * S;
  const { heads, kvHeads, headDim: d, spec } = sh;
  const qkv = linearRows(x, R, w.qkv);
  const nq = heads * d;
  const nk = kvHeads * d;
  const q = new Float32Array(R * nq);
  const k = new Float32Array(R * nk);
  const v = new Float32Array(R * nk);
  // qwen3_next's output gate: q_proj gives [query (d) | gate (d)] per head
  const gate = spec.outputGate ? new Float32Array(R * nq) : undefined;
  const wq = gate ? 2 * nq : nq;
  const wd = wq + 2 * nk;
  for (let r = 0; r < R; r++) {
    const o = r * wd;
    if (gate)
      for (let j = 0; j < heads; j++) {
        q.set(qkv.subarray(o + 2 * j * d, o + 2 * j * d + d), r * nq + j * d);
        gate.set(qkv.subarray(o + 2 * j * d + d, o + 2 * (j + 1) * d), r * nq + j * d);
      }
    else q.set(qkv.subarray(o, o + nq), r * nq);
    k.set(qkv.subarray(o + wq, o + wq + nk), r * nk);
    v.set(qkv.subarray(o + wq + nk, o + wd), r * nk);
  }
  const qkNorm = () => {
    if (spec.qkNorm === 'full') {
      rmsNorm(q, heads * d, w.qNorm!.weight, w.qNorm!.eps, q);
      rmsNorm(k, kvHeads * d, w.kNorm!.weight, w.kNorm!.eps, k);
    } else if (spec.qkNorm === 'per-head') {
      rmsNorm(q, d, w.qNorm!.weight, w.qNorm!.eps, q);
      rmsNorm(k, d, w.kNorm!.weight, w.kNorm!.eps, k);
    }
  };
  if (!spec.qkNormAfterRope) qkNorm();
  if (spec.clipQkv !== undefined) {
    clampInPlace(q, spec.clipQkv);
    clampInPlace(k, spec.clipQkv);
    clampInPlace(v, spec.clipQkv);
  }
  if (!sh.nope) {
    applyRope(q, R, heads, d, S, sh.rope, sh.ropeStyle);
    applyRope(k, R, kvHeads, d, S, sh.rope, sh.ropeStyle);
    // llama4 (Llama4TextL2Norm): the rotated heads divided by their RMS, no weight, on RoPE layers only
    if (spec.l2QkNorm) {
      const ones = new Float32Array(d).fill(1);
      rmsNorm(q, d, ones, spec.l2QkNorm.eps, q);
      rmsNorm(k, d, ones, spec.l2QkNorm.eps, k);
    }
  } else if (spec.temperatureTuning) scaleNopeQueries(q, R, S, heads * d, spec.temperatureTuning);
  // hunyuan_v1_moe normalises the rotated heads (its modeling file applies RoPE, then query/key_layernorm)
  if (spec.qkNormAfterRope) qkNorm();
  const a = attentionCore(q, k, v, B, S, heads, kvHeads, d, d, spec.softmaxScale, sh.window, w.sinks, sh.chunk);
  if (gate) for (let i = 0; i < a.length; i++) a[i]! *= 1 / (1 + Math.exp(-gate[i]!));
  sh.onOInput?.(a, R, r0);
  return linearRows(a, R, w.o);
}

/**
 * Llama-4 temperature tuning on NoPE layers (Llama4TextAttention.forward): queries at position p multiplied by
 * 1 + attn_scale * ln(1 + floor((p + 1) / floor_scale)), in float32 as torch computes it; row r is at position r % S.
 */
function scaleNopeQueries(q: Float32Array, R: number, S: number, width: number, tt: { floorScale: number; attnScale: number }): void {
  for (let r = 0; r < R; r++) {
    const f = Math.fround(Math.fround(Math.fround(Math.log1p(Math.floor(Math.fround((r % S) + 1) / tt.floorScale))) * tt.attnScale) + 1);
    if (f === 1) continue;
    for (let i = r * width, end = i + width; i < end; i++) q[i] = Math.fround(q[i]! * f);
  }
}

/** Llama-4 attention scaling (transformers get_llama_4_attn_scale): row r is at position r % S. */
function scaleQueriesByPosition(q: Float32Array, R: number, S: number, width: number, ps: { beta: number; original: number }): void {
  for (let r = 0; r < R; r++) {
    const f = 1 + ps.beta * Math.log(1 + Math.floor((r % S) / ps.original));
    if (f === 1) continue;
    for (let i = r * width, end = i + width; i < end; i++) q[i]! *= f;
  }
}

function mlaChunk(x: Float32Array, B: number, S: number, w: MlaWeights, sh: AttentionShape, r0: number): Float32Array {
  const R = B * S;
  const m = sh.spec.mla!;
  const h = sh.heads;
  const dq = m.qkNopeHeadDim + m.qkRopeHeadDim;
  let q: Float32Array;
  if (w.q) q = linearRows(x, R, w.q);
  else {
    const qa = linearRows(x, R, w.qA!);
    rmsNorm(qa, w.qA!.out, w.qANorm!.weight, w.qANorm!.eps, qa);
    q = linearRows(qa, R, w.qB!);
  }
  const kvA = linearRows(x, R, w.kvA); // [R, kvLora + rope]
  const wA = m.kvLoraRank + m.qkRopeHeadDim;
  const cKv = new Float32Array(R * m.kvLoraRank);
  const kRot = new Float32Array(R * m.qkRopeHeadDim);
  for (let r = 0; r < R; r++) {
    cKv.set(kvA.subarray(r * wA, r * wA + m.kvLoraRank), r * m.kvLoraRank);
    kRot.set(kvA.subarray(r * wA + m.kvLoraRank, (r + 1) * wA), r * m.qkRopeHeadDim);
  }
  rmsNorm(cKv, m.kvLoraRank, w.kvANorm.weight, w.kvANorm.eps, cKv);
  const kv = linearRows(cKv, R, w.kvB); // [R, h * (nope + v)]
  applyRope(q, R, h, dq, S, sh.rope, sh.ropeStyle, m.qkNopeHeadDim);
  applyRope(kRot, R, 1, m.qkRopeHeadDim, S, sh.rope, sh.ropeStyle);
  if (sh.spec.queryPositionScale) scaleQueriesByPosition(q, R, S, h * dq, sh.spec.queryPositionScale);
  const k = new Float32Array(R * h * dq);
  const v = new Float32Array(R * h * m.vHeadDim);
  const kvw = m.qkNopeHeadDim + m.vHeadDim;
  for (let r = 0; r < R; r++) {
    for (let j = 0; j < h; j++) {
      const src = (r * h + j) * kvw;
      const kd = (r * h + j) * dq;
      k.set(kv.subarray(src, src + m.qkNopeHeadDim), kd);
      k.set(kRot.subarray(r * m.qkRopeHeadDim, (r + 1) * m.qkRopeHeadDim), kd + m.qkNopeHeadDim);
      v.set(kv.subarray(src + m.qkNopeHeadDim, src + kvw), (r * h + j) * m.vHeadDim);
    }
  }
  const a = attentionCore(q, k, v, B, S, h, h, dq, m.vHeadDim, sh.spec.softmaxScale, sh.window);
  sh.onOInput?.(a, R, r0);
  return linearRows(a, R, w.o);
}
