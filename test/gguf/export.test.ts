/**
 * Every family we write as GGUF: names, shapes and metadata as llama.cpp's converter writes them (the expected
 * values below were read off convert_hf_to_gguf.py's output for the same tiny checkpoints), values equal to the
 * checkpoint's (F32 exactly; F16/BF16 rounded to nearest even), q/k permuted for llama.cpp's rope where needed.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { permuteRope } from '../../src/gguf/arch.js';
import { exportGguf, GGUF_FILE, GGUF_REPORT_FILE } from '../../src/gguf/export.js';
import { ggufValue, readGguf, readGgufTensor } from '../../src/gguf/reader.js';
import { fromF32, toF32 } from '../../src/io/dtype.js';
import { loadLinear } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import type { Family } from '../helpers/families.js';
import { GGUF_FAMILIES, makeGgufCheckpoint } from './helpers.js';

const dir = await mkdtemp(join(tmpdir(), 'moe-gguf-export-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

/** blk.1's tensors and a few metadata values per family, from the converter's output. */
const EXPECTED: Record<string, { blk1: string[]; meta: Record<string, unknown> }> = {
  mixtral: {
    blk1: ['attn_k', 'attn_norm', 'attn_output', 'attn_q', 'attn_v', 'ffn_down_exps', 'ffn_gate_exps', 'ffn_gate_inp', 'ffn_norm', 'ffn_up_exps'],
    meta: { 'llama.feed_forward_length': 16, 'llama.rope.dimension_count': 8, 'llama.vocab_size': 64, 'llama.expert_count': 4 },
  },
  qwen2_moe: {
    blk1: [
      'attn_k',
      'attn_k.bias',
      'attn_norm',
      'attn_output',
      'attn_q',
      'attn_q.bias',
      'attn_v',
      'attn_v.bias',
      'ffn_down_exps',
      'ffn_down_shexp',
      'ffn_gate_exps',
      'ffn_gate_inp',
      'ffn_gate_inp_shexp',
      'ffn_gate_shexp',
      'ffn_norm',
      'ffn_up_exps',
      'ffn_up_shexp',
    ],
    meta: { 'qwen2moe.expert_feed_forward_length': 16, 'qwen2moe.expert_shared_feed_forward_length': 24, 'qwen2moe.feed_forward_length': 48 },
  },
  qwen3_moe: {
    blk1: [
      'attn_k',
      'attn_k_norm',
      'attn_norm',
      'attn_output',
      'attn_q',
      'attn_q_norm',
      'attn_v',
      'ffn_down_exps',
      'ffn_gate_exps',
      'ffn_gate_inp',
      'ffn_norm',
      'ffn_up_exps',
    ],
    meta: { 'qwen3moe.attention.key_length': 8, 'qwen3moe.expert_feed_forward_length': 16 },
  },
  olmoe: {
    blk1: [
      'attn_k',
      'attn_k_norm',
      'attn_norm',
      'attn_output',
      'attn_q',
      'attn_q_norm',
      'attn_v',
      'ffn_down_exps',
      'ffn_gate_exps',
      'ffn_gate_inp',
      'ffn_norm',
      'ffn_up_exps',
    ],
    meta: { 'olmoe.feed_forward_length': 16 },
  },
  deepseek_v2: {
    blk1: [
      'attn_k_b',
      'attn_kv_a_mqa',
      'attn_kv_a_norm',
      'attn_norm',
      'attn_output',
      'attn_q',
      'attn_v_b',
      'ffn_down_exps',
      'ffn_down_shexp',
      'ffn_gate_exps',
      'ffn_gate_inp',
      'ffn_gate_shexp',
      'ffn_norm',
      'ffn_up_exps',
      'ffn_up_shexp',
    ],
    meta: {
      'deepseek2.attention.head_count_kv': 1,
      'deepseek2.attention.key_length': 20,
      'deepseek2.attention.value_length': 16,
      'deepseek2.attention.key_length_mla': 12,
      'deepseek2.attention.value_length_mla': 8,
      'deepseek2.leading_dense_block_count': 1,
      'deepseek2.expert_group_count': 2,
      'deepseek2.rope.dimension_count': 4,
    },
  },
  deepseek_v3: {
    blk1: [
      'attn_k_b',
      'attn_kv_a_mqa',
      'attn_kv_a_norm',
      'attn_norm',
      'attn_output',
      'attn_q_a',
      'attn_q_a_norm',
      'attn_q_b',
      'attn_v_b',
      'exp_probs_b.bias',
      'ffn_down_exps',
      'ffn_down_shexp',
      'ffn_gate_exps',
      'ffn_gate_inp',
      'ffn_gate_shexp',
      'ffn_norm',
      'ffn_up_exps',
      'ffn_up_shexp',
    ],
    meta: { 'deepseek2.expert_gating_func': 2, 'deepseek2.expert_weights_norm': true, 'deepseek2.attention.q_lora_rank': 16 },
  },
  granitemoe: {
    blk1: ['attn_k', 'attn_norm', 'attn_output', 'attn_q', 'attn_v', 'ffn_down_exps', 'ffn_gate_exps', 'ffn_gate_inp', 'ffn_norm', 'ffn_up_exps'],
    meta: { 'granitemoe.embedding_scale': 12, 'granitemoe.logit_scale': 6 },
  },
  gpt_oss: {
    blk1: [
      'attn_k',
      'attn_k.bias',
      'attn_norm',
      'attn_output',
      'attn_output.bias',
      'attn_q',
      'attn_q.bias',
      'attn_sinks',
      'attn_v',
      'attn_v.bias',
      'ffn_down_exps',
      'ffn_down_exps.bias',
      'ffn_gate_exps',
      'ffn_gate_exps.bias',
      'ffn_gate_inp',
      'ffn_gate_inp.bias',
      'ffn_up_exps',
      'ffn_up_exps.bias',
      'post_attention_norm',
    ],
    meta: { 'gpt-oss.attention.sliding_window': 4, 'gpt-oss.expert_feed_forward_length': 32 },
  },
};

