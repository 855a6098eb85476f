import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoeError } from '../../src/errors.js';
import { fromF32, toF32 } from '../../src/io/dtype.js';
import { loadLinear, loadRouter, loadSwiGLU } from '../../src/model/load.js';
import { openModel, type Model } from '../../src/model/open.js';
import { rewriteCheckpoint, writeExpertEdit, type ExpertEditPlan, type ExpertSource } from '../../src/model/rewrite.js';
import type { MoeBlock } from '../../src/model/types.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { FAMILIES, makeTinyCheckpoint, type Family, type TinyOptions } from '../helpers/families.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-rewrite-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const block = (m: Model, l: number) => m.view.layers[l]!.block as MoeBlock;
const eq = (a: Uint8Array, b: Uint8Array) => a.byteLength === b.byteLength && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

async function fixture(name: string, family: Family, opts: TinyOptions = {}): Promise<Model> {
  const dir = join(root, name);
  await makeTinyCheckpoint(family, dir, opts);
  await writeFile(join(dir, 'tokenizer.json'), '{"model":{"type":"BPE"}}');
  return openModel(dir);
}

async function expectUsage(p: Promise<unknown>, msg: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(MoeError);
  expect((e as MoeError).message).toMatch(msg);
}

/** Names of the input tensors that belong to routed experts or routers of MoE layers. */
function surgeryTensors(m: Model): Set<string> {
  const s = new Set<string>();
  for (const l of m.view.moeLayers) {
    const b = block(m, l);
    for (const n of [b.router.weight, b.router.bias, b.router.correctionBias]) if (n) s.add(n);
  }
  const experts = /\.(block_sparse_moe\.experts\.\d+\.|mlp\.experts\.|feed_forward\.experts\.)|block_sparse_moe\.(input|output)_linear/;
  for (const n of m.ckpt.tensorNames) if (experts.test(n)) s.add(n);
  return s;
}

const VARIANTS: [string, Family, TinyOptions][] = [
  // group-limited routing families (2 groups) get 8 experts, so each group keeps the 2 its top-2 score needs
  ...FAMILIES.filter((f) => !f.startsWith('deepseek') && f !== 'mistral4').map((f): [string, Family, TinyOptions] => [f, f, {}]),
  ['mistral4', 'mistral4', { experts: 8 }],
  ['deepseek_v2', 'deepseek_v2', { experts: 8 }],
  ['deepseek_v3', 'deepseek_v3', { experts: 8 }],
  ['deepseek_v3 fp8', 'deepseek_v3', { experts: 8, dtype: 'FP8' }],
  ['gpt_oss mxfp4', 'gpt_oss', { mxfp4: true }],
  ['mixtral bf16 sharded', 'mixtral', { dtype: 'BF16', maxShardBytes: 20_000 }],
  ['mixtral v5 fused', 'mixtral', { fusedExperts: true }],
  ['qwen2_moe v5 fused', 'qwen2_moe', { fusedExperts: true }],
  ['qwen3_next v5 fused', 'qwen3_next', { fusedExperts: true }],
  ['deepseek_v3 v5 fused', 'deepseek_v3', { experts: 8, fusedExperts: true }],
];

