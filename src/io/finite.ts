/**
 * Non-finite checks, streamed: every tensor read for compute (Checkpoint.readF32) and every tensor written into an
 * output (CheckpointWriter.write/writePart: copied, produced, or assembled) is scanned in the buffer it already is
 * in, so no file is read twice. A NaN or Inf is a failure that names the tensor and exits 5, never a checkpoint
 * published with NaN in it (or, as round-to-nearest did, a NaN row silently zeroed).
 */
import { fail } from '../errors.js';
import type { Dtype } from './dtype.js';

/** Index of the first non-finite element of raw little-endian `bytes` of `dtype`, or -1 (integer dtypes: always -1). */
export function firstNonFiniteBytes(bytes: Uint8Array, dtype: Dtype): number {
  switch (dtype) {
    case 'F32':
    case 'F64': {
      const w = dtype === 'F32' ? 4 : 8;
      const n = Math.floor(bytes.byteLength / w);
      const aligned = bytes.byteOffset % w === 0;
      const a = aligned
        ? dtype === 'F32'
          ? new Float32Array(bytes.buffer, bytes.byteOffset, n)
          : new Float64Array(bytes.buffer, bytes.byteOffset, n)
        : undefined;
      if (a) return firstNonFinite(a);
      const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let i = 0; i < n; i++) if (!Number.isFinite(w === 4 ? dv.getFloat32(i * 4, true) : dv.getFloat64(i * 8, true))) return i;
      return -1;
    }
    case 'F16':
    case 'BF16': {
      // exponent all ones: Inf or NaN (F16: 5 exponent bits 0x7c00; BF16: 8 bits 0x7f80)
      const mask = dtype === 'F16' ? 0x7c00 : 0x7f80;
      const n = bytes.byteLength >> 1;
      for (let i = 0; i < n; i++) {
        const v = bytes[2 * i]! | (bytes[2 * i + 1]! << 8);
        if ((v & mask) === mask) return i;
      }
      return -1;
    }
    case 'F8_E4M3':
      // e4m3fn has no Inf; S.1111.111 is NaN
      for (let i = 0; i < bytes.byteLength; i++) if ((bytes[i]! & 0x7f) === 0x7f) return i;
      return -1;
    case 'F8_E5M2':
      for (let i = 0; i < bytes.byteLength; i++) if ((bytes[i]! & 0x7c) === 0x7c) return i;
      return -1;
    default:
      return -1;
  }
}

export function firstNonFinite(a: ArrayLike<number>): number {
  for (let i = 0; i < a.length; i++) {
    const v = a[i]!;
    // v - v is NaN exactly for NaN and ±Inf; cheaper than Number.isFinite per element
    if (v - v !== 0) return i;
  }
  return -1;
}

function describe(v: number): string {
  return Number.isNaN(v) ? 'NaN' : v > 0 ? '+Inf' : '-Inf';
}

/** Refuse a tensor read for compute that holds NaN or Inf (exit 5). `offset`: the element index of a[0] in the tensor. */
export function checkFiniteInput(name: string, a: Float32Array | Float64Array, offset = 0): void {
  const i = firstNonFinite(a);
  if (i >= 0)
    fail('NonFinite', `tensor '${name}' holds ${describe(a[i]!)} at element ${offset + i}; refusing to compute with it (the input checkpoint is damaged)`);
}

/** Refuse to write output bytes that hold NaN or Inf (exit 5): copied from the input, or produced (e.g. an F16 overflow). */
export function checkFiniteOutput(name: string, bytes: Uint8Array, dtype: Dtype, elementOffset = 0): void {
  const i = firstNonFiniteBytes(bytes, dtype);
  if (i >= 0) {
    fail(
      'NonFinite',
      `output tensor '${name}' (${dtype}) would hold a non-finite value at element ${elementOffset + i} (NaN/Inf in the input, or a value beyond ${dtype}'s range); nothing was published`,
    );
  }
}
