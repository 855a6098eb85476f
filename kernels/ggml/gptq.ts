/**
 * GPTQ (Frantar et al. 2022) into llama.cpp's block formats: the columns of W [out, in] (a ggml row is one output
 * row, its blocks run along the input columns) are quantized in order and each column's error is fed back into the
 * columns not yet quantized through the upper Cholesky factor of H^-1, exactly as kernels/quant/gptq.ts does for
 * GPTQ's own grid. What changes is the rounding: at the first column of every format block (32 or 256 columns)
 * the block's stored parameters (float16 d / dmin, integer sub-scales and sub-offsets) are fitted, row by row, to
 * the error-updated values of the whole block by the format's own fit (llama.cpp's for the k-quants, kfit.ts, and
 * fitBlockParams for the 32-value types; weighted by the Hessian diagonal the way llama.cpp weights by its importance
 * matrix), and from then on every column takes the nearest
 * code on the grid the decoder rebuilds (nearestCode). The feedback inside a lazy batch runs on typed arrays; the
 * update of the columns after the batch is one matrix product on tfjs.
 *
 * The same loop serves every format whose values are rounded one at a time on a grid fixed per block (BlockRounder):
 * the k-quants and 32-value types (an affine grid per sub-block) and IQ4_NL/IQ4_XS (16 fixed levels times each
 * sub-block's step, llama.cpp's search for the steps, iq4.ts). Formats whose codes are vectors of `group` values
 * (IQ2_XXS/IQ2_XS/IQ2_S: one grid point per 8 values, iq2.ts) choose each group's code jointly at its first column,
 * from the group's values as the feedback of every column before the group left them (Hessian-diagonal weighted);
 * the group's columns then feed back their errors one by one as usual, which is GPTQ's exact update for those
 * columns fixed at the chosen values (the errors of the group's first columns reach its later ones too late to
 * change their code, the price of a joint code). IQ3_XXS/IQ3_S do the same with one grid point per 4 values
 * (d and scales from llama.cpp's fit, iq3.ts).
 *
 * Act-order is not offered: a GGUF row's blocks are contiguous input columns, there is nowhere to store a
 * permutation.
 */
import * as tf from '@tensorflow/tfjs-core';
import { fail } from '../../src/errors.js';
import type { GptqPrepared } from '../quant/gptq.js';
import type { GgmlType } from '../../src/gguf/format.js';
import { IQ3_SPECS, fitIq3Codes, packIq3Codes, roundIq3Group, type Iq3Codes, type Iq3Type } from './iq3.js';
import { IQ2_BLOCK, IQ2_BYTES, chooseGroupIq2, fitBlockIq2, groupStepsIq2, isIq2Type, packBlockIq2, type Iq2Block, type Iq2Type } from './iq2.js';
import { IQ4_SPECS, KVALUES_IQ4NL, bestIndex, fitIq4Block, iq4Steps, packIq4Block, type Iq4Type } from './iq4.js';
import { KQUANT_SPECS, KQUANT_TYPES, blockGrid, fitBlock, nearestCode, packBlock, type KQuantType } from './kquants.js';

export interface GgmlGptqResult {
  /** the tensor's bytes in ggml layout (row after row) */
  bytes: Uint8Array;
  /** what the decoder rebuilds, [out, in] */
  deq: Float32Array;
  /** GPTQ's proxy loss: sum of squared errors weighted by 1/[H^-1]_ii^2, halved */
  loss: number;
}

const fr = Math.fround;

/**
 * How GPTQ rounds one format block of one row: fit the block's stored parameters to its (error-updated) values,
 * then take each value's code on the grid the decoder rebuilds, then pack the block.
 */
export interface BlockRounder<S> {
  block: number;
  bytes: number;
  /** the stored parameters for the block's values x (importance imp per value) */
  fit(x: Float64Array, imp: Float64Array): S;
  /** the code of value v at position j of the block (kept in the state); returns what the decoder rebuilds */
  round(s: S, j: number, v: number): number;
  pack(s: S, out: Uint8Array, o: number): void;
  /** vector codes: at every position j that starts a group of `group` values, the group's code from x[0..group) */
  group?: number;
  choose?(s: S, j: number, x: Float64Array): void;
}

