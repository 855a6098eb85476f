/**
 * The generic pass -> writer hand-off (decompose's factors, quantize's and GGUF's packed tensors): one layer alive, no
 * deadlock when the writer skips layers, failures cross over, the writer's open output reaches the pass.
 */
import { describe, expect, it } from 'vitest';
import { LayerHandoff } from '../../src/pipeline/handoff.js';
import type { LayerFactors } from '../../src/decompose/write.js';

const tick = () => new Promise((r) => setTimeout(r, Math.random() * 3));
const factors = (layer: number) => new Map([[`layer`, { layer }]]) as unknown as LayerFactors;

/** An apply pass over `layers` and a writer that asks for `wanted` (increasing), both with random delays. */
async function run(layers: number[], wanted: number[], opts: { applyFails?: number; writerFails?: number } = {}) {
  const h = new LayerHandoff<LayerFactors>();
  const got: number[] = [];
  const apply = (async () => {
    for (const l of layers) {
      await tick();
      if (opts.applyFails === l) throw new Error(`apply failed at ${l}`);
      h.publish(l, factors(l));
      expect(h.alive).toBeLessThanOrEqual(1);
      await h.released(l);
    }
  })().then(
    () => h.close(),
    (e) => {
      h.fail(e);
      throw e;
    },
  );
  const write = (async () => {
    for (const l of wanted) {
      await tick();
      if (opts.writerFails === l) throw new Error(`writer failed at ${l}`);
      for (let t = 0; t < 3; t++) got.push(((await h.take(l)) as unknown as Map<string, { layer: number }>).get('layer')!.layer);
    }
  })().then(
    () => h.finish(),
    (e) => {
      h.fail(e);
      throw e;
    },
  );
  const [a, w] = await Promise.allSettled([apply, write]);
  return { a, w, got, maxAlive: h.maxAlive };
}

describe('LayerHandoff', () => {
  it('hands over every layer in order with at most one layer alive', async () => {
    const r = await run([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]);
    expect(r.a.status).toBe('fulfilled');
    expect(r.w.status).toBe('fulfilled');
    expect(r.got).toEqual([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
    expect(r.maxAlive).toBe(1);
  });

  it('a writer that skips layers (resumed run: already written) releases them without waiting for them', async () => {
    const r = await run([0, 1, 2, 3], [2, 3]);
    expect(r.a.status).toBe('fulfilled');
    expect(r.w.status).toBe('fulfilled');
    expect(r.got).toEqual([2, 2, 2, 3, 3, 3]);
    // every layer already written: the writer finishes at once and the pass runs through
    const none = await run([0, 1, 2], []);
    expect(none.a.status).toBe('fulfilled');
  });

  it('a failure on either side rejects the other; a layer never computed is an error, not a hang', async () => {
    const a = await run([0, 1, 2], [0, 1, 2], { applyFails: 1 });
    expect(a.a.status === 'rejected' && String(a.a.reason)).toMatch(/apply failed at 1/);
    expect(a.w.status === 'rejected' && String(a.w.reason)).toMatch(/apply failed at 1/);
    const w = await run([0, 1, 2], [0, 1, 2], { writerFails: 1 });
    expect(w.w.status === 'rejected' && String(w.w.reason)).toMatch(/writer failed at 1/);
    expect(w.a.status === 'rejected' && String(w.a.reason)).toMatch(/writer failed at 1/);
    const missing = await run([0, 2], [0, 1, 2]);
    expect(missing.w.status === 'rejected' && String(missing.w.reason)).toMatch(/layer 1/);
  });

  it('backpressure: the pass waits until the writer has reached a layer; data kept elsewhere (void) works alike', async () => {
    const h = new LayerHandoff<void, { dir: string }>();
    const order: string[] = [];
    const pass = (async () => {
      const info = await h.whenOpen();
      order.push(`open ${info.dir}`);
      for (const l of [0, 2]) {
        await h.consumerAt(l);
        order.push(`produce ${l}`);
        h.publish(l);
      }
      h.close();
    })();
    const writer = (async () => {
      await tick();
      h.opened({ dir: 'staging' });
      for (const l of [-1, 0, 1, 2]) {
        h.reached(l);
        order.push(`write ${l}`);
        if (l === 0 || l === 2) await h.take(l);
        await tick();
      }
      h.finish();
    })();
    await Promise.all([pass, writer]);
    // layer 2 is produced only once the writer is at layer 2 (layer 1's tensors are written first)
    expect(order.indexOf('produce 2')).toBeGreaterThan(order.indexOf('write 2'));
    expect(order.indexOf('produce 0')).toBeGreaterThan(order.indexOf('write 0'));
    expect(order[0]).toBe('write -1');
    expect(order).toContain('open staging');
  });

  it('a writer that fails before its output opens releases a pass waiting for it', async () => {
    const h = new LayerHandoff<void, { dir: string }>();
    const open = h.whenOpen();
    h.fail(new Error('output exists'));
    await expect(open).rejects.toThrow('output exists');
    await expect(h.consumerAt(0)).rejects.toThrow('output exists');
    expect(String(h.error)).toMatch(/output exists/);
  });
});
