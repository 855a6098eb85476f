/**
 * Conventions of configs saved by transformers 5 (checked against the real library by test/interop): RoPE
 * settings in rope_parameters (rope_type, rope_theta, partial_rotary_factor and the scaling keys in one dict,
 * no rope_scaling), and renamed keys (qwen3_moe's expert count as num_local_experts, its attribute_map target).
 * Edits write back in the input's convention.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../../kernels/random.js';
import { Checkpoint } from '../../src/io/checkpoint.js';
import { fromF32 } from '../../src/io/dtype.js';
import { CheckpointWriter } from '../../src/io/writer.js';
import { topLevelValueTexts } from '../../src/model/configjson.js';
import { openModel } from '../../src/model/open.js';
import { writeExpertEdit } from '../../src/model/rewrite.js';
import { ropeFrequencies } from '../../src/runtime/rope.js';
import { wordLines, writeWordTokenizer } from '../eval/tokenizer.js';
import { runMoe } from '../helpers/cli.js';
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

/**
 * A per-expert checkpoint rewritten the way transformers 5 saves it with save_original_format=False: experts fused
 * (`<moe>.experts.gate_up_proj` [E, 2I, H] gate first, `down_proj` [E, H, I]) and the family's router/bias renames.
 */
async function toTransformers5Fused(src: string, dst: string, moe: { from: string; to: string }, renames: Record<string, string>, E: number): Promise<void> {
  const ck = await Checkpoint.open(src);
  try {
    const specs: { name: string; dtype: 'F32'; shape: number[]; data: () => Promise<Float32Array> }[] = [];
    const stacked = new Set<string>();
    for (const n of ck.tensorNames) {
      const m = new RegExp(`^(model\\.layers\\.\\d+\\.)${moe.from.replace('.', '\\.')}\\.experts\\.(\\d+)\\.`).exec(n);
      if (m) {
        const prefix = m[1]!;
        if (stacked.has(prefix)) continue;
        stacked.add(prefix);
        const p = `${prefix}${moe.from}.experts.`;
        const [g, u, d] = moe.from === 'mlp' ? ['gate_proj', 'up_proj', 'down_proj'] : ['w1', 'w3', 'w2'];
        const [I, H] = ck.shape(`${p}0.${g}.weight`) as [number, number];
        specs.push({
          name: `${prefix}${moe.to}.experts.gate_up_proj`,
          dtype: 'F32',
          shape: [E, 2 * I, H],
          data: async () => {
            const out = new Float32Array(E * 2 * I * H);
            for (let e = 0; e < E; e++) {
              out.set(await ck.readF32(`${p}${e}.${g}.weight`), e * 2 * I * H);
              out.set(await ck.readF32(`${p}${e}.${u}.weight`), e * 2 * I * H + I * H);
            }
            return out;
          },
        });
        specs.push({
          name: `${prefix}${moe.to}.experts.down_proj`,
          dtype: 'F32',
          shape: [E, H, I],
          data: async () => {
            const out = new Float32Array(E * H * I);
            for (let e = 0; e < E; e++) out.set(await ck.readF32(`${p}${e}.${d}.weight`), e * H * I);
            return out;
          },
        });
        continue;
      }
      let name = n;
      for (const [a, b] of Object.entries(renames)) if (n.endsWith(a)) name = n.slice(0, n.length - a.length) + b;
      specs.push({ name, dtype: 'F32', shape: [...ck.shape(n)], data: () => ck.readF32(n) });
    }
    await mkdir(dst, { recursive: true });
    const w = await CheckpointWriter.create(dst, specs);
    for (const s of specs) await w.write(s.name, fromF32(await s.data(), 'F32'));
    await w.finalize();
    await writeFile(join(dst, 'config.json'), await readFile(join(src, 'config.json')));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) await writeFile(join(dst, f), await readFile(join(src, f)));
  } finally {
    await ck.close();
  }
}

describe('transformers 5 fused layout of families whose router or bias it renames', () => {
  const cases = [
    { family: 'phimoe', moe: { from: 'block_sparse_moe', to: 'mlp' }, renames: { 'block_sparse_moe.gate.weight': 'mlp.router.weight' } },
    {
      family: 'minimax_m2',
      moe: { from: 'block_sparse_moe', to: 'mlp' },
      renames: { 'block_sparse_moe.gate.weight': 'mlp.gate.weight', 'block_sparse_moe.e_score_correction_bias': 'mlp.e_score_correction_bias' },
    },
    {
      family: 'ernie4_5_moe',
      moe: { from: 'mlp', to: 'mlp' },
      renames: { 'mlp.moe_statics.e_score_correction_bias': 'mlp.gate.moe_statics.e_score_correction_bias' },
    },
  ] as const;
  it.each(cases)('$family: read in that layout with the same perplexity, and edited in it', async ({ family, moe, renames }) => {
    const a = join(root, `${family}-orig`);
    const b = join(root, `${family}-t5fused`);
    await makeTinyCheckpoint(family, a, { experts: 4 });
    await writeWordTokenizer(a, { bos: null });
    await toTransformers5Fused(a, b, moe, renames, 4);
    const text = join(root, `${family}.txt`);
    await writeFile(text, wordLines(12, seededRandom(5)).join('\n'));
    const ppl = async (dir: string) => {
      const r = await runMoe(['eval', '--model', dir, '--data', text, '--seq-len', '16', '--json']);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout).perplexity as number;
    };
    const m = await openModel(b);
    try {
      expect(m.view.expertLayout).toBe('fused');
    } finally {
      await m.ckpt.close();
    }
    expect(await ppl(b)).toBe(await ppl(a));
    const out = join(root, `${family}-t5fused-pruned`);
    const r = await runMoe(['prune', '--model', b, '--out', out, '--keep', '2', '--method', 'random', '--seed', '1', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    const p = await Checkpoint.open(out);
    try {
      const names = p.tensorNames;
      expect(names.some((n) => n.endsWith(`${moe.to}.experts.gate_up_proj`))).toBe(true);
      for (const to of Object.values(renames))
        expect(
          names.some((n) => n.endsWith(to)),
          to,
        ).toBe(true);
      expect(names.some((n) => /experts\.\d+\./.test(n))).toBe(false);
    } finally {
      await p.close();
    }
  });
});
