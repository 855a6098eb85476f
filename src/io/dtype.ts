/** Safetensors dtypes and conversions to and from float32. */
import { fail } from '../errors.js';

export const DTYPES = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'F8_E4M3', 'F8_E5M2'] as const;
export type Dtype = (typeof DTYPES)[number];

export const DTYPE_BYTES: Record<Dtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

export function isDtype(s: unknown): s is Dtype {
  return typeof s === 'string' && (DTYPES as readonly string[]).includes(s);
}

export function isFloatDtype(d: Dtype): boolean {
  return d === 'F64' || d === 'F32' || d === 'F16' || d === 'BF16' || d === 'F8_E4M3' || d === 'F8_E5M2';
}

// ---- scalar conversions ------------------------------------------------------------------------------------
// Hosts are little-endian (x86-64, arm64), like the safetensors byte order, so typed-array views need no swap.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f16BitsToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/**
 * Round a float32 (given as its bits) to a narrower binary float with round-to-nearest-even, gradual underflow
 * and a chosen overflow result. Works on the bits so it never double-rounds through float64 and costs a few
 * integer operations per element.
 */
function narrowFloat(x: number, mantBits: number, bias: number, signBit: number, maxCode: number, overflowCode: number, nanCode: number): number {
  const sign = x >>> 31 ? signBit : 0;
  const a = x & 0x7fffffff;
  if (a > 0x7f800000) return sign | nanCode;
  if (a === 0x7f800000) return sign | overflowCode;
  const exp = (a >>> 23) - 127;
  const minNormalExp = 1 - bias;
  let code: number;
  let shift: number;
  let sig: number;
  if (exp >= minNormalExp) {
    shift = 23 - mantBits;
    sig = a;
    code = ((exp + bias) << mantBits) | ((a & 0x7fffff) >>> shift);
  } else {
    // subnormal in the target: count in units of its smallest step
    shift = 23 - mantBits + (minNormalExp - exp);
    if (shift > 24) return sign;
    sig = (a & 0x7fffff) | 0x800000;
    code = sig >>> shift;
  }
  const rem = sig & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && code & 1)) code++;
  return code > maxCode ? sign | overflowCode : sign | code;
}

/** Round-to-nearest-even float32 -> float16 bits, with overflow to Inf and gradual underflow. */
export function f32ToF16Bits(v: number): number {
  f32[0] = v;
  return narrowFloat(u32[0]!, 10, 15, 0x8000, 0x7bff, 0x7c00, 0x7e00);
}

export function bf16BitsToF32(b: number): number {
  u32[0] = b << 16;
  return f32[0]!;
}

function bf16FromBits(x: number): number {
  // NaN stays a (quiet) NaN instead of rounding into Inf
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Round-to-nearest-even float32 -> bfloat16 bits; NaN stays a quiet NaN. */
export function f32ToBf16Bits(v: number): number {
  f32[0] = v;
  return bf16FromBits(u32[0]!);
}

/** OCP FP8 E4M3 (fn variant: no infinities, S.1111.111 is NaN, max 448). */
export function e4m3ToF32(b: number): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 0xf;
  const m = b & 7;
  if (e === 15 && m === 7) return NaN;
  if (e === 0) return s * m * 2 ** -9;
  return s * (1 + m / 8) * 2 ** (e - 7);
}

/** OCP FP8 E5M2 (IEEE-like: infinities and NaNs). */
export function e5m2ToF32(b: number): number {
  return f16BitsToF32(b << 8);
}

export const E4M3_MAX = 448;
export const E5M2_MAX = 57344;

/**
 * float32 -> E4M3 with saturation to +-448, Inf included (the fn format has no Inf; DeepSeek's block
 * quantization clamps to the same range before casting). NaN -> 0x7f (sign kept).
 */
export function f32ToE4m3(v: number): number {
  f32[0] = v;
  return narrowFloat(u32[0]!, 3, 7, 0x80, 0x7e, 0x7e, 0x7f);
}

/** float32 -> E5M2, IEEE behaviour: values that round past 57344 become Inf. */
export function f32ToE5m2(v: number): number {
  f32[0] = v;
  return narrowFloat(u32[0]!, 2, 15, 0x80, 0x7b, 0x7c, 0x7f);
}

// lookup tables: 8-bit formats decode by table, 16-bit formats by table as well (256 KiB each, built lazily)
let e4m3Table: Float32Array | undefined;
let e5m2Table: Float32Array | undefined;
let f16Table: Float32Array | undefined;
function tableFor(fn: (b: number) => number, n: number): Float32Array {
  const t = new Float32Array(n);
  for (let i = 0; i < n; i++) t[i] = fn(i);
  return t;
}

// ---- array conversions -------------------------------------------------------------------------------------

function view<T>(ctor: { new (b: ArrayBuffer, o: number, n: number): T }, bytes: Uint8Array, width: number): T {
  if (bytes.byteOffset % width === 0) return new ctor(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength / width);
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new ctor(copy.buffer, 0, bytes.byteLength / width);
}

