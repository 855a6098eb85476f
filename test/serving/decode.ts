/**
 * Independent readers of our serving outputs, written from the formats' published definitions and not from our
 * writer or reader (src/quantize/ct.ts, format.ts, kernels/quant/pack.ts are not imported):
 *
 * - safetensors: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, data.
 * - compressed-tensors pack-quantized (compressed_tensors/compressors/quantized_compressors/pack_quantized.py):
 *   weight_packed int32 [out, ceil(in/pf)], pf = 32/bits, value j of a row at bits*(j%pf) of word j/pf, unsigned =
 *   signed + 2^(bits-1); weight_scale [out, groups]; weight_zero_point (asymmetric only) packed the same way along
 *   the output dimension; w = scale * (q - zero_point); the scheme comes from the first config group whose target
 *   matches the module name ("re:" = Python re.match, else equality), unless `ignore` matches it.
 * - GPTQ v1 (GPTQModel qlinear pack / convert_gptq_v1_to_v2_format): qweight int32 [in*bits/32, out] packed along
 *   the input, qzeros int32 [groups, out*bits/32] storing zero-1 packed along the output, scales f16 [groups, out],
 *   g_idx int32 [in]; w[o, i] = scale[g, o] * (q[i, o] - (z[g, o] + 1)), g = g_idx[i]. 2, 4 and 8 bits (the
 *   widths whose values do not straddle words).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface RawTensor {
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

/** All tensors of a single-file or indexed safetensors checkpoint. */
export function readSafetensors(dir: string): Map<string, RawTensor> {
  let files = ['model.safetensors'];
  try {
    const idx = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    files = [...new Set(Object.values(idx.weight_map))];
  } catch {
    // a single file
  }
  const out = new Map<string, RawTensor>();
  for (const f of files) {
    const buf = readFileSync(join(dir, f));
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    for (const [name, t] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const [a, b] = t.data_offsets;
      out.set(name, { dtype: t.dtype, shape: t.shape, bytes: new Uint8Array(buf.subarray(8 + n + a, 8 + n + b)) });
    }
  }
  return out;
}

const i32 = (t: RawTensor) => new Int32Array(t.bytes.slice().buffer);

