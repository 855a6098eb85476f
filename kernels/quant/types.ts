/**
 * Quantized linear in the layout every quantizer here produces and the GPTQ packer consumes: integer codes per
 * weight, one fp16 scale and one integer zero point per (group, output row), and the group of every input column.
 * Dequantized weight: w[o, i] = scales[g, o] * (q[o, i] - zeros[g, o]) with g = gIdx[i].
 */
export type QuantBits = 2 | 3 | 4 | 8;
export const QUANT_BITS: readonly QuantBits[] = [2, 3, 4, 8];

export interface QuantSpec {
  bits: QuantBits;
  /** input columns per group (128 by default; 64 and 32 finer; -1: one group of every input column, channel-wise) */
  groupSize: number;
  /** symmetric: zero fixed at 2^(bits-1) (GPTQ's convention); asymmetric (default): min-max per group */
  sym: boolean;
}

export interface QuantizedLinear {
  out: number;
  in: number;
  spec: QuantSpec;
  /** [out, in] codes in 0..2^bits-1 */
  q: Uint8Array;
  /** [groups, out], values exactly representable in float16 (they are stored as F16) */
  scales: Float32Array;
  /** [groups, out] true zero points in 0..2^bits-1 (the packed form stores zero-1, see pack.ts) */
  zeros: Uint8Array;
  /** [in] group of each input column (identity order unless act-order permuted the columns) */
  gIdx: Int32Array;
}

/** Columns of one group: -1 is GPTQ's and compressed-tensors' spelling of a single group spanning the row. */
export function groupColumns(inFeatures: number, groupSize: number): number {
  return groupSize === -1 ? inFeatures : groupSize;
}

export function numGroups(inFeatures: number, groupSize: number): number {
  return Math.ceil(inFeatures / groupColumns(inFeatures, groupSize));
}

export function maxq(bits: number): number {
  return (1 << bits) - 1;
}
