/**
 * decompose's unit factorisations on the worker pool (src/decompose/unit-task.ts): every mode writes the same bytes
 * at 1 and 2 threads, and at 2 threads every unit of both passes really ran on a worker (none at 1).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecomposeMode } from '../../src/decompose/format.js';
import { decompose, type DecomposeReport } from '../../src/decompose/pipeline.js';
import { closePool, setThreads, workerTasks } from '../../src/runtime/pool.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { outputFiles } from '../helpers/files.js';

let dir: string;
let model: string;
const windows = Array.from({ length: 6 }, (_, w) => Int32Array.from({ length: 24 }, (_, i) => (w * 31 + i * 7 + ((i * i) % 5)) % 64));

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'moe-decompose-threads-'));
  model = join(dir, 'in');
  await makeTinyCheckpoint('mixtral', model, { experts: 4, layers: 2, seed: 5 });
});
afterAll(async () => {
  await setThreads(1);
  await closePool();
  await rm(dir, { recursive: true, force: true });
});

describe('moe decompose on the worker pool', () => {
  const modes: [DecomposeMode, boolean][] = [
    ['svd', false],
    ['whitened', true],
    ['shared-input', true],
    ['shared-output', true],
    ['base-delta', true],
  ];
  for (const [mode, calibrated] of modes) {
    it(`--mode ${mode}: the same bytes and report at --threads 1 and 2, every unit factorised on a worker at 2`, async () => {
      const files: Record<string, string>[] = [];
      const reports: DecomposeReport[] = [];
      const ran: number[] = [];
      for (const threads of [1, 2]) {
        const out = join(dir, `${mode}-${threads}`);
        const before = workerTasks('factorUnit');
        const r = await decompose({ model, out, mode, ratio: 0.6, allocSeconds: 1, threads, ...(calibrated ? { windows } : {}) });
        ran.push(workerTasks('factorUnit') - before);
        files.push(await outputFiles(out));
        reports.push(r);
      }
      expect(Object.keys(files[0]!).some((f) => f.endsWith('.safetensors'))).toBe(true);
      expect(files[1]).toEqual(files[0]);
      // the allocated plan and the measured errors are the same numbers too
      const units = (r: DecomposeReport) => r.units.map((u) => [u.id, u.rank, u.predictedError, u.measuredError]);
      expect(units(reports[1]!)).toEqual(units(reports[0]!));
      expect(reports[0]!.plan?.source).toBe('allocated');
      // a score pass and an apply pass: each unit is one task per pass, all on workers at 2 threads, none at 1
      expect(ran[0]).toBe(0);
      expect(ran[1]).toBe(2 * reports[0]!.units.length);
    }, 300_000);
  }

  it("a dry run's estimate carries each worker's factorisation and the units in flight", async () => {
    const est = async (threads: number) =>
      (await decompose({ model, out: join(dir, 'dry'), mode: 'whitened', ratio: 0.6, windows, threads, dryRun: true, uniform: true })).memory;
    const one = await est(1);
    const two = await est(2);
    const work = (m: typeof one) => m.parts.find((p) => p.label.startsWith('factorisation of the largest unit'))!;
    expect(work(one).label).not.toMatch(/worker/);
    expect(work(two).label).toMatch(/\(one per worker thread, 2\)$/);
    expect(work(two).bytes).toBe(2 * work(one).bytes);
    // a whitened unit of the fixture: one [16, 32] or [32, 16] expert linear and its Gram (32 x 32 at most), float64
    const inFlight = two.parts.find((p) => p.label.startsWith('units in flight'))!;
    expect(inFlight.label).toBe('units in flight on the workers (4 ahead of the in-order consumer)');
    expect(inFlight.bytes).toBe(4 * (16 * 32 + 32 * 32) * 8);
    expect(one.parts.some((p) => p.label.startsWith('units in flight'))).toBe(false);
    expect(two.peakBytes).toBeGreaterThan(one.peakBytes);
  }, 300_000);
});