function kquantRounder(type: KQuantType): BlockRounder<{ blk: ReturnType<typeof fitBlock>; dl: Float32Array; ml: Float32Array }> {
  const s = KQUANT_SPECS[type];
  return {
    block: s.block,
    bytes: s.bytes,
    fit: (x, imp) => {
      // the k-quants take llama.cpp's own fit (kfit.ts) with the Hessian diagonal as its importance
      const blk = fitBlock(type, x, 0, imp);
      return { blk, ...blockGrid(type, blk) };
    },
    round: (st, j, v) => {
      const sub = Math.floor(j / s.sub);
      const dl = st.dl[sub]!;
      const ml = st.ml[sub]!;
      const q = nearestCode(v, dl, ml, s.qmin, s.qmax);
      st.blk.q[j] = q;
      return s.affine ? fr(fr(dl * q) - ml) : fr(dl * q);
    },
    pack: (st, out, o) => packBlock(type, st.blk, out, o),
  };
}

function iq4Rounder(type: Iq4Type): BlockRounder<{ blk: ReturnType<typeof fitIq4Block>; dl: Float32Array }> {
  return {
    ...IQ4_SPECS[type],
    fit: (x, imp) => {
      // llama.cpp's step search (quantize_row_iq4_nl_impl) on the float32 values, the Hessian diagonal as importance
      const blk = fitIq4Block(type, Float32Array.from(x), 0, imp);
      return { blk, dl: iq4Steps(type, blk) };
    },
    round: (st, j, v) => {
      const dl = st.dl[j >> 5]!;
      // a step of 0 decodes every level to 0; the level nearest v / dl is the nearest decoded value otherwise
      const l = dl === 0 ? bestIndex(0) : bestIndex(fr(v / dl));
      st.blk.q[j] = l;
      return fr(dl * KVALUES_IQ4NL[l]!);
    },
    pack: (st, out, o) => packIq4Block(type, st.blk, out, o),
  };
}

function iq2Rounder(type: Iq2Type): BlockRounder<{ blk: Iq2Block; step: Float32Array; h: Float64Array; deq: Float32Array }> {
  return {
    block: IQ2_BLOCK,
    bytes: IQ2_BYTES[type],
    group: 8,
    fit: (x, imp) => {
      // llama.cpp's fit of d and the 4-bit sub-block scales (quantize_row_iq2_*_impl), the Hessian diagonal as its
      // importance; its points are then re-chosen group by group
      const blk = fitBlockIq2(type, x, 0, imp, 0);
      return { blk, step: groupStepsIq2(blk), h: Float64Array.from(imp), deq: new Float32Array(IQ2_BLOCK) };
    },
    choose: (st, j, x) => chooseGroupIq2(st.blk, j >> 3, st.step[j >> 3]!, x, 0, st.h, j, st.deq, j),
    round: (st, j) => st.deq[j]!,
    pack: (st, out, o) => packBlockIq2(st.blk, out, o),
  };
}

function iq3Rounder(type: Iq3Type): BlockRounder<Iq3Codes> {
  return {
    ...IQ3_SPECS[type],
    group: 4,
    // llama.cpp's fit (quantize_row_iq3_*_impl) on the float32 values fixes d and the sub-block scales
    fit: (x, imp) => fitIq3Codes(type, Float32Array.from(x), imp),
    choose: (st, j, x) => roundIq3Group(type, st, j, x, 0),
    round: (st, j) => st.deq[j]!,
    pack: (st, out, o) => packIq3Codes(type, st, out, o),
  };
}

/** The rounder of a type GPTQ can write, or undefined (types it has no rounding for). */
export function gptqRounder(type: GgmlType): BlockRounder<unknown> | undefined {
  if ((KQUANT_TYPES as readonly string[]).includes(type)) return kquantRounder(type as KQuantType) as BlockRounder<unknown>;
  if (type === 'IQ4_NL' || type === 'IQ4_XS') return iq4Rounder(type) as BlockRounder<unknown>;
  if (isIq2Type(type)) return iq2Rounder(type) as BlockRounder<unknown>;
  if (type === 'IQ3_XXS' || type === 'IQ3_S') return iq3Rounder(type) as BlockRounder<unknown>;
  return undefined;
}

/**
 * @param w W [out, in] row-major (a ggml tensor of ne = [in, out])
 * @param prep the Hessian of the inputs, prepared by kernels/quant/gptq.ts prepareGptq (without act-order)
 * @param importance per input column, for fitting each block's parameters (the Hessian diagonal); default 1
 */