/** IEEE half -> number. */
function half(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

export function floats(t: RawTensor): Float64Array {
  const n = t.shape.reduce((a, d) => a * d, 1);
  const out = new Float64Array(n);
  const dv = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  for (let k = 0; k < n; k++) {
    if (t.dtype === 'F32') out[k] = dv.getFloat32(4 * k, true);
    else if (t.dtype === 'F16') out[k] = half(dv.getUint16(2 * k, true));
    else if (t.dtype === 'BF16') out[k] = new Float32Array(new Uint32Array([dv.getUint16(2 * k, true) << 16]).buffer)[0]!;
    else throw new Error(`not a float dtype: ${t.dtype}`);
  }
  return out;
}

export function ints(t: RawTensor): number[] {
  if (t.dtype === 'I64') return Array.from(new BigInt64Array(t.bytes.slice().buffer), Number);
  if (t.dtype === 'I32') return Array.from(i32(t));
  throw new Error(`not an integer dtype: ${t.dtype}`);
}

export interface CtWeightScheme {
  num_bits: number;
  type: string;
  symmetric: boolean;
  strategy: string;
  group_size: number | null;
  actorder?: string | null;
  dynamic?: boolean;
}
export interface CtScheme {
  weights: CtWeightScheme | null;
  input_activations: unknown;
  format?: string;
}

/** compressed-tensors' name match: "re:PATTERN" is Python's re.match (anchored at the start only), else equality. */
export function ctMatches(target: string, name: string): boolean {
  return target.startsWith('re:') ? new RegExp(`^(?:${target.slice(3)})`).test(name) : target === name;
}

/** The scheme a compressed-tensors loader gives module `name` (undefined: ignored or unmatched). */
export function ctScheme(qc: Record<string, unknown>, name: string): CtScheme | undefined {
  if (((qc['ignore'] as string[] | undefined) ?? []).some((t) => ctMatches(t, name))) return undefined;
  for (const g of Object.values((qc['config_groups'] ?? {}) as Record<string, CtScheme & { targets: string[] }>)) {
    if (g.targets.some((t) => ctMatches(t, name))) return g;
  }
  return undefined;
}

/** Decode one pack-quantized module to float64 [out, in] from its tensors and scheme. */
export function decodeCt(tensors: Map<string, RawTensor>, module: string, w: CtWeightScheme): { out: number; in: number; w: Float64Array } {
  const get = (s: string) => {
    const t = tensors.get(`${module}.${s}`);
    if (!t) throw new Error(`${module}: no ${s}`);
    return t;
  };
  const [out, inF] = ints(get('weight_shape')) as [number, number];
  const bits = w.num_bits;
  const pf = 32 / bits;
  const packed = i32(get('weight_packed'));
  const words = get('weight_packed').shape[1]!;
  if (words !== Math.ceil(inF / pf)) throw new Error(`${module}: weight_packed has ${words} words per row, ${bits} bits need ${Math.ceil(inF / pf)}`);
  const scale = floats(get('weight_scale'));
  const G = get('weight_scale').shape[1]!;
  const gs = w.strategy === 'channel' ? inF : w.group_size!;
  const mask = (1 << bits) - 1;
  const off = 1 << (bits - 1);
  const zp = new Float64Array(out * G);
  if (!w.symmetric) {
    const z = i32(get('weight_zero_point'));
    for (let o = 0; o < out; o++) for (let g = 0; g < G; g++) zp[o * G + g] = ((z[Math.floor(o / pf) * G + g]! >>> (bits * (o % pf))) & mask) - off;
  }
  const gIdx = tensors.has(`${module}.weight_g_idx`) ? ints(get('weight_g_idx')) : undefined;
  const res = new Float64Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let j = 0; j < inF; j++) {
      const q = ((packed[o * words + Math.floor(j / pf)]! >>> (bits * (j % pf))) & mask) - off;
      const g = gIdx ? gIdx[j]! : Math.floor(j / gs);
      res[o * inF + j] = scale[o * G + g]! * (q - zp[o * G + g]!);
    }
  }
  return { out, in: inF, w: res };
}

/** Decode one GPTQ v1 module (2, 4 or 8 bits) to float64 [out, in]. */
export function decodeGptq(tensors: Map<string, RawTensor>, module: string): { out: number; in: number; bits: number; w: Float64Array } {
  const get = (s: string) => {
    const t = tensors.get(`${module}.${s}`);
    if (!t) throw new Error(`${module}: no ${s}`);
    return t;
  };
  const qw = get('qweight');
  const gIdx = ints(get('g_idx'));
  const inF = gIdx.length;
  const out = qw.shape[1]!;
  const bits = (qw.shape[0]! * 32) / inF;
  if (![2, 4, 8].includes(bits)) throw new Error(`${module}: ${bits} bits (this decoder reads 2, 4, 8)`);
  const pf = 32 / bits;
  const mask = (1 << bits) - 1;
  const q = i32(qw);
  const z = i32(get('qzeros'));
  const zw = get('qzeros').shape[1]!;
  const scale = floats(get('scales'));
  const res = new Float64Array(out * inF);
  for (let i = 0; i < inF; i++) {
    const g = gIdx[i]!;
    for (let o = 0; o < out; o++) {
      const code = (q[Math.floor(i / pf) * out + o]! >>> (bits * (i % pf))) & mask;
      const zero = ((z[g * zw + Math.floor(o / pf)]! >>> (bits * (o % pf))) & mask) + 1;
      res[o * inF + i] = scale[g * out + o]! * (code - zero);
    }
  }
  return { out, in: inF, bits, w: res };
}
