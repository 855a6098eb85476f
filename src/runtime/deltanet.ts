/**
 * Gated DeltaNet, the linear-attention layers of qwen3_next and qwen3_5_moe, as transformers 5.18 computes them
 * (modeling_qwen3_next.py Qwen3NextGatedDeltaNet.forward with its torch fallbacks):
 *
 *   q, k, v, z, b, a = in_proj(x)                      (qwen3_next: in_proj_qkvz / in_proj_ba grouped by key head;
 *                                                       qwen3_5_moe: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a)
 *   [q; k; v] = silu(causal depthwise conv1d([q; k; v]))   kernel K, zero left padding, no bias
 *   beta = sigmoid(b);  g = -exp(A_log) * softplus(a + dt_bias)
 *   q, k = l2norm(q), l2norm(k) (eps 1e-6), q /= sqrt(head_k_dim); key head j serves value heads j*r .. j*r+r-1
 *   per value head, state S [dk, dv] from 0:  S = S * exp(g_t);  S += k_t (beta_t (v_t - k_t^T S))^T;  o_t = q_t^T S
 *   o = RMSNorm(o) * weight * silu(z)  per value head (plain weight, not zero-centred);  out_proj(o)
 *
 * The recurrence is run token by token (torch_recurrent_gated_delta_rule), in float64: it is the same function as
 * the chunked form transformers uses for prompts (torch_chunk_gated_delta_rule), which only regroups the sums for
 * speed on a GPU. Its cost, about 4 dk dv flops per token and value head, is a small fraction of the MoE block's.
 */
import type { DeltaNetDims } from '../model/types.js';
import { linearRows, type DeviceLinear } from './ops.js';

export interface DeltaNetWeights {
  kind: 'deltanet';
  /**
   * 'qkvz': in_proj_qkvz [2 Kd + 2 Vd, H] and in_proj_ba [2 nv, H], grouped by key head; 'split': in_proj_qkv and
   * in_proj_z stacked into one [2 Kd + 2 Vd, H] (q, k, v, z in order), in_proj_b and in_proj_a into one [2 nv, H]
   */
  qkvz: DeviceLinear;
  ba: DeviceLinear;
  /** conv1d weight [2 Kd + Vd, K] (the [C, 1, K] tensor) */
  conv: Float32Array;
  dtBias: Float32Array;
  aLog: Float32Array;
  /** gated RMSNorm weight [head_v_dim] */
  norm: Float32Array;
  out: DeviceLinear;
}

/** projection-buffer budget (floats) per chunk of windows */
const BUDGET = 16 * 1024 * 1024;

/**
 * The layer's output [N*S, H] (before the residual add) for N windows of S tokens, x = normed hidden [N*S, H].
 * `onOInput` receives out_proj's input [rows, nv*dv] chunk by chunk (r0 = first row).
 */
export function deltanet(
  x: Float32Array,
  N: number,
  S: number,
  H: number,
  w: DeltaNetWeights,
  dims: DeltaNetDims,
  onOInput?: (a: Float32Array, rows: number, r0: number) => void,
): Float32Array {
  const out = new Float32Array(N * S * H);
  const width = w.qkvz.out + w.ba.out;
  const B = Math.max(1, Math.min(N, Math.floor(BUDGET / (S * width))));
  for (let n0 = 0; n0 < N; n0 += B) {
    const b = Math.min(B, N - n0);
    const core = deltanetCore(x.subarray(n0 * S * H, (n0 + b) * S * H), b, S, w, dims);
    onOInput?.(core, b * S, n0 * S);
    out.set(linearRows(core, b * S, w.out), n0 * S * H);
  }
  return out;
}

