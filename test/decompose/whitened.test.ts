import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODE_NAMES as MODES } from '../../src/decompose/methods.js';
import { collectGrams, decompose } from '../../src/decompose/pipeline.js';
import { openModel } from '../../src/model/open.js';
import { streamModel } from '../../src/runtime/stream.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let dir: string;
let model: string;
const windows = Array.from({ length: 6 }, (_, w) => Int32Array.from({ length: 24 }, (_, i) => (w * 31 + i * 7 + ((i * i) % 5)) % 64));

async function nll(path: string): Promise<number> {
  const m = await openModel(path);
  try {
    const r = await streamModel(m, windows, {}, { scoreLogits: true });
    return r.nll / r.scored;
  } finally {
    await m.ckpt.close();
  }
}

beforeAll(async () => {
  await tf.setBackend('wasm');
  await tf.ready();
  dir = await mkdtemp(join(tmpdir(), 'moe-decompose-w-'));
  model = join(dir, 'in');
  await makeTinyCheckpoint('mixtral', model, { experts: 4, layers: 2, seed: 5 });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('calibrated modes end to end (tiny mixtral, token windows)', () => {
  it('whitened: factors evaluate through the runtime exactly like their dense materialisation', async () => {
    const fac = join(dir, 'w-fac');
    const den = join(dir, 'w-dense');
    const rep = await decompose({ model, out: fac, ratio: 0.6, mode: 'whitened', windows, allocSeconds: 1 });
    await decompose({ model, out: den, ratio: 0.6, mode: 'whitened', windows, allocSeconds: 1, materialize: true });
    expect(rep.calibration.tokens).toBe(6 * 24);
    expect(rep.params.expertAfter).toBeLessThanOrEqual(rep.params.budget);
    const [a, b, base] = [await nll(fac), await nll(den), await nll(model)];
    expect(Number.isFinite(a)).toBe(true);
    expect(Math.abs(a - b)).toBeLessThan(1e-4);
    expect(Math.abs(a - base)).toBeGreaterThan(0);
    // unridged units: the measured activation-space error is the predicted one
    for (const u of rep.units.filter((x) => x.ridge === 0)) expect(u.measuredError! / u.predictedError!).toBeCloseTo(1, 4);
  });

  it('precollected Grams give the same plan as the forward pass inside decompose', async () => {
    const m = await openModel(model);
    const grams = await collectGrams(m, windows);
    await m.ckpt.close();
    const a = await decompose({ model, ratio: 0.7, mode: 'shared-output', windows, dryRun: true, allocSeconds: 1 });
    const b = await decompose({ model, ratio: 0.7, mode: 'shared-output', grams, dryRun: true, allocSeconds: 1 });
    expect(b.units.map((u) => u.rank)).toEqual(a.units.map((u) => u.rank));
    expect(b.units[0]!.predictedError!).toBeCloseTo(a.units[0]!.predictedError!, 8);
  });

  for (const mode of MODES.filter((m) => m !== 'whitened')) {
    it(`${mode}: writes a loadable checkpoint within budget`, async () => {
      const out = join(dir, `m-${mode}`);
      const rep = await decompose({ model, out, ratio: 0.8, mode, windows, uniform: true });
      expect(rep.params.expertAfter).toBeLessThanOrEqual(rep.params.budget);
      expect(Number.isFinite(await nll(out))).toBe(true);
    });
  }
});
