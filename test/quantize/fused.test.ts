/**
 * quantize -> dequantize of experts stored fused in 3-D tensors: gpt_oss (interleaved gate/up, expert biases, bf16
 * or MXFP4) and granitemoe (halves, no biases) written as GPTQModel's per-expert modules, and the transformers-5
 * fused layout of a per-expert family (mixtral) written as its per-expert GPTQ modules. Checked against a direct
 * per-expert computation, byte for byte.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evaluate } from '../../src/eval/perplexity.js';
import { Checkpoint } from '../../src/io/checkpoint.js';
import { fromF32 } from '../../src/io/dtype.js';
import { CheckpointWriter, type TensorSpec } from '../../src/io/writer.js';
import { loadLinear, loadSwiGLU } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { initBackend } from '../../src/runtime/backend.js';
import { streamModel } from '../../src/runtime/stream.js';
import { dequantizeCheckpoint } from '../../src/quantize/dequantize.js';
import { quantizeMlp, type QuantSettings } from '../../src/quantize/expert.js';
import { bitsForModule, GPTQ_SUFFIXES, gptqTensorBytes, readGptq } from '../../src/quantize/format.js';
import { stackQuantized, stackRows } from '../../src/quantize/fused.js';
import { quantize, type QuantizeRequest } from '../../src/quantize/pipeline.js';
import { gptqQuantize, prepareGptq, accumulateHessian } from '../../kernels/quant/gptq.js';
import { dequantize, quantizeRtn } from '../../kernels/quant/rtn.js';
import type { QuantBits } from '../../kernels/quant/types.js';
import { seededRandom } from '../../kernels/random.js';
import { wordLines, writeWordTokenizer } from '../eval/tokenizer.js';
import { makeTinyCheckpoint, type Family } from '../helpers/families.js';
import { writeFile } from 'node:fs/promises';

let root: string;
let calib: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-quantize-fused-'));
  calib = join(root, 'calib.txt');
  await writeFile(calib, wordLines(60, seededRandom(5)).join('\n') + '\n');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function tiny(name: string, family: Family, opts: Parameters<typeof makeTinyCheckpoint>[2] = {}): Promise<string> {
  const dir = join(root, name);
  await makeTinyCheckpoint(family, dir, { experts: 4, intermediate: 32, seed: 7, ...opts });
  await writeWordTokenizer(dir);
  return dir;
}

const request = (model: string, out: string, extra: Partial<QuantizeRequest> = {}): QuantizeRequest => ({
  model,
  out,
  bits: 3.5,
  calib,
  calibTokens: 512,
  seqLen: 32,
  groupSize: 32,
  minTokens: 4,
  sequential: false,
  ...extra,
});

const randn = (n: number, r: () => number) => Float32Array.from({ length: n }, () => r() * 2 - 1);

describe('packed modules', () => {
  it('GPTQ of a fused [2I, H] module equals GPTQ of its gate and up rows with the same Hessian, rows interleaved or stacked', () => {
    const r = seededRandom(3);
    const I = 16;
    const H = 64;
    const gate = randn(I * H, r);
    const up = randn(I * H, r);
    const x = randn(40 * H, r);
    const hess = new Float64Array(H * H);
    accumulateHessian(hess, x, 40, H);
    for (const actOrder of [false, true]) {
      const prep = prepareGptq(hess, H, { damp: 0.01, actOrder });
      for (const split of ['interleaved', 'halves'] as const) {
        const spec = { bits: 3 as QuantBits, groupSize: 32, sym: false };
        const fused = gptqQuantize(stackRows([gate, up], I, H, split), 2 * I, H, prep, spec).quant;
        const parts = stackQuantized([gptqQuantize(gate, I, H, prep, spec).quant, gptqQuantize(up, I, H, prep, spec).quant], split);
        // identical codes, scales and zero points: rows are independent given the Hessian
        expect(Array.from(parts.q)).toEqual(Array.from(fused.q));
        expect(Array.from(parts.scales)).toEqual(Array.from(fused.scales));
        expect(Array.from(parts.zeros)).toEqual(Array.from(fused.zeros));
        expect(Array.from(parts.gIdx)).toEqual(Array.from(fused.gIdx));
      }
    }
    // round-to-nearest is exactly row-separable
    const spec = { bits: 4 as QuantBits, groupSize: 32, sym: false };
    const a = quantizeRtn(stackRows([gate, up], I, H, 'interleaved'), 2 * I, H, spec);
    const b = stackQuantized([quantizeRtn(gate, I, H, spec), quantizeRtn(up, I, H, spec)], 'interleaved');
    expect(Array.from(gptqTensorBytes(a)[0]!)).toEqual(Array.from(gptqTensorBytes(b)[0]!));
    expect(Array.from(gptqTensorBytes(a)[1]!)).toEqual(Array.from(gptqTensorBytes(b)[1]!));
    expect(Array.from(gptqTensorBytes(a)[2]!)).toEqual(Array.from(gptqTensorBytes(b)[2]!));
  });
});

/** The GPTQ modules GPTQModel uses for a fused family's expert e of a layer. */
function modulesOf(family: 'gpt_oss' | 'granitemoe', l: number, e: number): { gateUp: string; down: string } {
  const p = `model.layers.${l}.`;
  return family === 'gpt_oss'
    ? { gateUp: `${p}mlp.experts.gate_up.${e}`, down: `${p}mlp.experts.down.${e}` }
    : { gateUp: `${p}block_sparse_moe.input_linear.${e}.linear`, down: `${p}block_sparse_moe.output_linear.${e}.linear` };
}

