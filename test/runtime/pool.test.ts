/**
 * The worker pool: tasks give the same bytes on a worker as inline, errors keep their kind, and the forward pass
 * (window shards without hooks, experts of each layer and lm_head ranges with them) is byte-identical at 1 and 2
 * threads, as are the outputs of a command that runs it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isMoeError } from '../../src/errors.js';
import { openModel } from '../../src/model/open.js';
import { initBackend } from '../../src/runtime/backend.js';
import { workerParts } from '../../src/runtime/memory.js';
import { availableThreads, closePool, currentThreads, defaultThreads, describeThreads, parseThreads, runTasks, setThreads } from '../../src/runtime/pool.js';
import { shardPasses } from '../../src/runtime/shard.js';
import { streamModel } from '../../src/runtime/stream.js';
import { TASKS_MODULE, type ExpertResult, type ExpertTask } from '../../src/runtime/tasks.js';
import { runMoe } from '../helpers/cli.js';
import { outputFiles } from '../helpers/files.js';

const MODEL = 'test/fixtures/tiny-mixtral';
const CALIB = 'test/fixtures/text/calib.txt';

afterAll(async () => {
  await setThreads(1);
  await closePool();
});

function windows(n: number, s: number, v: number): Int32Array[] {
  let seed = 7;
  const r = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % v;
  return Array.from({ length: n }, () => Int32Array.from({ length: s }, r));
}

describe('worker pool', () => {
  it('parses thread counts and refuses nonsense', () => {
    expect(parseThreads('3')).toBe(3);
    for (const bad of ['0', '-1', '1.5', 'x', '']) expect(() => parseThreads(bad)).toThrow(/--threads must be a whole number >= 1/);
  });

  it('defaults to the cores available, MOE_THREADS overriding; --threads overrides both', async () => {
    const saved = process.env['MOE_THREADS'];
    try {
      delete process.env['MOE_THREADS'];
      expect(defaultThreads()).toBe(availableThreads());
      process.env['MOE_THREADS'] = '3';
      expect(defaultThreads()).toBe(3);
      process.env['MOE_THREADS'] = '0';
      expect(() => defaultThreads()).toThrow(/MOE_THREADS must be a whole number >= 1, got '0'/);
      await setThreads(4);
      expect(describeThreads()).toMatchObject({ threads: 4, reason: '--threads 4' });
    } finally {
      if (saved === undefined) delete process.env['MOE_THREADS'];
      else process.env['MOE_THREADS'] = saved;
      await setThreads(1);
    }
  });

  it('memory estimates carry each worker: none at one thread, growing with the count', async () => {
    const m = await openModel(MODEL);
    expect(workerParts(m.view, 4096, 1)).toEqual([]);
    const sum = (t: number) => workerParts(m.view, 4096, t).reduce((a, p) => a + p.bytes, 0);
    // two workers: two isolates, four experts of the fixture (3 x 3 x 128 x 256 floats each) and their tokens in flight
    expect(sum(2)).toBeGreaterThan(2 * 30 * 2 ** 20 + 4 * 3 * 3 * 128 * 256 * 4);
    expect(sum(4)).toBeCloseTo(2 * sum(2), -3);
    await m.ckpt.close();
  });

  it("a quantize dry run's estimate carries each worker's GPTQ working set and experts in flight", async () => {
    const est = async (t: number) => {
      const r = await runMoe([
        'quantize',
        '--model',
        MODEL,
        '--bits',
        '3',
        '--calib',
        CALIB,
        '--calib-tokens',
        '512',
        '--seq-len',
        '128',
        '--threads',
        String(t),
        '--dry-run',
        '--json',
      ]);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout).memory as { peakBytes: number; parts: { label: string; bytes: number }[] };
    };
    const one = await est(1);
    const two = await est(2);
    const gptq = (m: typeof one) => m.parts.find((p) => /^GPTQ/.test(p.label))!;
    expect(gptq(one).label).not.toMatch(/per worker/);
    expect(gptq(two).label).toMatch(/\(one per worker thread, 2\)$/);
    expect(gptq(two).bytes).toBe(2 * gptq(one).bytes);
    expect(two.parts.some((p) => p.label === '2 worker threads (isolate + tensor backend each)')).toBe(true);
    expect(two.peakBytes).toBeGreaterThan(one.peakBytes + 60 * 2 ** 20);
    await setThreads(1);
  }, 300_000);

  it('an expert task gives the same bytes on a worker as inline, in input order', async () => {
    await initBackend('wasm');
    const m = await openModel(MODEL);
    const { loadSwiGLU } = await import('../../src/model/load.js');
    const layer = m.view.layers[0]!;
    if (layer.block.kind !== 'moe') throw new Error('fixture layer 0 is not MoE');
    const H = m.view.dims.hidden;
    const tasks: ExpertTask[] = [];
    for (let e = 0; e < 4; e++) {
      const w = await loadSwiGLU(m.ckpt, layer.block.experts[e]!);
      const n = 37 + 50 * e;
      const x = Float32Array.from({ length: n * H }, (_, i) => Math.sin(i * 0.37 + e));
      tasks.push({ w, x, n, activation: { kind: 'silu' }, down: e % 2 === 0 });
    }
    await setThreads(1);
    const inline = await runTasks<ExpertTask, ExpertResult>('wasm', TASKS_MODULE, 'expertForward', tasks);
    await setThreads(2);
    expect(currentThreads()).toBe(2);
    const pooled = await runTasks<ExpertTask, ExpertResult>('wasm', TASKS_MODULE, 'expertForward', tasks);
    for (let e = 0; e < 4; e++) {
      expect(pooled[e]!.out.length).toBe(tasks[e]!.n * H);
      expect(Buffer.from(pooled[e]!.out.buffer).equals(Buffer.from(inline[e]!.out.buffer))).toBe(true);
      expect(pooled[e]!.down?.length ?? 0).toBe(e % 2 === 0 ? 1 : 0);
    }
    await m.ckpt.close();
  }, 120_000);

  it('an SVD task gives the same bytes on a worker as inline', async () => {
    const { LINALG_TASKS_MODULE } = await import('../../src/runtime/linalg-tasks.js');
    const { gaussian } = await import('../../kernels/linalg/svd.js');
    const tasks = [
      { M: gaussian(96 * 40, 3), m: 96, n: 40 },
      { M: gaussian(30 * 70, 4), m: 30, n: 70 },
    ];
    await setThreads(1);
    const inline = await runTasks<(typeof tasks)[number], { s: Float64Array; U: Float64Array }>('wasm', LINALG_TASKS_MODULE, 'svdMatrix', tasks);
    await setThreads(2);
    const pooled = await runTasks<(typeof tasks)[number], { s: Float64Array; U: Float64Array }>('wasm', LINALG_TASKS_MODULE, 'svdMatrix', tasks);
    for (let i = 0; i < tasks.length; i++) {
      expect(pooled[i]!.s.length).toBe(Math.min(tasks[i]!.m, tasks[i]!.n));
      expect(Buffer.from(pooled[i]!.s.buffer).equals(Buffer.from(inline[i]!.s.buffer))).toBe(true);
      expect(Buffer.from(pooled[i]!.U.buffer).equals(Buffer.from(inline[i]!.U.buffer))).toBe(true);
    }
  }, 120_000);

  it('a MoeError inside a task stays a MoeError', async () => {
    await setThreads(2);
    const bad: ExpertTask = {
      w: { gate: { out: 2, in: 3, w: new Float32Array(6) }, up: { out: 2, in: 4, w: new Float32Array(8) }, down: { out: 3, in: 2, w: new Float32Array(6) } },
      x: new Float32Array(3),
      n: 1,
      activation: { kind: 'silu' },
      down: false,
    };
    await expect(runTasks('wasm', TASKS_MODULE, 'expertForward', [bad])).rejects.toThrow(/take different inputs/);
    const err = await runTasks('wasm', new URL('../../src/model/open.js', import.meta.url).href, 'openModel', ['/nonexistent-moe-model']).catch((e) => e);
    expect(isMoeError(err)).toBe(true);
  }, 120_000);

  it('the forward pass is byte-identical at 1 and 2 threads (hidden states and NLL)', async () => {
    await initBackend('wasm');
    const m = await openModel(MODEL);
    // 36 windows: 4608 scored positions, so the lm_head is split into ranges too
    const ws = windows(36, 129, m.view.dims.vocab);
    const run = async (t: number) => {
      await setThreads(t);
      return streamModel(m, ws, {}, { scoreLogits: true, returnHidden: true });
    };
    const a = await run(1);
    const passes = shardPasses();
    const b = await run(2);
    // hook-free: the 2-thread pass ran as window shards (shard.ts), one per worker
    expect(shardPasses()).toBe(passes + 1);
    expect(b.nll).toBe(a.nll);
    expect(b.expertCalls).toBe(a.expertCalls);
    expect(Buffer.from(b.hidden!.buffer).equals(Buffer.from(a.hidden!.buffer))).toBe(true);
    await m.ckpt.close();
  }, 300_000);

  it('quantize (widths scored per expert, GPTQ per expert on the pool) writes the same bytes at --threads 1 and 2', async () => {
    const root = await mkdtemp(join(tmpdir(), 'moe-pool-q-'));
    try {
      for (const granularity of ['expert', 'projection']) {
        const got: Record<string, string>[] = [];
        for (const t of [1, 2]) {
          const out = join(root, `q-${granularity}-${t}`);
          const r = await runMoe([
            'quantize',
            '--model',
            MODEL,
            '--bits',
            '3',
            '--candidates',
            '2,3,4',
            '--granularity',
            granularity,
            '--calib',
            CALIB,
            '--calib-tokens',
            '512',
            '--seq-len',
            '128',
            '--threads',
            String(t),
            '--out',
            out,
            '--quiet',
          ]);
          expect(r.code, r.stderr).toBe(0);
          got.push(await outputFiles(out));
        }
        expect(Object.keys(got[0]!).length).toBeGreaterThan(1);
        expect(got[1]).toEqual(got[0]);
      }
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }, 600_000);

  it('calibrate and prune --method reap write the same bytes at --threads 1 and 2', async () => {
    const root = await mkdtemp(join(tmpdir(), 'moe-pool-'));
    try {
      const got: Record<string, string>[][] = [];
      for (const t of [1, 2]) {
        const outs: Record<string, string>[] = [];
        for (const [name, args] of [
          ['calib', ['calibrate', '--model', MODEL, '--data', CALIB, '--max-tokens', '512', '--seq-len', '128']],
          ['reap', ['prune', '--model', MODEL, '--keep', '6', '--method', 'reap', '--calib', CALIB, '--calib-tokens', '512', '--seq-len', '128']],
        ] as const) {
          const out = join(root, `${name}-${t}`);
          const r = await runMoe([...args, '--threads', String(t), '--out', out, '--quiet']);
          expect(r.code, r.stderr).toBe(0);
          outs.push(await outputFiles(out));
        }
        got.push(outs);
      }
      expect(Object.keys(got[0]![0]!).length).toBeGreaterThan(0);
      expect(got[1]).toEqual(got[0]);
      expect(currentThreads()).toBe(2);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }, 300_000);
});
