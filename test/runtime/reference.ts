/**
 * An independent, deliberately naive forward pass for the tests: one token at a time, plain number arrays, the
 * whole model in memory, tensor names and config keys read directly (not through src/model's view), routing by
 * sorting. It follows HF transformers' modeling files literally (DeepSeek-V3's interleaved RoPE is done the HF way:
 * permute the rotary dims to [even, odd] then rotate halves), so agreement with the streamed tfjs runtime checks
 * two implementations against each other.
 */
import { Checkpoint } from '../../src/io/checkpoint.js';

type Vec = Float64Array;

export interface RefModel {
  cfg: Record<string, any>;
  t: Map<string, Float32Array>;
}

export async function loadRef(dir: string): Promise<RefModel> {
  const ck = await Checkpoint.open(dir);
  const t = new Map<string, Float32Array>();
  for (const n of ck.tensorNames) t.set(n, await ck.readF32(n));
  await ck.close();
  return { cfg: ck.config as Record<string, any>, t };
}

function get(m: RefModel, n: string): Float32Array {
  const v = m.t.get(n);
  if (!v) throw new Error(`reference: no tensor ${n}`);
  return v;
}

function mv(W: Float32Array, x: Vec, out: number, inp: number, b?: Float32Array): Vec {
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = b ? b[o]! : 0;
    for (let i = 0; i < inp; i++) s += W[o * inp + i]! * x[i]!;
    y[o] = s;
  }
  return y;
}

function rms(x: Vec, w: Float32Array, eps: number): Vec {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * w[i]!);
}

function layerNorm(x: Vec, w: Float32Array, b: Float32Array, eps: number): Vec {
  const mean = x.reduce((a, v) => a + v, 0) / x.length;
  const varc = x.reduce((a, v) => a + (v - mean) ** 2, 0) / x.length;
  return x.map((v, i) => ((v - mean) / Math.sqrt(varc + eps)) * w[i]! + b[i]!);
}

const silu = (v: number) => v / (1 + Math.exp(-v));
const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));

function softmax(x: number[]): number[] {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function topk(x: number[], k: number): number[] {
  return x
    .map((v, i) => [v, i] as const)
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, k)
    .map((p) => p[1]);
}

function mlp(m: RefModel, p: string, x: Vec, H: number, I: number, names: [string, string, string]): Vec {
  const g = mv(get(m, p + names[0]), x, I, H);
  const u = mv(get(m, p + names[1]), x, I, H);
  const a = g.map((v, i) => silu(v) * u[i]!);
  return mv(get(m, p + names[2]), a, H, I);
}

/** rotate one head vector in place (positions pos), HF style */
function rope(x: Vec, off: number, d: number, pos: number, theta: number, style: 'half' | 'interleaved' | 'v3', rd = d): void {
  if (rd < d) {
    // partial rotary: only the first rd dims of the head rotate
    const part = x.slice(off, off + rd);
    rope(part, 0, rd, pos, theta, style);
    x.set(part, off);
    return;
  }
  const half = d / 2;
  const seg = Array.from(x.subarray(off, off + d));
  let v = seg;
  if (style === 'v3') {
    // apply_rotary_pos_emb_interleave: view(d/2, 2).transpose -> [evens..., odds...], then rotate_half
    v = [...seg.filter((_, i) => i % 2 === 0), ...seg.filter((_, i) => i % 2 === 1)];
  }
  const out = new Array<number>(d);
  for (let i = 0; i < half; i++) {
    const f = 1 / Math.pow(theta, (2 * i) / d);
    const c = Math.cos(pos * f);
    const s = Math.sin(pos * f);
    if (style === 'interleaved') {
      out[2 * i] = v[2 * i]! * c - v[2 * i + 1]! * s;
      out[2 * i + 1] = v[2 * i + 1]! * c + v[2 * i]! * s;
    } else {
      out[i] = v[i]! * c - v[i + half]! * s;
      out[i + half] = v[i + half]! * c + v[i]! * s;
    }
  }
  for (let i = 0; i < d; i++) x[off + i] = out[i]!;
}

