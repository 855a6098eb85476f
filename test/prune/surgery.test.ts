/**
 * Surgery on every family fixture: prune through the library, then check the output as a stock loader would see
 * it (config keys, tensor names and shapes) and as the math requires (kept experts and router rows, biases and
 * correction biases carried over in lockstep; everything else byte for byte).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModel, type Model } from '../../src/model/open.js';
import { loadRouter, loadSwiGLU } from '../../src/model/load.js';
import type { ModelView } from '../../src/model/types.js';
import { checkKeep } from '../../src/prune/plan.js';
import { prune, REPORT_FILE } from '../../src/prune/pipeline.js';
import { FAMILIES, makeTinyCheckpoint } from '../helpers/families.js';
import { readFile } from 'node:fs/promises';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-prune-surgery-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A keep count near half that the family's routing accepts (groups need a multiple of n_group). */
function keepFor(view: ModelView): number {
  const E = view.dims.numExperts;
  for (let keep = Math.max(view.routing.topK, Math.floor(E / 2)); keep < E; keep++) {
    try {
      checkKeep(view, keep);
      return keep;
    } catch {
      /* try the next count */
    }
  }
  throw new Error(`${view.family} fixture: no keep count below ${E} is valid`);
}

/** Tensors that belong to routed experts or routers (the only ones surgery may change). */
function surgeryTensors(view: ModelView): Set<string> {
  const s = new Set<string>();
  for (const l of view.layers) {
    if (l.block.kind !== 'moe') continue;
    const r = l.block.router;
    for (const n of [r.weight, r.bias, r.correctionBias]) if (n) s.add(n);
    for (const e of l.block.experts)
      for (const ref of [e.gate, e.up, e.down]) {
        s.add(ref.tensor);
        if (ref.bias) s.add(ref.bias);
      }
  }
  return s;
}

const rows = (w: Float32Array, H: number, idx: number[]) => {
  const out = new Float32Array(idx.length * H);
  idx.forEach((j, i) => out.set(w.subarray(j * H, (j + 1) * H), i * H));
  return out;
};

