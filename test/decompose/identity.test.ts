/**
 * A low-rank (factor) output shows stock loaders its own model_type and class (src/model/lowrank.ts), so that
 * AutoConfig and vLLM refuse it instead of loading it with the expert weights missing; moe reads it as its family,
 * and every output without factors (decompose --materialize of it) gets the stock names back.
 * (test/interop checks that transformers' AutoConfig really refuses it.)
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decompose } from '../../src/decompose/pipeline.js';
import { evaluate } from '../../src/eval/perplexity.js';
import { inspectModel } from '../../src/inspect/report.js';
import { lowRankIdentityUpdates } from '../../src/model/lowrank.js';
import { openModel } from '../../src/model/open.js';
import { prune } from '../../src/prune/pipeline.js';
import { quantize } from '../../src/quantize/pipeline.js';
import { initBackend } from '../../src/runtime/backend.js';
import { seededRandom } from '../../kernels/random.js';
import { wordLines, writeWordTokenizer } from '../eval/tokenizer.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
let calib: string;
let src: string;
let low: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-decompose-identity-'));
  calib = join(root, 'calib.txt');
  await writeFile(calib, wordLines(60, seededRandom(5)).join('\n') + '\n');
  src = join(root, 'src');
  await makeTinyCheckpoint('mixtral', src, { experts: 4, intermediate: 32, seed: 9 });
  await writeWordTokenizer(src);
  low = join(root, 'low');
  await decompose({ model: src, out: low, ratio: 0.6, mode: 'svd', uniform: true });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const readConfig = async (dir: string) => JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;

describe('low-rank output identity', () => {
  it("a factor output has model_type moe_lowrank_<family> and class MoeLowRank<Class>, the stock names in its moe section; the rest of config.json is the input's text", async () => {
    const cfg = await readConfig(low);
    const inCfg = await readConfig(src);
    expect(inCfg.model_type).toBe('mixtral');
    expect(cfg.model_type).toBe('moe_lowrank_mixtral');
    expect(cfg.architectures).toEqual(['MoeLowRankMixtralForCausalLM']);
    const moe = cfg.moe as Record<string, unknown>;
    expect(moe.format).toBe('moe-lowrank');
    expect(moe.stock).toEqual({ model_type: 'mixtral', architectures: ['MixtralForCausalLM'] });
    // only model_type, architectures and the moe section differ
    const changed = Object.keys({ ...inCfg, ...cfg }).filter((k) => JSON.stringify(inCfg[k]) !== JSON.stringify(cfg[k]));
    expect(changed.sort()).toEqual(['architectures', 'model_type', 'moe']);
    const inText = await readFile(join(src, 'config.json'), 'utf8');
    const outText = await readFile(join(low, 'config.json'), 'utf8');
    for (const line of inText.split('\n').filter((l) => /^\s+"(rms_norm_eps|router_jitter_noise|rope_theta|hidden_size)"/.test(l)))
      expect(outText).toContain(line);
  });

  it('moe reads it as its family: inspect, eval (equal to the materialized output), and the materialized form has the stock names', async () => {
    const m = await openModel(low);
    try {
      expect(m.view.family).toBe('mixtral');
      const r = inspectModel(m);
      expect(r.family).toBe('mixtral');
      expect(r.modelType).toBe('moe_lowrank_mixtral');
    } finally {
      await m.ckpt.close();
    }
    const mat = join(root, 'mat');
    await decompose({ model: src, out: mat, ratio: 0.6, mode: 'svd', uniform: true, materialize: true });
    const cm = await readConfig(mat);
    expect(cm.model_type).toBe('mixtral');
    expect(cm.architectures).toEqual(['MixtralForCausalLM']);
    expect(cm.moe).toBeUndefined();
    const e1 = await evaluate({ model: low, data: calib, seqLen: 32, maxTokens: 256 });
    const e2 = await evaluate({ model: mat, data: calib, seqLen: 32, maxTokens: 256 });
    expect(Number.isFinite(e1.perplexity)).toBe(true);
    expect(Math.abs(e2.perplexity / e1.perplexity - 1)).toBeLessThan(1e-5);
  });

  it('outputs of a factor checkpoint: still factors (prune) keep the low-rank names; without factors (materialize) the stock names come back', async () => {
    const pruned = join(root, 'low-pruned');
    await prune({ model: low, out: pruned, keep: 2, method: 'random', seed: 1 });
    const cp = await readConfig(pruned);
    expect(cp.model_type).toBe('moe_lowrank_mixtral');
    expect(cp.architectures).toEqual(['MoeLowRankMixtralForCausalLM']);
    expect((cp.moe as Record<string, unknown>).stock).toEqual({ model_type: 'mixtral', architectures: ['MixtralForCausalLM'] });

    const mat = join(root, 'low-mat');
    await decompose({ model: low, out: mat, ratio: 1, mode: 'svd', uniform: true, materialize: true });
    const cm = await readConfig(mat);
    expect([cm.model_type, cm.architectures, cm.moe]).toEqual(['mixtral', ['MixtralForCausalLM'], undefined]);

    // GPTQ addresses per-expert weights, which a factor checkpoint does not have: refused up front, in one line
    // (it used to fail in the write plan: "internal plan error: fate given for ...w1.weight")
    await expect(quantize({ model: low, out: join(root, 'low-q'), bits: 6, candidates: [4], method: 'rtn', groupSize: 32 })).rejects.toThrow(
      /is a low-rank \(factor\) checkpoint .*model_type 'moe_lowrank_mixtral'.*--materialize/,
    );
  });

  it('the identity rule on configs: prefixes added once, the recorded stock names restored, a non-factor config untouched', () => {
    const stock = { model_type: 'qwen3_moe', architectures: ['Qwen3MoeForCausalLM'], hidden_size: 8 };
    const section = { format: 'moe-lowrank', version: 1, modules: {} };
    const up = lowRankIdentityUpdates(stock, { ...stock, moe: section });
    expect(up).toEqual({
      model_type: 'moe_lowrank_qwen3_moe',
      architectures: ['MoeLowRankQwen3MoeForCausalLM'],
      moe: { ...section, stock: { model_type: 'qwen3_moe', architectures: ['Qwen3MoeForCausalLM'] } },
    });
    const lowCfg = { ...stock, ...up };
    // a factor input written with factors again: nothing to change
    expect(lowRankIdentityUpdates(lowCfg, lowCfg)).toEqual({});
    // written without factors: the stock names from the input's section
    const { moe: _drop, ...noFactors } = lowCfg;
    expect(lowRankIdentityUpdates(lowCfg, noFactors)).toEqual({ model_type: 'qwen3_moe', architectures: ['Qwen3MoeForCausalLM'] });
    expect(lowRankIdentityUpdates(stock, stock)).toEqual({});
  });
});
