/**
 * StreamOptions.checkpoint: a pass restored after layer k from the hidden states a full pass saved there gives the
 * same final hidden states and log-likelihood as the full pass, runs only layers > k, and reports every layer.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModel } from '../../src/model/open.js';
import { initBackend } from '../../src/runtime/backend.js';
import { streamModel } from '../../src/runtime/stream.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-ckpt-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('streamModel checkpoint', () => {
  it('restoring after layer k gives the same hidden states and nll as a full pass', async () => {
    const dir = join(root, 'mixtral');
    await makeTinyCheckpoint('mixtral', dir, { layers: 4, seed: 11 });
    const model = await openModel(dir);
    try {
      const V = model.view.dims.vocab;
      const windows = [0, 1].map((n) => Int32Array.from({ length: 7 }, (_, i) => (i * 13 + n * 5 + 1) % V));
      const saved = new Map<number, Float32Array>();
      const layersSeen: number[] = [];
      const full = await streamModel(
        model,
        windows,
        { onMoeLayer: (inp) => void layersSeen.push(inp.layer.index) },
        {
          scoreLogits: true,
          returnHidden: true,
          checkpoint: { restore: async () => undefined, save: async (l, h) => void saved.set(l, h.slice()) },
        },
      );
      // saved after every layer but the last
      expect([...saved.keys()]).toEqual([0, 1, 2]);
      expect(layersSeen).toEqual([0, 1, 2, 3]);
      const plain = await streamModel(model, windows, {}, { scoreLogits: true, returnHidden: true });
      expect(plain.hidden).toEqual(full.hidden);
      for (const k of [0, 2]) {
        const seen: number[] = [];
        const progress: number[] = [];
        const saves: number[] = [];
        const r = await streamModel(
          model,
          windows,
          { onMoeLayer: (inp) => void seen.push(inp.layer.index) },
          {
            scoreLogits: true,
            returnHidden: true,
            onProgress: (l) => progress.push(l),
            checkpoint: { restore: async () => ({ after: k, hidden: saved.get(k)!.slice() }), save: async (l) => void saves.push(l) },
          },
        );
        expect(seen).toEqual([0, 1, 2, 3].filter((l) => l > k));
        expect(progress).toEqual([1, 2, 3, 4]);
        expect(saves).toEqual([1, 2].filter((l) => l > k));
        expect(r.hidden).toEqual(full.hidden);
        expect(r.nll).toBe(full.nll);
      }
      // with stopAfterLayer the pass saves up to the layer before it; a state at or past it is refused
      const stopSaves: number[] = [];
      await streamModel(model, windows, {}, { stopAfterLayer: 2, checkpoint: { restore: async () => undefined, save: async (l) => void stopSaves.push(l) } });
      expect(stopSaves).toEqual([0, 1]);
      await expect(
        streamModel(
          model,
          windows,
          {},
          { stopAfterLayer: 2, checkpoint: { restore: async () => ({ after: 2, hidden: saved.get(2)! }), save: async () => {} } },
        ),
      ).rejects.toThrow(/does not fit this pass/);
    } finally {
      await model.ckpt.close();
    }
  });
});
