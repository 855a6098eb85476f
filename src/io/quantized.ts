/**
 * Weight formats stored quantized on disk that the reader dequantizes: FP8 with 128x128 block scales
 * (DeepSeek-V3, MiniMax-M2, Qwen3-FP8: `w.weight` F8_E4M3 + `w.weight_scale_inv` F32) and MXFP4 (GPT-OSS experts:
 * `*_blocks` u8 + `*_scales` E8M0).
 */
import { fail } from '../errors.js';
import { E4M3_MAX, fromF32, toF32, type Dtype } from './dtype.js';
import type { TensorSpec } from './writer.js';

export const FP8_BLOCK = 128;

/**
 * Multiply FP8 values already decoded to float32 by their block's inverse scale, in place.
 * `values` holds the flat element range [from, from + values.length) of a [rows, cols] weight; `scaleInv` holds
 * the scale rows [scaleRow0, ...) of the [ceil(rows/br), ceil(cols/bc)] scale grid.
 */
export function applyBlockScales(
  values: Float32Array,
  from: number,
  cols: number,
  scaleInv: Float32Array,
  scaleRow0: number,
  block: readonly [number, number] = [FP8_BLOCK, FP8_BLOCK],
): Float32Array {
  const [br, bc] = block;
  const sCols = Math.ceil(cols / bc);
  let i = 0;
  const n = values.length;
  let row = Math.floor(from / cols);
  let col = from - row * cols;
  while (i < n) {
    const sBase = (Math.floor(row / br) - scaleRow0) * sCols;
    const rowEnd = Math.min(n, i + (cols - col));
    while (i < rowEnd) {
      const blockCol = Math.floor(col / bc);
      const s = scaleInv[sBase + blockCol]!;
      const stop = Math.min(rowEnd, i + (bc * (blockCol + 1) - col));
      for (; i < stop; i++, col++) values[i] = values[i]! * s;
    }
    row++;
    col = 0;
  }
  return values;
}

/**
 * Quantize a [rows, cols] float32 weight to FP8 E4M3 with one scale per block x block tile:
 * scale_inv = amax / 448 and q = e4m3(v / scale_inv), which is how DeepSeek-V3's official weights are made, so an
 * edited FP8 checkpoint is written back in its own format and no larger than its input.
 */
export function quantizeFp8Blocks(
  values: Float32Array,
  rows: number,
  cols: number,
  block: number | readonly [number, number] = FP8_BLOCK,
): { bytes: Uint8Array; scaleInv: Float32Array; scaleShape: [number, number] } {
  if (values.length !== rows * cols) fail('ComputeError', `quantizeFp8Blocks: ${values.length} values for a ${rows}x${cols} weight`);
  const [br, bc] = typeof block === 'number' ? [block, block] : block;
  const sRows = Math.ceil(rows / br);
  const sCols = Math.ceil(cols / bc);
  const scaleInv = new Float32Array(sRows * sCols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const sBase = Math.floor(r / br) * sCols;
    for (let c = 0; c < cols; c++) {
      const a = Math.abs(values[base + c]!);
      const k = sBase + Math.floor(c / bc);
      // NaN never wins a comparison, so a NaN weight does not poison its whole block's scale
      if (a > scaleInv[k]!) scaleInv[k] = a;
    }
  }
  for (let k = 0; k < scaleInv.length; k++) {
    const amax = scaleInv[k]!;
    // an all-zero block has any scale; 1 keeps it finite. An Inf block saturates.
    scaleInv[k] = amax === 0 ? 1 : Number.isFinite(amax) ? amax / E4M3_MAX : 3.4028234663852886e38 / E4M3_MAX;
  }
  const scaled = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const sBase = Math.floor(r / br) * sCols;
    for (let c = 0; c < cols; c++) scaled[base + c] = values[base + c]! / scaleInv[sBase + Math.floor(c / bc)]!;
  }
  const bytes = fromF32(scaled, 'F8_E4M3');
  return { bytes, scaleInv, scaleShape: [sRows, sCols] };
}

/** Inverse of quantizeFp8Blocks (for tests and tools that hold both tensors in memory). */
export function dequantizeFp8Blocks(
  bytes: Uint8Array,
  scaleInv: Float32Array,
  rows: number,
  cols: number,
  block: number | readonly [number, number] = FP8_BLOCK,
): Float32Array {
  if (bytes.length !== rows * cols) fail('InvalidData', `FP8 weight has ${bytes.length} elements, expected ${rows}x${cols}`);
  const [br, bc] = typeof block === 'number' ? [block, block] : block;
  const sRows = Math.ceil(rows / br);
  const sCols = Math.ceil(cols / bc);
  if (scaleInv.length !== sRows * sCols) fail('InvalidData', `FP8 scale_inv has ${scaleInv.length} elements, expected ${sRows}x${sCols}`);
  return applyBlockScales(toF32(bytes, 'F8_E4M3'), 0, cols, scaleInv, 0, [br, bc]);
}

// ---- MXFP4 ---------------------------------------------------------------------------------------------------

/** FP4 E2M1 code -> value (OCP microscaling spec; same table as transformers' FP4_VALUES). */
export const FP4_VALUES = Float32Array.of(0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6);
export const MXFP4_GROUP = 32;

let e8m0Table: Float32Array | undefined;
/** E8M0 scale byte -> 2^(s-127); 0xff is NaN per the OCP spec. */
export function e8m0ToF32(s: number): number {
  return s === 0xff ? NaN : 2 ** (s - 127);
}

