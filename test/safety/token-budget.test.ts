/**
 * Token budgets: --max-tokens / --calib-tokens bound tokenization, not only the windows. A data file is streamed
 * line by line and tokenized only as far as the budget's windows need, so a 40 MB single-line file costs what its
 * first words cost, and the windows are the same as those of a file holding just those words.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../../kernels/random.js';
import { loadWindowSet } from '../../src/data/windows.js';
import { wordLines } from '../eval/tokenizer.js';
import { runMoe } from '../helpers/cli.js';
import { tinyModel } from './helpers.js';

let root: string;
let model: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-budget-'));
  ({ model } = await tinyModel(join(root, 'model')));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('tokenization is bounded by the token budget', () => {
  it('a 40 MB single line: the first windows only, equal to a small file of its start, in seconds', async () => {
    const words = wordLines(1, seededRandom(7), 8_000_000)[0]!;
    const big = join(root, 'one-line.txt');
    writeFileSync(big, words + '\n');
    expect(readFileSync(big).byteLength).toBeGreaterThan(20_000_000);
    const small = join(root, 'start.txt');
    writeFileSync(small, words.slice(0, 20_000).replace(/\s\S*$/, '') + '\n');
    const t0 = performance.now();
    const a = await loadWindowSet(model, big, { seqLen: 16, maxTokens: 512 });
    const ms = performance.now() - t0;
    const b = await loadWindowSet(model, small, { seqLen: 16, maxTokens: 512 });
    expect(a.windows.length).toBe(32);
    expect(a.windows).toEqual(b.windows);
    // whole-line tokenization of 8M words takes minutes and GBs; the prefix takes well under this (loaded machine)
    expect(ms).toBeLessThan(20_000);
  }, 120_000);

  it('many lines: reading stops at the budget (lines counted are the ones used)', async () => {
    const f = join(root, 'many.txt');
    writeFileSync(f, wordLines(200_000, seededRandom(3)).join('\n') + '\n');
    const s = await loadWindowSet(model, f, { seqLen: 12, maxTokens: 120 });
    expect(s.windows.length).toBe(10);
    expect(s.lines).toBeLessThan(20);
    const whole = await loadWindowSet(model, join(root, 'many.txt'), { seqLen: 12 });
    expect(whole.lines).toBe(200_000);
    expect(whole.windows.slice(0, 10)).toEqual(s.windows);
  }, 120_000);

  it('calibrate --max-tokens on the big file finishes and writes statistics of exactly that budget', async () => {
    const r = await runMoe([
      'calibrate',
      '--model',
      model,
      '--data',
      join(root, 'one-line.txt'),
      '--seq-len',
      '16',
      '--max-tokens',
      '256',
      '--out',
      join(root, 's'),
      '--quiet',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).tokens).toBe(256 + 16);
  }, 120_000);
});
