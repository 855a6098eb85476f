import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoeError } from '../../src/errors.js';
import { openModel } from '../../src/model/open.js';
import { supportedFamilies } from '../../src/model/registry.js';
import type { MoeBlock } from '../../src/model/types.js';
import { buildView, viewTensors } from '../../src/model/view.js';
import { FAMILIES, makeTinyCheckpoint, type Family } from '../helpers/families.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-view-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Layers the generator writes dense, per family (its own rule, not the data file's). */
const DENSE: Record<Family, number[]> = {
  mixtral: [],
  qwen2_moe: [0],
  qwen3_moe: [0],
  olmoe: [],
  deepseek_v2: [0],
  deepseek_v3: [0],
  granitemoe: [],
  gpt_oss: [],
  phimoe: [],
  glm4_moe: [0],
  minimax_m2: [],
  ernie4_5_moe: [0],
  glm4_moe_lite: [0],
  dots1: [0],
  hunyuan_v1_moe: [],
  mistral4: [0],
  deepseek_v32: [0],
  glm_moe_dsa: [0],
  qwen3_next: [0],
  qwen3_5_moe_text: [],
  llama4_text: [0, 2],
};

async function expectMoeError(p: Promise<unknown>, code: string, msg: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(MoeError);
  expect((e as MoeError).code).toBe(code);
  expect((e as MoeError).message).toMatch(msg);
  expect((e as MoeError).message).not.toContain('\n');
}

describe('family registry', () => {
  it('every generator family has a data file and vice versa', () => {
    expect([...supportedFamilies()].sort()).toEqual([...FAMILIES].sort());
  });
});

describe.each(FAMILIES)('view of a tiny %s', (family) => {
  it('resolves layer kinds, expert counts and names that all exist on disk', async () => {
    const dir = join(root, family);
    const tiny = await makeTinyCheckpoint(family, dir, { experts: 4 });
    const m = await openModel(dir);
    try {
      const v = m.view;
      expect(v.family).toBe(family);
      expect(v.dims.numExperts).toBe(4);
      expect(v.dims.topK).toBe(2);
      expect(v.layers.filter((l) => l.block.kind === 'dense').map((l) => l.index)).toEqual(DENSE[family]);
      expect(v.moeLayers).toEqual([0, 1, 2].filter((l) => !DENSE[family].includes(l)));
      const written = new Set(tiny.tensors.map((t) => t.name));
      // every plain tensor the view names was written by the generator; linears exist or their quantized form does
      for (const { name, linear } of viewTensors(v)) {
        if (!linear || v.expertLayout === 'per-expert' || !name.includes('experts')) expect(written.has(name), name).toBe(true);
      }
      // and the view covers every tensor the generator wrote (nothing left unaccounted for)
      const named = new Set(viewTensors(v).map((t) => t.name));
      const unaccounted = [...written].filter((n) => !named.has(n) && !n.endsWith('_scale_inv'));
      expect(unaccounted).toEqual([]);
      const moe = v.layers[v.moeLayers[0]!]!.block as MoeBlock;
      expect(moe.experts).toHaveLength(4);
      expect(m.ckpt.shape(moe.router.weight)).toEqual([4, 32]);
      const e3 = moe.experts[3]!;
      if (v.expertLayout === 'per-expert') {
        expect(e3.gate.tensor).toMatch(/experts\.3\./);
        expect(e3.gate.expert).toBeUndefined();
      } else {
        expect(e3.gate.expert).toBe(3);
        expect(e3.gate.tensor).toBe(e3.up.tensor);
      }
    } finally {
      await m.ckpt.close();
    }
  });
});

