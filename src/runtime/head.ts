/**
 * Final projection to the vocabulary and everything measured on it: negative log-likelihood of the next token,
 * and, against a base model, KL(base || model) and top-1 agreement. The lm_head is streamed in chunks of vocabulary
 * rows (read from disk once, never whole in memory or in the wasm heap); per token only running reductions are
 * kept (online log-sum-exp), so a 150k vocabulary costs no more memory than a 32k one.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Model } from '../model/open.js';
import { openCached } from './opened.js';
// a worker opens the model itself: the on-disk linear formats the main thread reads (GPTQ, fused GPTQ,
// compressed-tensors, low-rank factors) must be registered here too, or a quantized checkpoint looks incomplete
import '../quantize/format.js';
import '../quantize/fused.js';
import '../decompose/format.js';
import { activeBackend } from './backend.js';
import { transposeHost } from './ops.js';
import { getPool, runTasks } from './pool.js';

const VOCAB_CHUNK = 8192;
const TOKEN_CHUNK = 2048;

export interface HeadInput {
  model: Model;
  /** final-norm hidden states [T, H] */
  hidden: Float32Array;
}

export interface HeadScores {
  /** per model: sum of -log p(target) over scored positions */
  nll: number[];
  scored: number;
  /** with two models (base first): sum over positions of KL(base || model), and top-1 agreements */
  kl?: number;
  top1Agree?: number;
}

/** Rows of `hidden` that are scored, and their targets: position i of a window predicts token i+1. */
export function scoredPositions(windows: readonly Int32Array[]): { rows: Int32Array; targets: Int32Array } {
  let n = 0;
  for (const w of windows) n += Math.max(0, w.length - 1);
  const rows = new Int32Array(n);
  const targets = new Int32Array(n);
  let p = 0;
  let base = 0;
  for (const w of windows) {
    for (let i = 0; i + 1 < w.length; i++) {
      rows[p] = base + i;
      targets[p++] = w[i + 1]!;
    }
    base += w.length;
  }
  return { rows, targets };
}

function headTensor(m: Model): string {
  return m.view.lmHead ?? m.view.embed;
}

function logaddexp(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const m = Math.max(a, b);
  return m + Math.log(Math.exp(a - m) + Math.exp(b - m));
}

/**
 * Score the next-token predictions of one model, or of a base and a model on the same windows (base first).
 */
/** Per-position scores of P positions (hidden rows hs[m] [P, H], next tokens `targets`) against each model's head. */
export interface HeadRange {
  lse: Float64Array[];
  tgt: Float64Array[];
  amax: Int32Array[];
  klA: Float64Array;
}

export interface HeadRangeTask {
  dirs: string[];
  hs: Float32Array[];
  targets: Int32Array;
}

/** scoreRange on a worker: the models are opened there (once per worker while their files stay the same, opened.ts). */
export async function headRangeTask(t: HeadRangeTask): Promise<HeadRange> {
  const models = await Promise.all(t.dirs.map((d) => openCached(d)));
  return scoreRange(models, t.hs, t.targets);
}

export const HEAD_MODULE = import.meta.url;

function concatF64(parts: Float64Array[], n: number): Float64Array {
  const o = new Float64Array(n);
  let off = 0;
  for (const q of parts) {
    o.set(q, off);
    off += q.length;
  }
  return o;
}

