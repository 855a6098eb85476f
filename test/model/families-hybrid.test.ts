/**
 * Issue 15, the Gated-DeltaNet hybrids: qwen3_next's view (linear-attention layers from layer_types or
 * full_attention_interval, gated full attention, zero-centred norms, the shared expert) and its refusals. The
 * forward pass and every command's output are compared with transformers 5.18 in `npm run test:families-py`.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fromF32 } from '../../src/io/dtype.js';
import { loadLinear } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import type { MoeBlock } from '../../src/model/types.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-families-hybrid-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('qwen3_next (Qwen3-Next)', () => {
  it('linear-attention layers from layer_types, gated attention, zero-centred norms, sigmoid-gated shared expert', async () => {
    const dir = join(root, 'qn');
    await makeTinyCheckpoint('qwen3_next', dir, { experts: 8 });
    const m = await openModel(dir);
    try {
      const v = m.view;
      expect(v.layers.map((l) => l.attention.kind)).toEqual(['deltanet', 'gqa', 'deltanet']);
      expect(v.layers[0]!.attention.tensors).toMatchObject({
        in_proj_qkvz: 'model.layers.0.linear_attn.in_proj_qkvz.weight',
        conv1d: 'model.layers.0.linear_attn.conv1d.weight',
        A_log: 'model.layers.0.linear_attn.A_log',
      });
      expect(v.layers[1]!.attention.tensors['q_proj']).toBe('model.layers.1.self_attn.q_proj.weight');
      expect(v.attention).toMatchObject({ kind: 'gqa', qkNorm: 'per-head', outputGate: true });
      expect(v.attention.deltanet).toEqual({ layout: 'qkvz', numKHeads: 2, numVHeads: 4, headK: 8, headV: 4, convKernel: 4, eps: 1e-6 });
      // partial RoPE from rope_parameters: 0.25 of head_dim 8
      expect(v.rope.rotaryDim).toBe(2);
      expect(v.layers.every((l) => l.inputNorm.unitOffset && l.postAttnNorm.unitOffset)).toBe(true);
      expect(v.finalNorm.unitOffset).toBe(true);
      expect(v.moeLayers).toEqual([1, 2]);
      expect(v.routing).toMatchObject({ score: 'softmax', normalize: true });
      const b = v.layers[2]!.block as MoeBlock;
      expect(b.shared?.gateWeight).toBe('model.layers.2.mlp.shared_expert_gate.weight');
      expect(b.shared?.gate.outFeatures).toBe(24);
    } finally {
      await m.ckpt.close();
    }
  });

  it('without layer_types, full attention every full_attention_interval layers (the configuration default 4)', async () => {
    const dir = join(root, 'qn-interval');
    await makeTinyCheckpoint('qwen3_next', dir, { layers: 4, config: { layer_types: null, full_attention_interval: 2 } });
    const m = await openModel(dir);
    try {
      expect(m.view.layers.map((l) => l.attention.kind)).toEqual(['deltanet', 'gqa', 'deltanet', 'gqa']);
    } finally {
      await m.ckpt.close();
    }
  });

  it('refuses a layer_types list of the wrong length or with an unknown type, in one line', async () => {
    for (const types of [
      ['linear_attention', 'full_attention'],
      ['linear_attention', 'sliding_attention', 'linear_attention'],
    ]) {
      const dir = join(root, `qn-bad-${types.length}`);
      await makeTinyCheckpoint('qwen3_next', dir, { config: { layer_types: types } });
      const r = await runMoe(['inspect', '--model', dir]);
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/^moe: .*layer_types.*linear_attention.*\n$/);
    }
  });

  it('eval runs both layer kinds and a missing DeltaNet tensor is named before any work', async () => {
    const dir = join(root, 'qn-eval');
    await makeTinyCheckpoint('qwen3_next', dir);
    const ids = join(root, 'ids.jsonl');
    await writeFile(
      ids,
      Array.from({ length: 4 }, (_, i) => JSON.stringify(Array.from({ length: 12 }, (_, j) => 1 + ((i * 7 + j * 5) % 63)))).join('\n') + '\n',
    );
    const r = await runMoe(['eval', '--model', dir, '--data-ids', ids, '--seq-len', '8', '--json']);
    expect(r.code).toBe(0);
    const ppl = JSON.parse(r.stdout).perplexity as number;
    // random weights: a finite perplexity above 1 (the values themselves are checked against transformers in families-py)
    expect(Number.isFinite(ppl) && ppl > 1).toBe(true);
    const missing = join(root, 'qn-missing');
    await makeTinyCheckpoint('qwen3_next', missing, { omit: ['model.layers.2.linear_attn.conv1d.weight'] });
    const e = await runMoe(['eval', '--model', missing, '--data-ids', ids, '--seq-len', '8']);
    expect(e.code).not.toBe(0);
    expect(e.stderr).toMatch(/^moe: .*model\.layers\.2\.linear_attn\.conv1d\.weight.*\n$/);
  });
});

describe('qwen3_5_moe_text (Qwen3.5-MoE language model, text-only class)', () => {
  it('separate DeltaNet projections, every layer MoE, always-renormalized top-k', async () => {
    const dir = join(root, 'q35');
    await makeTinyCheckpoint('qwen3_5_moe_text', dir, { experts: 8 });
    const m = await openModel(dir);
    try {
      const v = m.view;
      expect(v.layers.map((l) => l.attention.kind)).toEqual(['deltanet', 'gqa', 'deltanet']);
      expect(Object.keys(v.layers[0]!.attention.tensors).sort()).toEqual(
        ['A_log', 'conv1d', 'dt_bias', 'in_proj_a', 'in_proj_b', 'in_proj_qkv', 'in_proj_z', 'norm', 'out_proj'].sort(),
      );
      expect(v.attention.deltanet?.layout).toBe('split');
      expect(v.attention.outputGate).toBe(true);
      expect(v.moeLayers).toEqual([0, 1, 2]);
      expect(v.routing.normalize).toBe(true);
      expect(v.finalNorm.unitOffset).toBe(true);
    } finally {
      await m.ckpt.close();
    }
  });
});

describe('MTP layers, mtp.* convention (qwen3_next)', () => {
  const WINDOWS = 5;
  const SEQ = 11; // +BOS: windows of 12 tokens
  let dir: string;
  let ids: string;
  beforeAll(async () => {
    dir = join(root, 'qn-mtp');
    await makeTinyCheckpoint('qwen3_next', dir, { experts: 8, mtp: true, config: { bos_token_id: 0 } });
    ids = join(root, 'mtp-calib.jsonl');
    await writeFile(
      ids,
      Array.from({ length: WINDOWS }, (_, i) => JSON.stringify(Array.from({ length: SEQ }, (_, j) => 1 + ((i * 11 + j * 7 + ((i * j) % 3)) % 63)))).join('\n') +
        '\n',
    );
  });
  const mtpBlock = (m: Awaited<ReturnType<typeof openModel>>) => m.view.mtp![0]!.layer.block;

  it('inspect names the DeltaNet layers; an MTP block with its own embeddings is refused in one line', async () => {
    const r = await runMoe(['inspect', '--model', dir, '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).linearAttention).toEqual({ layers: [0, 2], keyHeads: 2, valueHeads: 4, keyHeadDim: 8, valueHeadDim: 4 });
    const own = join(root, 'qn-mtp-own');
    await makeTinyCheckpoint('qwen3_next', own, { mtp: true, config: { mtp_use_dedicated_embeddings: true } });
    const e = await runMoe(['inspect', '--model', own]);
    expect(e.code).toBe(3);
    expect(e.stderr).toMatch(/^moe: .*mtp_use_dedicated_embeddings=true is not supported.*\n$/);
  });

  it('the view numbers the MTP layer after the decoder layers: full attention, the MoE block, the shared fc and norms', async () => {
    const m = await openModel(dir);
    try {
      const t = m.view.mtp![0]!;
      expect(t.layer).toMatchObject({ index: 3, prefix: 'mtp.layers.0.', attention: { kind: 'gqa' } });
      expect(t.layer.block.experts).toHaveLength(8);
      expect(t.layer.block.router.weight).toBe('mtp.layers.0.mlp.gate.weight');
      expect(t.layer.block.shared?.gateWeight).toBe('mtp.layers.0.mlp.shared_expert_gate.weight');
      expect(t).toMatchObject({
        ehProj: 'mtp.fc.weight',
        enorm: { weight: 'mtp.pre_fc_norm_embedding.weight', unitOffset: true },
        hnorm: { weight: 'mtp.pre_fc_norm_hidden.weight', unitOffset: true },
        headNorm: { weight: 'mtp.norm.weight', unitOffset: true },
      });
    } finally {
      await m.ckpt.close();
    }
  });

  it('prune frequency: the MTP layer is pruned to the same count on its own inputs, its other tensors copied', async () => {
    const out = join(root, 'qn-mtp-pruned');
    const r = await runMoe([
      'prune',
      '--model',
      dir,
      '--out',
      out,
      '--keep',
      '4',
      '--method',
      'frequency',
      '--calib-ids',
      ids,
      '--seq-len',
      String(SEQ),
      '--quiet',
    ]);
    expect([r.code, r.stderr]).toEqual([0, '']);
    const rep = JSON.parse(await readFile(join(out, 'moe-prune-report.json'), 'utf8'));
    expect(rep.mtp).toEqual({ kept: [3], dropped: [] });
    const byLayer = new Map<number, { kept: number[]; scores: number[] }>(rep.layers.map((l: { layer: number }) => [l.layer, l]));
    expect([...byLayer.keys()]).toEqual([1, 2, 3]);
    // routed slots: top-2 of 12 positions per window in the decoder layers, one position fewer in the MTP layer
    const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
    expect(sum(byLayer.get(2)!.scores)).toBe(2 * WINDOWS * (SEQ + 1));
    expect(sum(byLayer.get(3)!.scores)).toBe(2 * WINDOWS * SEQ);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect([cfg.num_experts, cfg.mtp_num_hidden_layers]).toEqual([4, 1]);
    const a = await openModel(dir);
    const o = await openModel(out);
    try {
      expect(o.view.mtp?.length).toBe(1);
      const kept = byLayer.get(3)!.kept;
      const H = a.view.dims.hidden;
      const rw = await a.ckpt.readF32(mtpBlock(a).router.weight);
      expect(o.ckpt.shape(mtpBlock(o).router.weight)).toEqual([4, H]);
      expect(Array.from(await o.ckpt.readF32(mtpBlock(o).router.weight))).toEqual(kept.flatMap((j) => Array.from(rw.subarray(j * H, (j + 1) * H))));
      for (let i = 0; i < 4; i++)
        for (const p of ['gate', 'up', 'down'] as const)
          expect(await loadLinear(o.ckpt, mtpBlock(o).experts[i]![p])).toEqual(await loadLinear(a.ckpt, mtpBlock(a).experts[kept[i]!]![p]));
      for (const n of [
        'mtp.fc.weight',
        'mtp.norm.weight',
        'mtp.pre_fc_norm_hidden.weight',
        'mtp.layers.0.self_attn.q_proj.weight',
        'mtp.layers.0.mlp.shared_expert_gate.weight',
      ])
        expect(Buffer.from(await o.ckpt.readBytes(n)).equals(Buffer.from(await a.ckpt.readBytes(n)))).toBe(true);
      expect(o.ckpt.tensorNames.filter((n) => n.startsWith('mtp.layers.0.mlp.experts.')).length).toBe(4 * 3);
    } finally {
      await a.ckpt.close();
      await o.ckpt.close();
    }
  });

  it('--drop-mtp drops every mtp.* tensor and sets mtp_num_hidden_layers 0; quantize declares the whole block unquantized', async () => {
    const out = join(root, 'qn-mtp-dropped');
    const r = await runMoe(['prune', '--model', dir, '--out', out, '--keep', '4', '--method', 'random', '--drop-mtp', '--quiet']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(JSON.parse(await readFile(join(out, 'moe-prune-report.json'), 'utf8')).mtp).toEqual({ kept: [], dropped: [3] });
    expect(JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).mtp_num_hidden_layers).toBe(0);
    const o = await openModel(out);
    expect(o.ckpt.tensorNames.filter((n) => n.startsWith('mtp.'))).toEqual([]);
    expect(o.view.mtp).toBeUndefined();
    await o.ckpt.close();
    const q = join(root, 'qn-mtp-q');
    const rq = await runMoe(['quantize', '--model', dir, '--out', q, '--bits', '11', '--candidates', '8', '--method', 'rtn', '--group-size', '32', '--quiet']);
    expect([rq.code, rq.stderr]).toEqual([0, '']);
    const cfg = JSON.parse(await readFile(join(q, 'config.json'), 'utf8'));
    expect(cfg.quantization_config.dynamic['-:^mtp\\.']).toEqual({});
    const a = await openModel(dir);
    const { Checkpoint } = await import('../../src/io/checkpoint.js');
    const oq = await Checkpoint.open(q);
    try {
      const names = a.ckpt.tensorNames.filter((n) => n.startsWith('mtp.'));
      expect(names.length).toBeGreaterThan(30);
      for (const n of names) expect(Buffer.from(await oq.readBytes(n)).equals(Buffer.from(await a.ckpt.readBytes(n)))).toBe(true);
      expect(oq.has('model.layers.2.mlp.experts.0.gate_proj.qweight')).toBe(true);
    } finally {
      await a.ckpt.close();
      await oq.close();
    }
  });
});

/** qwen3_5_moe_text inside the Qwen3_5MoeForConditionalGeneration container, as transformers 5.18 saves it:
 *  model.language_model.* and lm_head.* beside model.visual.*; the MTP block at the top level (mtp.*) */