describe.each(FAMILIES)('prune surgery: %s', (family) => {
  let src: Model;
  let out: Model;
  let kept: Map<number, number[]>;
  let keep: number;

  beforeAll(async () => {
    const dir = join(root, family);
    await makeTinyCheckpoint(family, dir, { experts: 8 });
    src = await openModel(dir);
    keep = keepFor(src.view);
    const report = await prune({ model: dir, out: join(root, `${family}-pruned`), keep, method: 'random', seed: 3 });
    kept = new Map(report.layers.map((l) => [l.layer, l.kept]));
    out = await openModel(join(root, `${family}-pruned`));
  });
  afterAll(async () => {
    await src?.ckpt.close();
    await out?.ckpt.close();
  });

  it('config: expert-count key updated, top-k and everything else unchanged', () => {
    const a = src.view.config;
    const b = out.view.config;
    expect(b[src.view.numExpertsKey]).toBe(keep);
    expect(out.view.dims.numExperts).toBe(keep);
    expect(out.view.routing.topK).toBe(src.view.routing.topK);
    for (const [k, v] of Object.entries(a)) {
      if (k === src.view.numExpertsKey || k === 'n_group' || k === 'topk_group') continue;
      expect(b[k], k).toEqual(v);
    }
  });

  it('every MoE layer keeps the same count; the plan removed the rest', () => {
    const moe = src.view.layers.filter((l) => l.block.kind === 'moe').map((l) => l.index);
    expect([...kept.keys()]).toEqual(moe);
    for (const k of kept.values()) {
      expect(k.length).toBe(keep);
      expect(new Set(k).size).toBe(keep);
      expect(k.every((j) => j >= 0 && j < src.view.dims.numExperts)).toBe(true);
    }
    for (const l of out.view.layers) if (l.block.kind === 'moe') expect(l.block.experts.length).toBe(keep);
  });

  it('expert tensors: renumbered 0..keep-1, no leftovers, weights of the kept experts', async () => {
    const E = src.view.dims.numExperts;
    for (const name of out.ckpt.tensorNames) {
      const m = /experts\.(\d+)\./.exec(name);
      if (m && !/shared/.test(name)) expect(Number(m[1]), name).toBeLessThan(keep);
      if (src.view.expertLayout === 'fused' && surgeryTensors(out.view).has(name) && !/router|gate\.weight$/.test(name)) {
        const s = out.ckpt.shape(name);
        if (src.ckpt.has(name) && src.ckpt.shape(name)[0] === E) expect(s[0], name).toBe(keep);
      }
    }
    for (const l of src.view.layers) {
      const lo = out.view.layers[l.index];
      if (l.block.kind !== 'moe' || lo.block.kind !== 'moe') continue;
      const k = kept.get(l.index)!;
      for (let i = 0; i < keep; i++) {
        const a = await loadSwiGLU(src.ckpt, l.block.experts[k[i]]);
        const b = await loadSwiGLU(out.ckpt, lo.block.experts[i]);
        for (const p of ['gate', 'up', 'down'] as const) {
          expect(b[p].w).toEqual(a[p].w);
          expect(b[p].b).toEqual(a[p].b);
        }
      }
    }
  });

  it('router rows, router bias and correction bias sliced in lockstep', async () => {
    const H = src.view.dims.hidden;
    for (const l of src.view.layers) {
      const lo = out.view.layers[l.index];
      if (l.block.kind !== 'moe' || lo.block.kind !== 'moe') continue;
      const k = kept.get(l.index)!;
      const a = await loadRouter(src.ckpt, l.block.router);
      const b = await loadRouter(out.ckpt, lo.block.router);
      expect(out.ckpt.shape(lo.block.router.weight)).toEqual([keep, H]);
      expect(b.w).toEqual(rows(a.w, H, k));
      expect(!!b.bias).toBe(!!a.bias);
      expect(!!b.correctionBias).toBe(!!a.correctionBias);
      if (a.bias) expect(b.bias).toEqual(Float32Array.from(k, (j) => a.bias![j]));
      if (a.correctionBias) expect(b.correctionBias).toEqual(Float32Array.from(k, (j) => a.correctionBias![j]));
      // stored dtypes unchanged (DeepSeek keeps the correction bias in fp32)
      expect(out.ckpt.dtype(lo.block.router.weight)).toBe(src.ckpt.dtype(l.block.router.weight));
      if (l.block.router.correctionBias) expect(out.ckpt.dtype(lo.block.router.correctionBias!)).toBe(src.ckpt.dtype(l.block.router.correctionBias));
    }
  });

  it('shared experts, dense layers, attention and embeddings are byte-identical', async () => {
    const touched = surgeryTensors(src.view);
    let compared = 0;
    for (const name of src.ckpt.tensorNames) {
      if (touched.has(name)) continue;
      expect(out.ckpt.has(name), name).toBe(true);
      expect(out.ckpt.dtype(name)).toBe(src.ckpt.dtype(name));
      expect(Buffer.from(await out.ckpt.readBytes(name)).equals(Buffer.from(await src.ckpt.readBytes(name))), name).toBe(true);
      compared++;
    }
    expect(compared).toBeGreaterThan(0);
  });

  it('report: per-layer scores, kept and removed, sizes shrink by the removed experts', async () => {
    const r = JSON.parse(await readFile(join(out.dir, REPORT_FILE), 'utf8'));
    expect(r.method).toBe('random');
    expect(r.keep).toBe(keep);
    for (const l of r.layers) {
      expect(l.scores).toHaveLength(src.view.dims.numExperts);
      expect(l.kept.length + l.removed.length).toBe(src.view.dims.numExperts);
    }
    const { before, after, predicted } = r.sizes;
    expect(predicted).toBe(false);
    const E = src.view.dims.numExperts;
    expect(after.expertParams).toBe((before.expertParams / E) * keep);
    expect(after.bytes).toBeLessThan(before.bytes);
  });
});
