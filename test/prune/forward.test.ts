/**
 * A pruned checkpoint runs through the runtime, and gives the same log-likelihood as the unpruned model with the
 * dropped experts masked to -inf in a running forward pass (the edit `reconstruct` uses to let later layers see
 * pruned earlier ones). Agreement checks the surgery (kept experts, router rows, biases, group keys) and the mask
 * at once, on every family.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModel } from '../../src/model/open.js';
import { maskedEdit } from '../../src/runtime/mask.js';
import { checkKeep } from '../../src/prune/plan.js';
import { prune } from '../../src/prune/pipeline.js';
import { initBackend } from '../../src/runtime/backend.js';
import { streamModel } from '../../src/runtime/stream.js';
import { FAMILIES, makeTinyCheckpoint } from '../helpers/families.js';
import { seededRandom } from '../../kernels/random.js';

let root: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-prune-forward-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function windows(V: number, n: number, S: number, seed: number): Int32Array[] {
  const r = seededRandom(seed);
  return Array.from({ length: n }, () => Int32Array.from({ length: S }, () => Math.floor(r() * V)));
}

describe.each(FAMILIES)('pruned %s runs and matches the masked forward pass', (family) => {
  it('same log-likelihood as the masked pass, different from the unpruned model', async () => {
    const dir = join(root, family);
    await makeTinyCheckpoint(family, dir, { experts: 8 });
    const src = await openModel(dir);
    let keep = 4;
    for (; keep < 8; keep++) {
      try {
        checkKeep(src.view, keep);
        break;
      } catch {
        /* next */
      }
    }
    const report = await prune({ model: dir, out: join(root, `${family}-p`), keep, method: 'random', seed: 1 });
    const kept = new Map(report.layers.map((l) => [l.layer, l.kept]));
    const out = await openModel(join(root, `${family}-p`));
    const win = windows(src.view.dims.vocab, 2, 8, 5);
    try {
      const pruned = await streamModel(out, win, {}, { scoreLogits: true });
      const groupSize = src.view.routing.groups ? src.view.dims.numExperts / src.view.routing.groups.nGroup : undefined;
      const masked = await streamModel(
        src,
        win,
        { onMoeLayer: (inp) => maskedEdit(inp, kept.get(inp.layer.index)!, groupSize), routerOnly: true },
        { scoreLogits: true },
      );
      const full = await streamModel(src, win, {}, { scoreLogits: true });
      expect(pruned.scored).toBeGreaterThan(0);
      expect(Number.isFinite(pruned.nll)).toBe(true);
      expect(pruned.nll / pruned.scored).toBeCloseTo(masked.nll / masked.scored, 4);
      // pruning changed the model (the comparison is not vacuous)
      expect(Math.abs(full.nll - pruned.nll)).toBeGreaterThan(1e-4);
    } finally {
      await src.ckpt.close();
      await out.ckpt.close();
    }
  });
});