/** The vocabulary loop: head chunks read once, every position's running log-sum-exp, target logit and argmax. */
export async function scoreRange(models: readonly Model[], hs: readonly Float32Array[], targets: Int32Array): Promise<HeadRange> {
  const P = targets.length;
  const M = models.length;
  const V = models[0]!.view.dims.vocab;
  const inputs = models.map((model) => ({ model }));
  // per model and position: running log-sum-exp, target logit, argmax and its logit
  const lse = inputs.map(() => new Float64Array(P).fill(-Infinity));
  const tgt = inputs.map(() => new Float64Array(P));
  const amax = inputs.map(() => new Int32Array(P));
  const vmax = inputs.map(() => new Float64Array(P).fill(-Infinity));
  // KL accumulator: A = sum_v exp(l_b - LSE_b) (l_b - l_m), combined across chunks with the running LSE_b
  const klA = new Float64Array(P);
  for (let v0 = 0; v0 < V; v0 += VOCAB_CHUNK) {
    const vc = Math.min(VOCAB_CHUNK, V - v0);
    const heads = await Promise.all(
      inputs.map(async (inp) => {
        const Hm = inp.model.view.dims.hidden;
        const w = await inp.model.ckpt.readF32(headTensor(inp.model), v0 * Hm, (v0 + vc) * Hm);
        const biasName = inp.model.view.forward.lmHeadBias;
        const b = biasName ? await inp.model.ckpt.readF32(biasName, v0, v0 + vc) : undefined;
        return {
          w,
          wt: tf.tensor2d(transposeHost(w, vc, Hm), [Hm, vc]),
          b: b ? tf.tensor1d(b) : undefined,
          bHost: b,
          div: inp.model.view.forward.logitsDivisor,
          Hm,
        };
      }),
    );
    try {
      for (let p0 = 0; p0 < P; p0 += TOKEN_CHUNK) {
        const pc = Math.min(TOKEN_CHUNK, P - p0);
        const res = tf.tidy(() => {
          const logits = heads.map((hd, m) => {
            // W^T chunk [H, vc] as the plain right operand (transposeB is much slower on wasm)
            let l: tf.Tensor2D = tf.matMul(tf.tensor2d(hs[m]!.subarray(p0 * hd.Hm, (p0 + pc) * hd.Hm), [pc, hd.Hm]), hd.wt);
            if (hd.b) l = tf.add(l, hd.b);
            if (hd.div !== 1) l = tf.div(l, hd.div);
            return l;
          });
          // per token: the max logit and the softmax's value there (1 / sum exp(l - max)), so the chunk's
          // log-sum-exp is max - log(pmax) on the host. The wasm backend's softmax (XNNPACK, vectorised exp) is 4x
          // faster than its exp kernel, which tf.logSumExp would use. The argmax is needed only for agreement.
          const out: tf.Tensor[] = [];
          const probs = logits.map((l) => tf.softmax(l));
          logits.forEach((l, m) => {
            out.push(tf.max(l, 1), tf.max(probs[m]!, 1));
            if (M === 2) out.push(tf.argMax(l, 1));
          });
          if (M === 2) out.push(tf.sum(tf.mul(probs[0]!, tf.sub(logits[0]!, logits[1]!)), 1));
          return out;
        });
        const data = res.map((t) => t.dataSync());
        res.forEach((t) => t.dispose());
        const per = M === 2 ? 3 : 2;
        for (let m = 0; m < M; m++) {
          const cm = data[per * m]!;
          const cp = data[per * m + 1]!;
          const ca = M === 2 ? data[per * m + 2]! : undefined;
          const hd = heads[m]!;
          const hsm = hs[m]!;
          for (let i = 0; i < pc; i++) {
            const p = p0 + i;
            const cl = cm[i]! - Math.log(cp[i]!);
            if (m === 0 && M === 2) {
              const prev = lse[0]![p]!;
              const next = logaddexp(prev, cl);
              klA[p] = (prev === -Infinity ? 0 : klA[p]! * Math.exp(prev - next)) + data[2 * per]![i]! * Math.exp(cl - next);
            }
            lse[m]![p] = logaddexp(lse[m]![p]!, cl);
            if (ca && cm[i]! > vmax[m]![p]!) {
              vmax[m]![p] = cm[i]!;
              amax[m]![p] = v0 + ca[i]!;
            }
            const t = targets[p]!;
            if (t >= v0 && t < v0 + vc) {
              // the target's logit, on the host from the same weights (one dot product per token)
              let s = 0;
              const wo = (t - v0) * hd.Hm;
              const ho = p * hd.Hm;
              for (let j = 0; j < hd.Hm; j++) s += hsm[ho + j]! * hd.w[wo + j]!;
              if (hd.bHost) s += hd.bHost[t - v0]!;
              tgt[m]![p] = s / hd.div;
            }
          }
        }
      }
    } finally {
      for (const hd of heads) {
        hd.wt.dispose();
        hd.b?.dispose();
      }
    }
  }
  return { lse, tgt, amax, klA };
}

