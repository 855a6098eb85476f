/**
 * Serving outputs (issue 16): compressed-tensors and vLLM-shaped GPTQ checked by the independent decoders
 * (decode.ts) and the vLLM-rules checker (vllm-rules.ts), on the trained fixture (hidden 128) and on a tiny
 * checkpoint of every family vLLM serves with fused MoE at hidden 128; outputs that break a rule are caught;
 * what the target cannot run is refused with exit 2.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MoeError } from '../../src/errors.js';
import { evaluate } from '../../src/eval/perplexity.js';
import { loadLinear } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import { dequantizeCheckpoint } from '../../src/quantize/dequantize.js';
import { quantize, type QuantizeRequest } from '../../src/quantize/pipeline.js';
import { setThreads } from '../../src/runtime/pool.js';
import { dequantize, quantizeRtn } from '../../kernels/quant/rtn.js';
import { makeTinyCheckpoint, type Family } from '../helpers/families.js';
import { calib, FIX, model, servingWorkspace } from './workspace.js';
import { ctScheme, decodeCt, decodeGptq, readSafetensors } from './decode.js';
import { checkVllm, checkVllmParts } from './vllm-rules.js';

const heldout = join(FIX, 'text', 'heldout.txt');
const { root: scratch, fresh, run } = servingWorkspace('moe-serving-');

/** Every quantized module of `out`, decoded independently, equals what our reader (loadLinear) gives. */
async function decodersAgree(out: string, kind: 'ct' | 'gptq'): Promise<number> {
  const tensors = readSafetensors(out);
  const qc = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
  const m = await openModel(out);
  let checked = 0;
  try {
    const suffix = kind === 'ct' ? '.weight_packed' : '.qweight';
    for (const name of tensors.keys()) {
      if (!name.endsWith(suffix)) continue;
      const module = name.slice(0, -suffix.length);
      const d = kind === 'ct' ? decodeCt(tensors, module, ctScheme(qc, module)!.weights!) : decodeGptq(tensors, module);
      const got = await loadLinear(m.ckpt, { tensor: `${module}.weight`, outFeatures: d.out, inFeatures: d.in });
      let maxDiff = 0;
      for (let k = 0; k < d.w.length; k++) maxDiff = Math.max(maxDiff, Math.abs(got.w[k]! - d.w[k]!));
      expect(maxDiff, module).toBe(0);
      checked++;
    }
  } finally {
    await m.ckpt.close();
  }
  return checked;
}

