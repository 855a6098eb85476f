/**
 * `moe decompose` in production: plan files (--save-plan / --plan), layer-parallel --shard i/n joined by
 * `moe assemble`, --seed of the randomized SVD, and the dry run's peak-memory estimate. Tiny float32 models
 * (every comparison is byte for byte, which float32 output makes strict).
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decompose } from '../../src/decompose/pipeline.js';
import { runMoe, spawnMoe } from '../helpers/cli.js';
import { outputFiles } from '../helpers/files.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
let model: string;
let other: string;
let wide: string;
const windows = Array.from({ length: 6 }, (_, w) => Int32Array.from({ length: 24 }, (_, i) => (w * 31 + i * 7 + ((i * i) % 5)) % 64));
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

const contents = outputFiles;

beforeAll(async () => {
  await tf.setBackend('wasm');
  await tf.ready();
  root = await mkdtemp(join(tmpdir(), 'moe-decompose-prod-'));
  model = join(root, 'in');
  other = join(root, 'other');
  wide = join(root, 'wide');
  await makeTinyCheckpoint('mixtral', model, { experts: 4, layers: 3, seed: 11 });
  await makeTinyCheckpoint('mixtral', other, { experts: 4, layers: 2, seed: 11 });
  // intermediate 64: gate/up [64, 32], the randomized SVD route once its threshold is lowered below 32
  await makeTinyCheckpoint('mixtral', wide, { experts: 2, layers: 2, intermediate: 64, seed: 4 });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('--save-plan / --plan', () => {
  const plan = () => join(root, 'whitened.plan.json');
  const base = { ratio: 0.6, mode: 'whitened' as const, windows, allocSeconds: 1 };

  it('--plan reproduces the run that saved it byte for byte; a dry run saves a plan and writes no checkpoint', async () => {
    const saved = join(root, 'saving-run');
    const full = await decompose({ ...base, model, out: saved, savePlan: plan() });
    expect(full.plan).toEqual({ source: 'allocated', saved: plan() });
    const file = JSON.parse(await readFile(plan(), 'utf8'));
    expect(file.tool).toBe('decompose');
    expect(Object.keys(file.plan.ranks)).toHaveLength(3 * 4 * 3);
    expect(Object.values(file.plan.ranks)).toEqual(full.units.map((u) => u.rank));
    expect(file.settings).toMatchObject({ ratio: 0.6, mode: 'whitened', uniform: false, materialize: false, seed: 1, allocLoss: 'absolute' });
    expect(file.settings.calibration).toMatch(/^tokens:144:[0-9a-f]{64}$/);

    const applied = join(root, 'plan-run');
    const rep = await decompose({ ...base, model, out: applied, plan: plan() });
    expect(rep.plan).toEqual({ source: 'file', path: plan() });
    expect(rep.units.map((u) => u.measuredError)).toEqual(full.units.map((u) => u.measuredError));
    expect(rep.plannedLoss).toBe(full.plannedLoss);
    expect(await contents(applied)).toEqual(await contents(saved));

    const dryPlan = join(root, 'dry.plan.json');
    const dry = await decompose({ ...base, model, dryRun: true, savePlan: dryPlan, out: join(root, 'never') });
    expect(await exists(join(root, 'never'))).toBe(false);
    expect(dry.units.every((u) => u.predictedError !== undefined && u.measuredError === undefined)).toBe(true);
    const again = await decompose({ ...base, model, dryRun: true, plan: dryPlan });
    expect(again.units.map((u) => u.rank)).toEqual(dry.units.map((u) => u.rank));
  });

  it('refuses another model, other flags and broken plans with one line and a non-zero exit', async () => {
    await expect(decompose({ ...base, model: other, dryRun: true, plan: plan() })).rejects.toThrow(/different model/);
    await expect(decompose({ ...base, ratio: 0.5, model, dryRun: true, plan: plan() })).rejects.toThrow(/ratio = 0.6, this command has 0.5/);
    await expect(decompose({ ...base, mode: 'shared-input', model, dryRun: true, plan: plan() })).rejects.toThrow(/mode = "whitened"/);
    await expect(decompose({ ...base, model, dryRun: true, plan: plan(), seed: 2 })).rejects.toThrow(/seed = 1, this command has 2/);
    await expect(decompose({ ...base, windows: windows.slice(1), model, dryRun: true, plan: plan() })).rejects.toThrow(/calibration/);
    await expect(decompose({ ...base, model, dryRun: true, plan: plan(), materialize: true })).rejects.toThrow(/materialize/);

    const file = JSON.parse(await readFile(plan(), 'utf8'));
    const broken = async (name: string, edit: (ranks: Record<string, number>) => void) => {
      const f = structuredClone(file);
      edit(f.plan.ranks);
      const p = join(root, name);
      await writeFile(p, JSON.stringify(f));
      return p;
    };
    const missing = await broken('missing.json', (r) => delete r['L1.e2.up']);
    const tooBig = await broken('too-big.json', (r) => (r['L0.e0.gate'] = 17));
    const negative = await broken('negative.json', (r) => (r['L0.e0.gate'] = -1));
    const extra = await broken('extra.json', (r) => (r['L7.e0.gate'] = 3));
    const overBudget = await broken('over.json', (r) => {
      for (const k of Object.keys(r)) r[k] = 10;
    });
    await expect(decompose({ ...base, model, dryRun: true, plan: missing })).rejects.toThrow(/'L1.e2.up' has no rank/);
    await expect(decompose({ ...base, model, dryRun: true, plan: tooBig })).rejects.toThrow(/'L0.e0.gate' has rank 17, expected a whole number in \[0, 10\]/);
    await expect(decompose({ ...base, model, dryRun: true, plan: negative })).rejects.toThrow(/rank -1/);
    await expect(decompose({ ...base, model, dryRun: true, plan: extra })).rejects.toThrow(/'L7.e0.gate' is not a unit/);
    await expect(decompose({ ...base, model, dryRun: true, plan: overBudget })).rejects.toThrow(/over the budget/);

    // the CLI: one line, non-zero exit (the plan was made from token windows, so any --calib run differs too)
    const cli = await runMoe(['decompose', '--model', model, '--ratio', '0.6', '--mode', 'svd', '--plan', plan(), '--dry-run', '--backend', 'wasm']);
    expect(cli.code).toBe(2);
    expect(cli.stderr.trim().split('\n')).toHaveLength(1);
    expect(cli.stderr).toMatch(/^moe: .*mode = "whitened", this command has "svd"/);
    const bad = await runMoe(['decompose', '--model', model, '--ratio', '0.6', '--plan', tooBig, '--calib', plan(), '--dry-run', '--backend', 'wasm']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    const both = await runMoe(['decompose', '--model', model, '--ratio', '0.6', '--mode', 'svd', '--plan', plan(), '--save-plan', plan(), '--dry-run']);
    expect(both.code).toBe(2);
  });
});

describe('--shard i/n + moe assemble', () => {
  it('two shards assembled equal one unsharded run with the same plan; each factorises only its layers', async () => {
    const plan = join(root, 'shard.plan.json');
    const opts = { model, ratio: 0.5, mode: 'shared-output' as const, windows, allocSeconds: 1 };
    await decompose({ ...opts, dryRun: true, savePlan: plan });
    const whole = join(root, 'shard-whole');
    await decompose({ ...opts, out: whole, plan });
    const parts = [0, 1].map((i) => join(root, `shard-part-${i}`));
    const reps = [];
    for (const [i, p] of parts.entries()) reps.push(await decompose({ ...opts, out: p, plan, shard: { index: i, count: 2 } }));
    expect(reps[0]!.shard).toEqual({ index: 0, count: 2, layers: [0, 2] });
    expect(reps[1]!.shard).toEqual({ index: 1, count: 2, layers: [1] });
    expect(reps.map((r) => [...new Set(r.units.map((u) => u.layer))])).toEqual([[0, 2], [1]]);
    const r = await runMoe(['assemble', parts[1]!, parts[0]!, '--out', join(root, 'shard-assembled'), '--quiet']);
    expect(r.code).toBe(0);
    expect(await contents(join(root, 'shard-assembled'))).toEqual(await contents(whole));
  });

  it('--uniform needs no plan (ranks follow from shapes); allocated ranks without --plan are refused', async () => {
    const opts = { model, ratio: 0.7, mode: 'svd' as const, uniform: true };
    const whole = join(root, 'uniform-whole');
    await decompose({ ...opts, out: whole });
    const parts = [0, 1, 2].map((i) => join(root, `uniform-part-${i}`));
    for (const [i, p] of parts.entries()) await decompose({ ...opts, out: p, shard: { index: i, count: 3 } });
    const r = await runMoe(['assemble', ...parts, '--out', join(root, 'uniform-assembled'), '--quiet']);
    expect(r.code).toBe(0);
    expect(await contents(join(root, 'uniform-assembled'))).toEqual(await contents(whole));

    const cli = await runMoe(['decompose', '--model', model, '--ratio', '0.6', '--mode', 'svd', '--out', join(root, 'x'), '--shard', '0/2']);
    expect(cli.code).toBe(2);
    expect(cli.stderr).toMatch(/^moe: --shard needs --plan FILE/);
    // a part of another plan (other ranks) is refused by assemble
    const odd = join(root, 'uniform-odd-1');
    await decompose({ ...opts, ratio: 0.6, out: odd, shard: { index: 1, count: 3 } });
    const mixed = await runMoe(['assemble', parts[0]!, odd, parts[2]!, '--out', join(root, 'mixed')]);
    expect(mixed.code).not.toBe(0);
    expect(mixed.stderr).toMatch(/different plan/);
  });
});

describe('--seed (randomized SVD)', () => {
  // threshold 16: the [64, 32] gate/up matrices take the randomized route at ratio 0.2 (ladder top 14 < 32 / 2)
  const opts = () => ({ model: wide, ratio: 0.2, mode: 'svd' as const, uniform: true, randomizedAbove: 16 });

  it('the same seed gives byte-identical output; another seed other factors; the report records it', async () => {
    const a = await decompose({ ...opts(), out: join(root, 'seed-a') });
    const b = await decompose({ ...opts(), out: join(root, 'seed-b'), seed: 1 });
    const c = await decompose({ ...opts(), out: join(root, 'seed-c'), seed: 7 });
    expect([a.seed, b.seed, c.seed]).toEqual([1, 1, 7]);
    expect(await contents(join(root, 'seed-b'))).toEqual(await contents(join(root, 'seed-a')));
    const [ca, cc] = [await contents(join(root, 'seed-a')), await contents(join(root, 'seed-c'))];
    expect(cc['config.json']).toEqual(ca['config.json']);
    expect(cc['model.safetensors']).not.toEqual(ca['model.safetensors']);
    // both seeds find the leading subspace: the errors agree closely
    const gate = (r: typeof a) => r.units.find((u) => u.id === 'L0.e0.gate')!;
    expect(gate(c).measuredError! / gate(a).measuredError!).toBeCloseTo(1, 2);
    const cli = await runMoe(['decompose', '--model', wide, '--ratio', '0.2', '--mode', 'svd', '--seed', 'x', '--dry-run']);
    expect(cli.code).toBe(2);
    expect(cli.stderr).toMatch(/--seed must be a whole number/);
  });
});

describe('--dry-run memory estimate', () => {
  it('the report carries the estimate and the text summary prints it', async () => {
    const r = await decompose({ model, ratio: 0.6, mode: 'whitened', windows, dryRun: true, uniform: true });
    expect(r.memory.peakBytes).toBeGreaterThan(100 * 2 ** 20);
    const labels = r.memory.parts.map((p) => p.label).join('; ');
    expect(labels).toMatch(/Gram matrices/);
    expect(labels).toMatch(/SVD workspace/);
    expect(labels).toMatch(/forward pass over 144 calibration tokens/);
    const cli = await runMoe(['decompose', '--model', model, '--ratio', '0.5', '--mode', 'svd', '--dry-run', '--backend', 'wasm', '--quiet']);
    expect(cli.code).toBe(0);
    expect(cli.stdout).toMatch(/estimated peak memory \d+ MiB: runtime/);
  });
});

describe('kill -9 mid-write, then the same command again', () => {
  it('resumes: the layers already written are skipped by the writer and the output matches an uninterrupted run', async () => {
    const out = join(root, 'killed');
    const plan = join(root, 'kill.plan.json');
    await decompose({ model, ratio: 0.6, mode: 'svd', dryRun: true, savePlan: plan, allocSeconds: 1 });
    const args = ['decompose', '--model', model, '--out', out, '--ratio', '0.6', '--mode', 'svd', '--plan', plan, '--backend', 'wasm', '--quiet'];
    const moe = (env: Record<string, string> = {}) => spawnMoe(args, env);
    // embeddings, layer 0 (7 copied tensors, 4 experts x 3 linears x 2 factors) and 10 tensors into layer 1
    const killed = moe({ MOE_TEST_KILL_AFTER_WRITES: String(1 + 7 + 24 + 10) });
    expect(killed.signal).toBe('SIGKILL');
    expect(await exists(out)).toBe(false);
    const resumed = moe();
    expect(resumed.stderr).toBe('');
    expect(resumed.status).toBe(0);
    const reference = join(root, 'killed-reference');
    await decompose({ model, out: reference, ratio: 0.6, mode: 'svd', plan });
    expect(await contents(out)).toEqual(await contents(reference));
  });
});
