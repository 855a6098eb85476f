/**
 * llama.cpp itself (node-llama-cpp 3.21.1) loads GGUFs holding our IQ4_NL / IQ4_XS / IQ3_XXS / IQ3_S tensors, and its perplexity on
 * them agrees with its perplexity on an F32 twin holding our decoding of every tensor (within its 8-bit activation
 * rounding, as for the k-quants in llama.test.ts): the decoders and the block layout are llama.cpp's.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadWindowSet } from '../../src/data/windows.js';
import { exportGguf, GGUF_FILE } from '../../src/gguf/export.js';
import type { GgufQuantizeReport } from '../../src/gguf/quantize-report.js';
import { readGguf } from '../../src/gguf/reader.js';
import { quantize } from '../../src/quantize/pipeline.js';
import { twinGap } from './llama.js';

const dir = await mkdtemp(join(tmpdir(), 'moe-gguf-iq34-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('llama.cpp loads our IQ tensors', () => {
  it('IQ4_XS (the fixture: 256-wide down_proj IQ4_XS, 128-wide rows IQ4_NL by llama.cpp fallback) agrees with its F32 twin', async () => {
    const M = 'test/fixtures/tiny-mixtral';
    const { windows } = await loadWindowSet(M, 'test/fixtures/text/heldout.txt', { seqLen: 32, maxTokens: 64 });
    const out = join(dir, 'IQ4_XS');
    const rep = await exportGguf({ model: M, out, type: 'IQ4_XS' });
    expect(rep.tensors.find((t) => t.name === 'blk.0.ffn_down_exps.weight')!.type).toBe('IQ4_XS');
    expect(rep.tensors.find((t) => t.name === 'blk.0.ffn_gate_exps.weight')!.type).toBe('IQ4_NL');
    expect(new Set(rep.tensors.map((t) => t.type))).toEqual(new Set(['F32', 'IQ4_NL', 'IQ4_XS']));
    expect(await twinGap(join(out, GGUF_FILE), windows)).toBeLessThan(5e-3);
  });

  it.each(['IQ3_XXS', 'IQ3_S'] as const)('%s (256-wide down_proj; 128-wide rows IQ4_NL) agrees with its F32 twin', async (type) => {
    const M = 'test/fixtures/tiny-mixtral';
    const { windows } = await loadWindowSet(M, 'test/fixtures/text/heldout.txt', { seqLen: 32, maxTokens: 64 });
    const out = join(dir, type);
    const rep = await exportGguf({ model: M, out, type });
    expect(rep.tensors.find((t) => t.name === 'blk.0.ffn_down_exps.weight')!.type).toBe(type);
    expect(new Set(rep.tensors.map((t) => t.type))).toEqual(new Set(['F32', 'IQ4_NL', type]));
    expect(await twinGap(join(out, GGUF_FILE), windows)).toBeLessThan(5e-3);
  });

  it('moe quantize --format gguf --candidates iq3_xxs,iq4_xs (GPTQ) chooses among them within --bits; llama.cpp loads the file', async () => {
    const M = 'test/fixtures/tiny-mixtral';
    const { windows } = await loadWindowSet(M, 'test/fixtures/text/heldout.txt', { seqLen: 32, maxTokens: 64 });
    const out = join(dir, 'allocated');
    // gate/up (128 wide, 2/3 of the expert weights) can only be IQ4_NL (4.5 bpw): 4.2 bpw leaves down_proj 3.6 on
    // average, between IQ3_XXS (3.0625) and IQ4_XS (4.25), so both are chosen
    const rep = (await quantize({
      model: M,
      calib: 'test/fixtures/text/calib.txt',
      calibTokens: 512,
      seqLen: 32,
      bits: 4.2,
      format: 'gguf',
      candidates: ['iq3_xxs', 'iq4_xs'],
      out,
    })) as unknown as GgufQuantizeReport;
    const f = await readGguf(join(out, GGUF_FILE));
    const experts = f.tensors.filter((t) => /_exps\.weight$/.test(t.name));
    for (const t of experts) expect(t.ne[0] === 128 ? ['IQ4_NL'] : ['IQ3_XXS', 'IQ4_XS'], t.name).toContain(t.type);
    const down = new Set(experts.filter((t) => t.ne[0] === 256).map((t) => t.type));
    expect([...down].sort()).toEqual(['IQ3_XXS', 'IQ4_XS']);
    const params = experts.reduce((a, t) => a + t.ne.reduce((x, y) => x * y, 1), 0);
    expect(experts.reduce((a, t) => a + t.bytes, 0)).toBeLessThanOrEqual(Math.floor((4.2 * params) / 8));
    expect(rep.programs.experts.usedBytes).toBe(experts.reduce((a, t) => a + t.bytes, 0));
    expect(await twinGap(join(out, GGUF_FILE), windows)).toBeLessThan(5e-3);
  });
});