/** The gated-normed core output [B*S, nv*dv] of B windows (out_proj's input). */
export function deltanetCore(x: Float32Array, B: number, S: number, w: DeltaNetWeights, dims: DeltaNetDims): Float32Array {
  const R = B * S;
  const { numKHeads: nk, numVHeads: nv, headK: dk, headV: dv, convKernel: K } = dims;
  const r = nv / nk;
  const Kd = nk * dk;
  const Vd = nv * dv;
  const C = 2 * Kd + Vd;
  if (w.qkvz.out !== C + Vd || w.ba.out !== 2 * nv)
    throw new RangeError(`deltanet projections give ${w.qkvz.out} and ${w.ba.out} values, the config ${C + Vd} and ${2 * nv}`);
  if (w.conv.length !== C * K) throw new RangeError(`conv1d weight holds ${w.conv.length} values, ${C} channels x kernel ${K} expected`);
  const proj = linearRows(x, R, w.qkvz);
  const baP = linearRows(x, R, w.ba);
  // into conv channel order [q (Kd) | k (Kd) | v (Vd)], z [Vd], b [nv], a [nv]
  const mixed = new Float32Array(R * C);
  const z = new Float32Array(R * Vd);
  const bb = new Float32Array(R * nv);
  const aa = new Float32Array(R * nv);
  const pw = C + Vd;
  for (let t = 0; t < R; t++) {
    const p = proj.subarray(t * pw, (t + 1) * pw);
    const m = mixed.subarray(t * C, (t + 1) * C);
    const q2 = baP.subarray(t * 2 * nv, (t + 1) * 2 * nv);
    if (dims.layout === 'split') {
      m.set(p.subarray(0, C));
      z.set(p.subarray(C, C + Vd), t * Vd);
      bb.set(q2.subarray(0, nv), t * nv);
      aa.set(q2.subarray(nv, 2 * nv), t * nv);
    } else {
      // fix_query_key_value_ordering: key head j's group holds [q_j (dk) | k_j (dk) | v (r dv) | z (r dv)], and
      // in_proj_ba's [b (r) | a (r)] for its r value heads
      const gw = 2 * dk + 2 * r * dv;
      for (let j = 0; j < nk; j++) {
        const o = j * gw;
        m.set(p.subarray(o, o + dk), j * dk);
        m.set(p.subarray(o + dk, o + 2 * dk), Kd + j * dk);
        m.set(p.subarray(o + 2 * dk, o + 2 * dk + r * dv), 2 * Kd + j * r * dv);
        z.set(p.subarray(o + 2 * dk + r * dv, o + gw), t * Vd + j * r * dv);
        bb.set(q2.subarray(j * 2 * r, j * 2 * r + r), t * nv + j * r);
        aa.set(q2.subarray(j * 2 * r + r, (j + 1) * 2 * r), t * nv + j * r);
      }
    }
  }
  // causal depthwise conv (F.conv1d with K-1 zeros of left padding, first S outputs), then SiLU
  const conv = new Float32Array(R * C);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < S; t++) {
      const row = b * S + t;
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let j = 0; j < K; j++) {
          const src = t - (K - 1) + j;
          if (src >= 0) s += w.conv[c * K + j]! * mixed[(b * S + src) * C + c]!;
        }
        conv[row * C + c] = s / (1 + Math.exp(-s));
      }
    }
  const core = new Float32Array(R * Vd);
  const state = new Float64Array(dk * dv);
  const q = new Float64Array(dk);
  const k = new Float64Array(dk);
  const kv = new Float64Array(dv);
  const ot = new Float64Array(dv);
  const qScale = 1 / Math.sqrt(dk);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < nv; h++) {
      const kh = Math.floor(h / r);
      state.fill(0);
      const A = Math.exp(w.aLog[h]!);
      for (let t = 0; t < S; t++) {
        const row = b * S + t;
        const base = row * C;
        let qq = 0;
        let kk = 0;
        for (let i = 0; i < dk; i++) {
          q[i] = conv[base + kh * dk + i]!;
          k[i] = conv[base + Kd + kh * dk + i]!;
          qq += q[i]! * q[i]!;
          kk += k[i]! * k[i]!;
        }
        const qn = qScale / Math.sqrt(qq + 1e-6);
        const kn = 1 / Math.sqrt(kk + 1e-6);
        for (let i = 0; i < dk; i++) {
          q[i]! *= qn;
          k[i]! *= kn;
        }
        const beta = 1 / (1 + Math.exp(-bb[row * nv + h]!));
        const decay = Math.exp(-A * softplus(aa[row * nv + h]! + w.dtBias[h]!));
        kv.fill(0);
        for (let i = 0; i < dk; i++) {
          const ki = k[i]!;
          const o = i * dv;
          for (let j = 0; j < dv; j++) {
            const sv = state[o + j]! * decay;
            state[o + j] = sv;
            kv[j]! += sv * ki;
          }
        }
        const vb = base + 2 * Kd + h * dv;
        for (let j = 0; j < dv; j++) kv[j] = (conv[vb + j]! - kv[j]!) * beta;
        ot.fill(0);
        for (let i = 0; i < dk; i++) {
          const ki = k[i]!;
          const qi = q[i]!;
          const o = i * dv;
          for (let j = 0; j < dv; j++) {
            const sv = state[o + j]! + ki * kv[j]!;
            state[o + j] = sv;
            ot[j]! += sv * qi;
          }
        }
        core.set(ot, row * Vd + h * dv);
      }
    }
  // gated RMSNorm per value head: norm(o) * weight * silu(z)
  for (let g = 0; g < R * nv; g++) {
    const o = g * dv;
    let ss = 0;
    for (let j = 0; j < dv; j++) ss += core[o + j]! * core[o + j]!;
    const inv = 1 / Math.sqrt(Math.fround(ss / dv) + dims.eps);
    for (let j = 0; j < dv; j++) {
      const zz = z[o + j]!;
      core[o + j] = w.norm[j]! * Math.fround(core[o + j]! * inv) * (zz / (1 + Math.exp(-zz)));
    }
  }
  return core;
}

/** torch.nn.functional.softplus (beta 1, threshold 20) */
function softplus(x: number): number {
  return x > 20 ? x : Math.log1p(Math.exp(x));
}