describe('GGUF export of every family llama.cpp supports', () => {
  for (const [family, arch] of Object.entries(GGUF_FAMILIES)) {
    it(`${family} -> ${arch}: names, shapes, metadata and exact F32 values`, async () => {
      const src = join(dir, family);
      await makeGgufCheckpoint(family as Family, src);
      const out = join(dir, `${family}-gguf`);
      const report = await exportGguf({ model: src, out, type: 'F32' });
      const f = await readGguf(join(out, GGUF_FILE));
      expect(ggufValue(f, 'general.architecture')).toBe(arch);
      expect(ggufValue(f, `${arch}.block_count`)).toBe(3);
      expect(ggufValue(f, `${arch}.embedding_length`)).toBe(32);
      expect(ggufValue(f, 'tokenizer.ggml.model')).toBe('gpt2');
      expect((ggufValue(f, 'tokenizer.ggml.tokens') as string[]).length).toBe(64);
      expect(ggufValue(f, 'tokenizer.ggml.bos_token_id')).toBe(1);
      for (const [k, v] of Object.entries(EXPECTED[family]!.meta)) expect([k, ggufValue(f, k)]).toEqual([k, v]);
      const blk1 = f.tensors
        .filter((t) => t.name.startsWith('blk.1.'))
        .map((t) => t.name.slice(6).replace(/\.weight$/, ''))
        .sort();
      expect(blk1).toEqual(EXPECTED[family]!.blk1);
      // 3-D experts [in, out, E]
      const gate = f.tensors.find((t) => t.name === 'blk.1.ffn_gate_exps.weight')!;
      expect(gate.ne).toEqual([32, family === 'gpt_oss' ? 32 : 16, 4]);
      expect(report.summary.fileBytes).toBe(f.fileBytes);

      // values: expert 2's down projection and the first layer's q projection, from the checkpoint
      const model = await openModel(src);
      try {
        const blk = model.view.layers[1]!.block;
        if (blk.kind !== 'moe') throw new Error('layer 1 is MoE');
        const down = (await loadLinear(model.ckpt, blk.experts[2]!.down)).w;
        const all = toF32(await readGgufTensor(f, 'blk.1.ffn_down_exps.weight'), 'F32');
        expect(all.subarray(2 * down.length, 3 * down.length)).toEqual(down);
        const qName = model.view.layers[0]!.attention.tensors['q_proj'];
        if (qName) {
          const q = await model.ckpt.readF32(qName);
          const got = toF32(await readGgufTensor(f, 'blk.0.attn_q.weight'), 'F32');
          // llama.cpp's LLAMA and GRANITE_MOE rotate adjacent pairs: HF's halves are permuted per head
          expect(got).toEqual(arch === 'llama' || arch === 'granitemoe' ? permuteRope(q, 32, 32, 4) : q);
        }
      } finally {
        await model.ckpt.close();
      }
    });
  }

  it('permuteRope maps HF rotate_half rows onto adjacent pairs', () => {
    // one head of dim 4, one column: rows [a0 a1 | b0 b1] -> [a0 b0 a1 b1]
    expect(Array.from(permuteRope(Float32Array.from([1, 2, 3, 4]), 4, 1, 1))).toEqual([1, 3, 2, 4]);
  });

  it('F16 and BF16 exports round every matrix, keep norms and routers F32, and report sizes per class', async () => {
    const src = join(dir, 'mixtral');
    for (const type of ['F16', 'BF16'] as const) {
      const out = join(dir, `mixtral-${type}`);
      const report = await exportGguf({ model: src, out, type });
      const f = await readGguf(join(out, GGUF_FILE));
      const types = Object.fromEntries(f.tensors.map((t) => [t.name, t.type]));
      expect(types['blk.0.attn_q.weight']).toBe(type);
      expect(types['blk.0.ffn_up_exps.weight']).toBe(type);
      expect(types['token_embd.weight']).toBe(type);
      expect(types['blk.0.ffn_gate_inp.weight']).toBe('F32');
      expect(types['blk.0.attn_norm.weight']).toBe('F32');
      expect(ggufValue(f, 'general.file_type')).toBe(type === 'F16' ? 1 : 32);
      const model = await openModel(src);
      const blk = model.view.layers[0]!.block;
      if (blk.kind !== 'moe') throw new Error('moe');
      const up0 = (await loadLinear(model.ckpt, blk.experts[0]!.up)).w;
      await model.ckpt.close();
      const bytes = await readGgufTensor(f, 'blk.0.ffn_up_exps.weight');
      expect(bytes.subarray(0, up0.length * 2)).toEqual(fromF32(up0, type));
      expect(report.summary.byClass.expert!.bpw).toBe(16);
      expect(report.summary.byClass.norm!.bpw).toBe(32);
      expect(report.tensors.length).toBe(f.tensors.length);
      const { readFile } = await import('node:fs/promises');
      expect(JSON.parse(await readFile(join(out, GGUF_REPORT_FILE), 'utf8')).summary.fileBytes).toBe(f.fileBytes);
    }
  });

  it('refuses what llama.cpp cannot represent, before writing anything', async () => {
    const src = join(dir, 'qwen-dense');
    const { makeTinyCheckpoint } = await import('../helpers/families.js');
    const { writeTinyTokenizer } = await import('./helpers.js');
    await makeTinyCheckpoint('qwen2_moe', src);
    await writeTinyTokenizer(src);
    await expect(exportGguf({ model: src, out: join(dir, 'never') })).rejects.toThrow(/qwen2moe has no dense layers \(dense layers: 0\)/);
    const { pathExists } = await import('../../src/io/output.js');
    expect(await pathExists(join(dir, 'never'))).toBe(false);
    const p = join(dir, 'phimoe');
    await makeTinyCheckpoint('phimoe', p);
    await writeTinyTokenizer(p);
    await expect(exportGguf({ model: p, out: join(dir, 'never') })).rejects.toThrow(/phimoe cannot be written as GGUF/);
  });
});