/**
 * The direct computation: stream the input model, take each expert's routed tokens (full-precision activations:
 * the run is not sequential), GPTQ-quantize its gate/up/down at the widths the run chose, and pack gate/up into
 * one module in the family's row order.
 */
async function directGptq(
  model: string,
  bitMap: { layer: number; experts: (number | string)[][] }[],
  settings: QuantSettings,
  split: 'interleaved' | 'halves',
) {
  const m = await openModel(model);
  const set = await (await import('../../src/data/windows.js')).loadWindowSet(model, calib, { seqLen: 32, maxTokens: 512 });
  const out = new Map<string, Uint8Array[]>();
  try {
    await streamModel(m, set.windows, {
      onMoeLayer(inp) {
        const li = inp.layer.index;
        const H = inp.hidden;
        const bits = bitMap.find((b) => b.layer === li)!.experts;
        inp.experts.forEach((w: SwiGLUWeights, e: number) => {
          const rows: number[] = [];
          for (let s = 0; s < inp.routing.T * inp.routing.k; s++)
            if (inp.routing.idx[s] === e && inp.routing.w[s] !== 0) rows.push(Math.floor(s / inp.routing.k));
          const x = new Float32Array(rows.length * H);
          rows.forEach((t, i) => x.set(inp.x.subarray(t * H, (t + 1) * H), i * H));
          const [g, u, d] = bits[e] as number[];
          const q = quantizeMlp(w, x, rows.length, { gate: g as QuantBits, up: u as QuantBits, down: d as QuantBits }, settings, m.view.forward.activation);
          out.set(`${li}.${e}.gate_up`, gptqTensorBytes(stackQuantized([q.quant.gate!, q.quant.up!], split)));
          out.set(`${li}.${e}.down`, gptqTensorBytes(q.quant.down!));
        });
      },
    });
  } finally {
    await m.ckpt.close();
  }
  return out;
}

