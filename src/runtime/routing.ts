/**
 * Router logits -> chosen experts and their weights, for every family's rule (RoutingRule in src/model/types.ts).
 * Pure typed-array code: routing is a few dozen operations per token, far below tfjs op overhead.
 *
 * Conventions, each from the family's HF modeling file:
 * - softmax scoring in fp32 over all experts, then top-k, optional renormalisation (mixtral, qwen2_moe, qwen3_moe,
 *   olmoe: modeling_mixtral.py / modeling_qwen2_moe.py / modeling_olmoe.py).
 * - DeepSeek-V2 (modeling_deepseek_v2.py): softmax; group_limited_greedy ranks groups by their max score; the
 *   experts of dropped groups are masked to 0.0 (masked_fill(~mask, 0.0)); softmax scores are positive, so this
 *   selects as -inf does (the kept groups always supply k experts); weights x routed_scaling_factor, no renormalisation.
 * - DeepSeek-V3 (modeling_deepseek_v3.py DeepseekV3TopkRouter.get_topk_indices): sigmoid; selection on
 *   s + e_score_correction_bias; group score = sum of the group's top-2 biased scores; dropped groups masked to -inf
 *   (transformers 5.18 masked_fill(~score_mask, float("-inf")), also glm4_moe / glm4_moe_lite: a kept expert whose
 *   biased score is negative still beats every dropped one);
 *   weights = unbiased sigmoid scores gathered at the chosen experts; / (sum + 1e-20) when norm_topk_prob; x scale.
 * - granite / gpt_oss: top-k on raw logits, then softmax over the k (modeling_granitemoe.py GraniteMoeTopKGating,
 *   modeling_gpt_oss.py GptOssTopKRouter); llama4: sigmoid of the k logits.
 * - phimoe sparsemixer (modeling_phimoe.py, eval branch).
 * Ties in top-k go to the lower expert index (torch.topk leaves tie order unspecified; this is the CPU kernel's
 * usual outcome and makes results reproducible).
 */
import type { RoutingRule } from '../model/types.js';
import type { Routing } from './api.js';

export interface RouteResult {
  /** [T, E] scores after the family's scoring: softmax or sigmoid of the logits; for rules that select on raw
   *  logits (score 'none'), the softmax over all experts, which is what router-probability-mass statistics use */
  probs: Float32Array;
  routing: Routing;
}

/** Indices of the k largest values of v[off .. off+n) (descending; ties to the lower index). */
function topkInto(v: Float64Array | Float32Array, off: number, n: number, k: number, out: Int32Array, outOff: number): void {
  for (let s = 0; s < k; s++) {
    let best = -1;
    let bv = -Infinity;
    for (let j = 0; j < n; j++) {
      const x = v[off + j]!;
      if (x > bv || (best < 0 && x === bv)) {
        let taken = false;
        for (let p = 0; p < s; p++)
          if (out[outOff + p] === j) {
            taken = true;
            break;
          }
        if (taken) continue;
        best = j;
        bv = x;
      }
    }
    if (best < 0) {
      // all remaining are NaN: take the first unused index so the routing stays well formed
      for (let j = 0; j < n; j++) {
        let taken = false;
        for (let p = 0; p < s; p++)
          if (out[outOff + p] === j) {
            taken = true;
            break;
          }
        if (!taken) {
          best = j;
          break;
        }
      }
    }
    out[outOff + s] = best;
  }
}

function softmaxRow(src: Float32Array, off: number, n: number, dst: Float64Array): void {
  let m = -Infinity;
  for (let j = 0; j < n; j++) m = Math.max(m, src[off + j]!);
  let s = 0;
  for (let j = 0; j < n; j++) {
    const e = Math.exp(src[off + j]! - m);
    dst[j] = e;
    s += e;
  }
  for (let j = 0; j < n; j++) dst[j]! /= s;
}

/**
 * Route T tokens. `logits` is [T, E] (router bias, where the family has one, already added).
 * `correctionBias` [E] is used for selection only when rule.selectionBias.
 */