export async function scoreHeads(inputs: readonly HeadInput[], windows: readonly Int32Array[]): Promise<HeadScores> {
  if (inputs.length < 1 || inputs.length > 2) throw new RangeError('scoreHeads takes one model or a base and a model');
  const { rows, targets } = scoredPositions(windows);
  const P = rows.length;
  const V = inputs[0]!.model.view.dims.vocab;
  for (const inp of inputs) {
    if (inp.model.view.dims.vocab !== V) throw new RangeError(`vocabularies differ (${inp.model.view.dims.vocab} vs ${V})`);
  }
  for (let p = 0; p < P; p++) {
    const t = targets[p]!;
    if (t < 0 || t >= V) throw new RangeError(`token id ${t} is outside the vocabulary of ${V}`);
  }
  const M = inputs.length;
  // gather scored rows once per model (contiguous, so token chunks are plain slices)
  const hs = inputs.map((inp) => {
    const h = inp.hidden;
    const Hm = inp.model.view.dims.hidden;
    const g = new Float32Array(P * Hm);
    for (let p = 0; p < P; p++) g.set(h.subarray(rows[p]! * Hm, (rows[p]! + 1) * Hm), p * Hm);
    return g;
  });
  const models = inputs.map((i) => i.model);
  // every position's scores are its own (rows of one product, row-wise reductions), so ranges of positions run on
  // the pool's workers, each reading the head itself, and the sums below run in position order either way
  const pool = await getPool(activeBackend() ?? 'auto');
  let r: HeadRange;
  if (pool && P >= 2 * TOKEN_CHUNK) {
    const per = Math.ceil(P / pool.size / TOKEN_CHUNK) * TOKEN_CHUNK;
    const ranges: [number, number][] = [];
    for (let p0 = 0; p0 < P; p0 += per) ranges.push([p0, Math.min(P, p0 + per)]);
    const parts = await runTasks<HeadRangeTask, HeadRange>(
      activeBackend()!,
      HEAD_MODULE,
      'headRangeTask',
      ranges.map(([p0, p1]) => ({
        dirs: models.map((m) => m.dir),
        hs: hs.map((h, m) => h.slice(p0 * models[m]!.view.dims.hidden, p1 * models[m]!.view.dims.hidden)),
        targets: targets.slice(p0, p1),
      })),
    );
    r = {
      lse: models.map((_, m) =>
        concatF64(
          parts.map((q) => q.lse[m]!),
          P,
        ),
      ),
      tgt: models.map((_, m) =>
        concatF64(
          parts.map((q) => q.tgt[m]!),
          P,
        ),
      ),
      amax: models.map((_, m) => {
        const o = new Int32Array(P);
        let off = 0;
        for (const q of parts) {
          o.set(q.amax[m]!, off);
          off += q.amax[m]!.length;
        }
        return o;
      }),
      klA: concatF64(
        parts.map((q) => q.klA),
        P,
      ),
    };
  } else r = await scoreRange(models, hs, targets);
  const { lse, tgt, amax, klA } = r;
  const nll = inputs.map((_, m) => {
    let s = 0;
    for (let p = 0; p < P; p++) s += lse[m]![p]! - tgt[m]![p]!;
    return s;
  });
  const res: HeadScores = { nll, scored: P };
  if (M === 2) {
    let kl = 0;
    let agree = 0;
    for (let p = 0; p < P; p++) {
      kl += klA[p]! - lse[0]![p]! + lse[1]![p]!;
      if (amax[0]![p] === amax[1]![p]) agree++;
    }
    res.kl = kl;
    res.top1Agree = agree;
  }
  return res;
}
