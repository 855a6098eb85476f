/**
 * Issue 15, first part: the Kimi-K2 alias (model_type kimi_k2 read as DeepSeek-V3, the name kept on output) and
 * pre-tokenized calibration (--calib-ids / --data-ids) for checkpoints whose tokenizer moe cannot read.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeLines, loadTokenizer, loadWindowSet, splitLines } from '../../src/data/windows.js';
import { inspectModel } from '../../src/inspect/report.js';
import { openModel } from '../../src/model/open.js';
import { ropeFrequencies } from '../../src/runtime/rope.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

const FIXTURE = 'test/fixtures/tiny-mixtral';
const CALIB = 'test/fixtures/text/calib.txt';
let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-families-new-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function kimi(name: string, config: Record<string, unknown> = {}): Promise<string> {
  const dir = join(root, name);
  await makeTinyCheckpoint('deepseek_v3', dir, { experts: 8, config: { model_type: 'kimi_k2', bos_token_id: 1, ...config } });
  return dir;
}

/** SHA-256 of every safetensors file of a directory, by name. */
async function weightHashes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).filter((n) => n.endsWith('.safetensors')).sort())
    out[f] = createHash('sha256')
      .update(await readFile(join(dir, f)))
      .digest('hex');
  return out;
}

describe('kimi_k2 alias', () => {
  it('reads model_type kimi_k2 + DeepseekV3ForCausalLM as deepseek_v3 and says so in inspect', async () => {
    const dir = await kimi('kimi-view');
    const m = await openModel(dir);
    try {
      expect(m.view.family).toBe('deepseek_v3');
      expect(m.view.routing.score).toBe('sigmoid');
      expect(m.view.attention.kind).toBe('mla');
      const r = await inspectModel(m);
      expect(r.family).toBe('deepseek_v3');
      expect(r.modelType).toBe('kimi_k2');
    } finally {
      await m.ckpt.close();
    }
  });

  it('refuses kimi_k2 under another architecture class (Kimi-K2.5 multimodal is not DeepSeek-V3 on disk)', async () => {
    const dir = await kimi('kimi-other', { architectures: ['KimiK25ForConditionalGeneration'] });
    const r = await runMoe(['inspect', '--model', dir]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^moe: .*model_type 'kimi_k2' is read as deepseek_v3 only with architectures DeepseekV3ForCausalLM/);
  });

  it('prune keeps model_type kimi_k2 and the architectures on output', async () => {
    const dir = await kimi('kimi-prune');
    const out = join(root, 'kimi-pruned');
    const r = await runMoe(['prune', '--model', dir, '--out', out, '--keep', '4', '--method', 'random', '--quiet']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.model_type).toBe('kimi_k2');
    expect(cfg.architectures).toEqual(['DeepseekV3ForCausalLM']);
    expect(cfg.n_routed_experts).toBe(4);
    const m = await openModel(out);
    expect(m.view.dims.numExperts).toBe(4);
    await m.ckpt.close();
  });
});

