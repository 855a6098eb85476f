/**
 * Every ggml block type this project encodes and decodes, by name: one entry per format module (kquants.ts for
 * Q4_0..Q8_0 and Q2_K..Q6_K, iq4.ts for IQ4_NL/IQ4_XS, iq3.ts for IQ3_XXS/IQ3_S, iq2.ts for IQ2_XXS/IQ2_XS/IQ2_S,
 * ...), so the writer, the allocation and the checks dispatch in one place. A new format adds its module's line here.
 */
import type { GgmlType } from '../../src/gguf/format.js';
import { IQ2_BLOCK, IQ2_BYTES, IQ2_TYPES, dequantizeMatrixIq2, quantizeMatrixIq2 } from './iq2.js';
import { IQ3_SPECS, IQ3_TYPES, dequantizeIq3Matrix, quantizeIq3Matrix } from './iq3.js';
import { IQ4_SPECS, IQ4_TYPES, dequantizeIq4Matrix, quantizeIq4Matrix } from './iq4.js';
import { KQUANT_SPECS, KQUANT_TYPES, dequantizeMatrix, quantizeMatrix } from './kquants.js';

export interface GgmlCodec {
  /** values per block and bytes per block */
  block: number;
  bytes: number;
  /** rows of n values (ggml order) with an optional importance per column (llama.cpp's imatrix) */
  quantize(x: Float32Array, rows: number, n: number, imatrix?: ArrayLike<number>): Uint8Array;
  dequantize(bytes: Uint8Array, rows: number, n: number): Float32Array;
}

const codecs = new Map<GgmlType, GgmlCodec>();
for (const t of KQUANT_TYPES) {
  codecs.set(t, {
    ...KQUANT_SPECS[t],
    quantize: (x, rows, n, im) => quantizeMatrix(t, x, rows, n, im),
    dequantize: (b, rows, n) => dequantizeMatrix(t, b, rows, n),
  });
}
for (const t of IQ4_TYPES) {
  codecs.set(t, {
    ...IQ4_SPECS[t],
    quantize: (x, rows, n, im) => quantizeIq4Matrix(t, x, rows, n, im),
    dequantize: (b, rows, n) => dequantizeIq4Matrix(t, b, rows, n),
  });
}

for (const t of IQ3_TYPES) {
  codecs.set(t, {
    ...IQ3_SPECS[t],
    quantize: (x, rows, n, im) => quantizeIq3Matrix(t, x, rows, n, im),
    dequantize: (b, rows, n) => dequantizeIq3Matrix(t, b, rows, n),
  });
}

for (const t of IQ2_TYPES) {
  codecs.set(t, {
    block: IQ2_BLOCK,
    bytes: IQ2_BYTES[t],
    quantize: (x, rows, n, im) => quantizeMatrixIq2(t, x, rows, n, im),
    dequantize: (b, rows, n) => dequantizeMatrixIq2(t, b, rows, n),
  });
}

/** The block types we write, in the order they were added (k-quants first). */
export const BLOCK_TYPES: readonly GgmlType[] = [...codecs.keys()];

export const isBlockType = (t: string): t is GgmlType => codecs.has(t as GgmlType);

export function ggmlCodec(type: GgmlType): GgmlCodec {
  const c = codecs.get(type);
  if (!c) throw new RangeError(`no encoder for ggml type ${type}`);
  return c;
}

export const quantizeGgml = (type: GgmlType, x: Float32Array, rows: number, n: number, imatrix?: ArrayLike<number>): Uint8Array =>
  ggmlCodec(type).quantize(x, rows, n, imatrix);

export const dequantizeGgml = (type: GgmlType, bytes: Uint8Array, rows: number, n: number): Float32Array => ggmlCodec(type).dequantize(bytes, rows, n);
