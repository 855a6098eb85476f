/**
 * GPTQ v1 checkpoint packing, as GPTQModel / AutoGPTQ write it (confirmed in ModelCloud/GPTQModel
 * gptqmodel/nn_modules/qlinear/qlinear_cuda_old.py `pack` and its unpacking in `forward`, and
 * gptqmodel/utils/model.py `convert_gptq_v1_to_v2_format_module`):
 *
 * - `qweight` int32 [in*bits/32, out]: codes packed along the input dimension, LSB first. For 2/4/8 bits value i
 *   of a column sits in word i/pf at shift bits*(i%pf), pf = 32/bits.
 * - 3 bits: 32 values in 3 words. Word 0 holds v0..v9 at shifts 0,3,..,27 and the low 2 bits of v10 at 30;
 *   word 1 holds bit 2 of v10 at 0, v11..v20 at shifts 1,4,..,28 and the low bit of v21 at 31; word 2 holds bits
 *   1-2 of v21 at 0-1 and v22..v31 at shifts 2,5,..,29 (the 10|1|10|1|10 split).
 * - `qzeros` int32 [groups, out*bits/32]: zero points packed along the output dimension with the same scheme,
 *   storing zero-1 ("v1 checkpoint format used to do `qzeros -= 1` before serialization"); loaders add 1 back.
 * - `scales` float16 [groups, out]; `g_idx` int32 [in], the group of each input column.
 */
import { f16BitsToF32, f32ToF16Bits } from '../../src/io/dtype.js';
import { fail } from '../../src/errors.js';
import { maxq, numGroups, type QuantBits, type QuantizedLinear, type QuantSpec } from './types.js';

/** Words needed for n packed values (n must fill whole words: 32 values for 3 bits, 32/bits otherwise). */
export function packedWords(n: number, bits: QuantBits): number {
  if ((n * bits) % 32 !== 0) fail('InvalidShape', `${n} values of ${bits} bits do not fill whole 32-bit words`);
  return (n * bits) / 32;
}

/**
 * Pack a sequence of codes v[0..n) (read through `get`) into words, calling put(word, value) with unsigned 32-bit
 * values. One routine serves qweight (a column's input sequence) and qzeros (a group's output sequence).
 */
function packSeq(n: number, bits: QuantBits, get: (i: number) => number, put: (w: number, v: number) => void): void {
  if (bits === 3) {
    for (let b = 0, w = 0; b < n; b += 32, w += 3) {
      let w0 = 0,
        w1 = 0,
        w2 = 0;
      for (let j = 0; j < 10; j++) w0 |= get(b + j) << (3 * j);
      const v10 = get(b + 10);
      w0 |= v10 << 30;
      w1 |= (v10 >> 2) & 1;
      for (let j = 0; j < 10; j++) w1 |= get(b + 11 + j) << (3 * j + 1);
      const v21 = get(b + 21);
      w1 |= v21 << 31;
      w2 |= (v21 >> 1) & 3;
      for (let j = 0; j < 10; j++) w2 |= get(b + 22 + j) << (3 * j + 2);
      put(w, w0 >>> 0);
      put(w + 1, w1 >>> 0);
      put(w + 2, w2 >>> 0);
    }
    return;
  }
  const pf = 32 / bits;
  for (let w = 0; w * pf < n; w++) {
    let word = 0;
    for (let k = 0; k < pf; k++) word |= get(w * pf + k) << (bits * k);
    put(w, word >>> 0);
  }
}

function unpackSeq(n: number, bits: QuantBits, word: (w: number) => number, set: (i: number, v: number) => void): void {
  if (bits === 3) {
    for (let b = 0, w = 0; b < n; b += 32, w += 3) {
      const w0 = word(w) >>> 0,
        w1 = word(w + 1) >>> 0,
        w2 = word(w + 2) >>> 0;
      for (let j = 0; j < 10; j++) set(b + j, (w0 >>> (3 * j)) & 7);
      set(b + 10, ((w0 >>> 30) & 3) | ((w1 & 1) << 2));
      for (let j = 0; j < 10; j++) set(b + 11 + j, (w1 >>> (3 * j + 1)) & 7);
      set(b + 21, ((w1 >>> 31) & 1) | ((w2 & 3) << 1));
      for (let j = 0; j < 10; j++) set(b + 22 + j, (w2 >>> (3 * j + 2)) & 7);
    }
    return;
  }
  const pf = 32 / bits;
  const mask = maxq(bits);
  for (let i = 0; i < n; i++) set(i, (word(Math.floor(i / pf)) >>> (bits * (i % pf))) & mask);
}

/** A 1-D sequence of codes -> its words (used by tests against hand-computed words, and by the packers). */
export function packValues(values: ArrayLike<number>, bits: QuantBits): Uint32Array {
  const words = new Uint32Array(packedWords(values.length, bits));
  packSeq(
    values.length,
    bits,
    (i) => values[i]!,
    (w, v) => (words[w] = v),
  );
  return words;
}