export function route(rule: RoutingRule, logits: Float32Array, T: number, E: number, correctionBias?: Float32Array): RouteResult {
  const k = rule.topK;
  if (k < 1 || k > E) throw new RangeError(`top-k ${k} must be in [1, ${E}]`);
  const probs = new Float32Array(T * E);
  const idx = new Int32Array(T * k);
  const w = new Float32Array(T * k);
  const score = new Float64Array(E);
  const choice = new Float64Array(E);
  const useBias = rule.selectionBias && correctionBias !== undefined;
  const groups = rule.groups;
  if (groups && (E % groups.nGroup !== 0 || groups.topkGroup > groups.nGroup)) {
    throw new RangeError(`group routing: ${E} experts do not split into ${groups.nGroup} groups keeping ${groups.topkGroup}`);
  }
  const gsz = groups ? E / groups.nGroup : 0;
  const gScore = groups ? new Float64Array(groups.nGroup) : undefined;
  const gKeep = groups ? new Int32Array(groups.topkGroup) : undefined;
  const top2 = new Int32Array(2);
  const sel = new Int32Array(k);

  for (let t = 0; t < T; t++) {
    const off = t * E;
    if (rule.sparsemixer) {
      sparsemixerRow(logits, off, E, k, rule.sparsemixer.jitterEps, idx, w, t * k);
      softmaxRow(logits, off, E, score);
      for (let j = 0; j < E; j++) probs[off + j] = score[j]!;
      continue;
    }
    // scoring
    if (rule.score === 'sigmoid') {
      for (let j = 0; j < E; j++) score[j] = 1 / (1 + Math.exp(-logits[off + j]!));
    } else {
      softmaxRow(logits, off, E, score);
    }
    for (let j = 0; j < E; j++) probs[off + j] = score[j]!;
    // what selection ranks: raw logits for 'none', scores otherwise, plus the correction bias
    for (let j = 0; j < E; j++) {
      choice[j] = (rule.score === 'none' ? logits[off + j]! : score[j]!) + (useBias ? correctionBias![j]! : 0);
    }
    if (groups) {
      for (let g = 0; g < groups.nGroup; g++) {
        if (groups.groupScore === 'max') {
          let m = -Infinity;
          for (let j = 0; j < gsz; j++) m = Math.max(m, choice[g * gsz + j]!);
          gScore![g] = m;
        } else {
          const n2 = Math.min(2, gsz);
          topkInto(choice, g * gsz, gsz, n2, top2, 0);
          let s = 0;
          for (let p = 0; p < n2; p++) s += choice[g * gsz + top2[p]!]!;
          gScore![g] = s;
        }
      }
      topkInto(gScore!, 0, groups.nGroup, groups.topkGroup, gKeep!, 0);
      for (let g = 0; g < groups.nGroup; g++) {
        let kept = false;
        for (let p = 0; p < groups.topkGroup; p++) if (gKeep![p] === g) kept = true;
        // transformers 5.18 masks dropped groups to -inf (deepseek_v3, glm4_moe, glm4_moe_lite; deepseek_v2's 0.0 on
        // positive softmax scores selects the same experts)
        if (!kept) for (let j = 0; j < gsz; j++) choice[g * gsz + j] = -Infinity;
      }
    }
    topkInto(choice, 0, E, k, sel, 0);
    let sum = 0;
    for (let s = 0; s < k; s++) {
      const j = sel[s]!;
      idx[t * k + s] = j;
      const v = rule.score === 'none' ? logits[off + j]! : score[j]!;
      w[t * k + s] = v;
      sum += v;
    }
    if (rule.score === 'none' && rule.afterTopk !== 'none') {
      if (rule.afterTopk === 'softmax') {
        let m = -Infinity;
        for (let s = 0; s < k; s++) m = Math.max(m, w[t * k + s]!);
        let z = 0;
        const ex = new Float64Array(k);
        for (let s = 0; s < k; s++) {
          ex[s] = Math.exp(w[t * k + s]! - m);
          z += ex[s]!;
        }
        for (let s = 0; s < k; s++) w[t * k + s] = ex[s]! / z;
      } else {
        for (let s = 0; s < k; s++) w[t * k + s] = 1 / (1 + Math.exp(-w[t * k + s]!));
      }
      sum = 0;
      for (let s = 0; s < k; s++) sum += w[t * k + s]!;
    }
    if (rule.normalize) {
      const den = rule.normMin !== undefined ? Math.max(sum, rule.normMin) : sum + (rule.normEps ?? 0);
      for (let s = 0; s < k; s++) w[t * k + s] = w[t * k + s]! / den;
    }
    if (rule.scale !== 1) for (let s = 0; s < k; s++) w[t * k + s] = w[t * k + s]! * rule.scale;
  }
  return { probs, routing: { T, k, idx, w } };
}

