/**
 * llama.cpp itself (node-llama-cpp 3.21.1) loads GGUFs holding our IQ2_XXS / IQ2_XS / IQ2_S tensors, and its
 * perplexity on them agrees with its perplexity on an F32 twin holding our decoding of every tensor (within its
 * 8-bit activation rounding, as for the k-quants in llama.test.ts): the decoders and the block layout are llama.cpp's;
 * also for a file the allocation writes with IQ2 candidates and GPTQ.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { IQ2_TYPES } from '../../kernels/ggml/iq2.js';
import { loadWindowSet } from '../../src/data/windows.js';
import { exportGguf, GGUF_FILE } from '../../src/gguf/export.js';
import type { GgufQuantizeReport } from '../../src/gguf/quantize-report.js';
import { readGguf } from '../../src/gguf/reader.js';
import { quantize } from '../../src/quantize/pipeline.js';
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

describe('moe quantize --format gguf with IQ2 candidates (GPTQ into the 8-value grid points)', () => {
  it('reaches below Q2_K on the fixture’s down rows, within --bits, and llama.cpp reads what we decoded', async () => {
    const M = 'test/fixtures/tiny-mixtral';
    const out = join(dir, 'alloc');
    // gate/up rows are 128 wide: every candidate falls back to a 4.5-bpw 32-block type there (IQ4_NL, Q4_0), so
    // --bits 3.75 leaves down_proj (1/3 of the weights) 2.25 bpw: between IQ2_XXS (2.0625) and IQ2_S (2.5625)
    const rep = (await quantize({
      model: M,
      calib: 'test/fixtures/text/calib.txt',
      calibTokens: 512,
      seqLen: 32,
      bits: 3.75,
      format: 'gguf',
      candidates: ['iq2_xxs', 'iq2_s', 'q2_k'],
      out,
    })) as unknown as GgufQuantizeReport;
    const f = await readGguf(join(out, GGUF_FILE));
    const experts = f.tensors.filter((t) => /_exps\.weight$/.test(t.name));
    const params = experts.reduce((a, t) => a + t.ne.reduce((x, y) => x * y, 1), 0);
    const bytes = experts.reduce((a, t) => a + t.bytes, 0);
    expect(bytes).toBeLessThanOrEqual(Math.floor((3.75 * params) / 8));
    expect(rep.expertBpw).toBeGreaterThan(3.6875);
    const down = new Set(experts.filter((t) => t.ne[0] === 256).map((t) => t.type));
    expect(down.has('IQ2_XXS')).toBe(true);
    for (const t of down) expect(['IQ2_XXS', 'IQ2_S', 'Q2_K']).toContain(t);
    for (const t of experts.filter((x) => x.ne[0] === 128)) expect(['IQ4_NL', 'Q4_0']).toContain(t.type);
    const { windows } = await loadWindowSet(M, 'test/fixtures/text/heldout.txt', { seqLen: 32, maxTokens: 64 });
    expect(await twinGap(join(out, GGUF_FILE), windows)).toBeLessThan(5e-3);
  }, 300_000);
});
