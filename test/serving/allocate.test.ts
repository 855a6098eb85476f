/**
 * `--allocate attention|shared|dense` (issue 16): a layer's attention, shared expert and dense MLP as allocation units
 * of their own under the one --bits budget, with the format's stored bytes counted. Checked on the trained fixture
 * (the program's choice against a brute force over every assignment, the bytes against the written tensors) and on
 * a deepseek_v3 fixture at hidden 128 (dense layer 0, shared experts, MLA attention), in compressed-tensors, by the
 * vLLM-rules checker and the independent decoder.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MoeError } from '../../src/errors.js';
import { loadLinear } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import { quantize } from '../../src/quantize/pipeline.js';
import { seededRandom } from '../../kernels/random.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { calib, model, servingWorkspace } from './workspace.js';
import { ctScheme, decodeCt, readSafetensors, type RawTensor } from './decode.js';
import { checkVllm } from './vllm-rules.js';

const { root: scratch, run } = servingWorkspace('moe-allocate-');

/** Bytes of every stored tensor of `modules` in the output (weight_packed, weight_scale, weight_shape, ...). */
function storedBytes(tensors: Map<string, RawTensor>, modules: (m: string) => boolean): number {
  let b = 0;
  for (const [name, t] of tensors) if (modules(name.slice(0, name.lastIndexOf('.')))) b += t.bytes.byteLength;
  return b;
}

/** Every packed module decodes independently to what our reader gives. */
async function decodeAll(out: string): Promise<number> {
  const tensors = readSafetensors(out);
  const qc = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
  const m = await openModel(out);
  let k = 0;
  try {
    for (const name of tensors.keys()) {
      if (!name.endsWith('.weight_packed')) continue;
      const module = name.slice(0, -'.weight_packed'.length);
      const d = decodeCt(tensors, module, ctScheme(qc, module)!.weights!);
      const got = await loadLinear(m.ckpt, { tensor: `${module}.weight`, outFeatures: d.out, inFeatures: d.in });
      expect(Array.from(got.w), module).toEqual(Array.from(d.w));
      k++;
    }
  } finally {
    await m.ckpt.close();
  }
  return k;
}