async function makeQwen35Container(dir: string): Promise<{ vision: string[] }> {
  const text = await makeTinyCheckpoint('qwen3_5_moe_text', `${dir}.text`, { experts: 8, mtp: true, config: { bos_token_id: 0 } });
  const { Checkpoint } = await import('../../src/io/checkpoint.js');
  const { CheckpointWriter } = await import('../../src/io/writer.js');
  const src = await Checkpoint.open(text.dir);
  const named = (n: string) => (n.startsWith('model.') ? `model.language_model.${n.slice('model.'.length)}` : n);
  const vision = [
    { name: 'model.visual.blocks.0.attn.qkv.weight', dtype: 'F32' as const, shape: [24, 8] },
    { name: 'model.visual.merger.linear_fc2.weight', dtype: 'F32' as const, shape: [32, 8] },
    { name: 'model.visual.patch_embed.proj.weight', dtype: 'F32' as const, shape: [8, 3, 2, 2, 2] },
  ];
  const specs = [...text.tensors.map((t) => ({ ...t, name: named(t.name) })), ...vision];
  const { architectures: _a, torch_dtype: dtype, ...textConfig } = text.config;
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, 'config.json'),
    JSON.stringify({
      architectures: ['Qwen3_5MoeForConditionalGeneration'],
      model_type: 'qwen3_5_moe',
      dtype,
      text_config: textConfig,
      vision_config: { depth: 1 },
    }),
  );
  const w = await CheckpointWriter.create(dir, specs);
  try {
    for (const t of text.tensors) await w.write(named(t.name), await src.readBytes(t.name));
    for (const v of vision)
      await w.write(
        v.name,
        fromF32(
          Float32Array.from({ length: v.shape.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i)),
          'F32',
        ),
      );
  } finally {
    await src.close();
  }
  await w.finalize();
  return { vision: vision.map((v) => v.name) };
}

