/**
 * Window shards (src/runtime/shard.ts): with a pool and no hooks, each worker runs every layer on its share of the
 * windows. The hidden states and the NLL must be the bytes of one thread for every family shape the runtime has
 * (MLA, Gated DeltaNet, sinks and sliding layers, granite's multipliers, llama4's chunked attention and weighted
 * expert inputs), for window counts that do not divide evenly, and `moe eval` must print the same numbers.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMoeError } from '../../src/errors.js';
import { openModel } from '../../src/model/open.js';
import { initBackend } from '../../src/runtime/backend.js';
import { closePool, getPool, setThreads } from '../../src/runtime/pool.js';
import { shardPasses } from '../../src/runtime/shard.js';
import { streamModel } from '../../src/runtime/stream.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint, type Family } from '../helpers/families.js';

const MODEL = 'test/fixtures/tiny-mixtral';
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-shard-'));
  await initBackend('wasm');
});

afterAll(async () => {
  await setThreads(1);
  await closePool();
  await rm(root, { recursive: true, force: true });
});

function windows(n: number, s: number, v: number, seed = 7): Int32Array[] {
  const r = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % v;
  return Array.from({ length: n }, () => Int32Array.from({ length: s }, r));
}

const same = (a: Float32Array, b: Float32Array) =>
  a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe('window shards', () => {
  const families: Family[] = ['deepseek_v3', 'qwen3_next', 'gpt_oss', 'granitemoe', 'llama4_text', 'qwen2_moe'];
  it.each(families)(
    '%s: hidden states and NLL at 2 threads are the bytes of 1 thread (5 windows: shares of 2 and 3)',
    async (family) => {
      const dir = join(root, family);
      await makeTinyCheckpoint(family, dir, { seed: 5 });
      const m = await openModel(dir);
      try {
        const ws = windows(5, 19, m.view.dims.vocab);
        await setThreads(1);
        const before = shardPasses();
        const a = await streamModel(m, ws, {}, { scoreLogits: true, returnHidden: true });
        expect(shardPasses()).toBe(before);
        await setThreads(2);
        const layers: number[] = [];
        const b = await streamModel(m, ws, {}, { scoreLogits: true, returnHidden: true, onProgress: (l) => layers.push(l) });
        // the pass ran as shards, and progress saw every layer once, in order
        expect(shardPasses()).toBe(before + 1);
        expect(layers).toEqual(m.view.layers.map((_, i) => i + 1));
        expect(Number.isFinite(a.nll) && a.nll > 0).toBe(true);
        expect(b.scored).toBe(5 * 18);
        expect(b.nll).toBe(a.nll);
        expect(b.expertCalls).toBe(a.expertCalls);
        expect(b.expertSlots).toBe(a.expertSlots);
        expect(b.hidden!.length).toBe(5 * 19 * m.view.dims.hidden);
        expect(same(b.hidden!, a.hidden!)).toBe(true);
      } finally {
        await m.ckpt.close();
      }
    },
    300_000,
  );

  it('a shared pass at 2 threads starts one worker (the main thread runs a share); the per-layer path starts both', async () => {
    const m = await openModel(MODEL);
    try {
      await setThreads(2);
      await closePool();
      const ws = windows(4, 17, m.view.dims.vocab, 5);
      await streamModel(m, ws, {}, { scoreLogits: true });
      expect((await getPool('wasm'))!.started).toBe(1);
      // a hook takes the per-layer path: experts run ahead on every worker
      await streamModel(m, ws, { onExpertOutput: () => undefined });
      expect((await getPool('wasm'))!.started).toBe(2);
    } finally {
      await setThreads(1);
      await m.ckpt.close();
    }
  }, 300_000);

  it('a checkpoint rewritten at a path the workers already read is read anew (shares and head ranges)', async () => {
    // workers keep what they opened for the next task (src/runtime/opened.ts); a second checkpoint written to the
    // same directory in one process must not be scored from the first one's files
    const dir = join(root, 'rewritten');
    const share = (v: number) => windows(4, 17, v, 11);
    // a hook takes the per-layer path; 16 x 256 scored positions put the head's ranges on the workers
    const ranged = (v: number) => windows(16, 257, v, 12);
    const hook = { onExpertOutput: () => undefined };
    const passes = async (threads: number) => {
      const m = await openModel(dir);
      try {
        await setThreads(threads);
        const a = await streamModel(m, share(m.view.dims.vocab), {}, { scoreLogits: true });
        const b = await streamModel(m, ranged(m.view.dims.vocab), hook, { scoreLogits: true });
        return [a.nll, b.nll];
      } finally {
        // the thread count stays: changing it would restart the workers, and they must live across the rewrite
        await m.ckpt.close();
      }
    };
    await makeTinyCheckpoint('qwen2_moe', dir, { seed: 5 });
    const first = await passes(2);
    await rm(dir, { recursive: true, force: true });
    await makeTinyCheckpoint('qwen2_moe', dir, { seed: 6 });
    const second = await passes(2);
    const reference = await passes(1);
    await setThreads(1);
    expect(second).toEqual(reference);
    expect(second[0]).not.toBe(first[0]);
    expect(second[1]).not.toBe(first[1]);
  }, 300_000);

  it('more threads than windows: one shard per window; a single window stays on the per-layer path', async () => {
    const m = await openModel(MODEL);
    try {
      const ws = windows(3, 33, m.view.dims.vocab, 3);
      await setThreads(1);
      const a = await streamModel(m, ws, {}, { scoreLogits: true });
      const one = await streamModel(m, ws.slice(0, 1), {}, { scoreLogits: true });
      await setThreads(4);
      const before = shardPasses();
      const b = await streamModel(m, ws, {}, { scoreLogits: true });
      expect(shardPasses()).toBe(before + 1);
      expect(b.nll).toBe(a.nll);
      const c = await streamModel(m, ws.slice(0, 1), {}, { scoreLogits: true });
      expect(shardPasses()).toBe(before + 1);
      expect(c.nll).toBe(one.nll);
    } finally {
      await setThreads(1);
      await m.ckpt.close();
    }
  }, 300_000);

  it('a bad token id in a shard is one moe error, and the pool runs the next pass', async () => {
    const m = await openModel(MODEL);
    try {
      await setThreads(2);
      const ws = windows(4, 17, m.view.dims.vocab, 9);
      const bad = ws.map((w) => w.slice());
      bad[3]![5] = m.view.dims.vocab + 7;
      const err = await streamModel(m, bad, {}, { scoreLogits: true }).catch((e) => e);
      expect(isMoeError(err)).toBe(true);
      expect(String(err.message)).toMatch(/token id \d+ is outside the model's vocabulary/);
      const ok = await streamModel(m, ws, {}, { scoreLogits: true });
      await setThreads(1);
      const ref = await streamModel(m, ws, {}, { scoreLogits: true });
      expect(ok.nll).toBe(ref.nll);
    } finally {
      await setThreads(1);
      await m.ckpt.close();
    }
  }, 300_000);

  it('moe eval prints the same perplexity, KL and top-1 agreement at --threads 1 and 2', async () => {
    // 48 short lines of the fixture's own vocabulary through its tokenizer
    const data = join(root, 'eval.txt');
    const { readFile } = await import('node:fs/promises');
    await writeFile(data, (await readFile('test/fixtures/text/calib.txt', 'utf8')).split('\n').slice(0, 200).join('\n'));
    const base = join(root, 'pruned');
    const pr = await runMoe(['prune', '--model', MODEL, '--ratio', '0.5', '--method', 'random', '--seed', '3', '--out', base, '--quiet']);
    expect(pr.code, pr.stderr).toBe(0);
    const run = async (t: number) => {
      const r = await runMoe([
        'eval',
        '--model',
        base,
        '--base',
        MODEL,
        '--data',
        data,
        '--seq-len',
        '64',
        '--max-tokens',
        '1024',
        '--threads',
        String(t),
        '--json',
      ]);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      return { perplexity: j.perplexity, tokens: j.tokens, meanNll: j.meanNll, base: j.base };
    };
    const one = await run(1);
    const two = await run(2);
    expect(one.tokens).toBe(16 * 64);
    expect(one.base.meanKl).toBeGreaterThan(0);
    expect(two).toEqual(one);
  }, 300_000);
});