describe('--allocate attention on the trained fixture (compressed-tensors)', () => {
  it("the program chooses each layer's attention width with the experts' under one budget; its choice is the brute-force optimum and the bytes are the written ones", async () => {
    const bits = 5.3;
    const { out, rep } = await run({ bits, format: 'compressed-tensors', allocate: ['attention'] });
    expect(rep.allocate).toEqual(['attention']);
    const ids = rep.units.map((u) => u.id);
    expect(ids.filter((i) => i.endsWith('.attention'))).toEqual(['L0.attention', 'L1.attention', 'L2.attention', 'L3.attention']);
    // --serve vllm (implied): the target table's widths for every unit
    for (const u of rep.units) expect(Object.keys(u.losses).sort()).toEqual(['4', '8']);
    // costs from the shapes, independently of the pipeline: q/o [128, 128], k/v [64, 128]; w1/w3 [256, 128], w2
    // [128, 256] (each 8 per layer); packed codes + F16 scale per 128 columns + 16 bytes of weight_shape
    const ct = (out: number, inF: number, b: number) => (out * inF * b) / 8 + out * Math.ceil(inF / 128) * 2 + 16;
    const cost = (id: string, b: number) =>
      8 * (id.endsWith('.attention') ? 2 * ct(128, 128, b) + 2 * ct(64, 128, b) : 8 * (2 * ct(256, 128, b) + ct(128, 256, b)));
    const params = 4 * 24 * 32768 + 4 * (2 * 16384 + 2 * 8192);
    // brute force over all 2^8 assignments: the least total loss within the budget
    let best = { loss: Infinity, pick: [] as string[] };
    for (let mask = 0; mask < 1 << ids.length; mask++) {
      const pick = ids.map((_, i) => ((mask >> i) & 1 ? '8' : '4'));
      const c = pick.reduce((a, b, i) => a + cost(ids[i]!, Number(b)), 0);
      if (c > bits * params) continue;
      const loss = pick.reduce((a, b, i) => a + rep.units[i]!.losses[b]!, 0);
      if (loss < best.loss) best = { loss, pick };
    }
    expect(rep.units.map((u) => u.bits)).toEqual(best.pick);
    // the budget's choice spends on attention too: some attention layer at 8 bits and some expert layer at 4
    expect(rep.units.some((u) => u.id.endsWith('.attention') && u.bits === '8')).toBe(true);
    expect(rep.units.some((u) => !u.id.endsWith('.attention') && u.bits === '4')).toBe(true);
    const chosen = rep.units.reduce((a, u) => a + cost(u.id, Number(u.bits)), 0);
    expect(rep.bpw.budgeted).toBeCloseTo(chosen / params, 12);
    expect(rep.bpw.budgeted!).toBeLessThanOrEqual(bits);
    // ... and equals the bytes written for those modules
    const tensors = readSafetensors(out);
    const written = storedBytes(tensors, (m) => /\.(self_attn\.[qkvo]_proj|experts\.\d+\.w[123])$/.test(m));
    expect((8 * written) / params).toBeCloseTo(rep.bpw.budgeted!, 12);
    // attention in config groups of its own, at the widths chosen
    const qc = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
    for (const u of rep.units.filter((x) => x.id.endsWith('.attention'))) {
      const L = u.id.slice(1, u.id.indexOf('.'));
      for (const p of ['q', 'k', 'v', 'o']) {
        const s = ctScheme(qc, `model.layers.${L}.self_attn.${p}_proj`)!;
        expect(s.weights!.num_bits, `${L} ${p}`).toBe(Number(u.bits));
      }
    }
    for (const [name, g] of Object.entries(qc.config_groups as Record<string, { targets: string[] }>)) {
      expect(name).toMatch(/^(experts|attention)_w[48]a16$/);
      if (name.startsWith('attention')) expect(g.targets.every((t) => t.includes('self_attn'))).toBe(true);
    }
    expect(checkVllm(out)).toEqual([]);
    expect(await decodeAll(out)).toBe(4 * 8 * 3 + 16);
  }, 180_000);

  it('the command line takes --allocate once per class and prints what the budget measured', async () => {
    const r = await runMoe([
      'quantize',
      '--model',
      model,
      '--bits',
      '4.2',
      '--candidates',
      '4',
      '--format',
      'compressed-tensors',
      '--method',
      'rtn',
      '--allocate',
      'attention',
      '--allocate',
      'dense',
      '--dry-run',
    ]);
    expect(r.code, r.stderr).toBe(0);
    // all at 4 bits: experts 4.1289, attention [128|64, 128] 4.1328 / 4.1406 -> 4.1293 together
    expect(r.stdout).toMatch(/true bpw: routed experts 4\.1289, routed experts \+ attention \+ dense 4\.1293 \(target 4\.2\)/);
    expect(r.stdout).toMatch(/self_attn\.q_proj.*own allocation unit \(--allocate attention\)/);
    const bad = await runMoe(['quantize', '--model', model, '--bits', '4.2', '--allocate', 'experts', '--dry-run']);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('a budget below the cheapest assignment names the classes it measures', async () => {
    const err = await quantize({ model, dryRun: true, method: 'rtn', calib, bits: 4, format: 'compressed-tensors', allocate: ['attention'] }).catch((e) => e);
    expect(err).toBeInstanceOf(MoeError);
    expect(err.message).toMatch(/below the smallest true size of the routed experts and the attention linears .*: 4\.1293 bpw/);
  });

  it('the rules checker reports q/k/v of one layer at different widths (vLLM fuses them into qkv_proj)', async () => {
    const { out } = await run({ bits: 4.2, candidates: [4], format: 'compressed-tensors', calib: undefined });
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    const groups = cfg.quantization_config.config_groups;
    const a4 = groups.attention_w4a16;
    groups.attention_w4a16 = { ...a4, targets: a4.targets.filter((t: string) => !t.includes('k_proj')) };
    groups.attention_k = { ...a4, targets: ['re:^model\\.layers\\.\\d+\\.self_attn\\.k_proj$'], weights: { ...a4.weights, group_size: 64 } };
    await writeFile(join(out, 'config.json'), JSON.stringify(cfg));
    const v = checkVllm(out);
    expect(v).toHaveLength(4);
    expect(v.every((x) => /self_attn\.qkv_proj: its shards \(q_proj, k_proj, v_proj\) have different schemes/.test(x))).toBe(true);
  }, 120_000);
});

describe('--allocate attention, shared, dense on deepseek_v3 at hidden 128', () => {
  it('dense layer 0, the shared experts and the MLA attention are units, each scored; vLLM rules and decoder pass', async () => {
    const src = join(scratch(), 'dsv3');
    await makeTinyCheckpoint('deepseek_v3', src, { seed: 5, hidden: 128, intermediate: 128 });
    const ids = join(scratch(), 'ids.jsonl');
    const r = seededRandom(7);
    await writeFile(ids, Array.from({ length: 8 }, () => JSON.stringify(Array.from({ length: 64 }, () => Math.floor(r() * 64)))).join('\n'));
    const bits = 6;
    const { out, rep } = await run(
      { bits, format: 'compressed-tensors', allocate: ['attention', 'shared', 'dense'], calib: undefined, calibIds: ids, seqLen: 64, calibTokens: 512 },
      src,
    );
    const unitIds = rep.units.map((u) => u.id);
    expect(unitIds).toEqual(expect.arrayContaining(['L0.attention', 'L0.dense', 'L1.attention', 'L1.shared', 'L1', 'L2.attention', 'L2.shared', 'L2']));
    expect(unitIds).toHaveLength(8);
    // every unit was scored: the 4-bit option loses more than the 8-bit one. The MLA attention units have only 8:
    // kv_a_proj_with_mqa's rows (kv_lora_rank + rope dim) do not fill whole 32-bit words at 4 bits (GPTQ's packing
    // rule, which the allocation applies to every format)
    for (const u of rep.units) {
      expect(Object.keys(u.losses).sort(), u.id).toEqual(u.id.endsWith('.attention') ? ['8'] : ['4', '8']);
      if (u.losses['4'] !== undefined) expect(u.losses['4'], u.id).toBeGreaterThan(u.losses['8']!);
    }
    const fate = (t: string) => rep.decisions.find((d) => d.tensor === t)!;
    // MLA's latent-input linears too: the unit is scored by rerunning the whole attention
    expect(fate('model.layers.1.self_attn.kv_b_proj.weight').reason).toMatch(/own allocation unit/);
    expect(fate('model.layers.1.self_attn.q_a_proj.weight').reason).toMatch(/own allocation unit/);
    expect(rep.bpw.budgeted!).toBeLessThanOrEqual(bits);
    // the budgeted bytes are the written ones: every quantized linear (routers and the MLA norms are not)
    const tensors = readSafetensors(out);
    const m = await openModel(src);
    let params = 0;
    try {
      for (const name of m.ckpt.tensorNames) {
        const sh = m.ckpt.shape(name);
        if (sh.length === 2 && /_proj(_with_mqa)?\.weight$/.test(name)) params += sh[0]! * sh[1]!;
      }
    } finally {
      await m.ckpt.close();
    }
    const written = storedBytes(tensors, (mod) => /_proj(_with_mqa)?$/.test(mod) && tensors.has(`${mod}.weight_packed`));
    expect((8 * written) / params).toBeCloseTo(rep.bpw.budgeted!, 12);
    const qc = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
    const kinds = new Set(Object.keys(qc.config_groups).map((g) => g.split('_')[0]));
    expect([...kinds].sort()).toEqual(['attention', 'dense', 'experts', 'shared']);
    expect(checkVllm(out)).toEqual([]);
    expect(await decodeAll(out)).toBeGreaterThan(0);
  }, 180_000);

  it('--allocate with --format gguf is refused (exit 2)', async () => {
    const err = await quantize({ model, dryRun: true, method: 'rtn', bits: 4, format: 'gguf', allocate: ['attention'] }).catch((e) => e);
    expect(err).toBeInstanceOf(MoeError);
    expect(err.exitCode).toBe(2);
    expect(err.message).toMatch(/--allocate is not available with --format gguf/);
  });
});