// hot loops live in small single-purpose functions so V8 optimizes each one monomorphically
function decodeBf16(src: Uint16Array, out: Float32Array, at: number): void {
  const o32 = new Uint32Array(out.buffer, out.byteOffset + at * 4, src.length);
  for (let i = 0; i < src.length; i++) o32[i] = src[i]! << 16;
}

function decodeByTable(src: Uint8Array | Uint16Array, table: Float32Array, out: Float32Array, at: number): void {
  for (let i = 0; i < src.length; i++) out[at + i] = table[src[i]!]!;
}

function decodeInts(src: ArrayLike<number>, out: Float32Array, at: number): void {
  for (let i = 0; i < src.length; i++) out[at + i] = src[i]!;
}

/**
 * Decode little-endian raw bytes of `dtype` into out[at, at + n). Lets readers decode a large tensor chunk by
 * chunk into its final array, without holding the raw bytes and the float32 copy at once.
 */
export function decodeInto(bytes: Uint8Array, dtype: Dtype, out: Float32Array, at = 0): void {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  if (!Number.isInteger(n)) fail('TensorInvalidInfo', `byte length ${bytes.byteLength} is not a multiple of ${dtype} size`);
  if (at + n > out.length) fail('ComputeError', `decodeInto: ${n} values do not fit at ${at} in ${out.length}`);
  switch (dtype) {
    case 'F32':
      out.set(view(Float32Array, bytes, 4), at);
      return;
    case 'F64':
      out.set(view(Float64Array, bytes, 8), at);
      return;
    case 'F16':
      decodeByTable(view(Uint16Array, bytes, 2), (f16Table ??= tableFor(f16BitsToF32, 65536)), out, at);
      return;
    case 'BF16':
      decodeBf16(view(Uint16Array, bytes, 2), out, at);
      return;
    case 'F8_E4M3':
      decodeByTable(bytes, (e4m3Table ??= tableFor(e4m3ToF32, 256)), out, at);
      return;
    case 'F8_E5M2':
      decodeByTable(bytes, (e5m2Table ??= tableFor(e5m2ToF32, 256)), out, at);
      return;
    case 'I64': {
      const v = view(BigInt64Array, bytes, 8);
      for (let i = 0; i < n; i++) out[at + i] = Number(v[i]!);
      return;
    }
    case 'I32':
      decodeInts(view(Int32Array, bytes, 4), out, at);
      return;
    case 'I16':
      decodeInts(view(Int16Array, bytes, 2), out, at);
      return;
    case 'I8':
      decodeInts(new Int8Array(bytes.buffer, bytes.byteOffset, n), out, at);
      return;
    case 'U8':
    case 'BOOL':
      decodeInts(bytes, out, at);
      return;
  }
}

/** Decode little-endian raw bytes of a tensor to a new float32 array. */
export function toF32(bytes: Uint8Array, dtype: Dtype): Float32Array {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  if (!Number.isInteger(n)) fail('TensorInvalidInfo', `byte length ${bytes.byteLength} is not a multiple of ${dtype} size`);
  const out = new Float32Array(n);
  decodeInto(bytes, dtype, out, 0);
  return out;
}

function bitsOf(values: Float32Array): Uint32Array {
  return new Uint32Array(values.buffer, values.byteOffset, values.length);
}

/** Encode float32 values as raw little-endian bytes of `dtype` (floats round to nearest even). */
export function fromF32(values: Float32Array, dtype: Dtype): Uint8Array {
  const n = values.length;
  switch (dtype) {
    case 'F32':
      return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
    case 'F64':
      return new Uint8Array(Float64Array.from(values).buffer);
    case 'F16': {
      const out = new Uint16Array(n);
      const src = bitsOf(values);
      for (let i = 0; i < n; i++) out[i] = narrowFloat(src[i]!, 10, 15, 0x8000, 0x7bff, 0x7c00, 0x7e00);
      return new Uint8Array(out.buffer);
    }
    case 'BF16': {
      const out = new Uint16Array(n);
      const src = bitsOf(values);
      for (let i = 0; i < n; i++) out[i] = bf16FromBits(src[i]!);
      return new Uint8Array(out.buffer);
    }
    case 'F8_E4M3': {
      const out = new Uint8Array(n);
      const src = bitsOf(values);
      for (let i = 0; i < n; i++) out[i] = narrowFloat(src[i]!, 3, 7, 0x80, 0x7e, 0x7e, 0x7f);
      return out;
    }
    case 'F8_E5M2': {
      const out = new Uint8Array(n);
      const src = bitsOf(values);
      for (let i = 0; i < n; i++) out[i] = narrowFloat(src[i]!, 2, 15, 0x80, 0x7b, 0x7c, 0x7f);
      return out;
    }
    case 'I64':
      return new Uint8Array(BigInt64Array.from(values, (x) => BigInt(Number.isFinite(x) ? Math.round(x) : 0)).buffer);
    case 'I32':
      return new Uint8Array(Int32Array.from(values, Math.round).buffer);
    case 'I16':
      return new Uint8Array(Int16Array.from(values, Math.round).buffer);
    case 'I8':
      return new Uint8Array(Int8Array.from(values, Math.round).buffer);
    case 'U8':
      return Uint8Array.from(values, Math.round);
    case 'BOOL':
      return Uint8Array.from(values, (x) => (x ? 1 : 0));
  }
}