describe.each(VARIANTS)('removing experts from %s', (label, family, opts) => {
  it('keeps shapes, names, config keys, router rows and biases in lockstep; copies everything else byte for byte', async () => {
    const tag = label.replace(/\W/g, '_');
    const m = await fixture(`in-${tag}`, family, opts);
    const E = m.view.dims.numExperts;
    // deepseek: 2 groups of 4; remove 1,3 and 5,7 so each group keeps 2 (group-limited routing stays valid)
    const kept = E === 8 ? [0, 2, 4, 6] : [0, 2];
    const plan: ExpertEditPlan = { layers: m.view.moeLayers.map((layer) => ({ layer, experts: kept.map((from) => ({ from })) })) };
    const outDir = join(root, `out-${tag}`);
    const res = await writeExpertEdit(m, plan, outDir, opts.maxShardBytes ? { maxShardBytes: opts.maxShardBytes } : {});
    expect(res.numExperts).toBe(kept.length);
    const o = await openModel(outDir);
    try {
      expect(o.view.family).toBe(family);
      expect(o.view.dims.numExperts).toBe(kept.length);
      expect(o.ckpt.config[m.view.numExpertsKey]).toBe(kept.length);
      expect(o.ckpt.config[m.view.topKKey]).toBe(2);
      if (family.startsWith('deepseek')) expect([o.ckpt.config.n_group, o.ckpt.config.topk_group]).toEqual([2, 1]);
      expect(await readFile(join(outDir, 'tokenizer.json'), 'utf8')).toContain('BPE');
      if (opts.maxShardBytes) expect((await readdir(outDir)).filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(1);

      for (const l of m.view.moeLayers) {
        const bi = block(m, l);
        const bo = block(o, l);
        // router rows (and biases) are the kept rows of the input, byte for byte
        for (const key of ['weight', 'bias', 'correctionBias'] as const) {
          const name = bi.router[key];
          expect(bo.router[key]).toBe(name);
          if (!name) continue;
          // ernie keeps its correction bias as one row [1, E]
          const oneRow = m.ckpt.shape(name)[0] === 1 && key !== 'weight';
          const per = oneRow
            ? 1
            : m.ckpt
                .shape(name)
                .slice(1)
                .reduce((a, b) => a * b, 1);
          const parts = await Promise.all(kept.map((j) => m.ckpt.readBytes(name, j * per, (j + 1) * per)));
          expect(eq(await o.ckpt.readBytes(name), Buffer.concat(parts))).toBe(true);
          expect(o.ckpt.shape(name)).toEqual(oneRow ? [1, kept.length] : [kept.length, ...m.ckpt.shape(name).slice(1)]);
        }
        // each output expert i is input expert kept[i]
        for (let i = 0; i < kept.length; i++) {
          const wi = await loadSwiGLU(m.ckpt, bi.experts[kept[i]!]!);
          const wo = await loadSwiGLU(o.ckpt, bo.experts[i]!);
          for (const r of ['gate', 'up', 'down'] as const) {
            expect(wo[r].w).toEqual(wi[r].w);
            expect(wo[r].b).toEqual(wi[r].b);
          }
          if (m.view.expertLayout === 'per-expert') {
            for (const r of ['gate', 'up', 'down'] as const) {
              expect(bo.experts[i]![r].tensor).toBe(bi.experts[i]![r].tensor);
              expect(eq(await o.ckpt.readBytes(bo.experts[i]![r].tensor), await m.ckpt.readBytes(bi.experts[kept[i]!]![r].tensor))).toBe(true);
              const sc = `${bi.experts[kept[i]!]![r].tensor}_scale_inv`;
              if (m.ckpt.has(sc)) expect(eq(await o.ckpt.readBytes(`${bo.experts[i]![r].tensor}_scale_inv`), await m.ckpt.readBytes(sc))).toBe(true);
            }
          }
        }
        expect(bo.experts).toHaveLength(kept.length);
      }
      // no expert of index >= kept.length remains; every other tensor is copied byte for byte
      const touched = surgeryTensors(m);
      for (const n of o.ckpt.tensorNames) {
        const idx = /experts\.(\d+)\./.exec(n);
        if (idx) expect(Number(idx[1])).toBeLessThan(kept.length);
        if (touched.has(n)) continue;
        expect(m.ckpt.has(n), n).toBe(true);
        expect(eq(await o.ckpt.readBytes(n), await m.ckpt.readBytes(n)), n).toBe(true);
      }
      const untouchedIn = m.ckpt.tensorNames.filter((n) => !touched.has(n));
      expect(untouchedIn.every((n) => o.ckpt.has(n))).toBe(true);
      // shared experts and dense layers are untouched (their tensors are among the byte-identical ones)
      if (family === 'qwen2_moe') expect(o.ckpt.has('model.layers.1.mlp.shared_expert_gate.weight')).toBe(true);
      if (m.view.layers[0]!.block.kind === 'dense') expect(o.view.layers[0]!.block.kind).toBe('dense');
    } finally {
      await o.ckpt.close();
      await m.ckpt.close();
    }
  });
});

function randomSwiGLU(I: number, H: number, seed: number, bias = false): SwiGLUWeights {
  const v = (n: number, k: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 97 + k * 13 + i * 0.7) * 0.3);
  const lin = (out: number, inn: number, k: number) => ({ out, in: inn, w: v(out * inn, k), ...(bias ? { b: v(out, k + 50) } : {}) });
  return { gate: lin(I, H, 1), up: lin(I, H, 2), down: lin(H, I, 3) };
}

