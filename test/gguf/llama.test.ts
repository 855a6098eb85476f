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
import { openModel } from '../../src/model/open.js';
import { streamModel } from '../../src/runtime/stream.js';
import type { Family } from '../helpers/families.js';
import { GGUF_FAMILIES, makeGgufCheckpoint, randomWindows } from './helpers.js';
import { llamaNll, loadGguf } from './llama.js';

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

async function theirs(gguf: string, windows: Int32Array[]): Promise<number> {
  const lm = await loadGguf(gguf);
  try {
    const r = await llamaNll(lm, windows);
    return r.nll / r.scored;
  } finally {
    await lm.dispose();
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
});