export function gptqGgml(type: GgmlType, w: Float32Array, out: number, inF: number, prep: GptqPrepared, importance?: ArrayLike<number>): GgmlGptqResult {
  const s = gptqRounder(type);
  if (!s) fail('Usage', `GPTQ cannot round into ${type} (its codes are not one value each)`);
  if (w.length !== out * inF) fail('InvalidShape', `GPTQ ${type}: weight has ${w.length} values, expected ${out}x${inF}`);
  if (inF % s.block !== 0) fail('InvalidShape', `GPTQ ${type}: rows of ${inF} values are not whole blocks of ${s.block}`);
  if (prep.inF !== inF) fail('InvalidShape', `GPTQ ${type}: Hessian is for ${prep.inF} inputs, the weight has ${inF}`);
  if (prep.perm) fail('Usage', `GPTQ ${type}: act-order cannot be stored in a GGUF block format`);
  const { U } = prep;
  const nb = inF / s.block;
  const rowBytes = nb * s.bytes;
  const bytes = new Uint8Array(out * rowBytes);
  const deq = new Float32Array(out * inF);
  const Wp = Float32Array.from(w);
  for (let i = 0; i < inF; i++) if (prep.dead[i]) for (let o = 0; o < out; o++) Wp[o * inF + i] = 0;
  // lazy batches of whole format blocks (at least 128 columns), so a block's parameters see every feedback update
  // from the columns before it
  const bs = s.block * Math.max(1, Math.round(Math.max(128, s.block) / s.block));
  const imp = new Float64Array(s.block);
  const states: unknown[] = new Array(out);
  let loss = 0;

  for (let i1 = 0; i1 < inF; i1 += bs) {
    const i2 = Math.min(i1 + bs, inF);
    const cnt = i2 - i1;
    const W1 = new Float64Array(out * cnt);
    for (let o = 0; o < out; o++) for (let j = 0; j < cnt; j++) W1[o * cnt + j] = Wp[o * inF + i1 + j]!;
    const Err1 = new Float32Array(out * cnt);
    for (let i = 0; i < cnt; i++) {
      const col = i1 + i;
      const inBlock = col % s.block;
      if (inBlock === 0) {
        for (let k = 0; k < s.block; k++) imp[k] = importance ? importance[col + k]! : 1;
        for (let o = 0; o < out; o++) states[o] = s.fit(W1.subarray(o * cnt + i, o * cnt + i + s.block), imp);
      }
      const ucol = col * inF;
      const d = U[ucol + col]!;
      for (let o = 0; o < out; o++) {
        const rowOff = o * cnt;
        const wv = W1[rowOff + i]!;
        if (s.choose && inBlock % s.group! === 0) s.choose(states[o], inBlock, W1.subarray(rowOff + i, rowOff + i + s.group!));
        const v = s.round(states[o], inBlock, wv);
        deq[o * inF + col] = v;
        const err = wv - v;
        loss += (err * err) / (d * d) / 2;
        const e = err / d;
        Err1[rowOff + i] = e;
        for (let j = i + 1; j < cnt; j++) W1[rowOff + j] -= e * U[ucol + i1 + j]!;
        if (inBlock === s.block - 1) s.pack(states[o], bytes, o * rowBytes + Math.floor(col / s.block) * s.bytes);
      }
    }
    if (i2 < inF) {
      const rest = inF - i2;
      const Ublk = new Float32Array(cnt * rest);
      for (let a = 0; a < cnt; a++) for (let b = 0; b < rest; b++) Ublk[a * rest + b] = U[(i1 + a) * inF + i2 + b]!;
      const upd = tf.tidy(() => tf.matMul(tf.tensor2d(Err1, [out, cnt]), tf.tensor2d(Ublk, [cnt, rest])));
      const u = upd.dataSync() as Float32Array;
      upd.dispose();
      for (let o = 0; o < out; o++) for (let b = 0; b < rest; b++) Wp[o * inF + i2 + b] -= u[o * rest + b]!;
    }
  }
  return { bytes, deq, loss };
}

/** tr((W_q - W) H (W_q - W)^T): the summed squared output error of the linear over the tokens H was made from. */
export function hessianError(w: Float32Array, wq: Float32Array, out: number, inF: number, h: Float64Array): number {
  let total = 0;
  const d = new Float64Array(inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) d[i] = wq[o * inF + i]! - w[o * inF + i]!;
    for (let i = 0; i < inF; i++) {
      if (d[i] === 0) continue;
      let s = 0;
      const hr = i * inF;
      for (let j = 0; j < inF; j++) s += h[hr + j]! * d[j]!;
      total += d[i]! * s;
    }
  }
  return total;
}

/** hessianError on tfjs: sum((dW H) * dW) as one matrix product, for large linears. */
export function hessianErrorTf(w: Float32Array, wq: Float32Array, out: number, inF: number, h: Float64Array): number {
  const d = new Float32Array(out * inF);
  for (let i = 0; i < d.length; i++) d[i] = wq[i]! - w[i]!;
  const s = tf.tidy(() => {
    const D = tf.tensor2d(d, [out, inF]);
    return tf.sum(tf.mul(tf.matMul(D, tf.tensor2d(Float32Array.from(h), [inF, inF])), D));
  });
  const v = (s.dataSync() as Float32Array)[0]!;
  s.dispose();
  return v;
}
