/**
 * Issue 15, the Gated-DeltaNet hybrids: qwen3_next's view (linear-attention layers from layer_types or
 * full_attention_interval, gated full attention, zero-centred norms, the shared expert) and its refusals. The
 * forward pass and every command's output are compared with transformers 5.18 in `npm run test:families-py`.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