describe('--calib-ids (pre-tokenized calibration)', () => {
  let idsFile: string;
  beforeAll(async () => {
    // the ids the fixture's tokenizer gives for each line of the calibration text, one JSON array per line
    const { tokenizer } = await loadTokenizer(FIXTURE);
    const lines = splitLines(await readFile(CALIB, 'utf8'));
    idsFile = join(root, 'calib.ids.jsonl');
    await writeFile(idsFile, lines.map((l) => JSON.stringify(Array.from(encodeLines(tokenizer, [l])))).join('\n') + '\n');
  });

  it('the ids of the text give the same windows as the text (BOS included)', async () => {
    const a = await loadWindowSet(FIXTURE, CALIB, { seqLen: 64, maxTokens: 1024 });
    const b = await loadWindowSet(FIXTURE, idsFile, { seqLen: 64, maxTokens: 1024, format: 'ids' });
    expect(b.bos).toBe(a.bos);
    // the text path tokenizes only up to the token budget (its counts are of what it read); the ids path parses the whole file
    expect(b.streamTokens).toBeGreaterThanOrEqual(a.streamTokens);
    expect(b.lines).toBeGreaterThanOrEqual(a.lines);
    expect(b.windows.length).toBe(16);
    expect(b.windows).toEqual(a.windows);
  });

  it('prune reap with --calib-ids writes the bytes --calib writes', async () => {
    const common = ['--model', FIXTURE, '--ratio', '0.75', '--method', 'reap', '--calib-tokens', '1024', '--seq-len', '64', '--quiet'];
    const a = await runMoe(['prune', ...common, '--out', join(root, 'reap-text'), '--calib', CALIB]);
    const b = await runMoe(['prune', ...common, '--out', join(root, 'reap-ids'), '--calib-ids', idsFile]);
    expect([a.code, b.code, a.stderr, b.stderr]).toEqual([0, 0, '', '']);
    expect(await weightHashes(join(root, 'reap-ids'))).toEqual(await weightHashes(join(root, 'reap-text')));
  });

  it('eval --data-ids gives the perplexity of --data', async () => {
    const common = ['eval', '--model', FIXTURE, '--seq-len', '64', '--max-tokens', '512', '--json'];
    const a = await runMoe([...common, '--data', CALIB]);
    const b = await runMoe([...common, '--data-ids', idsFile]);
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(JSON.parse(b.stdout).perplexity).toBe(JSON.parse(a.stdout).perplexity);
  });

  it('calibrates a checkpoint without tokenizer.json (Kimi-K2 ships tiktoken.model) from ids; BOS from config.json', async () => {
    const dir = await kimi('kimi-ids');
    const ids = join(root, 'kimi.ids.jsonl');
    const rand = Array.from({ length: 20 }, (_, i) => JSON.stringify(Array.from({ length: 13 }, (_, j) => (i * 7 + j * 3) % 64)));
    await writeFile(ids, rand.join('\n') + '\n');
    const set = await loadWindowSet(dir, ids, { seqLen: 16, format: 'ids' });
    expect(set.bos).toBe(1);
    expect(set.windows.length).toBe(Math.floor(260 / 16));
    expect(set.windows[0]![0]).toBe(1);
    const out = join(root, 'kimi-reap');
    const r = await runMoe(['prune', '--model', dir, '--out', out, '--keep', '4', '--calib-ids', ids, '--seq-len', '16', '--quiet']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const rep = JSON.parse(await readFile(join(out, 'moe-prune-report.json'), 'utf8'));
    expect(JSON.stringify(rep)).toContain('reap');
    // the same checkpoint with --calib text needs a tokenizer it does not have
    const t = await runMoe(['prune', '--model', dir, '--out', join(root, 'kimi-text'), '--keep', '4', '--calib', CALIB, '--seq-len', '16', '--quiet']);
    expect(t.code).toBe(3);
    expect(t.stderr).toMatch(/^moe: tokenizer.json not found/);
  });

  it('refuses a bad ids file, an id outside the vocabulary, and --calib with --calib-ids, one line each', async () => {
    const dir = await kimi('kimi-bad');
    const bad = join(root, 'bad.jsonl');
    await writeFile(bad, '[1, 2, 3]\n{"ids": [1]}\n');
    const common = ['prune', '--model', dir, '--keep', '4', '--seq-len', '2', '--quiet'];
    let r = await runMoe([...common, '--out', join(root, 'bad1'), '--calib-ids', bad]);
    expect([r.code, r.stderr]).toEqual([3, `moe: ${bad}:2: not a JSON array of token ids\n`]);
    await writeFile(bad, '[1, 2, 64]\n');
    r = await runMoe([...common, '--out', join(root, 'bad2'), '--calib-ids', bad]);
    expect([r.code, r.stderr]).toEqual([3, `moe: ${bad}:1: token id 64 is outside the model's vocabulary (vocab_size 64)\n`]);
    await writeFile(bad, '[1, 2.5]\n');
    r = await runMoe([...common, '--out', join(root, 'bad3'), '--calib-ids', bad]);
    expect([r.code, r.stderr]).toEqual([3, `moe: ${bad}:1: token id 2.5 is not a non-negative integer\n`]);
    r = await runMoe([...common, '--out', join(root, 'bad4'), '--calib-ids', bad, '--calib', CALIB]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('moe: give either --calib FILE (text) or --calib-ids FILE (token ids), not both\n');
    for (const n of ['bad1', 'bad2', 'bad3', 'bad4']) await expect(readdir(join(root, n))).rejects.toThrow();
  });
});

describe('glm4_moe_lite (MLA with q-LoRA, sigmoid group routing, mlp_layer_types)', () => {
  async function lite(name: string, config: Record<string, unknown>): Promise<string> {
    const dir = join(root, name);
    await makeTinyCheckpoint('deepseek_v3', dir, {
      experts: 8,
      config: { model_type: 'glm4_moe_lite', architectures: ['Glm4MoeLiteForCausalLM'], first_k_dense_replace: null, ...config },
    });
    return dir;
  }

  it('MoE layers from mlp_layer_types (default: the first dense, the rest sparse); MLA and the DeepSeek-V3 routing', async () => {
    for (const [name, types] of [
      ['lite-default', null],
      ['lite-types', ['dense', 'sparse', 'sparse']],
    ] as const) {
      const m = await openModel(await lite(name, { mlp_layer_types: types }));
      try {
        expect(m.view.family).toBe('glm4_moe_lite');
        expect(m.view.moeLayers).toEqual([1, 2]);
        expect(m.view.attention.kind).toBe('mla');
        expect(m.view.attention.mla?.qLoraRank).not.toBeNull();
        expect(m.view.routing).toMatchObject({ score: 'sigmoid', selectionBias: true });
      } finally {
        await m.ckpt.close();
      }
    }
  });

  it('refuses an mlp_layer_types list of the wrong length or with unknown entries, one line', async () => {
    const dir = await lite('lite-bad', { mlp_layer_types: ['dense', 'moe', 'sparse'] });
    const r = await runMoe(['inspect', '--model', dir]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^moe: .*'mlp_layer_types' must list 3 entries, each "sparse" or "dense"\n$/);
  });
});

describe('dots1 (DeepSeek-V3 MoE under Qwen3 attention)', () => {
  it('DeepSeek-V3 routing with Qwen3 per-head q/k norm; sliding layers from max_window_layers whenever sliding_window is set', async () => {
    const cases = [
      ['dots1-full', { sliding_window: null, max_window_layers: 1 }, [null, null, null]],
      ['dots1-window', { sliding_window: 16, max_window_layers: 2 }, [null, null, 16]],
      ['dots1-types', { sliding_window: 16, max_window_layers: 0, layer_types: ['sliding_attention', 'full_attention', 'full_attention'] }, [16, null, null]],
    ] as const;
    for (const [name, config, windows] of cases) {
      const dir = join(root, name);
      await makeTinyCheckpoint('dots1', dir, { experts: 8, config });
      const m = await openModel(dir);
      try {
        expect(m.view.family).toBe('dots1');
        expect(m.view.moeLayers).toEqual([1, 2]);
        expect(m.view.attention).toMatchObject({ kind: 'gqa', qkNorm: 'per-head' });
        expect(m.view.routing).toMatchObject({ score: 'sigmoid', selectionBias: true, normalize: true, scale: 2.5 });
        expect(m.view.layers.map((l) => l.slidingWindow ?? null)).toEqual(windows);
      } finally {
        await m.ckpt.close();
      }
    }
  });
});

describe('hunyuan_v1_moe (Hunyuan-A13B)', () => {
  it('every layer MoE with a shared MLP; per-head q/k norm after RoPE; the DynamicNTKAlpha base', async () => {
    const dir = join(root, 'hunyuan');
    await makeTinyCheckpoint('hunyuan_v1_moe', dir, { experts: 8 });
    const m = await openModel(dir);
    try {
      expect(m.view.family).toBe('hunyuan_v1_moe');
      expect(m.view.moeLayers).toEqual([0, 1, 2]);
      expect(m.view.dims).toMatchObject({ numExperts: 8, topK: 2, expertIntermediate: 16, sharedIntermediate: 16, denseIntermediate: 0 });
      expect(m.view.attention).toMatchObject({ kind: 'gqa', qkNorm: 'per-head', qkNormAfterRope: true });
      expect(m.view.routing).toMatchObject({ score: 'softmax', normalize: true, scale: 1 });
      expect(m.view.layers[0]!.block).toMatchObject({ kind: 'moe', router: { weight: 'model.layers.0.mlp.gate.wg.weight' } });
      // head_dim 8, theta 1e4, alpha 1e3: base = 1e4 * 1e3^(8/6) = 1e8, so inv_freq = 1e8^(-2i/8) = 10^(-2i)
      const { invFreq, attentionScaling } = ropeFrequencies(m.view.rope, m.view.dims.maxPositions, 64);
      expect(attentionScaling).toBe(1);
      [1, 1e-2, 1e-4, 1e-6].forEach((want, i) => expect(invFreq[i]! / want).toBeCloseTo(1, 12));
    } finally {
      await m.ckpt.close();
    }
  });

  it('refuses a per-layer moe_topk list in one line', async () => {
    const dir = join(root, 'hunyuan-list');
    await makeTinyCheckpoint('hunyuan_v1_moe', dir, { experts: 8, config: { moe_topk: [2, 2, 2] } });
    const r = await runMoe(['inspect', '--model', dir]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^moe: .*moe_topk.*\n$/);
  });
});

describe('mistral4 (Mistral-Small-4)', () => {
  it('MLA with q-LoRA and YaRN mscale², softmax routing with groups, the Llama-4 query scaling from rope_parameters', async () => {
    const dir = join(root, 'mistral4');
    await makeTinyCheckpoint('mistral4', dir, { experts: 8 });
    const m = await openModel(dir);
    try {
      expect(m.view.family).toBe('mistral4');
      expect(m.view.moeLayers).toEqual([1, 2]);
      expect(m.view.attention.mla).toMatchObject({ qLoraRank: 16, kvLoraRank: 16, qkNopeHeadDim: 8, qkRopeHeadDim: 4, vHeadDim: 8 });
      expect(m.view.attention.queryPositionScale).toEqual({ beta: 0.1, original: 16 });
      // 1/sqrt(12) x mscale(4, 1)^2, mscale = 0.1 ln 4 + 1
      expect(m.view.attention.softmaxScale).toBeCloseTo((1 / Math.sqrt(12)) * (0.1 * Math.log(4) + 1) ** 2, 12);
      expect(m.view.routing).toMatchObject({ score: 'softmax', selectionBias: false, normalize: true, scale: 1.5 });
      expect(m.view.rope).toMatchObject({ style: 'interleaved', rotaryDim: 4 });
    } finally {
      await m.ckpt.close();
    }
  });

  it('refuses llama_4_scaling_beta without a positive original_max_position_embeddings, one line', async () => {
    const dir = join(root, 'mistral4-bad');
    await makeTinyCheckpoint('mistral4', dir, {
      experts: 8,
      config: { rope_parameters: { rope_type: 'default', rope_theta: 10000, llama_4_scaling_beta: 0.1 } },
    });
    const r = await runMoe(['inspect', '--model', dir]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^moe: .*llama_4_scaling_beta needs a number and a positive original_max_position_embeddings\n$/);
  });
});

describe('glm_moe_dsa (GLM-5, DSA indexer on the "full" layers)', () => {
  it('reads as deepseek_v32; a "shared" layer has no indexer roles; the list is derived from index_topk_freq when absent', async () => {
    const dir = join(root, 'glm5');
    await makeTinyCheckpoint('glm_moe_dsa', dir, { experts: 8, config: { index_topk: 16 } });
    const m = await openModel(dir);
    try {
      expect(m.view.family).toBe('glm_moe_dsa');
      expect(m.view.moeLayers).toEqual([1, 2]);
      expect(m.view.attention).toMatchObject({ kind: 'mla', denseKeysUpTo: 16 });
      const indexer = (l: number) => Object.keys(m.view.layers[l]!.attention.tensors).filter((r) => r.startsWith('indexer_'));
      expect([indexer(0).length, indexer(1).length, indexer(2).length]).toEqual([5, 0, 5]);
    } finally {
      await m.ckpt.close();
    }
    // GLM-5's config.json form: no indexer_types but a schedule (freq 2 from offset 2: layers 0, 1, 3 full)
    const cfgPath = join(dir, 'config.json');
    const cfg = JSON.parse(await readFile(cfgPath, 'utf8'));
    const sched = join(root, 'glm5-sched');
    await makeTinyCheckpoint('glm_moe_dsa', sched, { experts: 8, layers: 4, config: { indexer_types: ['full', 'full', 'shared', 'full'] } });
    const sc = JSON.parse(await readFile(join(sched, 'config.json'), 'utf8'));
    delete sc.indexer_types;
    await writeFile(join(sched, 'config.json'), JSON.stringify({ ...sc, index_topk_freq: 2, index_skip_topk_offset: 2 }));
    const s = await openModel(sched);
    try {
      expect(s.view.layers.map((l) => Object.keys(l.attention.tensors).some((r) => r.startsWith('indexer_')))).toEqual([true, true, false, true]);
    } finally {
      await s.ckpt.close();
    }
    // an indexer list of the wrong length is refused in one line
    await writeFile(cfgPath, JSON.stringify({ ...cfg, indexer_types: ['full', 'shared'] }));
    const r = await runMoe(['inspect', '--model', dir]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^moe: .*indexer_types \(or index_topk_pattern\) must give "full" or "shared" for each of the 3 layers/);
  });
});

describe('deepseek_v32 (DeepSeek-V3.2, DSA indexer)', () => {
  it('reads as glm4_moe_lite plus the indexer: windows up to index_topk run dense, longer ones are refused in one line', async () => {
    const dir = join(root, 'v32');
    await makeTinyCheckpoint('deepseek_v32', dir, { experts: 8, config: { index_topk: 16 } });
    const m = await openModel(dir);
    try {
      expect(m.view.family).toBe('deepseek_v32');
      expect(m.view.moeLayers).toEqual([1, 2]);
      expect(m.view.attention).toMatchObject({ kind: 'mla', denseKeysUpTo: 16 });
      expect(m.view.routing).toMatchObject({ score: 'sigmoid', selectionBias: true, scale: 2.5 });
    } finally {
      await m.ckpt.close();
    }
    const ids = join(root, 'v32.jsonl');
    await writeFile(ids, `${JSON.stringify(Array.from({ length: 40 }, (_, i) => 2 + (i % 60)))}\n`);
    const ok = await runMoe(['eval', '--model', dir, '--data-ids', ids, '--seq-len', '16', '--quiet']);
    expect(ok.code).toBe(0);
    const long = await runMoe(['eval', '--model', dir, '--data-ids', ids, '--seq-len', '17', '--quiet']);
    expect(long.code).toBe(2);
    expect(long.stderr).toMatch(/^moe: deepseek_v32's sparse attention indexer keeps 16 keys per query \(index_topk\): windows of 17 positions .*\n$/);
  });
});
