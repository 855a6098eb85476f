/**
 * What the quantizer benches against llama.cpp (bench/gguf-kfit.ts, gguf-iq2.ts, gguf-iq34.ts) share: llama.cpp's
 * own quantizer run on the same rows (bench/gguf-quant.c, built against a llama.cpp checkout as its header says),
 * and the two figures they print: the fraction of equal bytes and the importance-weighted squared error.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type LlamaQuantizer = (type: string, x: Float32Array, im: Float32Array | undefined, rows: number, n: number) => Uint8Array;

/** llama.cpp's bytes of `rows` rows of `n` values of `type` (ggml_quantize_chunk; without an imatrix where `im` is undefined). */
export function llamaQuantizer(quant: string, tag: string): LlamaQuantizer {
  const tmp = mkdtempSync(join(tmpdir(), `gguf-${tag}-`));
  return (type, x, im, rows, n) => {
    writeFileSync(join(tmp, 'x.f32'), Buffer.from(x.buffer, x.byteOffset, x.byteLength));
    if (im) writeFileSync(join(tmp, 'im.f32'), Buffer.from(im.buffer, im.byteOffset, im.byteLength));
    const args = [type, String(rows), String(n), join(tmp, 'x.f32'), im ? join(tmp, 'im.f32') : '-'];
    return new Uint8Array(execFileSync(quant, args, { maxBuffer: 1 << 28 }));
  };
}

/** sum over values of imatrix_i * (x_i - x^_i)^2, the error llama.cpp's search minimises (i = the value's column) */
export function weightedError(d: Float32Array, x: Float32Array, im: Float32Array, n: number): number {
  let e = 0;
  for (let i = 0; i < d.length; i++) e += im[i % n]! * (d[i]! - x[i]!) ** 2;
  return e;
}

/** the fraction of equal bytes (0 when the lengths differ) */
export function equalFraction(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return 0;
  let c = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) c++;
  return c / a.length;
}