describe('compressed-tensors on the trained fixture', () => {
  it('--bits 5.13: one layer at 8 bits, three at 4, every byte counted; the vLLM rules pass; the decoder reads what RTN wrote', async () => {
    const { out, rep } = await run({ bits: 5.13, format: 'compressed-tensors' });
    expect(rep.granularity).toBe('layer');
    expect(rep.serve).toBe('vllm');
    const widths = rep.bitMap.map((l) => [...new Set(l.experts.flat())]);
    expect(widths.filter((w) => w.length === 1 && w[0] === 8)).toHaveLength(1);
    expect(widths.filter((w) => w.length === 1 && w[0] === 4)).toHaveLength(3);
    // w1/w3 [256, 128] and w2 [128, 256] at 4 bits, group 128: packed 4 bits + an F16 scale per 128 + 16 bytes of weight_shape
    const perLinear4 = 256 * 128 * 0.5 + 256 * 2 + 16;
    const perLinear8 = 256 * 128 + 256 * 2 + 16;
    expect(rep.bpw.experts).toBeCloseTo((8 * 24 * (3 * perLinear4 + perLinear8)) / (4 * 24 * 32768), 10);
    expect(checkVllm(out)).toEqual([]);
    expect(await decodersAgree(out, 'ct')).toBe(4 * 8 * 3 + 16);
    // round-to-nearest symmetric is deterministic: the decoded weights are RTN's of the input
    const tensors = readSafetensors(out);
    const qc = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
    const src = await openModel(model);
    try {
      const mod = 'model.layers.2.block_sparse_moe.experts.5.w2';
      const w = ctScheme(qc, mod)!.weights!;
      const lin = await loadLinear(src.ckpt, { tensor: `${mod}.weight`, outFeatures: 128, inFeatures: 256 });
      const want = dequantize(quantizeRtn(lin.w, 128, 256, { bits: w.num_bits as 4, groupSize: 128, sym: true }));
      const got = decodeCt(tensors, mod, w).w;
      expect(Array.from(got)).toEqual(Array.from(want));
      expect(tensors.has(`${mod}.weight_zero_point`)).toBe(false);
      expect(tensors.has('model.layers.0.block_sparse_moe.gate.weight')).toBe(true);
    } finally {
      await src.ckpt.close();
    }
    expect(qc.ignore).toEqual(expect.arrayContaining(['model.layers.0.block_sparse_moe.gate', 'lm_head']));
  }, 120_000);

  it('moe eval of the compressed-tensors output equals its dequantized (F32) checkpoint within 1e-6', async () => {
    const { out } = await run({ bits: 6.13, format: 'compressed-tensors' });
    const deq = join(scratch(), 'ct-deq');
    const d = await dequantizeCheckpoint({ model: out, out: deq, dtype: 'F32' });
    expect(d.modules).toBe(4 * 8 * 3 + 16);
    // two threads: the lm_head ranges run on workers, which open the quantized checkpoint themselves
    await setThreads(2);
    const a = await evaluate({ model: out, data: heldout, seqLen: 128, maxTokens: 4096 });
    const b = await evaluate({ model: deq, data: heldout, seqLen: 128, maxTokens: 4096 });
    expect(Math.abs(a.perplexity / b.perplexity - 1)).toBeLessThan(1e-6);
  }, 180_000);
});

describe('vLLM-shaped GPTQ', () => {
  it('--serve vllm: symmetric, one width per layer, dynamic keys on the fused prefix; the rules pass', async () => {
    const { out, rep } = await run({ bits: 6.2, format: 'gptq', serve: 'vllm' });
    expect(rep.sym).toBe(true);
    const qc = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
    expect(qc.sym).toBe(true);
    const keys = Object.keys(qc.dynamic).filter((k) => k.startsWith('+:'));
    expect(keys).toEqual(['+:^model\\.layers\\.0\\.block_sparse_moe\\.experts(\\.|$)']);
    expect(checkVllm(out)).toEqual([]);
    expect(await decodersAgree(out, 'gptq')).toBe(4 * 8 * 3 + 16);
  }, 120_000);
});

describe('channel-wise scales (--group-size -1)', () => {
  it('compressed-tensors: strategy channel, one F16 scale per output row, every byte counted; the rules and the decoder agree', async () => {
    const { out, rep } = await run({ bits: 4.2, candidates: [4], groupSize: -1, format: 'compressed-tensors' });
    const qc = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
    const w = ctScheme(qc, 'model.layers.1.block_sparse_moe.experts.3.w1')!.weights!;
    expect(w.strategy).toBe('channel');
    const tensors = readSafetensors(out);
    expect(tensors.get('model.layers.1.block_sparse_moe.experts.3.w1.weight_scale')!.shape).toEqual([256, 1]);
    // w1/w3 [256, 128], w2 [128, 256]: packed 4 bits + one F16 scale per row + 16 bytes of weight_shape
    const w13 = 256 * 128 * 0.5 + 256 * 2 + 16;
    const w2 = 256 * 128 * 0.5 + 128 * 2 + 16;
    expect(rep.bpw.experts).toBeCloseTo((8 * (2 * w13 + w2)) / (3 * 32768), 10);
    expect(checkVllm(out)).toEqual([]);
    expect(await decodersAgree(out, 'ct')).toBe(4 * 8 * 3 + 16);
  }, 120_000);

  it('GPTQ: scales [1, out], group_size -1 in quantization_config; the independent decoder reads what we wrote', async () => {
    const { out } = await run({ bits: 4.4, candidates: [4], groupSize: -1, format: 'gptq' });
    const qc = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
    expect(qc.group_size).toBe(-1);
    expect(readSafetensors(out).get('model.layers.0.block_sparse_moe.experts.0.w2.scales')!.shape).toEqual([1, 128]);
    expect(await decodersAgree(out, 'gptq')).toBe(4 * 8 * 3 + 16);
  }, 120_000);

  it('--serve vllm refuses --act-order with channel-wise scales (exit 2): there is no group order to choose', async () => {
    await expect(run({ bits: 4.4, candidates: [4], groupSize: -1, format: 'gptq', serve: 'vllm', actOrder: true, method: 'gptq' })).rejects.toThrow(
      /--act-order needs scale groups/,
    );
  });
});

