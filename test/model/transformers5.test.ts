/**
 * Conventions of configs saved by transformers 5 (checked against the real library by test/interop): RoPE
 * settings in rope_parameters (rope_type, rope_theta, partial_rotary_factor and the scaling keys in one dict,
 * no rope_scaling), and renamed keys (qwen3_moe's expert count as num_local_experts, its attribute_map target).
 * Edits write back in the input's convention.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { topLevelValueTexts } from '../../src/model/configjson.js';
import { openModel } from '../../src/model/open.js';
import { writeExpertEdit } from '../../src/model/rewrite.js';
import { ropeFrequencies } from '../../src/runtime/rope.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-t5-'));
});
afterAll(() => rm(root, { recursive: true, force: true }));

const YARN = { rope_type: 'yarn', factor: 4.0, original_max_position_embeddings: 32, beta_fast: 32.0, beta_slow: 1.0, rope_theta: 50000.0 };

describe('rope_parameters (transformers 5)', () => {
  it('reads rope_type, rope_theta and the scaling keys from rope_parameters as it reads rope_scaling', async () => {
    const a = join(root, 'yarn-v5');
    const b = join(root, 'yarn-v4');
    await makeTinyCheckpoint('gpt_oss', a, { config: { rope_theta: null, rope_scaling: null, rope_parameters: YARN } });
    const { rope_theta: _t, ...scaling } = YARN;
    await makeTinyCheckpoint('gpt_oss', b, { config: { rope_theta: 50000, rope_scaling: scaling, rope_parameters: null } });
    const [ma, mb] = await Promise.all([openModel(a), openModel(b)]);
    try {
      expect(ma.view.rope.theta).toBe(50000);
      expect(ma.view.rope.scaling?.rope_type).toBe('yarn');
      const fa = ropeFrequencies(ma.view.rope, ma.view.dims.maxPositions);
      const fb = ropeFrequencies(mb.view.rope, mb.view.dims.maxPositions);
      expect([...fa.invFreq]).toEqual([...fb.invFreq]);
      expect(fa.attentionScaling).toBe(fb.attentionScaling);
      // YaRN really is on: not the plain frequencies
      expect(fa.attentionScaling).toBeGreaterThan(1.1);
    } finally {
      await Promise.all([ma.ckpt.close(), mb.ckpt.close()]);
    }
  });

  it('rope_type default is plain RoPE; partial_rotary_factor inside rope_parameters sets the rotary dims', async () => {
    const dir = join(root, 'glm-v5');
    await makeTinyCheckpoint('glm4_moe', dir, {
      config: { partial_rotary_factor: null, rope_theta: null, rope_parameters: { rope_type: 'default', rope_theta: 10000.0, partial_rotary_factor: 0.5 } },
    });
    const m = await openModel(dir);
    try {
      expect(m.view.rope.scaling).toBeUndefined();
      expect(m.view.rope.rotaryDim).toBe(m.view.dims.headDim / 2);
    } finally {
      await m.ckpt.close();
    }
  });

  it('DeepSeek MLA takes its YaRN softmax scale from rope_parameters too', async () => {
    const rp = { ...YARN, mscale: 1.0, mscale_all_dim: 1.0 };
    const a = join(root, 'ds-v5');
    const b = join(root, 'ds-plain');
    await makeTinyCheckpoint('deepseek_v3', a, { config: { rope_scaling: null, rope_theta: null, rope_parameters: rp } });
    await makeTinyCheckpoint('deepseek_v3', b, {
      config: { rope_scaling: null, rope_theta: null, rope_parameters: { rope_type: 'default', rope_theta: 50000.0 } },
    });
    const [ma, mb] = await Promise.all([openModel(a), openModel(b)]);
    try {
      const m = 0.1 * Math.log(4) + 1;
      expect(ma.view.attention.softmaxScale! / mb.view.attention.softmaxScale!).toBeCloseTo(m * m, 12);
    } finally {
      await Promise.all([ma.ckpt.close(), mb.ckpt.close()]);
    }
  });

  it('refuses a malformed rope_parameters value with the key named', async () => {
    const dir = join(root, 'bad');
    await makeTinyCheckpoint('mixtral', dir, { config: { rope_theta: null, rope_parameters: { rope_type: 'default', rope_theta: 'big' } } });
    await expect(openModel(dir)).rejects.toThrow(/rope_parameters\.rope_theta' must be a number/);
  });
});

describe('renamed config keys', () => {
  it('qwen3_moe saved by transformers 5 (num_local_experts, no num_experts) is read, and edited under its own key', async () => {
    const dir = join(root, 'qwen3-v5');
    await makeTinyCheckpoint('qwen3_moe', dir, { config: { num_experts: null, num_local_experts: 4 } });
    const m = await openModel(dir);
    try {
      expect(m.view.dims.numExperts).toBe(4);
      const out = join(root, 'qwen3-v5-pruned');
      await writeExpertEdit(m, { layers: m.view.moeLayers.map((layer) => ({ layer, experts: [{ from: 3 }, { from: 1 }] })) }, out);
      const text = await readFile(join(out, 'config.json'), 'utf8');
      const keys = topLevelValueTexts(text);
      expect(keys.get('num_local_experts')).toBe('2');
      expect(keys.has('num_experts')).toBe(false);
    } finally {
      await m.ckpt.close();
    }
  });

  it('ernie4_5_moe under the transformers attribute names (num_experts, num_experts_per_tok)', async () => {
    const dir = join(root, 'ernie-alias');
    await makeTinyCheckpoint('ernie4_5_moe', dir, { config: { moe_num_experts: null, moe_k: null, num_experts: 4, num_experts_per_tok: 2 } });
    const m = await openModel(dir);
    try {
      expect([m.view.dims.numExperts, m.view.dims.topK]).toEqual([4, 2]);
    } finally {
      await m.ckpt.close();
    }
  });
});
