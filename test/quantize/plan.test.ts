/** Fates in llama.cpp's decision order, allocation units and their true-bit costs, the dynamic config. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModel, type Model } from '../../src/model/open.js';
import { bitsForModule, quantizationConfig } from '../../src/quantize/format.js';
import { buildUnits, unitCostBits } from '../../src/quantize/pipeline.js';
import { compile, decide, packable, parseOverride } from '../../src/quantize/plan.js';
import { gptqBytes } from '../../kernels/quant/pack.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
let m: Model;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-qplan-'));
  await makeTinyCheckpoint('mixtral', join(root, 'm'), { experts: 4, layers: 2, intermediate: 48 });
  m = await openModel(join(root, 'm'));
});
afterAll(async () => {
  await m.ckpt.close();
  await rm(root, { recursive: true, force: true });
});

describe('plan', () => {
  it('decides ignore before override before class defaults, with shape fallback', () => {
    const ds = decide(m.view, m.ckpt, {
      denseBits: 3,
      candidates: [2, 3, 4],
      groupSize: 32,
      overrides: [parseOverride('layers\\.0\\..*experts\\.0\\.=8'), parseOverride('experts=2')],
      ignores: [compile('layers\\.1\\..*experts\\.3\\.w2', '--ignore')],
    });
    const by = (t: string) => ds.find((d) => d.tensor === t)!;
    // first matching override wins, like llama.cpp's --tensor-type order
    expect(by('model.layers.0.block_sparse_moe.experts.0.w1.weight').bits).toBe(8);
    expect(by('model.layers.0.block_sparse_moe.experts.1.w1.weight').bits).toBe(2);
    expect(by('model.layers.1.block_sparse_moe.experts.3.w2.weight')).toMatchObject({ bits: 'keep', reason: expect.stringMatching(/--ignore/) });
    // attention [32, 32] packs at 3 bits; the router is never a candidate
    expect(by('model.layers.0.self_attn.q_proj.weight')).toMatchObject({ bits: 3, cls: 'attention' });
    expect(ds.some((d) => /gate\.weight$/.test(d.tensor) && !/experts/.test(d.tensor))).toBe(false);
    expect(packable(48, 32, 3)).toBe(false);
    const plain = decide(m.view, m.ckpt, { denseBits: 4, candidates: [2, 3, 4], groupSize: 32, overrides: [], ignores: [] });
    expect(plain.filter((d) => d.cls === 'expert').every((d) => d.bits === 'alloc')).toBe(true);
    // w2 is [32, 48]: 48 inputs x 3 bits do not fill 32-bit words, so a fixed 3 moves up to 4
    const three = decide(m.view, m.ckpt, { denseBits: 4, candidates: [2, 3, 4], groupSize: 32, overrides: [parseOverride('w2=3')], ignores: [] });
    expect(three.find((d) => d.tensor.endsWith('experts.0.w2.weight'))).toMatchObject({ bits: 4, reason: expect.stringMatching(/shape fallback 3 -> 4/) });
  });

  it('builds expert units whose costs are the exact GPTQ bytes, without widths a shape cannot pack', () => {
    const ds = decide(m.view, m.ckpt, { denseBits: 4, candidates: [2, 3, 4], groupSize: 32, overrides: [], ignores: [] });
    const units = buildUnits(ds, 'expert', [2, 3, 4]);
    expect(units).toHaveLength(8);
    // 3 bits cannot pack w1 [48, 32] (qzeros: 48 x 3 bits) nor w2 [32, 48]: options 2, 2+down4, 4
    expect(units[0]!.options.map((o) => o.label)).toEqual(['2', '2+down4', '4']);
    const spec = (b: 2 | 4) => ({ bits: b, groupSize: 32, sym: false });
    const at = (g: 2 | 4, d: 2 | 4) => 8 * (2 * gptqBytes(48, 32, spec(g)) + gptqBytes(32, 48, spec(d)));
    expect(unitCostBits(units[0]!, units[0]!.options[0]!, 32)).toBe(at(2, 2));
    expect(unitCostBits(units[0]!, units[0]!.options[1]!, 32)).toBe(at(2, 4));
    const proj = buildUnits(ds, 'projection', [2, 3, 4]);
    expect(proj.map((u) => u.id)).toEqual(['L0.gate', 'L0.up', 'L0.down', 'L1.gate', 'L1.up', 'L1.down']);
    expect(proj[0]!.free).toHaveLength(4);
    expect(proj[0]!.options.map((o) => o.label)).toEqual(['2', '4']);
    // layer: every expert and every projection of the layer is one unit with one width (vLLM's fused module)
    const layer = buildUnits(ds, 'layer', [2, 3, 4]);
    expect(layer.map((u) => u.id)).toEqual(['L0', 'L1']);
    expect(layer[0]!.free).toHaveLength(12);
    expect(layer[0]!.options.map((o) => o.label)).toEqual(['2', '4']);
    expect(unitCostBits(layer[0]!, layer[0]!.options[1]!, 32)).toBe(4 * at(4, 4));
  });

  it('writes a dynamic config that gives every module its bits and excludes the router', () => {
    const mods = [
      { module: 'model.layers.0.block_sparse_moe.experts.0.w1', bits: 2 as const },
      { module: 'model.layers.0.block_sparse_moe.experts.0.w2', bits: 2 as const },
      { module: 'model.layers.0.block_sparse_moe.experts.0.w3', bits: 2 as const },
      { module: 'model.layers.0.block_sparse_moe.experts.1.w1', bits: 3 as const },
      { module: 'model.layers.0.block_sparse_moe.experts.1.w2', bits: 4 as const },
      { module: 'model.layers.0.block_sparse_moe.experts.1.w3', bits: 3 as const },
      { module: 'model.layers.0.self_attn.q_proj', bits: 3 as const },
      { module: 'model.layers.0.self_attn.k_proj', bits: 3 as const },
    ];
    const qc = quantizationConfig(mods, ['model.layers.0.block_sparse_moe.gate'], { groupSize: 128, sym: false, actOrder: false, damp: 0.01 });
    expect(qc['bits']).toBe(3);
    for (const x of mods) expect(bitsForModule(qc, x.module)).toBe(x.bits);
    expect(bitsForModule(qc, 'model.layers.0.block_sparse_moe.gate')).toBeUndefined();
    // expert 0 agrees on 2 bits: one key for the expert
    expect(Object.keys(qc['dynamic'] as object)).toContain('+:^model\\.layers\\.0\\.block_sparse_moe\\.experts\\.0\\.');
  });
});