describe('the vLLM-rules checker fails what vLLM cannot load', () => {
  it('per-expert widths (our default GPTQ output): experts stored at widths vLLM does not load them at', async () => {
    const { out, rep } = await run({ bits: 6, candidates: [4, 8], mixedDown: false });
    expect(new Set(rep.bitMap[0]!.experts.flat()).size + new Set(rep.bitMap[1]!.experts.flat()).size).toBeGreaterThan(2);
    const v = checkVllm(out);
    expect(v.some((x) => /per-expert width/.test(x))).toBe(true);
    expect(v.some((x) => /sym false/.test(x))).toBe(true);
  }, 120_000);

  it('an asymmetric grid, and 3 bits, at layer granularity', async () => {
    const asym = await run({ bits: 4.5, candidates: [4], granularity: 'layer' });
    expect(checkVllm(asym.out)).toEqual(['sym false: fused MoE (Marlin, MoeWNA16) runs symmetric GPTQ']);
    const three = await run({ bits: 3.5, candidates: [3], granularity: 'layer', sym: true });
    const v = checkVllm(three.out);
    expect(v).toHaveLength(4);
    expect(v.every((x) => /3 bits \(fused MoE runs 4, 8\)/.test(x))).toBe(true);
  }, 120_000);

  it('a compressed-tensors config that says asymmetric, or a per-expert target, is reported', async () => {
    const { out } = await run({ bits: 4.2, format: 'compressed-tensors' });
    const cfgPath = join(out, 'config.json');
    const cfg = JSON.parse(await readFile(cfgPath, 'utf8'));
    cfg.quantization_config.config_groups.experts_w4a16.weights.symmetric = false;
    await writeFile(cfgPath, JSON.stringify(cfg));
    expect(checkVllm(out).some((x) => /asymmetric weights/.test(x))).toBe(true);
    // a per-expert allocation written as compressed-tensors: expert 3 of layer 1 stored at 8 bits with its own
    // config group; vLLM looks the layer's scheme up at expert 0 (4 bits) and cannot load expert 3's tensors
    cfg.quantization_config.config_groups.experts_w4a16.weights.symmetric = true;
    const eight = await run({ bits: 8.2, candidates: [8], format: 'compressed-tensors' });
    const t4 = readSafetensors(out);
    for (const [k, t] of readSafetensors(eight.out)) if (k.includes('layers.1.block_sparse_moe.experts.3.')) t4.set(k, t);
    const g0 = cfg.quantization_config.config_groups.experts_w4a16;
    cfg.quantization_config.config_groups = {
      expert3: { ...g0, targets: ['re:^model\\.layers\\.1\\.block_sparse_moe\\.experts\\.3\\.'], weights: { ...g0.weights, num_bits: 8 } },
      ...cfg.quantization_config.config_groups,
    };
    const v = checkVllmParts(cfg, t4);
    expect(v).toHaveLength(3);
    expect(v.every((x) => /experts\.3\.w[123]: weight_packed I32 \[\d+,\d+\] is not 4-bit/.test(x))).toBe(true);
    expect(checkVllmParts(JSON.parse(await readFile(join(eight.out, 'config.json'), 'utf8')), readSafetensors(eight.out))).toEqual([]);
  }, 120_000);
});

