import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModel } from '../../src/model/open.js';
import { initBackend } from '../../src/runtime/backend.js';
import { streamModel } from '../../src/runtime/stream.js';
import { makeTinyCheckpoint, type Family } from '../helpers/families.js';
import { loadRef, refForward, refNll } from './reference.js';

let root: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-fwd-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function windowsOf(seed: number, n: number, S: number, V: number): Int32Array[] {
  let a = seed;
  const next = () => ((a = (a * 1103515245 + 12345) >>> 0) >>> 8) % V;
  return Array.from({ length: n }, () => Int32Array.from({ length: S }, next));
}

const FAMS: Family[] = [
  'mixtral',
  'qwen2_moe',
  'qwen3_moe',
  'olmoe',
  'deepseek_v2',
  'deepseek_v3',
  'granitemoe',
  'gpt_oss',
  'phimoe',
  'glm4_moe',
  'minimax_m2',
  'ernie4_5_moe',
];

describe('layer-streamed forward equals an independent all-in-memory forward', () => {
  for (const fam of FAMS) {
    it(fam, async () => {
      const dir = join(root, fam);
      await makeTinyCheckpoint(fam, dir, { seed: 7 });
      const model = await openModel(dir);
      try {
        const windows = windowsOf(3, 3, 9, model.view.dims.vocab);
        const res = await streamModel(model, windows, {}, { scoreLogits: true, returnHidden: true });
        const ref = await loadRef(dir);
        const H = model.view.dims.hidden;
        let refNllSum = 0;
        let maxDiff = 0;
        windows.forEach((w, n) => {
          const r = refForward(ref, Array.from(w));
          refNllSum += refNll(r.logits, Array.from(w));
          r.hidden.forEach((row, i) => {
            for (let a = 0; a < H; a++) maxDiff = Math.max(maxDiff, Math.abs(row[a]! - res.hidden![(n * 9 + i) * H + a]!));
          });
        });
        expect(res.scored).toBe(3 * 8);
        expect(maxDiff).toBeLessThan(2e-4);
        expect(Math.abs(res.nll - refNllSum) / refNllSum).toBeLessThan(1e-5);
        // every routed slot was computed
        expect(res.expertCalls).toBe(res.expertSlots);
      } finally {
        await model.ckpt.close();
      }
    });
  }
});

describe('memory', () => {
  it('no backend tensors survive a pass (weights are freed layer by layer); only the cached attention masks stay', async () => {
    const tf = await import('@tensorflow/tfjs-core');
    const dir = join(root, 'mem');
    await makeTinyCheckpoint('qwen2_moe', dir, { seed: 9 });
    const model = await openModel(dir);
    try {
      const windows = windowsOf(5, 2, 11, model.view.dims.vocab);
      await streamModel(model, windows, {}, { scoreLogits: true });
      const after1 = tf.memory().numTensors;
      await streamModel(model, windows, {}, { scoreLogits: true });
      await streamModel(model, windows);
      expect(tf.memory().numTensors).toBe(after1);
      // what stays is at most a few [S, S] masks, never a layer's weights
      expect(tf.memory().numBytes).toBeLessThan(8 * 11 * 11 * 4 + 1);
    } finally {
      await model.ckpt.close();
    }
  });
});
