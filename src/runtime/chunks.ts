/**
 * How many rows cross into the tensor backend at once. Pure numbers, shared by the kernels that chunk their work
 * (ops.ts, swiglu.ts) and by the memory estimates of dry runs (memory.ts), which must not load tfjs.
 */

/** rows per tfjs matmul call: bounds the tensors alive at once, large enough to amortise op dispatch */
export const MAX_ROWS = 4096;

/**
 * An expert chunk keeps about six [rows, I] float32 intermediates alive in the backend at once (gate|up, their
 * slices, the activation's temporaries), and the wasm heap never shrinks below its high-water mark. Capping the
 * gate|up product at SWIGLU_CHUNK_FLOATS keeps that mark near 100 MB for any intermediate size (a fixed 4096 rows
 * cost 350 MB at I = 2816 and would cost 1.8 GB at Mixtral's 14336), while a few hundred rows keep the matmuls large.
 */
export const SWIGLU_CHUNK_FLOATS = 4 << 20;

export function swigluRowsPerChunk(inter: number): number {
  return Math.max(64, Math.min(MAX_ROWS, Math.floor(SWIGLU_CHUNK_FLOATS / (2 * inter))));
}