/**
 * PhiMoE sparsemixer, eval branch (modeling_phimoe.py `sparsemixer`): the top-1 expert is the argmax; its weight is
 * the softmax over the logits that lie within 2*eps (relative to max(|s|, max)) of the max; the second is the argmax
 * with the first excluded, weighted by the softmax over its own masked set. Not renormalised. Only top-2 exists.
 */
function sparsemixerRow(logits: Float32Array, off: number, E: number, k: number, eps: number, idx: Int32Array, w: Float32Array, o: number): void {
  if (k !== 2) throw new RangeError('sparsemixer routing is defined for top-2 only');
  const masked = new Float64Array(E);
  let first = -1;
  for (let round = 0; round < 2; round++) {
    // scores for this round: the first round sees all logits, the second has the first choice at -inf
    let m = -Infinity;
    let arg = -1;
    for (let j = 0; j < E; j++) {
      const v = j === first ? -Infinity : logits[off + j]!;
      if (v > m) {
        m = v;
        arg = j;
      }
    }
    let z = 0;
    for (let j = 0; j < E; j++) {
      const s = logits[off + j]!;
      const factor = Math.max(Math.abs(s), m);
      const drop = (m - s) / factor > 2 * eps || j === first;
      masked[j] = drop ? -Infinity : s;
    }
    let mm = -Infinity;
    for (let j = 0; j < E; j++) mm = Math.max(mm, masked[j]!);
    for (let j = 0; j < E; j++) if (masked[j] !== -Infinity) z += Math.exp(masked[j]! - mm);
    idx[o + round] = arg;
    w[o + round] = Math.exp(masked[arg]! - mm) / z;
    first = arg;
  }
}

/** slot of the largest weight in token t's row (selection order can differ from weight order under a bias) */
function argmaxSlot(w: Float32Array, off: number, k: number): number {
  let b = 0;
  for (let s = 1; s < k; s++) if (w[off + s]! > w[off + b]!) b = s;
  return b;
}

/**
 * Dynamic expert skipping (Lu et al. 2024): every slot other than the token's largest-weight one is skipped when
 * its weight w_s < beta * w_max (for top-2 this is the paper's w2 < beta * w1). Returns a mask [T, k]
 * (1 = skipped) and the count of skipped slots.
 */
export function skipMask(routing: Routing, beta: number): { skipped: Uint8Array; count: number } {
  const { T, k, w } = routing;
  const skipped = new Uint8Array(T * k);
  let count = 0;
  if (!(beta > 0)) return { skipped, count };
  for (let t = 0; t < T; t++) {
    const top = argmaxSlot(w, t * k, k);
    const w0 = w[t * k + top]!;
    for (let s = 0; s < k; s++) {
      if (s !== top && w[t * k + s]! < beta * w0) {
        skipped[t * k + s] = 1;
        count++;
      }
    }
  }
  return { skipped, count };
}

/** Median over tokens of w2 / w1 (second-largest over largest routing weight): the per-layer beta for skipMask. */
export function medianSecondRatio(routing: Routing): number {
  const { T, k, w } = routing;
  if (k < 2 || T === 0) return 0;
  const r = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    const top = argmaxSlot(w, t * k, k);
    let second = -Infinity;
    for (let s = 0; s < k; s++) if (s !== top) second = Math.max(second, w[t * k + s]!);
    const w0 = w[t * k + top]!;
    r[t] = w0 > 0 ? second / w0 : 1;
  }
  r.sort();
  return T % 2 ? r[(T - 1) / 2]! : (r[T / 2 - 1]! + r[T / 2]!) / 2;
}

/**
 * The routing with skipped slots at weight 0 (the runtime then does not compute them). When the family
 * renormalises its top-k weights, the kept weights are renormalised to the original sum (Lu et al.'s reference
 * divides by the new sum), otherwise left as they are.
 */
export function applySkip(r: Routing, beta: number, renormalize: boolean): { routing: Routing; skipped: number } {
  const { skipped, count } = skipMask(r, beta);
  const w = new Float32Array(r.w);
  if (count > 0) {
    for (let t = 0; t < r.T; t++) {
      let before = 0;
      let after = 0;
      for (let s = 0; s < r.k; s++) {
        const i = t * r.k + s;
        before += r.w[i]!;
        if (skipped[i]) w[i] = 0;
        after += w[i]!;
      }
      if (renormalize && after > 0 && after !== before) for (let s = 0; s < r.k; s++) w[t * r.k + s]! *= before / after;
    }
  }
  return { routing: { T: r.T, k: r.k, idx: r.idx, w }, skipped: count };
}