describe('compressed-tensors with act order (actorder: group, weight_g_idx)', () => {
  it("GPTQ --act-order writes each column's group as weight_g_idx, counts its bytes; the rules and the decoder agree", async () => {
    const { out, rep } = await run({ bits: 4.3, candidates: [4], format: 'compressed-tensors', method: 'gptq', actOrder: true });
    const qc = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
    for (const g of Object.values(qc.config_groups as Record<string, { weights: { actorder: string } }>)) expect(g.weights.actorder).toBe('group');
    const tensors = readSafetensors(out);
    const gi = tensors.get('model.layers.1.block_sparse_moe.experts.3.w2.weight_g_idx')!;
    expect([gi.dtype, gi.shape]).toEqual(['I32', [256]]);
    // act order: the columns are not in group order (GPTQ visited them by decreasing Hessian diagonal)
    const g = Array.from(new Int32Array(gi.bytes.slice().buffer));
    expect(g.some((x, i) => x !== Math.floor(i / 128))).toBe(true);
    expect(new Set(g)).toEqual(new Set([0, 1]));
    // w1/w3 [256, 128], w2 [128, 256] at 4 bits, group 128, plus I32 weight_g_idx [in]
    const w13 = 256 * 128 * 0.5 + 256 * 2 + 16 + 128 * 4;
    const w2 = 256 * 128 * 0.5 + 128 * 2 * 2 + 16 + 256 * 4;
    expect(rep.bpw.experts).toBeCloseTo((8 * (2 * w13 + w2)) / (3 * 32768), 10);
    expect(checkVllm(out)).toEqual([]);
    expect(await decodersAgree(out, 'ct')).toBe(4 * 8 * 3 + 16);
    // the checker notices a module whose weight_g_idx is missing
    tensors.delete('model.layers.0.self_attn.q_proj.weight_g_idx');
    expect(checkVllmParts(JSON.parse(await readFile(join(out, 'config.json'), 'utf8')), tensors)).toEqual([
      'model.layers.0.self_attn.q_proj: actorder group without weight_g_idx',
    ]);
  }, 180_000);
});

describe('tensor-parallel shape rules (--tensor-parallel N)', () => {
  it("each rank's slice of the expert intermediate (256 on the fixture) must be a multiple of max(64, group): refused, written, and checked alike", async () => {
    const refuse = async (req: Partial<QuantizeRequest>, re: RegExp) => {
      const err = await quantize({ model, out: fresh('r'), method: 'rtn', dryRun: true, bits: 4.4, candidates: [4], ...req }).catch((e) => e);
      expect(err).toBeInstanceOf(MoeError);
      expect(err.exitCode).toBe(2);
      expect(err.message).toMatch(re);
    };
    await refuse(
      { format: 'compressed-tensors', tensorParallel: 4 },
      /layer 0: expert intermediate size per rank 256\/4 = 64 is not a multiple of max\(64, group size\) = 128 \(Marlin MoE\)/,
    );
    await refuse({ format: 'compressed-tensors', tensorParallel: 3 }, /expert intermediate size 256 does not split over --tensor-parallel 3 ranks/);
    await refuse({ format: 'gptq', tensorParallel: 2 }, /--tensor-parallel is a --serve rule/);
    // group 64: 64-column slices run on 4 ranks
    const g64 = await run({ bits: 4.4, candidates: [4], format: 'compressed-tensors', groupSize: 64, tensorParallel: 4, calib: undefined });
    expect(checkVllm(g64.out, { tp: 4 })).toEqual([]);
    const gq = await run({ bits: 4.6, candidates: [4], format: 'gptq', serve: 'vllm', groupSize: 64, tensorParallel: 4, calib: undefined });
    expect(checkVllm(gq.out, { tp: 4 })).toEqual([]);
    // group 128 (written for 1 rank) loads on 2 ranks, not on 4: the checker says so per MoE layer
    const g128 = await run({ bits: 4.2, candidates: [4], format: 'compressed-tensors', calib: undefined });
    expect(checkVllm(g128.out, { tp: 2 })).toEqual([]);
    const v = checkVllm(g128.out, { tp: 4 });
    expect(v).toHaveLength(4);
    expect(v.every((x) => /experts: intermediate per partition 64 \(tp 4\) % 128 != 0 \(Marlin MoE\)/.test(x))).toBe(true);
  }, 120_000);
});