describe('quantize -> dequantize of fused experts', () => {
  for (const [family, opts, split] of [
    ['gpt_oss', {}, 'interleaved'],
    ['gpt_oss', { mxfp4: true }, 'interleaved'],
    ['granitemoe', {}, 'halves'],
  ] as const) {
    const label = `${family}${'mxfp4' in opts ? ' (MXFP4)' : ''}`;
    it(`${label}: GPTQModel's per-expert modules, equal to a direct per-expert GPTQ; dequantize restores the fused tensors`, async () => {
      const src = await tiny(`${label}-in`.replace(/\W/g, '_'), family, opts);
      const out = join(root, `${label}-q`.replace(/\W/g, '_'));
      const rep = await quantize(request(src, out));
      expect(rep.fusedExperts?.written).toMatch(family === 'gpt_oss' ? /mlp\.experts\.gate_up\.0/ : /input_linear\.0\.linear/);
      expect(rep.fusedExperts?.read).toMatch('mxfp4' in opts ? /^MXFP4/ : /^fused 3-D F32/);
      const settings: QuantSettings = { method: 'gptq', groupSize: 32, sym: false, damp: 0.01, actOrder: false, minTokens: 4 };
      const direct = await directGptq(src, rep.bitMap, settings, split);
      const q = await Checkpoint.open(out);
      const input = await openModel(src);
      try {
        // no fused expert tensor left, router untouched and excluded from quantization
        expect(q.tensorNames.filter((n) => /gate_up_proj|down_proj|input_linear\.weight|output_linear\.weight/.test(n))).toEqual([]);
        const qc = q.config.quantization_config as Record<string, unknown>;
        expect(qc.quant_method).toBe('gptq');
        let bits = 0;
        let params = 0;
        for (const layer of input.view.layers) {
          if (layer.block.kind !== 'moe') continue;
          const l = layer.index;
          expect(bitsForModule(qc, layer.block.router.weight.replace(/\.weight$/, ''))).toBeUndefined();
          expect(Array.from(await q.readBytes(layer.block.router.weight))).toEqual(Array.from(await input.ckpt.readBytes(layer.block.router.weight)));
          for (let e = 0; e < 4; e++) {
            const mods = modulesOf(family, l, e);
            for (const [key, m] of [
              ['gate_up', mods.gateUp],
              ['down', mods.down],
            ] as const) {
              const want = direct.get(`${l}.${e}.${key}`)!;
              for (const [k, s] of GPTQ_SUFFIXES.entries()) {
                expect(Array.from(await q.readBytes(`${m}.${s}`)), `${m}.${s}`).toEqual(Array.from(want[k]!));
                bits += 8 * q.info(`${m}.${s}`).end - 8 * q.info(`${m}.${s}`).begin;
              }
              // biases stay unquantized, as stored (gpt_oss); granitemoe has none
              const refs = layer.block.experts[e]!;
              const ref = key === 'down' ? refs.down : refs.gate;
              expect(q.has(`${m}.bias`)).toBe(!!ref.bias);
              if (ref.bias) {
                const rows = key === 'down' ? ref.outFeatures : 2 * ref.outFeatures;
                expect(Array.from(await q.readBytes(`${m}.bias`))).toEqual(Array.from(await input.ckpt.readBytes(ref.bias, e * rows, (e + 1) * rows)));
              }
              params += key === 'down' ? ref.outFeatures * ref.inFeatures : 2 * ref.outFeatures * ref.inFeatures;
            }
          }
        }
        // true bits per weight: every byte of the routed experts' GPTQ tensors
        expect(rep.bpw.experts).toBeCloseTo(bits / params, 9);
        expect(rep.bpw.experts).toBeLessThanOrEqual(3.5 + 1e-9);
      } finally {
        await q.close();
        await input.ckpt.close();
      }

      // our runtime reads the GPTQ output (every linear through the fused-GPTQ format) and its dequantized form
      const qm = await openModel(out);
      try {
        const layer = qm.view.layers[0]!;
        if (layer.block.kind !== 'moe') throw new Error('not MoE');
        const w = await loadSwiGLU(qm.ckpt, layer.block.experts[1]!);
        const mods = modulesOf(family, 0, 1);
        const gu = dequantize(await readGptq(qm.ckpt, mods.gateUp, 2 * w.gate.out, w.gate.in));
        expect(Array.from(stackRows([w.gate.w, w.up.w], w.gate.out, w.gate.in, split))).toEqual(Array.from(gu));
        expect(!!w.gate.b).toBe(family === 'gpt_oss');
      } finally {
        await qm.ckpt.close();
      }
      const deq = join(root, `${label}-dq`.replace(/\W/g, '_'));
      await dequantizeCheckpoint({ model: out, out: deq, dtype: 'BF16' });
      const d = await Checkpoint.open(deq);
      const inCk = await Checkpoint.open(src);
      try {
        expect(d.config.quantization_config).toBeUndefined();
        // the family's fused bf16 layout (gpt_oss in-major [E, H, 2I]), whatever the input's storage was
        const gu = family === 'gpt_oss' ? 'model.layers.0.mlp.experts.gate_up_proj' : 'model.layers.0.block_sparse_moe.input_linear.weight';
        expect(d.shape(gu)).toEqual(family === 'gpt_oss' ? [4, 32, 64] : [4, 64, 32]);
        expect(d.dtype(gu)).toBe('BF16');
        expect(d.tensorNames.some((n) => n.includes('qweight'))).toBe(false);
        if (family === 'gpt_oss') {
          const b = 'model.layers.0.mlp.experts.gate_up_proj_bias';
          expect(Array.from(await d.readBytes(b))).toEqual(Array.from(await inCk.readBytes(b)));
        }
      } finally {
        await d.close();
        await inCk.close();
      }
      // the dequantized checkpoint holds exactly the GPTQ weights rounded to bf16, every expert and projection
      const qm2 = await openModel(out);
      const dm = await openModel(deq);
      try {
        for (const li of qm2.view.moeLayers) {
          const qb = qm2.view.layers[li]!.block;
          const db = dm.view.layers[li]!.block;
          if (qb.kind !== 'moe' || db.kind !== 'moe') throw new Error('not MoE');
          for (let e = 0; e < 4; e++) {
            const wq = await loadSwiGLU(qm2.ckpt, qb.experts[e]!);
            const wd = await loadSwiGLU(dm.ckpt, db.experts[e]!);
            for (const p of ['gate', 'up', 'down'] as const) {
              expect(Buffer.from(fromF32(wd[p].w, 'BF16')).equals(Buffer.from(fromF32(wq[p].w, 'BF16'))), `L${li} e${e} ${p}`).toBe(true);
              expect(Array.from(wd[p].b ?? [])).toEqual(Array.from(wq[p].b ?? []));
            }
          }
        }
      } finally {
        await qm2.ckpt.close();
        await dm.ckpt.close();
      }
      // both run in our runtime; they differ only by that bf16 rounding
      const eq = await evaluate({ model: out, data: calib, seqLen: 32, maxTokens: 256 });
      const ed = await evaluate({ model: deq, data: calib, seqLen: 32, maxTokens: 256 });
      expect(Number.isFinite(eq.perplexity)).toBe(true);
      expect(Math.abs(ed.perplexity / eq.perplexity - 1)).toBeLessThan(1e-2);
    });
  }

  it('--ignore on one expert module: written dense as <module>.weight (+ bias) among the GPTQ modules, read back exactly', async () => {
    const src = await tiny('gptoss-ignore', 'gpt_oss');
    const out = join(root, 'gptoss-ignore-q');
    await quantize(request(src, out, { method: 'rtn', candidates: [4], bits: 12, calib: undefined, ignore: ['experts\\.gate_up\\.2$'] }));
    const q = await openModel(out);
    const input = await openModel(src);
    try {
      const m = 'model.layers.1.mlp.experts.gate_up.2';
      expect(q.ckpt.has(`${m}.weight`)).toBe(true);
      expect(q.ckpt.has(`${m}.qweight`)).toBe(false);
      expect(q.ckpt.has(`${m}.bias`)).toBe(true);
      expect(q.ckpt.has('model.layers.1.mlp.experts.gate_up.1.qweight')).toBe(true);
      const qc = q.ckpt.config.quantization_config as Record<string, unknown>;
      expect(bitsForModule(qc, m)).toBeUndefined();
      const l = 1;
      const qb = q.view.layers[l]!.block;
      const ib = input.view.layers[l]!.block;
      if (qb.kind !== 'moe' || ib.kind !== 'moe') throw new Error('not MoE');
      for (const p of ['gate', 'up'] as const) {
        const got = await loadLinear(q.ckpt, qb.experts[2]![p]);
        const want = await loadLinear(input.ckpt, ib.experts[2]![p]);
        expect(Array.from(got.w)).toEqual(Array.from(want.w));
        expect(Array.from(got.b!)).toEqual(Array.from(want.b!));
      }
    } finally {
      await q.ckpt.close();
      await input.ckpt.close();
    }
  });

  it('projection granularity: gate and up of a packed module are one unit with one width', async () => {
    const src = await tiny('gptoss-layer', 'gpt_oss');
    const rep = await quantize(request(src, join(root, 'gptoss-layer-q'), { granularity: 'projection', bits: 3.5 }));
    expect(rep.units.map((u) => u.id).filter((id) => id.startsWith('L0.'))).toEqual(['L0.gate_up', 'L0.down']);
    for (const l of rep.bitMap) for (const e of l.experts) expect(e[0]).toBe(e[1]);
  });
});

