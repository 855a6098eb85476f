import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import { mkdtemp, readFile, rm, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lowRankSection } from '../../src/decompose/format.js';
import { decompose, type DecomposeReport } from '../../src/decompose/pipeline.js';
import { MoeError } from '../../src/errors.js';
import { loadLinear } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let dir: string;
let model: string;

beforeAll(async () => {
  await tf.setBackend('wasm');
  await tf.ready();
  dir = await mkdtemp(join(tmpdir(), 'moe-decompose-'));
  model = join(dir, 'in');
  await makeTinyCheckpoint('mixtral', model, { experts: 4, layers: 2, seed: 3 });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function weights(path: string, layer: number, expert: number, proj: 'gate' | 'up' | 'down') {
  const m = await openModel(path);
  try {
    const l = m.view.layers[layer]!;
    if (l.block.kind !== 'moe') throw new Error('not moe');
    return await loadLinear(m.ckpt, l.block.experts[expert]![proj]);
  } finally {
    await m.ckpt.close();
  }
}

describe('moe decompose --mode svd (weights only)', () => {
  let uniform: DecomposeReport;
  let allocated: DecomposeReport;

  it('uniform ranks follow k = floor(m n rho / (m + n)) and the output loads through loadLinear', async () => {
    const out = join(dir, 'svd-uniform');
    uniform = await decompose({ model, out, ratio: 0.6, mode: 'svd', uniform: true });
    // mixtral tiny: gate/up [16, 32], down [32, 16]
    for (const u of uniform.units) expect(u.rank).toBe(Math.floor((16 * 32 * 0.6) / 48));
    expect(uniform.params.expertAfter).toBeLessThanOrEqual(uniform.params.budget);
    expect(uniform.units.length).toBe(2 * 4 * 3);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    const section = lowRankSection(cfg)!;
    expect(section.mode).toBe('svd');
    expect(Object.keys(section.modules).length).toBe(24);
    const mod = section.modules['model.layers.1.block_sparse_moe.experts.2.w1.weight']!;
    expect(mod).toEqual({ rank: 6, u: 'model.layers.1.block_sparse_moe.experts.2.w1.weight_u', v: 'model.layers.1.block_sparse_moe.experts.2.w1.weight_v' });
    // the factored checkpoint materialises through loadLinear, with exactly the predicted weight-space error
    const before = await weights(model, 1, 2, 'gate');
    const after = await weights(out, 1, 2, 'gate');
    let err = 0;
    for (let i = 0; i < before.w.length; i++) err += (before.w[i]! - after.w[i]!) ** 2;
    const unit = uniform.units.find((u) => u.id === 'L1.e2.gate')!;
    expect(Math.sqrt(err) / unit.predictedError!).toBeCloseTo(1, 4);
    expect(unit.measuredError! / unit.predictedError!).toBeCloseTo(1, 6);
    const files = await readdir(out);
    expect(files).toContain('moe-decompose-report.json');
  });

  it('allocated ranks honour the budget and lose no more than uniform', async () => {
    allocated = await decompose({ model, ratio: 0.6, mode: 'svd', dryRun: true, allocSeconds: 1 });
    expect(allocated.allocation).toBe('knapsack');
    expect(allocated.params.expertAfter).toBeLessThanOrEqual(allocated.params.budget);
    expect(allocated.plannedLoss!).toBeLessThanOrEqual(uniform.plannedLoss! * (1 + 1e-9));
    expect(new Set(allocated.units.map((u) => u.rank)).size).toBeGreaterThan(1);
  });

  it('--materialize writes dense weights equal to the factor product in the input dtype', async () => {
    const out = join(dir, 'svd-dense');
    await decompose({ model, out, ratio: 0.6, mode: 'svd', uniform: true, materialize: true });
    const m = await openModel(out);
    try {
      expect(m.ckpt.config.moe).toBeUndefined();
      expect(m.ckpt.dtype('model.layers.0.block_sparse_moe.experts.0.w2.weight')).toBe('F32');
    } finally {
      await m.ckpt.close();
    }
    const dense = await weights(out, 1, 2, 'down');
    const factored = await weights(join(dir, 'svd-uniform'), 1, 2, 'down');
    for (let i = 0; i < dense.w.length; i++) expect(dense.w[i]).toBeCloseTo(factored.w[i]!, 6);
  });

  it('a factored checkpoint is itself an input: re-decomposed at a higher rank it materialises exactly', async () => {
    const out = join(dir, 'svd-again');
    // the rank-6 factors have nothing beyond rank 6, so rank 10 reproduces them; the stale moe section goes
    const r = await decompose({ model: join(dir, 'svd-uniform'), out, ratio: 1, mode: 'svd', uniform: true, materialize: true });
    expect(r.units.every((u) => u.measuredError! < 1e-5)).toBe(true);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.moe).toBeUndefined();
    const a = await weights(out, 0, 1, 'up');
    const b = await weights(join(dir, 'svd-uniform'), 0, 1, 'up');
    for (let i = 0; i < a.w.length; i++) expect(a.w[i]).toBeCloseTo(b.w[i]!, 5);
  });

  it('ratio 1 with uniform ranks keeps the break-even rank and stays within budget', async () => {
    const r = await decompose({ model, ratio: 1, mode: 'svd', uniform: true, dryRun: true });
    expect(r.params.expertAfter).toBeLessThanOrEqual(r.params.expertBefore);
    for (const u of r.units) expect(u.rank).toBe(Math.floor((16 * 32) / 48));
  });

  it('rejects bad requests with one-line errors', async () => {
    await expect(decompose({ model, ratio: 0, mode: 'svd', dryRun: true })).rejects.toThrow(/--ratio/);
    await expect(decompose({ model, ratio: 1.5, mode: 'svd', dryRun: true })).rejects.toThrow(MoeError);
    await expect(decompose({ model, ratio: 0.5, mode: 'whitened', dryRun: true })).rejects.toThrow(/--calib/);
    await expect(decompose({ model, ratio: 0.5, mode: 'nope' as never, dryRun: true })).rejects.toThrow(/--mode/);
    await expect(decompose({ model, ratio: 0.5, mode: 'svd' })).rejects.toThrow(/--out/);
    await expect(decompose({ model, ratio: 0.5, mode: 'svd', out: join(dir, 'svd-uniform') })).rejects.toThrow(/exists/);
    await expect(decompose({ model, ratio: 0.5, mode: 'svd', stats: dir, dryRun: true })).rejects.toThrow(/Gram/);
    // 4 experts: the base alone is a quarter of the expert parameters; refused before any calibration work (the
    // calibration "text" is the model's config.json: it would fail to cut into windows if it were read)
    await expect(decompose({ model, ratio: 0.2, mode: 'base-delta', calib: join(model, 'config.json'), seqLen: 32, dryRun: true })).rejects.toThrow(
      /base experts alone/,
    );
  });
});
