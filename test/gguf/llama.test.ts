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
import { kv } from '../../src/gguf/format.js';
import { readGguf, readGgufTensor } from '../../src/gguf/reader.js';
import { writeGguf, type GgufWriteTensor } from '../../src/gguf/writer.js';
import { toF32 } from '../../src/io/dtype.js';
import { KQUANT_TYPES, dequantizeMatrix, type KQuantType } from '../../kernels/ggml/kquants.js';
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

  it('every block type: llama.cpp on the quantized file agrees with llama.cpp on our decoding of it (F32 twin)', async () => {
    // llama.cpp multiplies quantized weights by activations it quantizes to 8 bits, so agreement is ~1e-3, not exact
    const M = 'test/fixtures/tiny-mixtral';
    const { windows } = await loadWindowSet(M, 'test/fixtures/text/heldout.txt', { seqLen: 32, maxTokens: 64 });
    for (const type of KQUANT_TYPES) {
      const out = join(dir, `fixture-${type}`);
      const rep = await exportGguf({ model: M, out, type });
      // the fixture's 128-wide rows take a fallback for the 256-wide k-quants; its 256-wide down_proj does not
      expect(rep.tensors.find((t) => t.name === 'blk.0.ffn_down_exps.weight')!.type).toBe(type);
      const f = await readGguf(join(out, GGUF_FILE));
      const twin: GgufWriteTensor[] = [];
      for (const t of f.tensors) {
        const b = await readGgufTensor(f, t.name);
        const rows = t.ne.slice(1).reduce((a, c) => a * c, 1);
        const v = (KQUANT_TYPES as readonly string[]).includes(t.type) ? dequantizeMatrix(t.type as KQuantType, b, rows, t.ne[0]!) : toF32(b, t.type as 'F32');
        twin.push({ name: t.name, type: 'F32', ne: t.ne, produce: () => new Uint8Array(v.buffer, v.byteOffset, v.byteLength) });
      }
      const meta = new Map(f.metadata);
      meta.set('general.file_type', kv.u32(0));
      await writeGguf(join(out, 'twin.gguf'), meta, twin);
      const a = await theirs(join(out, GGUF_FILE), windows);
      const b = await theirs(join(out, 'twin.gguf'), windows);
      expect(Math.abs(Math.exp(a - b) - 1)).toBeLessThan(5e-3);
    }
  });
});
