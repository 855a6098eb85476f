/**
 * Rotary position embeddings as HF transformers computes them (modeling_rope_utils.py: ROPE_INIT_FUNCTIONS for
 * default / linear / dynamic (at lengths within max_position_embeddings it equals default) / yarn / llama3 /
 * longrope), applied in one of two styles:
 * - half: NeoX rotate_half, pairs (i, i + d/2) (mixtral, qwen*, olmoe, gpt_oss, glm4_moe);
 * - interleaved: pairs (2i, 2i+1) (deepseek v2's complex rotation, v3's rope_interleave, llama4, ernie).
 *   DeepSeek-V3's apply_rotary_pos_emb_interleave also reorders the rotated dims to [even..., odd...]; q and k get
 *   the same reorder, so every q.k product (all attention sees) equals the in-place pair rotation used here.
 * Partial rotary: only the first rotaryDim dims of each head rotate; the rest pass through (qwen/glm partial).
 */
import { fail } from '../errors.js';
import type { RopeSpec } from '../model/types.js';

export interface RopeTables {
  rotaryDim: number;
  /** [S, rotaryDim/2] cos and sin per position and frequency, attention scaling (yarn/longrope) folded in */
  cos: Float32Array;
  sin: Float32Array;
  positions: number;
}

function num(v: unknown, dflt: number): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : dflt;
}

function yarnMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/**
 * Inverse frequencies [rotaryDim/2] and the attention scaling for a RoPE spec.
 * `maxPositions` is config.max_position_embeddings (yarn/llama3 fall back to it for the original context).
 */
export function ropeFrequencies(spec: RopeSpec, maxPositions: number, seqLen = 0): { invFreq: Float64Array; attentionScaling: number } {
  const d = spec.rotaryDim;
  if (d % 2 !== 0 || d <= 0) fail('InvalidConfig', `rotary dimension ${d} must be a positive even number`);
  const half = d / 2;
  const base = spec.theta;
  const invFreq = new Float64Array(half);
  // HF computes base ** (arange(0, dim, 2).float() / dim) in float32; the float64 values here differ by < 1e-7
  for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.pow(base, (2 * i) / d);
  const sc = spec.scaling;
  const type = sc ? String(sc['rope_type'] ?? sc['type'] ?? 'default') : 'default';
  let attentionScaling = 1;
  switch (type) {
    case 'default':
      break;
    case 'linear': {
      const f = num(sc!['factor'], 1);
      for (let i = 0; i < half; i++) invFreq[i]! /= f;
      break;
    }
    case 'dynamic': {
      // dynamic NTK only changes frequencies past max_position_embeddings
      const f = num(sc!['factor'], 1);
      const orig = num(sc!['original_max_position_embeddings'], maxPositions);
      const alpha = sc!['alpha'];
      if (typeof alpha === 'number' && seqLen <= orig) {
        // hunyuan_v1_moe's DynamicNTKAlphaRotary: a fixed NTK base theta * alpha^(d/(d-2)) at every length within
        // max_position_embeddings, attention scaling 1 (HunYuanMoEV1RotaryEmbedding.__init__)
        const b2 = base * Math.pow(alpha, d / (d - 2));
        for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.pow(b2, (2 * i) / d);
      } else if (seqLen > orig) {
        const b2 = base * Math.pow((f * seqLen) / orig - (f - 1), d / (d - 2));
        for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.pow(b2, (2 * i) / d);
      }
      break;
    }
    case 'yarn': {
      const f = num(sc!['factor'], 1);
      const orig = num(sc!['original_max_position_embeddings'], maxPositions);
      const mscale = sc!['mscale'];
      const mscaleAll = sc!['mscale_all_dim'];
      const af = sc!['attention_factor'];
      if (typeof af === 'number') attentionScaling = af;
      else if (typeof mscale === 'number' && typeof mscaleAll === 'number' && mscale && mscaleAll) {
        attentionScaling = yarnMscale(f, mscale) / yarnMscale(f, mscaleAll);
      } else attentionScaling = yarnMscale(f);
      const betaFast = num(sc!['beta_fast'], 32);
      const betaSlow = num(sc!['beta_slow'], 1);
      const truncate = sc!['truncate'] !== false;
      const corr = (rot: number) => (d * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(base));
      let low = corr(betaFast);
      let high = corr(betaSlow);
      if (truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, d - 1);
      if (low === high) high += 0.001;
      for (let i = 0; i < half; i++) {
        const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
        const extrap = 1 - ramp;
        const pos = Math.pow(base, (2 * i) / d);
        invFreq[i] = (1 / (f * pos)) * (1 - extrap) + (1 / pos) * extrap;
      }
      break;
    }
    case 'llama3': {
      const f = num(sc!['factor'], 8);
      const lowF = num(sc!['low_freq_factor'], 1);
      const highF = num(sc!['high_freq_factor'], 4);
      const old = num(sc!['original_max_position_embeddings'], 8192);
      const lowWl = old / lowF;
      const highWl = old / highF;
      for (let i = 0; i < half; i++) {
        const inv = invFreq[i]!;
        const wl = (2 * Math.PI) / inv;
        let v = wl > lowWl ? inv / f : inv;
        if (!(wl < highWl) && !(wl > lowWl)) {
          const smooth = (old / wl - lowF) / (highF - lowF);
          v = ((1 - smooth) * v) / f + smooth * v;
        }
        invFreq[i] = v;
      }
      break;
    }
    case 'longrope': {
      const orig = num(sc!['original_max_position_embeddings'], maxPositions);
      const factors = (seqLen > orig ? sc!['long_factor'] : sc!['short_factor']) as unknown;
      if (!Array.isArray(factors) || factors.length !== half) fail('InvalidConfig', `rope_scaling longrope needs ${half} short/long factors`);
      for (let i = 0; i < half; i++) invFreq[i] = 1 / (num(factors[i], 1) * Math.pow(base, (2 * i) / d));
      const f = maxPositions / orig;
      const af = sc!['attention_factor'];
      attentionScaling = typeof af === 'number' ? af : f <= 1 ? 1 : Math.sqrt(1 + Math.log(f) / Math.log(orig));
      break;
    }
    default:
      fail('UnsupportedArchitecture', `rope_scaling type '${type}' is not supported by the runtime`);
  }
  return { invFreq, attentionScaling };
}

