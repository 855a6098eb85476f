/**
 * The k-quant block fit is llama.cpp's (kernels/ggml/kfit.ts): on seeded rows with an importance matrix, the bytes
 * quantizeMatrix writes equal those llama.cpp's own ggml_quantize_chunk wrote for the same input, recorded in
 * fixtures/kfit-llama.json by `npx tsx bench/gguf-kfit.ts --quant /tmp/gguf-quant --write-fixture ...`.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { quantizeMatrix, type KQuantType } from '../../kernels/ggml/kquants.js';
import { kfitRows } from './kfit-rows.js';

const fixture = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'kfit-llama.json'), 'utf8')) as Record<string, string>;

describe("k-quant fit equals llama.cpp's quantize_q*_K with an importance matrix", () => {
  it.each(['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'] as KQuantType[])('%s: byte for byte', (type) => {
    const { x, im } = kfitRows(2, 512);
    const ours = Buffer.from(quantizeMatrix(type, x, 2, 512, im)).toString('hex');
    expect(ours.length).toBe(fixture[type]!.length);
    expect(ours).toBe(fixture[type]);
  });
});