describe('new expert weights in the input format', () => {
  const cases: [string, Family, TinyOptions, (got: Float32Array, want: Float32Array) => void][] = [
    ['mixtral f32', 'mixtral', {}, (g, w) => expect(g).toEqual(w)],
    ['mixtral bf16', 'mixtral', { dtype: 'BF16' }, (g, w) => expect(g).toEqual(toF32(fromF32(w, 'BF16'), 'BF16'))],
    ['granitemoe fused', 'granitemoe', {}, (g, w) => expect(g).toEqual(w)],
    ['gpt_oss fused in-major', 'gpt_oss', {}, (g, w) => expect(g).toEqual(w)],
    [
      'gpt_oss mxfp4',
      'gpt_oss',
      { mxfp4: true },
      (g, w) => {
        for (let i = 0; i < w.length; i++) expect(Math.abs(g[i]! - w[i]!)).toBeLessThanOrEqual(0.3 / 6 + 1e-6);
      },
    ],
    [
      'deepseek_v3 fp8',
      'deepseek_v3',
      { experts: 8, dtype: 'FP8' },
      (g, w) => {
        for (let i = 0; i < w.length; i++) expect(Math.abs(g[i]! - w[i]!)).toBeLessThanOrEqual(0.3 / 16);
      },
    ],
  ];
  it.each(cases)('%s', async (label, family, opts, check) => {
    const tag = `new-${label.replace(/\W/g, '_')}`;
    const m = await fixture(`in-${tag}`, family, opts);
    const { hidden: H, expertIntermediate: I, numExperts: E } = m.view.dims;
    const hasBias = family === 'gpt_oss';
    const E2 = E === 8 ? 4 : 2;
    const fresh = randomSwiGLU(I, H, 5, hasBias);
    const layer = m.view.moeLayers[m.view.moeLayers.length - 1]!;
    const router = {
      w: Float32Array.from({ length: E2 * H }, (_, i) => i / 100),
      ...(hasBias ? { bias: Float32Array.from({ length: E2 }, (_, i) => i) } : {}),
      ...(family === 'deepseek_v3' ? { correctionBias: Float32Array.from({ length: E2 }, (_, i) => -i) } : {}),
    };
    // the new expert takes slot 1 (deepseek: slot 1 of group 0)
    const experts: ExpertSource[] =
      E === 8 ? [{ from: 0 }, { weights: fresh, group: 0 }, { from: 4 }, { from: 5 }] : [{ from: 3 }, { weights: async () => fresh }];
    const plan: ExpertEditPlan = {
      layers: m.view.moeLayers.map((l) =>
        l === layer ? { layer: l, experts, router } : { layer: l, experts: experts.map((s, i) => ('from' in s ? s : { from: i })) },
      ),
    };
    await writeExpertEdit(m, plan, join(root, `out-${tag}`));
    const o = await openModel(join(root, `out-${tag}`));
    try {
      const got = await loadSwiGLU(o.ckpt, block(o, layer).experts[1]!);
      for (const r of ['gate', 'up', 'down'] as const) {
        check(got[r].w, fresh[r].w);
        if (hasBias)
          expect(got[r].b).toEqual(
            toF32(fromF32(fresh[r].b!, o.ckpt.dtype(block(o, layer).experts[1]![r].bias!)), o.ckpt.dtype(block(o, layer).experts[1]![r].bias!)),
          );
      }
      const kept = await loadSwiGLU(o.ckpt, block(o, layer).experts[0]!);
      expect(kept.down.w).toEqual((await loadSwiGLU(m.ckpt, block(m, layer).experts[E === 8 ? 0 : 3]!)).down.w);
      const r = await loadRouter(o.ckpt, block(o, layer).router);
      expect(r.w).toEqual(toF32(fromF32(router.w, o.ckpt.dtype(block(o, layer).router.weight)), o.ckpt.dtype(block(o, layer).router.weight)));
      if (hasBias) expect(r.bias).toEqual(router.bias);
      if (family === 'deepseek_v3') expect(r.correctionBias).toEqual(router.correctionBias);
      if (opts.dtype === 'FP8') expect(o.ckpt.dtype(block(o, layer).experts[1]!.gate.tensor)).toBe('F8_E4M3');
    } finally {
      await o.ckpt.close();
      await m.ckpt.close();
    }
  });
});