describe('transformers-5 fused layout with a router correction bias', () => {
  it("minimax_m2: the bias goes back to block_sparse_moe.e_score_correction_bias with the router; the output equals the per-expert input's and dequantizes", async () => {
    const per = await tiny('minimax-per', 'minimax_m2');
    const fused = join(root, 'minimax-v5');
    await toFusedV5(per, fused);
    const fm = await openModel(fused);
    try {
      expect(fm.view.expertLayout).toBe('fused');
      const l0 = fm.view.layers[0]!.block;
      if (l0.kind !== 'moe') throw new Error('not MoE');
      expect(l0.router.correctionBias).toBe('model.layers.0.mlp.e_score_correction_bias');
    } finally {
      await fm.ckpt.close();
    }
    const a = join(root, 'minimax-per-q');
    const b = join(root, 'minimax-v5-q');
    await quantize(request(per, a, { sequential: true, bits: 4 }));
    await quantize(request(fused, b, { sequential: true, bits: 4 }));
    const ca = await Checkpoint.open(a);
    const cb = await Checkpoint.open(b);
    try {
      expect([...cb.tensorNames].sort()).toEqual([...ca.tensorNames].sort());
      expect(cb.tensorNames).toContain('model.layers.0.block_sparse_moe.e_score_correction_bias');
      expect(cb.tensorNames).not.toContain('model.layers.0.mlp.e_score_correction_bias');
      for (const n of ca.tensorNames) expect(Array.from(await cb.readBytes(n)), n).toEqual(Array.from(await ca.readBytes(n)));
    } finally {
      await ca.close();
      await cb.close();
    }
    // before the rename, dequantize refused this output ("checkpoint is missing tensor ...e_score_correction_bias");
    // now it writes the input's fused layout back, the bias at mlp.e_score_correction_bias again
    await expectFusedRoundTrip(fused, b, a, join(root, 'minimax-v5-dq'), join(root, 'minimax-per-dq'));
  });
});

