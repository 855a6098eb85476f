import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mergeLayer } from '../../src/merge/layer.js';
import { loadRouter, loadSwiGLU } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import { writeExpertEdit, type ExpertSource, type LayerExpertEdit } from '../../src/model/rewrite.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { makeTinyCheckpoint, type Family } from '../helpers/families.js';
import { measureSignals, randomArray, rng } from './synthetic.js';

let root: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
  root = await mkdtemp(join(tmpdir(), 'moe-merge-output-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Merge every MoE layer of a tiny checkpoint from 6 to 3 experts and write it through writeExpertEdit. */
async function mergeTiny(family: Family) {
  const src = join(root, `${family}-in`);
  await makeTinyCheckpoint(family, src, { experts: 6, topK: 2 });
  const model = await openModel(src);
  const H = model.view.dims.hidden;
  const edits: LayerExpertEdit[] = [];
  const merged = new Map<number, SwiGLUWeights[]>();
  const r = rng(5);
  try {
    for (const layer of model.view.layers) {
      if (layer.block.kind !== 'moe') continue;
      const experts: SwiGLUWeights[] = [];
      for (const refs of layer.block.experts) experts.push(await loadSwiGLU(model.ckpt, refs));
      const router = await loadRouter(model.ckpt, layer.block.router);
      const x = randomArray(64 * H, r);
      const signals = measureSignals(experts, router.w, x, 64, 2);
      const m = mergeLayer(
        { layer: layer.index, experts, router, signals, rule: model.view.routing, activation: model.view.forward.activation },
        { groups: 3, grouping: 'hierarchical', align: 'weights', weighting: 'frequency', router: 'mean' },
      );
      merged.set(layer.index, m.experts);
      const sources: ExpertSource[] = m.groups.map((g, i) => (g.members.length === 1 ? { from: g.anchor } : { weights: m.experts[i] }));
      edits.push({ layer: layer.index, experts: sources, router: m.router });
    }
    const out = join(root, `${family}-out`);
    await writeExpertEdit(model, { layers: edits }, out);
    return { out, merged, edits, H };
  } finally {
    await model.ckpt.close();
  }
}

describe('merged checkpoint', () => {
  for (const family of ['mixtral', 'qwen2_moe', 'granitemoe'] as const) {
    it(`${family}: opens with openModel, has N experts and router [N, H], and holds the merged weights`, async () => {
      const { out, merged, edits, H } = await mergeTiny(family);
      const m = await openModel(out);
      try {
        expect(m.view.dims.numExperts).toBe(3);
        expect(m.view.config[m.view.numExpertsKey]).toBe(3);
        for (const layer of m.view.layers) {
          if (layer.block.kind !== 'moe') continue;
          expect(layer.block.experts.length).toBe(3);
          const router = await loadRouter(m.ckpt, layer.block.router);
          expect(router.w.length).toBe(3 * H);
          const edit = edits.find((e) => e.layer === layer.index)!;
          expect(Array.from(router.w)).toEqual(Array.from(edit.router!.w));
          for (let i = 0; i < 3; i++) {
            const w = await loadSwiGLU(m.ckpt, layer.block.experts[i]);
            const want = merged.get(layer.index)![i];
            // the tiny fixtures are float32 on disk: the written experts come back bit for bit
            expect(Array.from(w.down.w)).toEqual(Array.from(want.down.w));
            expect(Array.from(w.gate.w)).toEqual(Array.from(want.gate.w));
          }
        }
      } finally {
        await m.ckpt.close();
      }
    });
  }
});