export function unpackValues(words: ArrayLike<number>, n: number, bits: QuantBits): Uint8Array {
  const out = new Uint8Array(n);
  unpackSeq(
    n,
    bits,
    (w) => words[w]!,
    (i, v) => (out[i] = v),
  );
  return out;
}

/** The four tensors of one GPTQ linear, as written to safetensors. */
export interface GptqTensors {
  /** int32 [in*bits/32, out] */
  qweight: Int32Array;
  /** int32 [groups, out*bits/32] */
  qzeros: Int32Array;
  /** float16 bits [groups, out] */
  scales: Uint16Array;
  /** int32 [in] */
  gIdx: Int32Array;
}

export function gptqShapes(out: number, inF: number, spec: QuantSpec): Record<'qweight' | 'qzeros' | 'scales' | 'g_idx', [number] | [number, number]> {
  const G = numGroups(inF, spec.groupSize);
  return {
    qweight: [packedWords(inF, spec.bits), out],
    qzeros: [G, packedWords(out, spec.bits)],
    scales: [G, out],
    g_idx: [inF],
  };
}

export function packGptq(ql: QuantizedLinear): GptqTensors {
  const { out, in: inF, spec, q, scales, zeros, gIdx } = ql;
  const bits = spec.bits;
  const G = numGroups(inF, spec.groupSize);
  const rows = packedWords(inF, bits);
  const qweight = new Int32Array(rows * out);
  for (let o = 0; o < out; o++) {
    const base = o * inF;
    packSeq(
      inF,
      bits,
      (i) => q[base + i]!,
      (w, v) => (qweight[w * out + o] = v | 0),
    );
  }
  const zc = packedWords(out, bits);
  const qzeros = new Int32Array(G * zc);
  const mask = maxq(bits);
  for (let g = 0; g < G; g++) {
    packSeq(
      out,
      bits,
      (o) => (zeros[g * out + o]! - 1) & mask,
      (w, v) => (qzeros[g * zc + w] = v | 0),
    );
  }
  const s16 = new Uint16Array(G * out);
  for (let k = 0; k < s16.length; k++) s16[k] = f32ToF16Bits(scales[k]!);
  return { qweight, qzeros, scales: s16, gIdx: Int32Array.from(gIdx) };
}

/** Inverse of packGptq: the codes, true zero points (stored+1, mod 2^bits as AutoGPTQ's loaders do) and scales. */
export function unpackGptq(t: GptqTensors, out: number, inF: number, spec: QuantSpec): QuantizedLinear {
  const bits = spec.bits;
  const G = numGroups(inF, spec.groupSize);
  const sh = gptqShapes(out, inF, spec);
  if (t.qweight.length !== sh.qweight[0] * out) fail('InvalidShape', `qweight has ${t.qweight.length} words, expected ${sh.qweight[0]}x${out}`);
  if (t.qzeros.length !== G * sh.qzeros[1]!) fail('InvalidShape', `qzeros has ${t.qzeros.length} words, expected ${G}x${sh.qzeros[1]}`);
  if (t.scales.length !== G * out) fail('InvalidShape', `scales has ${t.scales.length} values, expected ${G}x${out}`);
  if (t.gIdx.length !== inF) fail('InvalidShape', `g_idx has ${t.gIdx.length} values, expected ${inF}`);
  const q = new Uint8Array(out * inF);
  for (let o = 0; o < out; o++) {
    const base = o * inF;
    unpackSeq(
      inF,
      bits,
      (w) => t.qweight[w * out + o]!,
      (i, v) => (q[base + i] = v),
    );
  }
  const zc = sh.qzeros[1]!;
  const zeros = new Uint8Array(G * out);
  const mask = maxq(bits);
  for (let g = 0; g < G; g++) {
    unpackSeq(
      out,
      bits,
      (w) => t.qzeros[g * zc + w]!,
      (o, v) => (zeros[g * out + o] = (v + 1) & mask),
    );
  }
  const scales = new Float32Array(G * out);
  for (let k = 0; k < scales.length; k++) scales[k] = f16BitsToF32(t.scales[k]!);
  for (let i = 0; i < inF; i++) {
    const g = t.gIdx[i]!;
    if (g < 0 || g >= G) fail('InvalidShape', `g_idx[${i}] = ${g} is outside 0..${G - 1}`);
  }
  return { out, in: inF, spec, q, scales, zeros, gIdx: Int32Array.from(t.gIdx) };
}

/** Exact bytes stored for one linear in the GPTQ format (what true bits per weight counts). */
export function gptqBytes(out: number, inF: number, spec: QuantSpec): number {
  const G = numGroups(inF, spec.groupSize);
  return ((inF * spec.bits) / 32) * out * 4 + G * ((out * spec.bits) / 32) * 4 + G * out * 2 + inF * 4;
}