/** A per-expert tiny Mixtral (or MiniMax-M2) rewritten in the transformers-5 fused layout (router at mlp.gate,
 *  MiniMax-M2's correction bias at mlp.e_score_correction_bias, gate first). */
async function toFusedV5(src: string, dst: string): Promise<void> {
  const ck = await Checkpoint.open(src);
  const tensors: { spec: TensorSpec; bytes: Uint8Array }[] = [];
  try {
    const E = ck.config.num_local_experts as number;
    for (const n of ck.tensorNames) {
      const m = /^model\.layers\.(\d+)\.block_sparse_moe\.(.*)$/.exec(n);
      if (!m) {
        tensors.push({ spec: { name: n, dtype: ck.dtype(n), shape: ck.shape(n) }, bytes: await ck.readBytes(n) });
        continue;
      }
      const p = `model.layers.${m[1]}.`;
      if (m[2] === 'e_score_correction_bias')
        tensors.push({ spec: { name: `${p}mlp.e_score_correction_bias`, dtype: ck.dtype(n), shape: ck.shape(n) }, bytes: await ck.readBytes(n) });
      if (m[2] === 'gate.weight') tensors.push({ spec: { name: `${p}mlp.gate.weight`, dtype: 'F32', shape: ck.shape(n) }, bytes: await ck.readBytes(n) });
      if (m[2] !== 'experts.0.w1.weight') continue;
      const [I, H] = ck.shape(n) as [number, number];
      const gu = new Float32Array(E * 2 * I * H);
      const down = new Float32Array(E * H * I);
      for (let e = 0; e < E; e++) {
        gu.set(await ck.readF32(`${p}block_sparse_moe.experts.${e}.w1.weight`), e * 2 * I * H);
        gu.set(await ck.readF32(`${p}block_sparse_moe.experts.${e}.w3.weight`), e * 2 * I * H + I * H);
        down.set(await ck.readF32(`${p}block_sparse_moe.experts.${e}.w2.weight`), e * H * I);
      }
      tensors.push({ spec: { name: `${p}mlp.experts.gate_up_proj`, dtype: 'F32', shape: [E, 2 * I, H] }, bytes: fromF32(gu, 'F32') });
      tensors.push({ spec: { name: `${p}mlp.experts.down_proj`, dtype: 'F32', shape: [E, H, I] }, bytes: fromF32(down, 'F32') });
    }
    const { mkdir, copyFile } = await import('node:fs/promises');
    await mkdir(dst, { recursive: true });
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) await copyFile(join(src, f), join(dst, f));
    const w = await CheckpointWriter.create(
      dst,
      tensors.map((t) => t.spec),
    );
    for (const t of tensors) await w.write(t.spec.name, t.bytes);
    await w.finalize();
  } finally {
    await ck.close();
  }
}

