/**
 * GGUF (version 3) constants, from ggml's gguf.cpp / gguf.h and gguf-py's constants.py:
 *
 *   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x (string key | u32 value type | value)
 *   n_tensors x (string name | u32 n_dims | n_dims x u64 ne | u32 ggml type | u64 offset)
 *   padding to general.alignment (default 32) | tensor data, each tensor at an aligned offset from the data start
 *
 * Strings are u64 length + UTF-8 bytes (no terminator); arrays are u32 element type + u64 count + elements.
 * ne[0] is the innermost (contiguous) dimension: an nn.Linear W [out, in] is ne = [in, out], and a stack of
 * experts [E, out, in] is ne = [in, out, E]. Everything is little-endian.
 */

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GgufValueType = (typeof GgufValueType)[keyof typeof GgufValueType];

/** Byte size of each fixed-size scalar value type (STRING and ARRAY are variable). */
export const GGUF_SCALAR_BYTES: Partial<Record<GgufValueType, number>> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  10: 8,
  11: 8,
  12: 8,
};

export type GgufScalar = number | bigint | boolean | string;

/** One metadata value with its GGUF type (arrays carry their element type). */
export type GgufValue = { type: Exclude<GgufValueType, 9>; value: GgufScalar } | { type: 9; elemType: Exclude<GgufValueType, 9>; value: readonly GgufScalar[] };

export const kv = {
  u32: (v: number): GgufValue => ({ type: GgufValueType.UINT32, value: v }),
  i32: (v: number): GgufValue => ({ type: GgufValueType.INT32, value: v }),
  f32: (v: number): GgufValue => ({ type: GgufValueType.FLOAT32, value: v }),
  bool: (v: boolean): GgufValue => ({ type: GgufValueType.BOOL, value: v }),
  str: (v: string): GgufValue => ({ type: GgufValueType.STRING, value: v }),
  arr: (elemType: Exclude<GgufValueType, 9>, v: readonly GgufScalar[]): GgufValue => ({ type: GgufValueType.ARRAY, elemType, value: v }),
};

/**
 * ggml tensor types (ggml.h `enum ggml_type`) with their block size (values per block) and bytes per block
 * (ggml-common.h block structs). Only the types this project writes or reads are named; the numbers are fixed by
 * the file format.
 */
export const GGML_TYPES = {
  F32: { id: 0, block: 1, bytes: 4 },
  F16: { id: 1, block: 1, bytes: 2 },
  Q4_0: { id: 2, block: 32, bytes: 18 },
  Q4_1: { id: 3, block: 32, bytes: 20 },
  Q5_0: { id: 6, block: 32, bytes: 22 },
  Q5_1: { id: 7, block: 32, bytes: 24 },
  Q8_0: { id: 8, block: 32, bytes: 34 },
  Q8_1: { id: 9, block: 32, bytes: 36 },
  Q2_K: { id: 10, block: 256, bytes: 84 },
  Q3_K: { id: 11, block: 256, bytes: 110 },
  Q4_K: { id: 12, block: 256, bytes: 144 },
  Q5_K: { id: 13, block: 256, bytes: 176 },
  Q6_K: { id: 14, block: 256, bytes: 210 },
  Q8_K: { id: 15, block: 256, bytes: 292 },
  IQ2_XXS: { id: 16, block: 256, bytes: 66 },
  IQ2_XS: { id: 17, block: 256, bytes: 74 },
  IQ3_XXS: { id: 18, block: 256, bytes: 98 },
  IQ1_S: { id: 19, block: 256, bytes: 50 },
  IQ4_NL: { id: 20, block: 32, bytes: 18 },
  IQ3_S: { id: 21, block: 256, bytes: 110 },
  IQ2_S: { id: 22, block: 256, bytes: 82 },
  IQ4_XS: { id: 23, block: 256, bytes: 136 },
  I8: { id: 24, block: 1, bytes: 1 },
  I16: { id: 25, block: 1, bytes: 2 },
  I32: { id: 26, block: 1, bytes: 4 },
  I64: { id: 27, block: 1, bytes: 8 },
  F64: { id: 28, block: 1, bytes: 8 },
  IQ1_M: { id: 29, block: 256, bytes: 56 },
  BF16: { id: 30, block: 1, bytes: 2 },
  TQ1_0: { id: 34, block: 256, bytes: 54 },
  TQ2_0: { id: 35, block: 256, bytes: 66 },
  MXFP4: { id: 39, block: 32, bytes: 17 },
} as const;
export type GgmlType = keyof typeof GGML_TYPES;

const BY_ID = new Map<number, GgmlType>(Object.entries(GGML_TYPES).map(([k, v]) => [v.id, k as GgmlType]));

export function ggmlTypeById(id: number): GgmlType | undefined {
  return BY_ID.get(id);
}

/** Exact bytes of a tensor of this type and shape (ne[0] must be a whole number of blocks). */
export function ggmlTensorBytes(type: GgmlType, ne: readonly number[]): number {
  const t = GGML_TYPES[type];
  const n0 = ne[0] ?? 1;
  if (n0 % t.block !== 0) throw new RangeError(`${type} needs rows that are a multiple of ${t.block} values (row has ${n0})`);
  let rows = 1;
  for (let i = 1; i < ne.length; i++) rows *= ne[i]!;
  return (n0 / t.block) * t.bytes * rows;
}

/** Bits per weight of a type: bytes per block x 8 / values per block. */
export function ggmlTypeBpw(type: GgmlType): number {
  const t = GGML_TYPES[type];
  return (t.bytes * 8) / t.block;
}

/**
 * llama.cpp's `enum llama_ftype` (general.file_type): the "mostly" type of a file, as llama-quantize names it.
 * A file whose types we chose tensor by tensor records the type of most expert weights.
 */
export const LLAMA_FTYPE: Partial<Record<GgmlType, number>> = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q8_0: 7,
  Q5_0: 8,
  Q5_1: 9,
  Q2_K: 10,
  Q3_K: 12, // Q3_K_M
  Q4_K: 15, // Q4_K_M
  Q5_K: 17, // Q5_K_M
  Q6_K: 18,
  IQ2_XXS: 19,
  IQ2_XS: 20,
  IQ3_XXS: 23,
  IQ1_S: 24,
  IQ4_NL: 25,
  IQ3_S: 26,
  IQ2_S: 28,
  IQ4_XS: 30,
  IQ1_M: 31,
  BF16: 32,
};

/** general.quantization_version: the block layout revision llama.cpp expects of quantized tensors. */
export const GGML_QUANTIZATION_VERSION = 2;