export function ropeTables(spec: RopeSpec, positions: number, maxPositions: number): RopeTables {
  const { invFreq, attentionScaling } = ropeFrequencies(spec, maxPositions, positions);
  const half = spec.rotaryDim / 2;
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      // HF: freqs = inv_freq(f32) @ position(f32) in float32, then cos/sin
      const a = Math.fround(Math.fround(invFreq[i]!) * p);
      cos[p * half + i] = Math.cos(a) * attentionScaling;
      sin[p * half + i] = Math.sin(a) * attentionScaling;
    }
  }
  return { rotaryDim: spec.rotaryDim, cos, sin, positions };
}

/**
 * Rotate in place: x is [rows, nHeads, headDim] laid out row-major, row r at position pos(r) = r % seqLen
 * (rows are whole windows back to back). `offset` is where the rotated part starts inside each head
 * (MLA rotates the tail slice qk_rope of each head; others rotate from 0).
 */
export function applyRope(
  x: Float32Array,
  rows: number,
  nHeads: number,
  headDim: number,
  seqLen: number,
  t: RopeTables,
  style: 'half' | 'interleaved',
  offset = 0,
): void {
  const half = t.rotaryDim / 2;
  if (seqLen > t.positions) throw new RangeError(`rope tables cover ${t.positions} positions, need ${seqLen}`);
  for (let r = 0; r < rows; r++) {
    const p = r % seqLen;
    const cb = p * half;
    for (let h = 0; h < nHeads; h++) {
      const base = (r * nHeads + h) * headDim + offset;
      if (style === 'half') {
        for (let i = 0; i < half; i++) {
          const a = x[base + i]!;
          const b = x[base + i + half]!;
          const c = t.cos[cb + i]!;
          const s = t.sin[cb + i]!;
          x[base + i] = a * c - b * s;
          x[base + i + half] = b * c + a * s;
        }
      } else {
        for (let i = 0; i < half; i++) {
          const a = x[base + 2 * i]!;
          const b = x[base + 2 * i + 1]!;
          const c = t.cos[cb + i]!;
          const s = t.sin[cb + i]!;
          x[base + 2 * i] = a * c - b * s;
          x[base + 2 * i + 1] = b * c + a * s;
        }
      }
    }
  }
}
