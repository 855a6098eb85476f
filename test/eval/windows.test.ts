import { mkdtemp, rm, writeFile, mkdir, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cutWindows, loadWindowSet, resolveBos, splitLines } from '../../src/data/windows.js';
import { writeWordTokenizer } from './tokenizer.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-win-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('windowing convention', () => {
  it('splits lines: trailing CR removed, blank lines skipped, other text verbatim', () => {
    expect(splitLines('a b\r\n\r\n   \n  c  \nlast')).toEqual(['a b', '  c  ', 'last']);
  });

  it('cuts consecutive windows, drops the partial one, prepends BOS, honours max tokens', () => {
    const s = Int32Array.from({ length: 10 }, (_, i) => 100 + i);
    const w = cutWindows(s, 3, 1);
    expect(w.map((x) => Array.from(x))).toEqual([
      [1, 100, 101, 102],
      [1, 103, 104, 105],
      [1, 106, 107, 108],
    ]);
    expect(cutWindows(s, 3, null).map((x) => Array.from(x))).toEqual([
      [100, 101, 102],
      [103, 104, 105],
      [106, 107, 108],
    ]);
    expect(cutWindows(s, 3, 1, 7).length).toBe(2);
    expect(() => cutWindows(s, 11, 1)).toThrow(/fewer than one window/);
    expect(() => cutWindows(s, 3, 1, 2)).toThrow(/token limit 2 .* is less than one window/);
  });

  it('BOS from tokenizer_config, explicit null, special_tokens_map, config fallback', () => {
    const tj = { added_tokens: [{ id: 5, content: '<s>' }], model: { vocab: { '<bos>': 9 } } };
    expect(resolveBos(tj, { bos_token: '<s>' }, undefined, { bos_token_id: 7 })).toBe(5);
    expect(resolveBos(tj, { bos_token: { content: '<bos>' } }, undefined, undefined)).toBe(9);
    expect(resolveBos(tj, { bos_token: null }, undefined, { bos_token_id: 7 })).toBe(null);
    expect(resolveBos(tj, {}, { bos_token: '<s>' }, undefined)).toBe(5);
    expect(resolveBos(tj, {}, undefined, { bos_token_id: 7 })).toBe(7);
    expect(resolveBos(tj, undefined, undefined, {})).toBe(null);
    expect(() => resolveBos(tj, { bos_token: '<nope>' }, undefined, undefined)).toThrow(/not in tokenizer.json/);
  });

  it('tokenizes each line without special tokens and concatenates', async () => {
    const dir = join(root, 'm1');
    await mkdir(dir);
    const vocab = await writeWordTokenizer(dir);
    const file = join(dir, 'data.txt');
    await writeFile(file, 'the cat sat\r\n\n  \nthe dog ran .\nbig red\n');
    const set = await loadWindowSet(dir, file, { seqLen: 4 });
    // stream: the cat sat the | dog ran . big | red (dropped)
    expect(set.streamTokens).toBe(9);
    expect(set.lines).toBe(3);
    expect(set.bos).toBe(1);
    expect(Array.from(set.windows[0]!)).toEqual([1, vocab.the, vocab.cat, vocab.sat, vocab.the]);
    expect(Array.from(set.windows[1]!)).toEqual([1, vocab.dog, vocab.ran, vocab['.'], vocab.big]);
    expect(set.windows.length).toBe(2);
    expect(set.scoredTokens).toBe(8);
  });

  it('a tokenizer without BOS feeds the window alone', async () => {
    const dir = join(root, 'm2');
    await mkdir(dir);
    await writeWordTokenizer(dir, { bos: null });
    const file = join(dir, 'data.txt');
    await writeFile(file, 'the cat sat on the mat\n');
    const set = await loadWindowSet(dir, file, { seqLen: 3 });
    expect(set.bos).toBe(null);
    expect(set.windows.map((w) => w.length)).toEqual([3, 3]);
    expect(set.scoredTokens).toBe(4);
  });

  it('clear errors: missing data, empty data, too few tokens, missing tokenizer', async () => {
    const dir = join(root, 'm3');
    await mkdir(dir);
    await writeWordTokenizer(dir);
    await expect(loadWindowSet(dir, join(dir, 'none.txt'))).rejects.toThrow(/data file not found/);
    await writeFile(join(dir, 'empty.txt'), '\n  \r\n\n');
    await expect(loadWindowSet(dir, join(dir, 'empty.txt'))).rejects.toThrow(/has no text/);
    await writeFile(join(dir, 'short.txt'), 'the cat\n');
    await expect(loadWindowSet(dir, join(dir, 'short.txt'), { seqLen: 8 })).rejects.toThrow(/2 tokens is fewer than one window of 8/);
    await unlink(join(dir, 'tokenizer.json'));
    await expect(loadWindowSet(dir, join(dir, 'short.txt'))).rejects.toThrow(/tokenizer.json not found/);
  });
});