describe('family conventions in the view', () => {
  async function view(family: Family, opts = {}) {
    const dir = join(root, `conv-${family}-${JSON.stringify(opts).replace(/\W/g, '')}`);
    await makeTinyCheckpoint(family, dir, opts);
    const m = await openModel(dir);
    await m.ckpt.close();
    return m.view;
  }

  it('llama4_text: MoE layers from moe_layers, NoPE and chunked layers, L2 qk-norm, temperature tuning, sigmoid on the expert input', async () => {
    const v = await view('llama4_text', { layers: 4 });
    expect(v.moeLayers).toEqual([1, 3]);
    expect(v.routing).toMatchObject({ score: 'none', afterTopk: 'sigmoid', normalize: false, scale: 1, weightsInput: true });
    expect(v.rope.style).toBe('interleaved');
    expect(v.rope.scaling).toMatchObject({ rope_type: 'llama3', factor: 8 });
    expect(v.layers.map((l) => !!l.nope)).toEqual([false, false, true, false]);
    expect(v.layers.map((l) => l.attentionChunk)).toEqual([4, 4, undefined, 4]);
    expect(v.attention.l2QkNorm).toEqual({ eps: 1e-6 });
    expect(v.attention.temperatureTuning).toEqual({ floorScale: 2, attnScale: 0.1 });
    const b = v.layers[1]!.block as MoeBlock;
    expect(b.shared?.gate.tensor).toBe('model.layers.1.feed_forward.shared_expert.gate_proj.weight');
    expect(b.experts[1]!.up).toMatchObject({ tensor: 'model.layers.1.feed_forward.experts.gate_up_proj', expert: 1, transposed: true, rows: [16, 32] });
    expect(b.experts[1]!.down).toMatchObject({ tensor: 'model.layers.1.feed_forward.experts.down_proj', transposed: true, outFeatures: 32, inFeatures: 16 });
    expect(v.dims.denseIntermediate).toBe(48);
    // the configuration's defaults: moe_layers from interleave_moe_layer_step, NoPE every no_rope_layer_interval-th
    // layer, chunked attention on the RoPE layers
    const d = await view('llama4_text', { layers: 4, config: { moe_layers: null, no_rope_layers: [], layer_types: null, no_rope_layer_interval: 2 } });
    expect(d.moeLayers).toEqual([1, 3]);
    expect(d.layers.map((l) => !!l.nope)).toEqual([false, true, false, true]);
    expect(d.layers.map((l) => l.attentionChunk)).toEqual([4, undefined, 4, undefined]);
    const off = await view('llama4_text', { config: { use_qk_norm: false, attn_temperature_tuning: false } });
    expect(off.attention.l2QkNorm).toBeUndefined();
    expect(off.attention.temperatureTuning).toBeUndefined();
  });

  it('mixtral: softmax, renormalized top-2, half RoPE, no biases', async () => {
    const v = await view('mixtral');
    expect(v.routing).toMatchObject({ score: 'softmax', afterTopk: 'none', normalize: true, scale: 1, selectionBias: false });
    expect(v.routing.groups).toBeUndefined();
    expect(v.rope.style).toBe('half');
    expect(v.attention).toMatchObject({ kind: 'gqa', qkvBias: false, oBias: false, sinks: false });
    expect(v.numExpertsKey).toBe('num_local_experts');
    expect(v.layers[0]!.slidingWindow).toBeUndefined();
  });

  it('qwen2_moe: shared expert with sigmoid gate, q/k/v bias, dense layer from mlp_only_layers', async () => {
    const v = await view('qwen2_moe');
    const b = v.layers[1]!.block as MoeBlock;
    expect(b.shared?.gate.outFeatures).toBe(24);
    expect(b.shared?.gateWeight).toBe('model.layers.1.mlp.shared_expert_gate.weight');
    expect(v.attention.qkvBias).toBe(true);
    expect(v.attention.oBias).toBe(false);
    expect(v.routing.normalize).toBe(false);
    expect(v.dims.denseIntermediate).toBe(48);
  });

  it('qwen3_moe: per-head qk-norm, renormalized; sliding window only with use_sliding_window from max_window_layers', async () => {
    const v = await view('qwen3_moe');
    expect(v.attention.qkNorm).toBe('per-head');
    expect(v.routing.normalize).toBe(true);
    expect(v.layers.map((l) => l.slidingWindow)).toEqual([undefined, undefined, undefined]);
    const w = await view('qwen3_moe', { config: { use_sliding_window: true, sliding_window: 5, max_window_layers: 1 } });
    expect(w.layers.map((l) => l.slidingWindow)).toEqual([undefined, 5, 5]);
    const t = await view('qwen2_moe', { config: { sliding_window: 6, layer_types: ['full_attention', 'sliding_attention', 'full_attention'] } });
    expect(t.layers.map((l) => l.slidingWindow)).toEqual([undefined, 6, undefined]);
  });

  it('olmoe: full-projection qk-norm, no renormalization', async () => {
    const v = await view('olmoe');
    expect(v.attention.qkNorm).toBe('full');
    expect(v.routing.normalize).toBe(false);
  });

  it('deepseek_v2: MLA without q_lora, group-limited greedy by max, scaled, not renormalized, interleaved RoPE', async () => {
    const v = await view('deepseek_v2');
    expect(v.attention.mla).toEqual({ qLoraRank: null, kvLoraRank: 16, qkNopeHeadDim: 8, qkRopeHeadDim: 4, vHeadDim: 8 });
    expect(v.layers[1]!.attention.tensors.q_proj).toBe('model.layers.1.self_attn.q_proj.weight');
    expect(v.layers[1]!.attention.tensors.q_a_proj).toBeUndefined();
    expect(v.routing).toMatchObject({ score: 'softmax', normalize: false, scale: 1.5, groups: { nGroup: 2, topkGroup: 1, groupScore: 'max' } });
    expect(v.rope).toMatchObject({ style: 'interleaved', rotaryDim: 4 });
    expect(v.attention.softmaxScale).toBeCloseTo(1 / Math.sqrt(12), 12);
    expect((v.layers[1]!.block as MoeBlock).shared?.down.inFeatures).toBe(16);
  });

  it('deepseek_v2: greedy topk_method turns groups off', async () => {
    const v = await view('deepseek_v2', { config: { topk_method: 'greedy' } });
    expect(v.routing.groups).toBeUndefined();
  });

  it('deepseek_v3: sigmoid + correction bias, top-2-sum groups, renormalized with eps, q_lora, YaRN mscale', async () => {
    const v = await view('deepseek_v3', {
      config: { rope_scaling: { type: 'yarn', factor: 40, mscale: 1, mscale_all_dim: 1, original_max_position_embeddings: 4096 } },
    });
    const b = v.layers[2]!.block as MoeBlock;
    expect(b.router.correctionBias).toBe('model.layers.2.mlp.gate.e_score_correction_bias');
    expect(v.routing).toMatchObject({ score: 'sigmoid', selectionBias: true, normalize: true, normEps: 1e-20, scale: 1.5, groups: { groupScore: 'top2sum' } });
    expect(v.layers[0]!.attention.tensors.q_a_proj).toBe('model.layers.0.self_attn.q_a_proj.weight');
    const m = 0.1 * Math.log(40) + 1;
    expect(v.attention.softmaxScale).toBeCloseTo((m * m) / Math.sqrt(12), 12);
  });

  it('deepseek_v3: rope_interleave false switches the rope slice to half-split', async () => {
    expect((await view('deepseek_v3')).rope.style).toBe('interleaved');
    expect((await view('deepseek_v3', { config: { rope_interleave: false } })).rope.style).toBe('half');
  });

  it('granitemoe: fused halves, top-k then softmax, multipliers', async () => {
    const v = await view('granitemoe');
    const e = (v.layers[0]!.block as MoeBlock).experts[2]!;
    expect(e.gate).toMatchObject({ tensor: 'model.layers.0.block_sparse_moe.input_linear.weight', expert: 2, rows: [0, 16], transposed: false });
    expect(e.up.rows).toEqual([16, 32]);
    expect(v.routing).toMatchObject({ score: 'none', afterTopk: 'softmax' });
    expect(v.forward).toMatchObject({ embeddingMultiplier: 12, residualMultiplier: 0.22, logitsDivisor: 6 });
    expect(v.attention.softmaxScale).toBe(0.0078125);
  });

  it('gpt_oss: transposed interleaved fused experts with biases, router bias, sinks, alternating windows, clamped SwiGLU', async () => {
    const v = await view('gpt_oss');
    const b = v.layers[1]!.block as MoeBlock;
    expect(b.experts[1]!.gate).toMatchObject({ interleave: 'even', transposed: true, bias: 'model.layers.1.mlp.experts.gate_up_proj_bias' });
    expect(b.experts[1]!.up.interleave).toBe('odd');
    expect(b.router.bias).toBe('model.layers.1.mlp.router.bias');
    expect(v.attention).toMatchObject({ sinks: true, qkvBias: true, oBias: true });
    expect(v.layers.map((l) => l.slidingWindow)).toEqual([4, undefined, 4]);
    expect(v.forward.activation).toEqual({ kind: 'clamped-swiglu', limit: 7, alpha: 1.702 });
    // the MXFP4 form is stored out-major: its refs say so
    const mx = await view('gpt_oss', { mxfp4: true });
    expect((mx.layers[0]!.block as MoeBlock).experts[0]!.gate).toMatchObject({ transposed: false, interleave: 'even' });
  });

  it('glm4_moe: DeepSeek-V3 routing on GQA with q/k/v bias, per-head qk-norm, partial half RoPE, shared expert', async () => {
    const v = await view('glm4_moe');
    expect(v.routing).toMatchObject({ score: 'sigmoid', selectionBias: true, normalize: true, scale: 2.5 });
    expect(v.routing.groups).toBeUndefined();
    expect(v.attention).toMatchObject({ kind: 'gqa', qkvBias: true, oBias: false, qkNorm: 'per-head' });
    expect(v.rope).toMatchObject({ style: 'half', rotaryDim: 4 });
    expect((v.layers[1]!.block as MoeBlock).router.correctionBias).toBe('model.layers.1.mlp.gate.e_score_correction_bias');
    expect((v.layers[1]!.block as MoeBlock).shared?.gate.outFeatures).toBe(16);
  });

  it('minimax_m2: sigmoid + correction bias beside the gate, renormalized, full-width qk-norm, rotary_dim', async () => {
    const v = await view('minimax_m2');
    expect((v.layers[0]!.block as MoeBlock).router.correctionBias).toBe('model.layers.0.block_sparse_moe.e_score_correction_bias');
    expect(v.routing).toMatchObject({ score: 'sigmoid', selectionBias: true, normalize: true, scale: 1 });
    expect(v.attention.qkNorm).toBe('full');
    expect(v.rope.rotaryDim).toBe(4);
  });

  it('ernie4_5_moe: MoE layers from start/end/interval, softmax + [1, E] correction bias, divide by max(sum, norm_min)', async () => {
    const v = await view('ernie4_5_moe');
    expect((v.layers[2]!.block as MoeBlock).router.correctionBias).toBe('model.layers.2.mlp.moe_statics.e_score_correction_bias');
    expect(v.routing).toMatchObject({ score: 'softmax', selectionBias: true, normalize: true, normMin: 1e-12 });
    expect((v.layers[1]!.block as MoeBlock).shared?.gate.outFeatures).toBe(32);
    expect(v.rope).toMatchObject({ style: 'interleaved', theta: 500000 });
    // the layer rule alone (no tensors needed): interval 2 from 1 to 4 of 6 layers -> 1, 3
    const dir = join(root, 'conv-ernie4_5_moe-');
    const m = await openModel(dir);
    const cfg = { ...m.ckpt.config, num_hidden_layers: 6, moe_layer_interval: 2, moe_layer_end_index: 4 };
    expect(buildView(m.ckpt, cfg).moeLayers).toEqual([1, 3]);
    expect(buildView(m.ckpt, { ...cfg, moe_layer_end_index: -1 }).moeLayers).toEqual([1, 3, 5]);
    await m.ckpt.close();
  });

  it('the transformers-v5 fused layout of a per-expert family is recognised (mixtral router moves to mlp.gate)', async () => {
    const v = await view('mixtral', { fusedExperts: true });
    expect(v.expertLayout).toBe('fused');
    const b = v.layers[1]!.block as MoeBlock;
    expect(b.router.weight).toBe('model.layers.1.mlp.gate.weight');
    expect(b.experts[3]!.gate).toMatchObject({ tensor: 'model.layers.1.mlp.experts.gate_up_proj', expert: 3, rows: [0, 16], transposed: false });
    expect(b.experts[3]!.down).toMatchObject({ tensor: 'model.layers.1.mlp.experts.down_proj', expert: 3, outFeatures: 32, inFeatures: 16 });
    const q = await view('qwen3_moe', { fusedExperts: true });
    expect(q.expertLayout).toBe('fused');
    expect(q.layers[0]!.block.kind).toBe('dense');
    expect((await view('qwen3_moe')).expertLayout).toBe('per-expert');
  });

  it('phimoe: LayerNorm with biases, sparsemixer routing', async () => {
    const v = await view('phimoe');
    expect(v.layers[0]!.inputNorm).toMatchObject({ kind: 'layer', bias: 'model.layers.0.input_layernorm.bias' });
    expect(v.finalNorm.bias).toBe('model.norm.bias');
    expect(v.routing.sparsemixer).toEqual({ jitterEps: 0.01 });
  });
});

