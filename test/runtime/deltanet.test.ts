/**
 * Gated DeltaNet (src/runtime/deltanet.ts) against a second implementation written here from the DeltaNet paper's
 * matrix form, S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T and o_t = S_t q_t (S as [dv, dk]),
 * with the projections split as modeling_qwen3_next.py's fix_query_key_value_ordering does; the runtime runs the
 * equivalent dk x dv state update. transformers' own forward is compared in `npm run test:families-py`.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../../kernels/random.js';
import type { DeltaNetDims } from '../../src/model/types.js';
import { initBackend } from '../../src/runtime/backend.js';
import { deltanet, deltanetCore, type DeltaNetWeights } from '../../src/runtime/deltanet.js';
import { upload } from '../../src/runtime/ops.js';

beforeAll(async () => {
  await initBackend('wasm');
});

const dims: DeltaNetDims = { layout: 'qkvz', numKHeads: 2, numVHeads: 4, headK: 4, headV: 3, convKernel: 3, eps: 1e-6 };
const H = 10;
const Kd = dims.numKHeads * dims.headK;
const Vd = dims.numVHeads * dims.headV;
const C = 2 * Kd + Vd;

interface Raw {
  qkvz: Float32Array;
  ba: Float32Array;
  conv: Float32Array;
  dtBias: Float32Array;
  aLog: Float32Array;
  norm: Float32Array;
  out: Float32Array;
}

function raw(seed: number): Raw {
  const r = seededRandom(seed);
  const rn = (n: number, s: number, o = 0) => Float32Array.from({ length: n }, () => o + (r() * 2 - 1) * s);
  return {
    qkvz: rn((C + Vd) * H, 0.5),
    ba: rn(2 * dims.numVHeads * H, 0.8),
    conv: rn(C * dims.convKernel, 0.6),
    dtBias: rn(dims.numVHeads, 0.5, 1),
    aLog: rn(dims.numVHeads, 1),
    norm: rn(dims.headV, 0.2, 1),
    out: rn(H * Vd, 0.4),
  };
}

function weights(w: Raw, layout: 'qkvz' | 'split' = 'qkvz'): DeltaNetWeights {
  return {
    kind: 'deltanet',
    qkvz: upload({ out: C + Vd, in: H, w: layout === 'qkvz' ? w.qkvz : toSplit(w.qkvz) }),
    ba: upload({ out: 2 * dims.numVHeads, in: H, w: layout === 'qkvz' ? w.ba : toSplitBa(w.ba) }),
    conv: w.conv,
    dtBias: w.dtBias,
    aLog: w.aLog,
    norm: w.norm,
    out: upload({ out: H, in: Vd, w: w.out }),
  };
}

/** rows of in_proj_qkvz (grouped by key head) as row ranges of q, k, v, z in the channel order */
function qkvzRows(): { q: number[]; k: number[]; v: number[]; z: number[] } {
  const { numKHeads: nk, numVHeads: nv, headK: dk, headV: dv } = dims;
  const rr = nv / nk;
  const g = 2 * dk + 2 * rr * dv;
  const q: number[] = [],
    k: number[] = [],
    v: number[] = [],
    z: number[] = [];
  for (let j = 0; j < nk; j++) {
    for (let i = 0; i < dk; i++) q.push(j * g + i);
    for (let i = 0; i < dk; i++) k.push(j * g + dk + i);
    for (let i = 0; i < rr * dv; i++) v.push(j * g + 2 * dk + i);
    for (let i = 0; i < rr * dv; i++) z.push(j * g + 2 * dk + rr * dv + i);
  }
  return { q, k, v, z };
}

/** the same weights as qwen3_5_moe stores them: in_proj_qkv rows [q | k | v] then in_proj_z, stacked */
function toSplit(w: Float32Array): Float32Array {
  const { q, k, v, z } = qkvzRows();
  const order = [...q, ...k, ...v, ...z];
  const o = new Float32Array(w.length);
  order.forEach((src, dst) => o.set(w.subarray(src * H, (src + 1) * H), dst * H));
  return o;
}

