/**
 * llama.cpp itself (node-llama-cpp 3.21.1's prebuilt CPU binaries) loads every GGUF we write and its next-token
 * log-probabilities agree with our forward pass: within 1e-3 relative perplexity for every family (F32, random
 * tiny models, random token ids) and for the trained fixture at F16 and BF16 against `moe eval`'s windows.
 * llama.cpp keeps its KV cache in F16, so even F32 weights agree to ~1e-4, not bit for bit.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadWindowSet } from '../../src/data/windows.js';
import { exportGguf, GGUF_FILE } from '../../src/gguf/export.js';
import { readGguf } from '../../src/gguf/reader.js';
import { openModel } from '../../src/model/open.js';
import { quantize } from '../../src/quantize/pipeline.js';
import { streamModel } from '../../src/runtime/stream.js';
import type { Family } from '../helpers/families.js';
import { GGUF_FAMILIES, makeGgufCheckpoint, randomWindows } from './helpers.js';
import { theirs, twinGap } from './llama.js';

const dir = await mkdtemp(join(tmpdir(), 'moe-gguf-llama-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

async function ours(modelDir: string, windows: Int32Array[]): Promise<number> {
  const m = await openModel(modelDir);
  try {
    const r = await streamModel(m, windows, {}, { scoreLogits: true });
    return r.nll / r.scored;
  } finally {
    await m.ckpt.close();
  }
}

describe('llama.cpp loads our GGUF and agrees with our forward pass', () => {
  for (const family of Object.keys(GGUF_FAMILIES) as Family[]) {
    it(`${family} (F32): perplexity within 1e-3`, async () => {
      const src = join(dir, family);
      await makeGgufCheckpoint(family, src);
      await exportGguf({ model: src, out: `${src}-gguf`, type: 'F32' });
      const windows = randomWindows(2, 16, 64);
      const a = await ours(src, windows);
      const b = await theirs(join(`${src}-gguf`, GGUF_FILE), windows);
      expect(Math.abs(Math.exp(b - a) - 1)).toBeLessThan(1e-3);
    });
  }

  it('the trained fixture at F16 and BF16: llama.cpp perplexity within 1e-3 of moe eval on held-out windows', async () => {
    const M = 'test/fixtures/tiny-mixtral';
    const { windows } = await loadWindowSet(M, 'test/fixtures/text/heldout.txt', { seqLen: 64, maxTokens: 256 });
    const a = await ours(M, windows);
    for (const type of ['F16', 'BF16'] as const) {
      const out = join(dir, `fixture-${type}`);
      const rep = await exportGguf({ model: M, out, type });
      // the byte-level BPE trained for the fixture is none llama.cpp knows: no pre-tokenizer name is written
      expect(rep.tokenizer).toMatch(/not known to llama.cpp/);
      const b = await theirs(join(out, GGUF_FILE), windows);
      expect(Math.abs(Math.exp(b - a) - 1)).toBeLessThan(1e-3);
    }
  });

  it('block types: llama.cpp on the quantized file agrees with llama.cpp on our decoding of it (F32 twin)', async () => {
    // llama.cpp multiplies quantized weights by activations it quantizes to 8 bits, so agreement is ~1e-3, not exact.
    // One file per type; with the fixture's 128-wide rows taking llama.cpp's fallbacks these cover every decoder
    // but Q4_K, Q5_0, Q6_K and Q8_0, which the allocated file below holds.
    const M = 'test/fixtures/tiny-mixtral';
    const { windows } = await loadWindowSet(M, 'test/fixtures/text/heldout.txt', { seqLen: 32, maxTokens: 64 });
    const seen = new Set<string>();
    for (const type of ['Q2_K', 'Q3_K', 'Q5_K', 'Q4_1'] as const) {
      const out = join(dir, `fixture-${type}`);
      const rep = await exportGguf({ model: M, out, type });
      // the fixture's 256-wide down_proj takes the type itself
      expect(rep.tensors.find((t) => t.name === 'blk.0.ffn_down_exps.weight')!.type).toBe(type);
      for (const t of rep.tensors) seen.add(t.type);
      expect(await twinGap(join(out, GGUF_FILE), windows), type).toBeLessThan(5e-3);
    }
    expect([...seen].sort()).toEqual(['F32', 'Q2_K', 'Q3_K', 'Q4_0', 'Q4_1', 'Q5_1', 'Q5_K']);
  });

  it('moe quantize --format gguf (allocated types, GPTQ): llama.cpp loads it, agrees with our decoding, and stays near F16', async () => {
    const M = 'test/fixtures/tiny-mixtral';
    const { windows } = await loadWindowSet(M, 'test/fixtures/text/heldout.txt', { seqLen: 32, maxTokens: 64 });
    const out = join(dir, 'allocated');
    await quantize({
      model: M,
      calib: 'test/fixtures/text/calib.txt',
      calibTokens: 512,
      seqLen: 32,
      bits: 5.6,
      format: 'gguf',
      candidates: ['q4_k', 'q6_k'],
      out,
    });
    const f = await readGguf(join(out, GGUF_FILE));
    const types = new Set(f.tensors.map((t) => t.type));
    for (const t of ['Q4_K', 'Q5_0', 'Q6_K', 'Q8_0']) expect(types, t).toContain(t);
    expect(await twinGap(join(out, GGUF_FILE), windows)).toBeLessThan(5e-3);
    const f16 = join(dir, 'fixture-F16', GGUF_FILE);
    const q = await theirs(join(out, GGUF_FILE), windows);
    expect(Math.exp(q - (await theirs(f16, windows))) - 1).toBeLessThan(0.03);
  });
});