describe('tied embeddings', () => {
  it('a tied model has no lm_head in the view and opens without one', async () => {
    const dir = join(root, 'tied');
    await makeTinyCheckpoint('qwen3_moe', dir, { config: { tie_word_embeddings: true }, omit: ['lm_head.weight'] });
    const m = await openModel(dir);
    expect(m.view.lmHead).toBeUndefined();
    expect(m.view.dims.tieEmbeddings).toBe(true);
    await m.ckpt.close();
    const untied = join(root, 'untied-missing');
    await makeTinyCheckpoint('qwen3_moe', untied, { omit: ['lm_head.weight'] });
    await expectMoeError(openModel(untied), 'TensorNotFound', /missing tensor 'lm_head\.weight'/);
  });
});

describe('config and checkpoint errors', () => {
  it('unknown model_type lists the supported families', async () => {
    const dir = join(root, 'unknown');
    await makeTinyCheckpoint('mixtral', dir, { config: { model_type: 'llama_moe_9000' } });
    await expectMoeError(openModel(dir), 'UnsupportedArchitecture', /model_type 'llama_moe_9000' is not supported \(supported: .*mixtral.*qwen3_moe/);
  });

  it('a missing required key is named', async () => {
    const dir = join(root, 'nokey');
    await makeTinyCheckpoint('qwen2_moe', dir, { config: { num_experts: null } });
    await expectMoeError(openModel(dir), 'InvalidConfig', /required key 'num_experts' is missing/);
  });

  it('an invalid value is named', async () => {
    const dir = join(root, 'badval');
    await makeTinyCheckpoint('mixtral', dir, { config: { num_experts_per_tok: 'two' } });
    await expectMoeError(openModel(dir), 'InvalidConfig', /'num_experts_per_tok' must be a number/);
  });

  it('top-k above the expert count is refused', async () => {
    const dir = join(root, 'topk');
    await makeTinyCheckpoint('olmoe', dir, { config: { num_experts_per_tok: 5 } });
    await expectMoeError(openModel(dir), 'InvalidConfig', /'num_experts_per_tok' = 5 exceeds 'num_experts' = 4/);
  });

  it('ernie4_5_moe with biases on every linear is refused as unsupported', async () => {
    const dir = join(root, 'ernie-bias');
    await makeTinyCheckpoint('ernie4_5_moe', dir, { config: { use_bias: true } });
    await expectMoeError(openModel(dir), 'UnsupportedArchitecture', /use_bias=true/);
  });

  it('absurd layer and expert counts fail at once', async () => {
    const dir = join(root, 'huge');
    await makeTinyCheckpoint('mixtral', dir, { config: { num_hidden_layers: 1_000_000_000 } });
    await expectMoeError(openModel(dir), 'InvalidConfig', /'num_hidden_layers' = 1000000000 is beyond any real model/);
    const dir2 = join(root, 'huge2');
    await makeTinyCheckpoint('olmoe', dir2, { config: { num_experts: 10_000_000, num_experts_per_tok: 2 } });
    await expectMoeError(openModel(dir2), 'InvalidConfig', /'num_experts' = 10000000 is beyond any real model/);
  });

  it('a missing tensor is named', async () => {
    const dir = join(root, 'missing');
    await makeTinyCheckpoint('mixtral', dir, { omit: ['model.layers.1.block_sparse_moe.experts.2.w3.weight'] });
    await expectMoeError(openModel(dir), 'TensorNotFound', /missing tensor 'model\.layers\.1\.block_sparse_moe\.experts\.2\.w3\.weight'/);
  });

  it('an expert count that disagrees with the router is refused', async () => {
    const dir = join(root, 'mismatch');
    await makeTinyCheckpoint('mixtral', dir, { experts: 4 });
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    cfg.num_local_experts = 3;
    await writeFile(join(dir, 'config.json'), JSON.stringify(cfg));
    await expectMoeError(openModel(dir), 'InvalidConfig', /num_local_experts=3.*router 'model\.layers\.0\.block_sparse_moe\.gate\.weight' is \[4, 32\]/);
  });

  it('group settings that cannot supply top-k are refused', async () => {
    const dir = join(root, 'groups');
    await makeTinyCheckpoint('deepseek_v3', dir, { config: { n_group: 3 } });
    await expectMoeError(openModel(dir), 'InvalidConfig', /4 experts do not split into n_group=3/);
  });
});