/** Final-norm hidden states [S][H] and logits [S][V] of one sequence. */
export function refForward(m: RefModel, ids: number[]): { hidden: Vec[]; logits: Vec[] } {
  const c = m.cfg;
  const fam: string = c.model_type;
  const H: number = c.hidden_size;
  const nh: number = c.num_attention_heads;
  const nkv: number = c.num_key_value_heads ?? nh;
  const hd: number = c.head_dim ?? H / nh;
  const eps: number = c.rms_norm_eps;
  const theta: number = c.rope_theta;
  const S = ids.length;
  const emb = get(m, 'model.embed_tokens.weight');
  const embMul: number = fam === 'granitemoe' ? c.embedding_multiplier : 1;
  let h: Vec[] = ids.map((id) => Float64Array.from(emb.subarray(id * H, (id + 1) * H), (v) => v * embMul));
  const mla = fam.startsWith('deepseek');
  const resMul: number = fam === 'granitemoe' ? c.residual_multiplier : 1;
  const norm = (x: Vec, name: string): Vec =>
    fam === 'phimoe' ? layerNorm(x, get(m, name + '.weight'), get(m, name + '.bias'), eps) : rms(x, get(m, name + '.weight'), eps);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const xs = h.map((x) => norm(x, p + 'input_layernorm'));
    // ---- attention: per-token q, k, v
    const qs: Vec[] = [],
      ks: Vec[] = [],
      vs: Vec[] = [];
    let dq = hd,
      dv = hd,
      kvh = nkv,
      scale = fam === 'granitemoe' ? c.attention_multiplier : 1 / Math.sqrt(hd);
    const window: number | undefined = fam === 'gpt_oss' && c.layer_types[l] === 'sliding_attention' ? c.sliding_window : undefined;
    const sinks = fam === 'gpt_oss' ? get(m, p + 'self_attn.sinks') : undefined;
    for (let i = 0; i < S; i++) {
      const x = xs[i]!;
      if (mla) {
        const nope: number = c.qk_nope_head_dim,
          rp: number = c.qk_rope_head_dim,
          vd: number = c.v_head_dim,
          kvl: number = c.kv_lora_rank;
        dq = nope + rp;
        dv = vd;
        kvh = nh;
        scale = 1 / Math.sqrt(dq);
        let q: Vec;
        if (c.q_lora_rank) {
          const qa = rms(mv(get(m, p + 'self_attn.q_a_proj.weight'), x, c.q_lora_rank, H), get(m, p + 'self_attn.q_a_layernorm.weight'), 1e-6);
          q = mv(get(m, p + 'self_attn.q_b_proj.weight'), qa, nh * dq, c.q_lora_rank);
        } else q = mv(get(m, p + 'self_attn.q_proj.weight'), x, nh * dq, H);
        const ckv = mv(get(m, p + 'self_attn.kv_a_proj_with_mqa.weight'), x, kvl + rp, H);
        const kpass = rms(ckv.slice(0, kvl), get(m, p + 'self_attn.kv_a_layernorm.weight'), 1e-6);
        const krot = ckv.slice(kvl);
        const kv = mv(get(m, p + 'self_attn.kv_b_proj.weight'), kpass, nh * (nope + vd), kvl);
        const style = fam === 'deepseek_v3' ? 'v3' : 'interleaved';
        for (let j = 0; j < nh; j++) rope(q, j * dq + nope, rp, i, theta, style);
        rope(krot, 0, rp, i, theta, style);
        const k = new Float64Array(nh * dq),
          v = new Float64Array(nh * vd);
        for (let j = 0; j < nh; j++) {
          for (let a = 0; a < nope; a++) k[j * dq + a] = kv[j * (nope + vd) + a]!;
          for (let a = 0; a < rp; a++) k[j * dq + nope + a] = krot[a]!;
          for (let a = 0; a < vd; a++) v[j * vd + a] = kv[j * (nope + vd) + nope + a]!;
        }
        qs.push(q);
        ks.push(k);
        vs.push(v);
        continue;
      }
      const bias = (n: string) => m.t.get(p + `self_attn.${n}.bias`);
      let q = mv(get(m, p + 'self_attn.q_proj.weight'), x, nh * hd, H, bias('q_proj'));
      let k = mv(get(m, p + 'self_attn.k_proj.weight'), x, nkv * hd, H, bias('k_proj'));
      const v = mv(get(m, p + 'self_attn.v_proj.weight'), x, nkv * hd, H, bias('v_proj'));
      if (fam === 'olmoe' || fam === 'minimax_m2') {
        q = rms(q, get(m, p + 'self_attn.q_norm.weight'), eps);
        k = rms(k, get(m, p + 'self_attn.k_norm.weight'), eps);
      }
      if (fam === 'qwen3_moe' || fam === 'glm4_moe') {
        const qn = get(m, p + 'self_attn.q_norm.weight'),
          kn = get(m, p + 'self_attn.k_norm.weight');
        for (let j = 0; j < nh; j++) q.set(rms(q.slice(j * hd, (j + 1) * hd), qn, eps), j * hd);
        for (let j = 0; j < nkv; j++) k.set(rms(k.slice(j * hd, (j + 1) * hd), kn, eps), j * hd);
      }
      const rd: number = fam === 'glm4_moe' ? hd * c.partial_rotary_factor : fam === 'minimax_m2' ? c.rotary_dim : hd;
      const st = fam === 'ernie4_5_moe' ? 'interleaved' : 'half';
      for (let j = 0; j < nh; j++) rope(q, j * hd, hd, i, theta, st, rd);
      for (let j = 0; j < nkv; j++) rope(k, j * hd, hd, i, theta, st, rd);
      qs.push(q);
      ks.push(k);
      vs.push(v);
    }
    const g = nh / kvh;
    const attnOut: Vec[] = [];
    for (let i = 0; i < S; i++) {
      const o = new Float64Array(nh * dv);
      for (let j = 0; j < nh; j++) {
        const kj = Math.floor(j / g);
        const sc: number[] = [];
        const t0 = window === undefined ? 0 : Math.max(0, i - window + 1);
        for (let t = t0; t <= i; t++) {
          let s = 0;
          for (let a = 0; a < dq; a++) s += qs[i]![j * dq + a]! * ks[t]![kj * dq + a]!;
          sc.push(s * scale);
        }
        // gpt_oss: the sink logit joins the softmax, its probability is dropped
        const pr = sinks ? softmax([...sc, sinks[j]!]).slice(0, sc.length) : softmax(sc);
        for (let t = t0; t <= i; t++) for (let a = 0; a < dv; a++) o[j * dv + a]! += pr[t - t0]! * vs[t]![kj * dv + a]!;
      }
      attnOut.push(mv(get(m, p + 'self_attn.o_proj.weight'), o, H, nh * dv, m.t.get(p + 'self_attn.o_proj.bias')));
    }
    h = h.map((x, i) => x.map((v, a) => v + resMul * attnOut[i]![a]!));
    // ---- feed-forward
    const x2 = h.map((x) => norm(x, p + 'post_attention_layernorm'));
    const out: Vec[] = [];
    for (let i = 0; i < S; i++) {
      const x = x2[i]!;
      const special = otherMoe(m, fam, p, x, H);
      if (special) {
        out.push(special);
        continue;
      }
      const moeName = fam === 'mixtral' || fam === 'minimax_m2' ? 'block_sparse_moe.' : 'mlp.';
      if (!m.t.has(p + moeName + 'gate.weight')) {
        out.push(mlp(m, p + 'mlp.', x, H, c.intermediate_size, ['gate_proj.weight', 'up_proj.weight', 'down_proj.weight']));
        continue;
      }
      const E: number = c.num_local_experts ?? c.num_experts ?? c.n_routed_experts ?? c.moe_num_experts;
      const K: number = c.num_experts_per_tok ?? c.moe_k;
      const logits = Array.from(mv(get(m, p + moeName + 'gate.weight'), x, E, H));
      let chosen: number[];
      let weights: number[];
      if (fam === 'glm4_moe' || fam === 'minimax_m2') {
        // sigmoid; select on s + e_score_correction_bias; weights = s, renormalised (GLM + 1e-20); x scale
        const s = logits.map(sigmoid);
        const b = get(m, p + (fam === 'glm4_moe' ? 'mlp.gate.e_score_correction_bias' : 'block_sparse_moe.e_score_correction_bias'));
        chosen = topk(
          s.map((v, e) => v + b[e]!),
          K,
        );
        weights = chosen.map((e) => s[e]!);
        const z = weights.reduce((a2, b2) => a2 + b2, 0) + (fam === 'glm4_moe' ? 1e-20 : 0);
        weights = weights.map((w) => (w / z) * (fam === 'glm4_moe' ? c.routed_scaling_factor : 1));
      } else if (fam === 'ernie4_5_moe') {
        // softmax; select on p + bias; weights = p / max(sum, moe_norm_min)
        const pr = softmax(logits);
        const b = get(m, p + 'mlp.moe_statics.e_score_correction_bias');
        chosen = topk(
          pr.map((v, e) => v + b[e]!),
          K,
        );
        weights = chosen.map((e) => pr[e]!);
        const z = Math.max(
          weights.reduce((a2, b2) => a2 + b2, 0),
          c.moe_norm_min,
        );
        weights = weights.map((w) => w / z);
      } else if (fam === 'deepseek_v3') {
        const s = logits.map(sigmoid);
        const b = get(m, p + 'mlp.gate.e_score_correction_bias');
        let sc = s.map((v, e) => v + b[e]!);
        const ng: number = c.n_group,
          gs = E / ng;
        const gScore = Array.from({ length: ng }, (_, gi) => {
          const grp = sc.slice(gi * gs, (gi + 1) * gs).sort((a2, b2) => b2 - a2);
          return grp[0]! + grp[1]!;
        });
        const keep = new Set(topk(gScore, c.topk_group));
        sc = sc.map((v, e) => (keep.has(Math.floor(e / gs)) ? v : 0));
        chosen = topk(sc, K);
        weights = chosen.map((e) => s[e]!);
        if (c.norm_topk_prob) {
          const z = weights.reduce((a2, b2) => a2 + b2, 0) + 1e-20;
          weights = weights.map((w) => w / z);
        }
        weights = weights.map((w) => w * c.routed_scaling_factor);
      } else {
        const pr = softmax(logits);
        let sc = pr;
        if (fam === 'deepseek_v2' && c.topk_method === 'group_limited_greedy') {
          const ng: number = c.n_group,
            gs = E / ng;
          const gScore = Array.from({ length: ng }, (_, gi) => Math.max(...pr.slice(gi * gs, (gi + 1) * gs)));
          const keep = new Set(topk(gScore, c.topk_group));
          sc = pr.map((v, e) => (keep.has(Math.floor(e / gs)) ? v : 0));
        }
        chosen = topk(sc, K);
        weights = chosen.map((e) => pr[e]!);
        const renorm = fam === 'mixtral' || ((fam === 'qwen2_moe' || fam === 'qwen3_moe' || fam === 'olmoe') && c.norm_topk_prob);
        if (renorm) {
          const z = weights.reduce((a2, b2) => a2 + b2, 0);
          weights = weights.map((w) => w / z);
        }
        if (fam === 'deepseek_v2') weights = weights.map((w) => w * c.routed_scaling_factor);
      }
      const y = new Float64Array(H);
      const I: number = c.moe_intermediate_size ?? c.intermediate_size;
      chosen.forEach((e, s) => {
        const names: [string, string, string] =
          moeName === 'block_sparse_moe.' ? ['w1.weight', 'w3.weight', 'w2.weight'] : ['gate_proj.weight', 'up_proj.weight', 'down_proj.weight'];
        const f = mlp(m, `${p}${moeName}experts.${e}.`, x, H, I, names);
        for (let a = 0; a < H; a++) y[a]! += weights[s]! * f[a]!;
      });
      if (fam === 'qwen2_moe') {
        const f = mlp(m, p + 'mlp.shared_expert.', x, H, c.shared_expert_intermediate_size, ['gate_proj.weight', 'up_proj.weight', 'down_proj.weight']);
        const gw = get(m, p + 'mlp.shared_expert_gate.weight');
        let z = 0;
        for (let a = 0; a < H; a++) z += gw[a]! * x[a]!;
        for (let a = 0; a < H; a++) y[a]! += sigmoid(z) * f[a]!;
      }
      if (mla || fam === 'glm4_moe' || fam === 'ernie4_5_moe') {
        const n: number = c.n_shared_experts ?? c.moe_num_shared_experts;
        const f = mlp(m, p + 'mlp.shared_experts.', x, H, c.moe_intermediate_size * n, ['gate_proj.weight', 'up_proj.weight', 'down_proj.weight']);
        for (let a = 0; a < H; a++) y[a]! += f[a]!;
      }
      out.push(y);
    }
    h = h.map((x, i) => x.map((v, a) => v + resMul * out[i]![a]!));
  }
  const hidden = h.map((x) => norm(x, 'model.norm'));
  const head = m.t.get('lm_head.weight') ?? emb;
  const div: number = fam === 'granitemoe' ? c.logits_scaling : 1;
  const logits = hidden.map((x) => mv(head, x, c.vocab_size, H, m.t.get('lm_head.bias')).map((v) => v / div));
  return { hidden, logits };
}