describe('lazy new weights', () => {
  it('are produced once per layer for fused layouts (shared by the gate_up and down tensors) and per expert otherwise', async () => {
    for (const family of ['granitemoe', 'mixtral'] as const) {
      const m = await fixture(`lazy-${family}`, family);
      const { hidden: H, expertIntermediate: I } = m.view.dims;
      let calls = 0;
      const plan: ExpertEditPlan = {
        layers: m.view.moeLayers.map((layer) => ({
          layer,
          experts: [
            { from: 0 },
            {
              weights: async () => {
                calls++;
                return randomSwiGLU(I, H, layer);
              },
            },
          ],
          router: { w: new Float32Array(2 * H) },
        })),
      };
      const dry = await writeExpertEdit(m, plan, join(root, `lazy-${family}-out`), { dryRun: true });
      expect(calls).toBe(0);
      expect(dry.tensors.length).toBeGreaterThan(0);
      await writeExpertEdit(m, plan, join(root, `lazy-${family}-out`));
      expect(calls).toBe(m.view.moeLayers.length);
      const o = await openModel(join(root, `lazy-${family}-out`));
      expect((await loadSwiGLU(o.ckpt, block(o, 2).experts[1]!)).down.w).toEqual(randomSwiGLU(I, H, 2).down.w);
      await o.ckpt.close();
      await m.ckpt.close();
    }
  });
});

