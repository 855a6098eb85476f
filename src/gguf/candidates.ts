/**
 * What `moe quantize --format gguf` accepts as --candidates and --dense-bits: ggml type names as llama-quantize
 * spells them (any case on the command line), the float types for the unquantized export, and the widths
 * 2/3/4/8 as names of the k-quant (or Q8_0) of that width. A leaf module: the options schema reads it.
 */
import type { GgmlType } from './format.js';

export const GGUF_CANDIDATES = [
  'f32',
  'f16',
  'bf16',
  'q8_0',
  'q6_k',
  'q5_k',
  'q5_1',
  'q5_0',
  'q4_k',
  'q4_1',
  'q4_0',
  'iq4_nl',
  'iq4_xs',
  'q3_k',
  'iq3_s',
  'iq3_xxs',
  'q2_k',
  'iq2_s',
  'iq2_xs',
  'iq2_xxs',
] as const;
export type GgufCandidate = (typeof GGUF_CANDIDATES)[number];

export const FLOAT_CANDIDATES: readonly GgufCandidate[] = ['f32', 'f16', 'bf16'];

/** --candidates 2,3,4,8 with --format gguf */
export const WIDTH_TYPES: Readonly<Record<number, GgmlType>> = { 2: 'Q2_K', 3: 'Q3_K', 4: 'Q4_K', 8: 'Q8_0' };

export function ggmlTypeOf(c: number | string): GgmlType {
  if (typeof c === 'number') {
    const t = WIDTH_TYPES[c];
    if (!t) throw new RangeError(`no ggml type for width ${c}`);
    return t;
  }
  return c.toUpperCase() as GgmlType;
}

export const isFloatCandidate = (c: number | string): boolean => typeof c === 'string' && (FLOAT_CANDIDATES as readonly string[]).includes(c);
