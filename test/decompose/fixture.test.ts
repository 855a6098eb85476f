/**
 * On the trained fixture: whitening by calibration activations must pay off on held-out activations, and the
 * allocator must beat uniform ranks on its own objective. (Held-out perplexity per mode is in docs/decompose.md,
 * from bench/decompose-table.ts: too slow for the test suite.)
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadWindows } from '../../src/data/windows.js';
import type { LayerGrams } from '../../src/decompose/grams.js';
import { collectGrams } from '../../src/decompose/pipeline.js';
import { planRanks } from '../../src/decompose/plan.js';
import { applyUnit, scoreLayer, type ScoredUnit } from '../../src/decompose/units.js';
import { loadSwiGLU } from '../../src/model/load.js';
import { openModel, type Model } from '../../src/model/open.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';

const DIR = join(import.meta.dirname, '..', 'fixtures', 'tiny-mixtral');
const TEXT = join(import.meta.dirname, '..', 'fixtures', 'text');
const have = existsSync(join(DIR, 'model.safetensors'));

let model: Model;
let calib: LayerGrams[];
let held: LayerGrams[];
const experts = new Map<number, SwiGLUWeights[]>();
let white: ScoredUnit[];

beforeAll(async () => {
  if (!have) return;
  await tf.setBackend('wasm');
  await tf.ready();
  model = await openModel(DIR);
  calib = (await collectGrams(model, await loadWindows(DIR, join(TEXT, 'calib.txt'), { maxTokens: 1024 }))).layers;
  held = (await collectGrams(model, await loadWindows(DIR, join(TEXT, 'heldout.txt'), { maxTokens: 512 }))).layers;
  for (const g of calib) {
    const l = model.view.layers[g.layer]!;
    if (l.block.kind !== 'moe') continue;
    experts.set(g.layer, await Promise.all(l.block.experts.map((r) => loadSwiGLU(model.ckpt, r))));
  }
}, 300_000);

/** units of the first two MoE layers scored on calibration Grams, measured on held-out Grams */
function units(mode: 'svd' | 'whitened'): ScoredUnit[] {
  return calib.slice(0, 2).flatMap((g, i) =>
    scoreLayer(g.layer, experts.get(g.layer)!, g, { mode }).map((u) => {
      const h = held[i]!;
      const heldGrams = u.experts.map((j) => (u.proj === 'down' ? h.experts[j]!.mid : h.experts[j]!.input) ?? new Float64Array(u.n * u.n));
      return { ...u, grams: heldGrams };
    }),
  );
}

describe.skipIf(!have)('trained fixture', () => {
  it('whitened beats plain SVD in held-out activation space at 0.8 and 0.6 (uniform ranks)', async () => {
    white = units('whitened');
    const plain = units('svd');
    for (const [ratio, uniform] of [
      [0.8, true],
      [0.6, true],
    ] as const) {
      {
        const err = async (us: ScoredUnit[]) => {
          const plan = await planRanks(us, ratio, uniform, 2);
          expect(plan.params).toBeLessThanOrEqual(plan.budget);
          return us.reduce((a, u, i) => a + applyUnit(u, plan.ranks[i]!).measured ** 2, 0);
        };
        const [w, p] = [await err(white), await err(plain)];
        console.log(`held-out activation error^2 at ${ratio} ${uniform ? 'uniform' : 'allocated'}: whitened ${w.toFixed(3)}, plain ${p.toFixed(3)}`);
        expect(w).toBeLessThan(p);
      }
    }
  });

  it('allocated ranks lose less than uniform ranks on the planned (calibration) loss', async () => {
    for (const ratio of [0.8, 0.6]) {
      const uni = await planRanks(white, ratio, true);
      const alloc = await planRanks(white, ratio, false, 2);
      expect(alloc.loss).toBeLessThan(uni.loss);
      expect(alloc.params).toBeLessThanOrEqual(alloc.budget);
    }
  });
});
