/**
 * llama.cpp itself (node-llama-cpp 3.21.1) loads GGUFs holding our IQ2_XXS / IQ2_XS / IQ2_S tensors, and its
 * perplexity on them agrees with its perplexity on an F32 twin holding our decoding of every tensor (within its
 * 8-bit activation rounding, as for the k-quants in llama.test.ts): the decoders and the block layout are llama.cpp's.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { IQ2_TYPES } from '../../kernels/ggml/iq2.js';
import { loadWindowSet } from '../../src/data/windows.js';
import { exportGguf, GGUF_FILE } from '../../src/gguf/export.js';
import { twinGap } from './llama.js';

const dir = await mkdtemp(join(tmpdir(), 'moe-gguf-iq2-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('llama.cpp loads our IQ2 tensors', () => {
  it.each(IQ2_TYPES)('%s (the fixture: 256-wide down_proj in the type, 128-wide rows IQ4_NL by llama.cpp fallback) agrees with its F32 twin', async (type) => {
    const M = 'test/fixtures/tiny-mixtral';
    const { windows } = await loadWindowSet(M, 'test/fixtures/text/heldout.txt', { seqLen: 32, maxTokens: 64 });
    const out = join(dir, type);
    const rep = await exportGguf({ model: M, out, type });
    expect(rep.tensors.find((t) => t.name === 'blk.0.ffn_down_exps.weight')!.type).toBe(type);
    expect(rep.tensors.find((t) => t.name === 'blk.0.ffn_gate_exps.weight')!.type).toBe('IQ4_NL');
    expect(new Set(rep.tensors.map((t) => t.type))).toEqual(new Set(['F32', 'IQ4_NL', type]));
    expect(await twinGap(join(out, GGUF_FILE), windows)).toBeLessThan(5e-3);
  });
});