describe('refusals under --serve vllm (exit 2, the achievable range)', () => {
  const refused = async (req: Partial<QuantizeRequest> & { bits: number }, re: RegExp, m = model) => {
    const err = await quantize({ model: m, out: fresh('r'), method: 'rtn', dryRun: true, ...req }).catch((e) => e);
    expect(err).toBeInstanceOf(MoeError);
    expect(err.exitCode).toBe(2);
    expect(err.message).toMatch(re);
  };
  it('budgets and widths it cannot run', async () => {
    await refused({ bits: 2.5, format: 'compressed-tensors', calib }, /--bits 2\.5 is below the smallest .*--candidates 4,8: 4\.1289 bpw \(largest 8\.1289\)/);
    await refused({ bits: 9, serve: 'vllm', calib }, /above the largest .* 8\.3542 bpw/);
    await refused({ bits: 4.5, serve: 'vllm', candidates: [2, 3] }, /--candidates 2,3 has widths .* \(2, 3\); allowed: 4, 8/);
    await refused({ bits: 4.5, format: 'compressed-tensors', denseBits: 3 }, /--dense-bits 3 is not a width it runs; allowed: 4, 8/);
    await refused({ bits: 4.5, serve: 'vllm', granularity: 'expert' }, /--granularity expert cannot load/);
    await refused({ bits: 4.5, serve: 'vllm', override: ['experts\\.0\\.=8'] }, /layer 0: its experts would get different fates/);
  });
  it('shapes the Marlin MoE kernels cannot run', async () => {
    const small = join(scratch(), 'small');
    await makeTinyCheckpoint('mixtral', small, { seed: 2 });
    await refused({ bits: 4.5, candidates: [4], format: 'compressed-tensors' }, /hidden size 32 is not a multiple of 128/, small);
    const narrow = join(scratch(), 'narrow');
    await makeTinyCheckpoint('qwen3_moe', narrow, { seed: 2, hidden: 128, intermediate: 96 });
    await refused({ bits: 4.5, candidates: [4], serve: 'vllm' }, /intermediate size 96 is not a multiple of max\(64, group size\) = 128/, narrow);
  });
});