/**
 * Decode MXFP4 weights: `blocks` is [..., G, 16] u8 with two E2M1 values per byte, low nibble first (element
 * 2j is the low nibble of byte j, 2j+1 the high nibble), `scales` is [..., G] E8M0. Returns [..., G * 32] float32
 * in the same row order, i.e. for GPT-OSS `gate_up_proj_blocks` [E, 2I, H/32, 16] the result is [E, 2I, H]
 * ([out, in] per expert). transformers' convert_moe_packed_tensors additionally transposes the last two axes to
 * match its bf16 `gate_up_proj` [E, H, 2I] layout; we keep [out, in].
 */
export function decodeMxfp4(blocks: Uint8Array, scales: Uint8Array): Float32Array {
  const groups = scales.length;
  if (blocks.length !== groups * 16) {
    fail('InvalidData', `MXFP4 blocks have ${blocks.length} bytes, expected 16 per scale (${groups} scales)`);
  }
  e8m0Table ??= Float32Array.from({ length: 256 }, (_, s) => e8m0ToF32(s));
  const out = new Float32Array(groups * MXFP4_GROUP);
  for (let g = 0; g < groups; g++) {
    const s = e8m0Table[scales[g]!]!;
    const bi = g * 16;
    const oi = g * 32;
    for (let j = 0; j < 16; j++) {
      const b = blocks[bi + j]!;
      out[oi + 2 * j] = FP4_VALUES[b & 0x0f]! * s;
      out[oi + 2 * j + 1] = FP4_VALUES[b >> 4]! * s;
    }
  }
  return out;
}

// ---- writing edited tensors back in their input's format -------------------------------------------------------

/** How an input tensor was stored (Checkpoint.storage returns this shape). */
export interface StoredFormat {
  dtype: Dtype;
  blockScale?: { scaleName: string; scaleSuffix?: string; block: [number, number]; scaleShape?: readonly number[] };
}

/** Scale grid of an edited weight of `shape` in the input's scale layout (2-D grid, [rows] or [] as stored). */
function scaleShapeFor(format: Required<StoredFormat>['blockScale'], shape: readonly number[]): number[] {
  const [br, bc] = format.block;
  const grid = [Math.ceil(shape[0]! / br), Math.ceil(shape[1]! / bc)];
  const rank = format.scaleShape?.length ?? 2;
  if (rank === 2) return grid;
  if (rank === 0 && grid[0]! * grid[1]! === 1) return [];
  if (rank === 1) return [grid[0]! * grid[1]!];
  return grid;
}

/**
 * The tensors to plan for an edited tensor `name` of new `shape` written in the input's format: the tensor itself
 * in its stored dtype, plus its scale tensor (`<name>_scale_inv` or `<name>_scale`, as in the input) when the
 * input was scaled FP8. A per-tensor scale stays per tensor and a per-channel one per channel, whatever the new
 * row count.
 */
export function specsAsStored(name: string, format: StoredFormat, shape: readonly number[]): TensorSpec[] {
  const bs = format.blockScale;
  if (!bs) return [{ name, dtype: format.dtype, shape }];
  if (shape.length !== 2) fail('ComputeError', `scaled FP8 tensor ${name} must stay 2-D, got shape [${shape.join(', ')}]`);
  return [
    { name, dtype: format.dtype, shape },
    { name: name + (bs.scaleSuffix ?? '_scale_inv'), dtype: 'F32', shape: scaleShapeFor(effectiveBlock(bs, shape), shape) },
  ];
}

/** A per-tensor scale covers the whole (new) weight; other layouts keep their block size. */
function effectiveBlock(bs: Required<StoredFormat>['blockScale'], shape: readonly number[]): Required<StoredFormat>['blockScale'] {
  const perTensor = bs.scaleShape !== undefined && bs.scaleShape.reduce((a, d) => a * d, 1) === 1 && bs.scaleShape.length < 2;
  return perTensor ? { ...bs, block: [Math.max(shape[0]!, 1), Math.max(shape[1]!, 1)] } : bs;
}

/**
 * Encode edited float32 values in the input's format, matching specsAsStored: FP8 with recomputed scales
 * (amax/448 per block, per channel or per tensor, as the input had), so an edited FP8 checkpoint stays FP8 and
 * no larger than its input; otherwise a plain dtype conversion.
 */
export function encodeAsStored(name: string, format: StoredFormat, values: Float32Array, shape: readonly number[]): { name: string; bytes: Uint8Array }[] {
  const n = shape.reduce((a, d) => a * d, 1);
  if (values.length !== n) fail('ComputeError', `tensor ${name}: ${values.length} values for shape [${shape.join(', ')}]`);
  const bs = format.blockScale;
  if (!bs) return [{ name, bytes: fromF32(values, format.dtype) }];
  // E5M2 weights with scales are not a format anyone ships; E4M3 is what we write back
  if (format.dtype !== 'F8_E4M3') fail('ComputeError', `tensor ${name}: re-quantizing ${format.dtype} with scales is not supported (F8_E4M3 is)`);
  specsAsStored(name, format, shape);
  const q = quantizeFp8Blocks(values, shape[0]!, shape[1]!, effectiveBlock(bs, shape).block);
  return [
    { name, bytes: q.bytes },
    { name: name + (bs.scaleSuffix ?? '_scale_inv'), bytes: new Uint8Array(q.scaleInv.buffer) },
  ];
}