/** sum of -log p(next token) over positions 0..S-2 */
export function refNll(logits: Vec[], ids: number[]): number {
  let s = 0;
  for (let i = 0; i + 1 < ids.length; i++) {
    const l = Array.from(logits[i]!);
    const m = Math.max(...l);
    const lse = m + Math.log(l.reduce((a, v) => a + Math.exp(v - m), 0));
    s += lse - l[ids[i + 1]!]!;
  }
  return s;
}

/** granite (fused experts, top-k then softmax), gpt_oss (router bias, in-major fused interleaved experts, clamped
 *  activation), phimoe (sparsemixer); undefined for the other families */
function otherMoe(m: RefModel, fam: string, p: string, x: Vec, H: number): Vec | undefined {
  const c = m.cfg;
  const E: number = c.num_local_experts;
  const K: number = c.num_experts_per_tok;
  const I: number = c.intermediate_size;
  const y = new Float64Array(H);
  if (fam === 'granitemoe') {
    const logits = Array.from(mv(get(m, p + 'block_sparse_moe.router.layer.weight'), x, E, H));
    const chosen = topk(logits, K);
    const w = softmax(chosen.map((e) => logits[e]!));
    const inp = get(m, p + 'block_sparse_moe.input_linear.weight');
    const outp = get(m, p + 'block_sparse_moe.output_linear.weight');
    chosen.forEach((e, s) => {
      const gu = mv(inp.subarray(e * 2 * I * H, (e + 1) * 2 * I * H), x, 2 * I, H);
      const a = new Float64Array(I).map((_, i) => silu(gu[i]!) * gu[I + i]!);
      const f = mv(outp.subarray(e * H * I, (e + 1) * H * I), a, H, I);
      for (let j = 0; j < H; j++) y[j]! += w[s]! * f[j]!;
    });
    return y;
  }
  if (fam === 'gpt_oss') {
    const logits = Array.from(mv(get(m, p + 'mlp.router.weight'), x, E, H, get(m, p + 'mlp.router.bias')));
    const chosen = topk(logits, K);
    const w = softmax(chosen.map((e) => logits[e]!));
    const gup = get(m, p + 'mlp.experts.gate_up_proj'); // [E, H, 2I]
    const gub = get(m, p + 'mlp.experts.gate_up_proj_bias');
    const dp = get(m, p + 'mlp.experts.down_proj'); // [E, I, H]
    const db = get(m, p + 'mlp.experts.down_proj_bias');
    const limit: number = c.swiglu_limit ?? 7;
    chosen.forEach((e, s) => {
      const gu = new Float64Array(2 * I);
      for (let o = 0; o < 2 * I; o++) {
        let acc = gub[e * 2 * I + o]!;
        for (let j = 0; j < H; j++) acc += x[j]! * gup[(e * H + j) * 2 * I + o]!;
        gu[o] = acc;
      }
      const a = new Float64Array(I);
      for (let i = 0; i < I; i++) {
        const g = Math.min(gu[2 * i]!, limit);
        const u = Math.min(limit, Math.max(-limit, gu[2 * i + 1]!));
        a[i] = (u + 1) * g * sigmoid(1.702 * g);
      }
      for (let j = 0; j < H; j++) {
        let acc = db[e * H + j]!;
        for (let i = 0; i < I; i++) acc += a[i]! * dp[(e * I + i) * H + j]!;
        y[j]! += w[s]! * acc;
      }
    });
    return y;
  }
  if (fam === 'phimoe') {
    const logits = Array.from(mv(get(m, p + 'block_sparse_moe.gate.weight'), x, E, H));
    const eps2 = 2 * c.router_jitter_noise;
    const pick = (excl: number) => {
      const sc = logits.map((v, e) => (e === excl ? -Infinity : v));
      const mx = Math.max(...sc);
      const arg = sc.indexOf(mx);
      const masked = sc.map((v, e) => ((mx - logits[e]!) / Math.max(Math.abs(logits[e]!), mx) > eps2 ? -Infinity : v));
      return { arg, w: softmax(masked)[arg]! };
    };
    const first = pick(-1);
    const second = pick(first.arg);
    for (const { arg, w } of [first, second]) {
      const f = mlp(m, `${p}block_sparse_moe.experts.${arg}.`, x, H, I, ['w1.weight', 'w3.weight', 'w2.weight']);
      for (let j = 0; j < H; j++) y[j]! += w * f[j]!;
    }
    return y;
  }
  return undefined;
}