describe('plan checks', () => {
  it('refuses unequal expert counts across layers, a top-k above the count, bad indices and missing router rows', async () => {
    const m = await fixture('checks', 'mixtral');
    const out = join(root, 'checks-out');
    await expectUsage(
      writeExpertEdit(m, { layers: [{ layer: 0, experts: [{ from: 0 }, { from: 1 }] }] }, out),
      /same number of experts.*layer 0 has 2, layer 1 has 4/,
    );
    const one = { layers: m.view.moeLayers.map((layer) => ({ layer, experts: [{ from: 2 }] })) };
    await expectUsage(writeExpertEdit(m, one, out), /1 experts cannot serve top-k 2/);
    await expectUsage(
      writeExpertEdit(m, { layers: m.view.moeLayers.map((layer) => ({ layer, experts: [{ from: 0 }, { from: 4 }] })) }, out),
      /expert 4 does not exist/,
    );
    await expectUsage(
      writeExpertEdit(m, { layers: m.view.moeLayers.map((layer) => ({ layer, experts: [{ from: 0 }, { weights: randomSwiGLU(16, 32, 1) }] })) }, out),
      /new expert weights need new router rows/,
    );
    await expect(stat(out)).rejects.toThrow();
    const r = await writeExpertEdit(m, one, out, { clampTopK: true });
    expect(r.topK).toBe(1);
    expect(JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).num_experts_per_tok).toBe(1);
    await m.ckpt.close();
  });

  it('renumbers per-expert quantization_config.dynamic overrides with the experts (dropped with removed ones)', async () => {
    const dir = join(root, 'dynamic');
    const dynamic = {
      '+:^model\\.layers\\.1\\.block_sparse_moe\\.experts\\.2\\.': { bits: 3 },
      '+:^model\\.layers\\.1\\.block_sparse_moe\\.experts\\.3\\.w1$': { bits: 8 },
      '-:^model\\.layers\\.0\\.block_sparse_moe\\.gate$': {},
      '+:^model\\.layers\\.2\\.block_sparse_moe\\.experts\\.0\\.w2$': { bits: 2 },
    };
    await makeTinyCheckpoint('mixtral', dir, { config: { quantization_config: { quant_method: 'gptq', bits: 4, dynamic } } });
    const m = await openModel(dir);
    const out = join(root, 'dynamic-out');
    await writeExpertEdit(m, { layers: m.view.moeLayers.map((layer) => ({ layer, experts: [{ from: 2 }, { from: 0 }] })) }, out);
    const got = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
    expect(got.bits).toBe(4);
    expect(got.dynamic).toEqual({
      '+:^model\\.layers\\.1\\.block_sparse_moe\\.experts\\.0\\.': { bits: 3 },
      '-:^model\\.layers\\.0\\.block_sparse_moe\\.gate$': {},
      '+:^model\\.layers\\.2\\.block_sparse_moe\\.experts\\.1\\.w2$': { bits: 2 },
    });
    // the rewritten keys still select the intended modules
    expect(new RegExp(Object.keys(got.dynamic)[0]!.slice(2)).test('model.layers.1.block_sparse_moe.experts.0.w3')).toBe(true);
    await m.ckpt.close();
  });

  it('updates alias keys some configs carry (gpt_oss experts_per_token) together with the main keys', async () => {
    const dir = join(root, 'alias');
    await makeTinyCheckpoint('gpt_oss', dir, { config: { experts_per_token: 2 } });
    const m = await openModel(dir);
    const out = join(root, 'alias-out');
    await writeExpertEdit(m, { layers: m.view.moeLayers.map((layer) => ({ layer, experts: [{ from: 1 }, { from: 2 }, { from: 3 }] })), topK: 1 }, out);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect([cfg.num_local_experts, cfg.num_experts_per_tok, cfg.experts_per_token]).toEqual([3, 1, 1]);
    await m.ckpt.close();
  });

  it('deepseek groups: unequal groups refused, flattening allowed, top-2-sum needs 2 per group', async () => {
    const m = await fixture('groups', 'deepseek_v3', { experts: 8 });
    const mk = (kept: number[]) => m.view.moeLayers.map((layer) => ({ layer, experts: kept.map((from) => ({ from })) }));
    await expectUsage(writeExpertEdit(m, { layers: mk([0, 2, 4, 5, 6, 7]) }, join(root, 'g1')), /fill every group equally.*nGroup: 1, topkGroup: 1/);
    await expectUsage(writeExpertEdit(m, { layers: mk([0, 4]) }, join(root, 'g1')), /keep at least 2 per group/);
    const r = await writeExpertEdit(m, { layers: mk([0, 2, 4, 5, 6, 7]), groups: { nGroup: 1, topkGroup: 1 } }, join(root, 'g2'));
    expect(r.groups).toEqual({ nGroup: 1, topkGroup: 1 });
    const o = await openModel(join(root, 'g2'));
    expect(o.view.routing.groups).toBeUndefined();
    expect([o.ckpt.config.n_group, o.ckpt.config.topk_group, o.ckpt.config.n_routed_experts]).toEqual([1, 1, 6]);
    await o.ckpt.close();
    await m.ckpt.close();
  });

  it('a dry run returns the planned tensors with sizes and writes nothing', async () => {
    const m = await fixture('dry', 'qwen3_moe');
    const out = join(root, 'dry-out');
    const r = await writeExpertEdit(m, { layers: m.view.moeLayers.map((layer) => ({ layer, experts: [{ from: 3 }, { from: 1 }] })) }, out, { dryRun: true });
    expect(r.dryRun).toBe(true);
    await expect(stat(out)).rejects.toThrow();
    const router = r.tensors.find((t) => t.name === 'model.layers.1.mlp.gate.weight')!;
    expect(router).toMatchObject({ shape: [2, 32], bytes: 2 * 32 * 4, origin: 'new' });
    const e1 = r.tensors.find((t) => t.name === 'model.layers.1.mlp.experts.1.up_proj.weight')!;
    expect(e1).toMatchObject({ origin: 'new', shape: [16, 32] });
    expect(r.tensors.some((t) => t.name.includes('experts.2.'))).toBe(false);
    const inputBytes = m.ckpt.tensorNames.reduce((a, n) => a + m.ckpt.info(n).end - m.ckpt.info(n).begin, 0);
    const expertBytes = 2 * 2 * 3 * 16 * 32 * 4 + 2 * 2 * 32 * 4; // 2 layers x 2 removed experts x 3 linears, + router rows
    expect(r.totalBytes).toBe(inputBytes - expertBytes);
    // layer order: every layer-1 tensor comes before every layer-2 tensor
    const lastL1 = r.tensors.map((t) => t.name).lastIndexOf(r.tensors.filter((t) => t.name.startsWith('model.layers.1.')).at(-1)!.name);
    const firstL2 = r.tensors.findIndex((t) => t.name.startsWith('model.layers.2.'));
    expect(lastL1).toBeLessThan(firstL2);
    expect(r.config.num_experts).toBe(2);
    await m.ckpt.close();
  });

  it('multi-token-prediction layers beyond num_hidden_layers are dropped when the expert count changes', async () => {
    const dir = join(root, 'mtp');
    await makeTinyCheckpoint('deepseek_v3', dir, { experts: 8, layers: 3 });
    // pretend layer 2 is the MTP layer: the config counts 2 decoder layers
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 2, num_nextn_predict_layers: 1 }));
    const m = await openModel(dir);
    await writeExpertEdit(m, { layers: [{ layer: 1, experts: [0, 1, 4, 5].map((from) => ({ from })) }] }, join(root, 'mtp-out'));
    const o = await openModel(join(root, 'mtp-out'));
    expect(o.ckpt.tensorNames.some((n) => n.startsWith('model.layers.2.'))).toBe(false);
    expect(o.ckpt.config.num_nextn_predict_layers).toBe(0);
    expect(await loadLinear(o.ckpt, block(o, 1).experts[2]!.gate)).toEqual(await loadLinear(m.ckpt, block(m, 1).experts[4]!.gate));
    await o.ckpt.close();
    await m.ckpt.close();
  });
});