describe('transformers-5 fused layout of a per-expert family', () => {
  it('mixtral: the fused input gives the same per-expert GPTQ tensors as the per-expert input (router back at block_sparse_moe.gate), and dequantize writes the fused layout back', async () => {
    const per = await tiny('mixtral-per', 'mixtral');
    const fused = join(root, 'mixtral-v5');
    await toFusedV5(per, fused);
    const fm = await openModel(fused);
    expect(fm.view.expertLayout).toBe('fused');
    await fm.ckpt.close();
    const a = join(root, 'mixtral-per-q');
    const b = join(root, 'mixtral-v5-q');
    const ra = await quantize(request(per, a, { sequential: true, bits: 4 }));
    const rb = await quantize(request(fused, b, { sequential: true, bits: 4 }));
    expect(rb.bitMap).toEqual(ra.bitMap);
    const ca = await Checkpoint.open(a);
    const cb = await Checkpoint.open(b);
    try {
      expect([...cb.tensorNames].sort()).toEqual([...ca.tensorNames].sort());
      for (const n of ca.tensorNames) expect(Array.from(await cb.readBytes(n)), n).toEqual(Array.from(await ca.readBytes(n)));
      // the same quantization_config, plus the record of the input's layout (only on the fused input's output)
      const { moe_source_expert_layout, ...rest } = cb.config.quantization_config as Record<string, unknown>;
      expect(moe_source_expert_layout).toBe('transformers5-fused');
      expect(rest).toEqual(ca.config.quantization_config);
      expect((ca.config.quantization_config as Record<string, unknown>).moe_source_expert_layout).toBeUndefined();
    } finally {
      await ca.close();
      await cb.close();
    }
    const ev = JSON.parse(await readFile(join(b, 'moe-quantize-report.json'), 'utf8'));
    expect(ev.fusedExperts.written).toMatch(/per-expert GPTQ modules \(block_sparse_moe\.experts\.0\.w1.*writes them back fused/);
    await expectFusedRoundTrip(fused, b, a, join(root, 'mixtral-v5-dq'), join(root, 'mixtral-per-dq'));
  });
});

/**
 * dequantize of the fused input's GPTQ output (q) writes the input's own layout: the same tensor names and shapes
 * as `input` (F32 here), the fused tensors equal to the per-expert output's (qPer) dequantized experts stacked gate
 * first, so within the quantization error of the input; no quantization_config left.
 */
async function expectFusedRoundTrip(input: string, q: string, qPer: string, out: string, outPer: string): Promise<void> {
  await dequantizeCheckpoint({ model: q, out, dtype: 'F32' });
  await dequantizeCheckpoint({ model: qPer, out: outPer, dtype: 'F32' });
  const ci = await Checkpoint.open(input);
  const co = await Checkpoint.open(out);
  const cp = await Checkpoint.open(outPer);
  try {
    expect([...co.tensorNames].sort()).toEqual([...ci.tensorNames].sort());
    for (const n of ci.tensorNames) expect(co.shape(n), n).toEqual(ci.shape(n));
    expect(co.config.quantization_config).toBeUndefined();
    const m = await openModel(out);
    try {
      expect(m.view.expertLayout).toBe('fused');
    } finally {
      await m.ckpt.close();
    }
    for (const n of ci.tensorNames.filter((t) => /experts\.(gate_up|down)_proj$/.test(t))) {
      const [E, R, C] = ci.shape(n) as [number, number, number];
      const got = await co.readF32(n);
      const src = await ci.readF32(n);
      const p = n.replace(/mlp\.experts\.(gate_up|down)_proj$/, 'block_sparse_moe.experts.');
      let err = 0;
      let norm = 0;
      for (let e = 0; e < E; e++) {
        const want = n.endsWith('down_proj')
          ? await cp.readF32(`${p}${e}.w2.weight`)
          : Float32Array.from([...(await cp.readF32(`${p}${e}.w1.weight`)), ...(await cp.readF32(`${p}${e}.w3.weight`))]);
        expect(Array.from(got.subarray(e * R * C, (e + 1) * R * C)), `${n}[${e}]`).toEqual(Array.from(want));
      }
      for (let i = 0; i < got.length; i++) {
        err += (got[i]! - src[i]!) ** 2;
        norm += src[i]! ** 2;
      }
      // --bits 4 is an average with scales and zeros: GPTQ gives these tiny experts 2-4 bits, 0.35-0.41 relative
      // weight error here (GPTQ trades weight error for output error); an unquantized tensor is 0, a misplaced
      // expert or gate/up swap about 1.4 (two independent uniform matrices)
      const rel = Math.sqrt(err / norm);
      expect(rel, n).toBeGreaterThan(0.005);
      expect(rel, n).toBeLessThan(0.6);
    }
    // the rest: the router and its correction bias (unquantized, renamed back under the fused layout's names)
    // are the input's values; norms and embeddings copied; quantized attention equals the per-expert output's
    for (const n of ci.tensorNames.filter((t) => !/experts\.(gate_up|down)_proj$/.test(t))) {
      const want = /(gate\.weight|e_score_correction_bias)$/.test(n) || !cp.has(n) || !/_proj\.weight$/.test(n) ? ci : cp;
      expect(Array.from(await co.readF32(n)), n).toEqual(Array.from(await want.readF32(n)));
    }
  } finally {
    await ci.close();
    await co.close();
    await cp.close();
  }
}