// every family vLLM serves with fused MoE whose checkpoints store experts per module
const FAMS: Family[] = ['mixtral', 'qwen2_moe', 'qwen3_moe', 'olmoe', 'deepseek_v2', 'deepseek_v3', 'phimoe', 'glm4_moe', 'minimax_m2', 'ernie4_5_moe'];
describe('family fixtures at hidden 128', () => {
  it.each(FAMS)(
    '%s: compressed-tensors and --serve vllm GPTQ pass the vLLM rules and decode independently',
    async (family) => {
      const src = join(scratch(), `fam-${family}`);
      await makeTinyCheckpoint(family, src, { seed: 5, hidden: 128, intermediate: 128 });
      // one width: nothing to score, no calibration
      const ct = await run({ bits: 4.2, candidates: [4], format: 'compressed-tensors', calib: undefined }, src);
      expect(checkVllm(ct.out)).toEqual([]);
      expect(await decodersAgree(ct.out, 'ct')).toBeGreaterThan(0);
      const g = await run({ bits: 4.5, candidates: [4], serve: 'vllm', calib: undefined }, src);
      expect(checkVllm(g.out)).toEqual([]);
      expect(await decodersAgree(g.out, 'gptq')).toBeGreaterThan(0);
    },
    120_000,
  );
  // experts stored fused: compressed-tensors under the per-expert names vLLM's loader for the family reads
  // (granitemoe: block_sparse_moe.experts.e.w1/w3/w2; a transformers-5 fused mixtral: the family's own names);
  // their GPTQ output follows GPTQModel's modules, not a layout vLLM's fused-MoE loader is known to take
  it.each([
    ['granitemoe', {}, 'block_sparse_moe.experts.0.w1'],
    ['mixtral', { fusedExperts: true }, 'block_sparse_moe.experts.0.w1'],
  ] as [Family, { fusedExperts?: boolean }, string][])(
    "%s (experts stored fused): compressed-tensors under vLLM's per-expert names passes the rules, decodes, reads back and dequantizes",
    async (family, opts, first) => {
      const src = join(scratch(), `famf-${family}`);
      await makeTinyCheckpoint(family, src, { seed: 5, hidden: 128, intermediate: 128, ...opts });
      const ct = await run({ bits: 4.2, candidates: [4], format: 'compressed-tensors', calib: undefined }, src);
      const tensors = readSafetensors(ct.out);
      expect(tensors.has(`model.layers.1.${first}.weight_packed`)).toBe(true);
      expect([...tensors.keys()].some((k) => /gate_up_proj|input_linear|output_linear/.test(k))).toBe(false);
      expect(checkVllm(ct.out)).toEqual([]);
      // 3 layers x 4 experts x 3 linears, plus attention
      expect(await decodersAgree(ct.out, 'ct')).toBeGreaterThanOrEqual(3 * 4 * 3);
      // our reader gives every fused expert linear the RTN values of the input's
      const a = await openModel(src);
      const b = await openModel(ct.out);
      try {
        const layer = a.view.layers[1]!;
        const lb = b.view.layers[1]!;
        if (layer.block.kind !== 'moe' || lb.block.kind !== 'moe') throw new Error('not moe');
        for (const p of ['gate', 'up', 'down'] as const) {
          const ref = layer.block.experts[2]![p];
          const w = (await loadLinear(a.ckpt, ref)).w;
          const want = dequantize(quantizeRtn(w, ref.outFeatures, ref.inFeatures, { bits: 4, groupSize: 128, sym: true }));
          const got = (await loadLinear(b.ckpt, lb.block.experts[2]![p])).w;
          expect(Array.from(got), p).toEqual(Array.from(want));
        }
      } finally {
        await a.ckpt.close();
        await b.ckpt.close();
      }
      // moe dequantize gives back what the reader gives (granitemoe: the fused tensors of its own layout)
      const deq = join(scratch(), `famf-${family}-deq`);
      await dequantizeCheckpoint({ model: ct.out, out: deq, dtype: 'F32' });
      if (family === 'granitemoe') expect(readSafetensors(deq).has('model.layers.1.block_sparse_moe.input_linear.weight')).toBe(true);
      const c = await openModel(deq);
      const q = await openModel(ct.out);
      try {
        const lc = c.view.layers[2]!;
        const lq = q.view.layers[2]!;
        if (lc.block.kind !== 'moe' || lq.block.kind !== 'moe') throw new Error('not moe');
        const x = (await loadLinear(c.ckpt, lc.block.experts[3]!.up)).w;
        const y = (await loadLinear(q.ckpt, lq.block.experts[3]!.up)).w;
        expect(Array.from(x)).toEqual(Array.from(y));
      } finally {
        await c.ckpt.close();
        await q.ckpt.close();
      }
    },
    120_000,
  );
  it("gpt_oss (experts stored fused): compressed-tensors is refused with vLLM's reason, nothing written", async () => {
    const src = join(scratch(), 'fam-gpt_oss');
    await makeTinyCheckpoint('gpt_oss', src, { seed: 5, hidden: 128, intermediate: 128 });
    const out = fresh('r');
    const err = await quantize({ model: src, out, method: 'rtn', bits: 4.5, format: 'compressed-tensors' }).catch((e) => e);
    expect(err).toBeInstanceOf(MoeError);
    expect(err.message).toMatch(/vLLM's gpt_oss loader .* reads routed experts only as MXFP4 blocks or as unquantized fused/);
    expect(existsSync(out)).toBe(false);
  }, 120_000);
});