describe('rewriteCheckpoint', () => {
  it('drops, replaces and adds tensors in layer order, updates and deletes config keys, refuses the input as output', async () => {
    const m = await fixture('general', 'olmoe');
    const bytes = (v: number[]) => fromF32(Float32Array.from(v), 'F32');
    const out = join(root, 'general-out');
    const fates = new Map([
      ['model.layers.1.self_attn.q_norm.weight', { kind: 'drop' as const }],
      [
        'model.layers.0.self_attn.k_norm.weight',
        {
          kind: 'replace' as const,
          tensors: [{ spec: { name: 'model.layers.0.self_attn.k_norm.scale', dtype: 'F32' as const, shape: [2] }, produce: async () => bytes([1, 2]) }],
        },
      ],
    ]);
    const added = [
      { layer: 1, tensor: { spec: { name: 'model.layers.1.extra', dtype: 'F32' as const, shape: [1] }, produce: async () => bytes([7]) } },
      { tensor: { spec: { name: 'tail.extra', dtype: 'F32' as const, shape: [1] }, produce: async () => bytes([9]) } },
    ];
    const dry = await rewriteCheckpoint(m, { fates, added, config: { clip_qkv: null, moe_note: 'x' } }, out, { dryRun: true });
    const names = dry.tensors.map((t) => t.name);
    expect(names).not.toContain('model.layers.1.self_attn.q_norm.weight');
    expect(names.indexOf('model.layers.0.self_attn.k_norm.scale')).toBeLessThan(names.findIndex((n) => n.startsWith('model.layers.1.')));
    expect(names.indexOf('model.layers.1.extra')).toBeGreaterThan(names.findLastIndex((n) => n.startsWith('model.layers.1.') && n !== 'model.layers.1.extra'));
    expect(names.indexOf('model.layers.1.extra')).toBeLessThan(names.findIndex((n) => n.startsWith('model.layers.2.')));
    expect(names.at(-1)).toBe('tail.extra');
    expect(names[0]).toBe('model.embed_tokens.weight');
    await rewriteCheckpoint(m, { fates, added, config: { clip_qkv: null, moe_note: 'x' } }, out);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect('clip_qkv' in cfg).toBe(false);
    expect(cfg.moe_note).toBe('x');
    const { Checkpoint } = await import('../../src/io/checkpoint.js');
    const o = await Checkpoint.open(out);
    expect([...(await o.readF32('model.layers.1.extra'))]).toEqual([7]);
    expect([...(await o.readF32('model.layers.0.self_attn.k_norm.scale'))]).toEqual([1, 2]);
    expect(o.tensorNames).toHaveLength(m.ckpt.tensorNames.length + 2 - 1);
    await o.close();
    const e = await rewriteCheckpoint(m, {}, m.dir, { force: true }).catch((x: unknown) => x);
    expect((e as MoeError).code).toBe('OutputExists');
    await m.ckpt.close();
  });
});