describe('qwen3_5_moe (the multimodal container)', () => {
  it('edits the language model inside it and its top-level mtp.* block; the vision tower comes out byte for byte', async () => {
    const dir = join(root, 'q35-mm');
    const { vision } = await makeQwen35Container(dir);
    const m = await openModel(dir);
    try {
      expect(m.view.family).toBe('qwen3_5_moe_text');
      expect(m.view.layers[0]!.prefix).toBe('model.language_model.layers.0.');
      expect(m.view.layers.map((l) => l.attention.kind)).toEqual(['deltanet', 'gqa', 'deltanet']);
      expect(m.view.mtp?.[0]?.layer.prefix).toBe('mtp.layers.0.');
    } finally {
      await m.ckpt.close();
    }
    const ids = join(root, 'q35-ids.jsonl');
    await writeFile(
      ids,
      Array.from({ length: 4 }, (_, i) => JSON.stringify(Array.from({ length: 11 }, (_, j) => 1 + ((i * 5 + j * 9) % 63)))).join('\n') + '\n',
    );
    const out = join(root, 'q35-mm-pruned');
    const r = await runMoe(['prune', '--model', dir, '--out', out, '--keep', '4', '--method', 'reap', '--calib-ids', ids, '--seq-len', '11', '--quiet']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect([cfg.model_type, cfg.text_config.num_experts, cfg.text_config.mtp_num_hidden_layers, 'num_experts' in cfg]).toEqual(['qwen3_5_moe', 4, 1, false]);
    const a = await openModel(dir);
    const o = await openModel(out);
    try {
      for (const n of vision) expect(Buffer.from(await o.ckpt.readBytes(n)).equals(Buffer.from(await a.ckpt.readBytes(n)))).toBe(true);
      expect(o.ckpt.shape('mtp.layers.0.mlp.gate.weight')).toEqual([4, 32]);
      expect(o.ckpt.shape('model.language_model.layers.2.mlp.gate.weight')).toEqual([4, 32]);
      expect(o.ckpt.tensorNames.filter((n) => /^mtp\.layers\.0\.mlp\.experts\.\d+\.gate_proj/.test(n))).toHaveLength(4);
    } finally {
      await a.ckpt.close();
      await o.ckpt.close();
    }
    const e = await runMoe(['eval', '--model', out, '--data-ids', ids, '--seq-len', '11', '--json']);
    expect(e.code).toBe(0);
    expect(Number.isFinite(JSON.parse(e.stdout).perplexity)).toBe(true);
  });
});