function toSplitBa(w: Float32Array): Float32Array {
  const { numKHeads: nk, numVHeads: nv } = dims;
  const rr = nv / nk;
  const order: number[] = [];
  for (let j = 0; j < nk; j++) for (let i = 0; i < rr; i++) order.push(j * 2 * rr + i);
  for (let j = 0; j < nk; j++) for (let i = 0; i < rr; i++) order.push(j * 2 * rr + rr + i);
  const o = new Float32Array(w.length);
  order.forEach((src, dst) => o.set(w.subarray(src * H, (src + 1) * H), dst * H));
  return o;
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((s, x, i) => s + x * b[i]!, 0);
const matVec = (w: Float32Array, rows: number[], x: ArrayLike<number>) => rows.map((r) => dot(w.subarray(r * H, (r + 1) * H), x));
const silu = (x: number) => x / (1 + Math.exp(-x));

/** out_proj's input for one window of S tokens x [S, H], from the paper's matrix recurrence */
function reference(w: Raw, x: Float32Array, S: number): number[][] {
  const { numKHeads: nk, numVHeads: nv, headK: dk, headV: dv, convKernel: K } = dims;
  const rr = nv / nk;
  const rows = qkvzRows();
  const tok = (t: number) => x.subarray(t * H, (t + 1) * H);
  const chan = [...rows.q, ...rows.k, ...rows.v];
  const pre = Array.from({ length: S }, (_, t) => matVec(w.qkvz, chan, tok(t)));
  const conv = pre.map((_, t) =>
    chan.map((_, c) => {
      let s = 0;
      for (let j = 0; j < K; j++) if (t - (K - 1) + j >= 0) s += w.conv[c * K + j]! * pre[t - (K - 1) + j]![c]!;
      return silu(s);
    }),
  );
  const baRows = (off: number) => Array.from({ length: nv }, (_, h) => Math.floor(h / rr) * 2 * rr + off + (h % rr));
  const out: number[][] = Array.from({ length: S }, () => new Array<number>(Vd).fill(0));
  for (let h = 0; h < nv; h++) {
    const kh = Math.floor(h / rr);
    // S as [dv][dk]
    let St = Array.from({ length: dv }, () => new Array<number>(dk).fill(0));
    for (let t = 0; t < S; t++) {
      const l2 = (v: number[]) => {
        const n = Math.sqrt(dot(v, v) + 1e-6);
        return v.map((a) => a / n);
      };
      const q = l2(conv[t]!.slice(kh * dk, (kh + 1) * dk)).map((a) => a / Math.sqrt(dk));
      const k = l2(conv[t]!.slice(Kd + kh * dk, Kd + (kh + 1) * dk));
      const v = conv[t]!.slice(2 * Kd + h * dv, 2 * Kd + (h + 1) * dv);
      const b = matVec(w.ba, baRows(0), tok(t))[h]!;
      const a = matVec(w.ba, baRows(rr), tok(t))[h]!;
      const beta = 1 / (1 + Math.exp(-b));
      const alpha = Math.exp(-Math.exp(w.aLog[h]!) * Math.log1p(Math.exp(a + w.dtBias[h]!)));
      // S (I - beta k k^T) = S - beta (S k) k^T
      St = St.map((row) => {
        const sk = dot(row, k);
        return row.map((s, i) => alpha * (s - beta * sk * k[i]!));
      });
      St = St.map((row, j) => row.map((s, i) => s + beta * v[j]! * k[i]!));
      const o = St.map((row) => dot(row, q));
      const z = matVec(w.qkvz, rows.z.slice(h * dv, (h + 1) * dv), tok(t));
      const inv = 1 / Math.sqrt(dot(o, o) / dv + dims.eps);
      o.forEach((oj, j) => (out[t]![h * dv + j] = oj * inv * w.norm[j]! * silu(z[j]!)));
    }
  }
  return out;
}

describe('Gated DeltaNet', () => {
  const S = 9;
  const w = raw(7);
  const rx = seededRandom(3);
  const x = Float32Array.from({ length: 2 * S * H }, () => rx() * 2 - 1);

  it("equals the paper's matrix recurrence, window by window (state restarts at each window)", () => {
    const got = deltanetCore(x, 2, S, weights(w), dims);
    let worst = 0;
    for (let n = 0; n < 2; n++) {
      const want = reference(w, x.subarray(n * S * H, (n + 1) * S * H), S);
      for (let t = 0; t < S; t++)
        for (let j = 0; j < Vd; j++) worst = Math.max(worst, Math.abs(got[(n * S + t) * Vd + j]! - want[t]![j]!) / (1e-3 + Math.abs(want[t]![j]!)));
    }
    // float32 projections and conv (as stored) against float64 here
    expect(worst).toBeLessThan(1e-4);
    // the outputs are not trivially small (the comparison above means something)
    expect(Math.max(...Array.from(got, Math.abs))).toBeGreaterThan(0.05);
  });

  it('is causal: changing the last token changes only the last position', () => {
    const a = deltanetCore(x.subarray(0, S * H), 1, S, weights(w), dims);
    const y = x.slice(0, S * H);
    for (let i = (S - 1) * H; i < S * H; i++) y[i] = -y[i]!;
    const b = deltanetCore(y, 1, S, weights(w), dims);
    expect(Array.from(a.subarray(0, (S - 1) * Vd))).toEqual(Array.from(b.subarray(0, (S - 1) * Vd)));
    expect(Array.from(a.subarray((S - 1) * Vd))).not.toEqual(Array.from(b.subarray((S - 1) * Vd)));
  });

  it("qwen3_5_moe's split projections give qwen3_next's grouped result", () => {
    const a = deltanet(x, 2, S, H, weights(w, 'qkvz'), dims);
    const b = deltanet(x, 2, S, H, weights(w, 'split'), { ...dims, layout: 'split' });
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    expect(worst).toBeLessThan(1e-6);
    expect(a.length).toBe(2 * S * H);
  });
});
