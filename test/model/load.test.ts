import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoeError } from '../../src/errors.js';
import { e4m3ToF32, fromF32 } from '../../src/io/dtype.js';
import { decodeMxfp4 } from '../../src/io/quantized.js';
import { linearTensors, loadLinear, loadNorm, loadRouter, loadSwiGLU, registerLinearFormat } from '../../src/model/load.js';
import { openModel, type Model } from '../../src/model/open.js';
import { encodeMxfp4 } from '../../src/model/quantized.js';
import { rewriteCheckpoint, type NewTensor } from '../../src/model/rewrite.js';
import type { MoeBlock } from '../../src/model/types.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-load-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const moeBlock = (m: Model, l: number) => m.view.layers[l]!.block as MoeBlock;

async function expertsOf(m: Model, layer: number): Promise<SwiGLUWeights[]> {
  return Promise.all(moeBlock(m, layer).experts.map((e) => loadSwiGLU(m.ckpt, e)));
}

function f32Tensor(name: string, shape: number[], values: Float32Array): NewTensor {
  return { spec: { name, dtype: 'F32', shape }, produce: async () => fromF32(values, 'F32') };
}

/** Replace a fused-layout fixture's expert tensors with the given per-expert weights, laid out as `build` says. */
async function withExperts(
  src: string,
  out: string,
  experts: SwiGLUWeights[][],
  build: (l: number, ws: SwiGLUWeights[]) => NewTensor[],
  dropNames: (l: number) => string[],
): Promise<Model> {
  const m = await openModel(src);
  const fates = new Map();
  for (const l of m.view.moeLayers) {
    const names = dropNames(l);
    names.forEach((n, k) => fates.set(n, k === 0 ? { kind: 'replace', tensors: build(l, experts[l]!) } : { kind: 'drop' }));
  }
  await rewriteCheckpoint(m, { fates }, out);
  await m.ckpt.close();
  return openModel(out);
}

describe('fused and per-expert layouts give the same matrices', () => {
  it('granitemoe [E, 2I, H] halves == mixtral per-expert w1/w3/w2', async () => {
    await makeTinyCheckpoint('mixtral', join(root, 'mix'), { seed: 7 });
    await makeTinyCheckpoint('granitemoe', join(root, 'gr-src'), { seed: 8 });
    const mix = await openModel(join(root, 'mix'));
    const E = 4,
      I = 16,
      H = 32;
    const ref = await Promise.all([0, 1, 2].map((l) => expertsOf(mix, l)));
    const gr = await withExperts(
      join(root, 'gr-src'),
      join(root, 'gr'),
      ref,
      (l, ws) => {
        const gu = new Float32Array(E * 2 * I * H);
        const down = new Float32Array(E * H * I);
        ws.forEach((w, e) => {
          gu.set(w.gate.w, e * 2 * I * H);
          gu.set(w.up.w, e * 2 * I * H + I * H);
          down.set(w.down.w, e * H * I);
        });
        const p = `model.layers.${l}.block_sparse_moe.`;
        return [f32Tensor(`${p}input_linear.weight`, [E, 2 * I, H], gu), f32Tensor(`${p}output_linear.weight`, [E, H, I], down)];
      },
      (l) => [`model.layers.${l}.block_sparse_moe.input_linear.weight`, `model.layers.${l}.block_sparse_moe.output_linear.weight`],
    );
    for (const l of [0, 2]) {
      const got = await expertsOf(gr, l);
      for (let e = 0; e < E; e++) {
        for (const r of ['gate', 'up', 'down'] as const) {
          expect(got[e]![r].out).toBe(ref[l]![e]![r].out);
          expect(got[e]![r].w).toEqual(ref[l]![e]![r].w);
        }
      }
    }
    await gr.ckpt.close();
    await mix.ckpt.close();
  });

  it('gpt_oss in-major interleaved [E, H, 2I] + biases == per-expert matrices', async () => {
    await makeTinyCheckpoint('mixtral', join(root, 'mix32'), { seed: 9, intermediate: 32 });
    await makeTinyCheckpoint('gpt_oss', join(root, 'oss-src'), { seed: 10 });
    const mix = await openModel(join(root, 'mix32'));
    const E = 4,
      I = 32,
      H = 32;
    const ref = await Promise.all([0, 1, 2].map((l) => expertsOf(mix, l)));
    const gateBias = (l: number, e: number, i: number) => l * 1000 + e * 100 + i;
    const upBias = (l: number, e: number, i: number) => -(l * 1000 + e * 100 + i);
    const oss = await withExperts(
      join(root, 'oss-src'),
      join(root, 'oss'),
      ref,
      (l, ws) => {
        const gu = new Float32Array(E * H * 2 * I);
        const gub = new Float32Array(E * 2 * I);
        const down = new Float32Array(E * I * H);
        ws.forEach((w, e) => {
          for (let i = 0; i < I; i++) {
            for (let h = 0; h < H; h++) {
              // stored [in, out]: element (h, 2i) is gate row i, (h, 2i+1) up row i
              gu[e * H * 2 * I + h * 2 * I + 2 * i] = w.gate.w[i * H + h]!;
              gu[e * H * 2 * I + h * 2 * I + 2 * i + 1] = w.up.w[i * H + h]!;
              down[e * I * H + i * H + h] = w.down.w[h * I + i]!;
            }
            gub[e * 2 * I + 2 * i] = gateBias(l, e, i);
            gub[e * 2 * I + 2 * i + 1] = upBias(l, e, i);
          }
        });
        const p = `model.layers.${l}.mlp.experts.`;
        return [
          f32Tensor(`${p}gate_up_proj`, [E, H, 2 * I], gu),
          f32Tensor(`${p}gate_up_proj_bias`, [E, 2 * I], gub),
          f32Tensor(`${p}down_proj`, [E, I, H], down),
        ];
      },
      (l) => ['gate_up_proj', 'gate_up_proj_bias', 'down_proj'].map((n) => `model.layers.${l}.mlp.experts.${n}`),
    );
    for (const l of [0, 1, 2]) {
      const got = await expertsOf(oss, l);
      for (let e = 0; e < E; e++) {
        for (const r of ['gate', 'up', 'down'] as const) expect(got[e]![r].w).toEqual(ref[l]![e]![r].w);
        expect(got[e]!.gate.b![5]).toBe(gateBias(l, e, 5));
        expect(got[e]!.up.b![31]).toBe(upBias(l, e, 31));
        expect(got[e]!.down.b).toHaveLength(H);
      }
    }
    await oss.ckpt.close();
    await mix.ckpt.close();
  });
});

describe('a per-expert checkpoint restacked in the transformers-v5 fused layout', () => {
  it('loads the same matrices, and the view switches to the fused layout', async () => {
    await makeTinyCheckpoint('qwen3_moe', join(root, 'q3'), { seed: 11 });
    const src = await openModel(join(root, 'q3'));
    const E = 4,
      I = 16,
      H = 32;
    const ref = new Map<number, SwiGLUWeights[]>();
    const fates = new Map();
    for (const l of src.view.moeLayers) {
      const ws = await expertsOf(src, l);
      ref.set(l, ws);
      const gu = new Float32Array(E * 2 * I * H);
      const down = new Float32Array(E * H * I);
      ws.forEach((w, e) => {
        gu.set(w.gate.w, e * 2 * I * H);
        gu.set(w.up.w, e * 2 * I * H + I * H);
        down.set(w.down.w, e * H * I);
      });
      const names = moeBlock(src, l).experts.flatMap((x) => [x.gate.tensor, x.up.tensor, x.down.tensor]);
      names.forEach((n, k) =>
        fates.set(
          n,
          k > 0
            ? { kind: 'drop' }
            : {
                kind: 'replace',
                tensors: [
                  f32Tensor(`model.layers.${l}.mlp.experts.gate_up_proj`, [E, 2 * I, H], gu),
                  f32Tensor(`model.layers.${l}.mlp.experts.down_proj`, [E, H, I], down),
                ],
              },
        ),
      );
    }
    await rewriteCheckpoint(src, { fates }, join(root, 'q3-fused'));
    await src.ckpt.close();
    const fused = await openModel(join(root, 'q3-fused'));
    expect(fused.view.expertLayout).toBe('fused');
    for (const [l, ws] of ref) {
      const got = await expertsOf(fused, l);
      for (let e = 0; e < E; e++) for (const r of ['gate', 'up', 'down'] as const) expect(got[e]![r].w).toEqual(ws[e]![r].w);
    }
    await fused.ckpt.close();
  });
});

describe('quantized on-disk forms', () => {
  it('FP8 e4m3 with 8x8 block scales dequantizes per block (and stays within e4m3 error of the f32 weights)', async () => {
    await makeTinyCheckpoint('deepseek_v3', join(root, 'fp8'), { dtype: 'FP8', seed: 3 });
    await makeTinyCheckpoint('deepseek_v3', join(root, 'f32'), { seed: 3 });
    const q = await openModel(join(root, 'fp8'));
    const f = await openModel(join(root, 'f32'));
    const ref = moeBlock(q, 1).experts[2]!.down; // [32, 16]: 4 x 2 blocks
    const got = await loadLinear(q.ckpt, ref);
    const raw = await q.ckpt.readBytes(ref.tensor);
    const s = await q.ckpt.readF32(`${ref.tensor}_scale_inv`);
    expect(q.ckpt.shape(`${ref.tensor}_scale_inv`)).toEqual([4, 2]);
    for (let r = 0; r < 32; r++) {
      for (let c = 0; c < 16; c++) {
        expect(got.w[r * 16 + c]).toBe(Math.fround(e4m3ToF32(raw[r * 16 + c]!) * s[Math.floor(r / 8) * 2 + Math.floor(c / 8)]!));
      }
    }
    const exact = await loadLinear(f.ckpt, moeBlock(f, 1).experts[2]!.down);
    let worst = 0;
    for (let i = 0; i < exact.w.length; i++) worst = Math.max(worst, Math.abs(exact.w[i]! - got.w[i]!) / 0.2);
    expect(worst).toBeLessThan(1 / 16);
    expect(worst).toBeGreaterThan(0);
    expect(linearTensors(q.ckpt, ref)).toEqual([ref.tensor, `${ref.tensor}_scale_inv`]);
    await q.ckpt.close();
    await f.ckpt.close();
  });

  it('MXFP4 gpt_oss experts: even rows gate, odd rows up, E8M0 scales, only one expert read', async () => {
    await makeTinyCheckpoint('gpt_oss', join(root, 'mx'), { mxfp4: true, seed: 4 });
    const m = await openModel(join(root, 'mx'));
    const e = moeBlock(m, 1).experts[3]!;
    const [gate, up, down] = [await loadLinear(m.ckpt, e.gate), await loadLinear(m.ckpt, e.up), await loadLinear(m.ckpt, e.down)];
    const base = 'model.layers.1.mlp.experts.gate_up_proj';
    const blocks = await m.ckpt.readBytes(`${base}_blocks`);
    const scales = await m.ckpt.readBytes(`${base}_scales`);
    const fp4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];
    // independent decode of expert 3, row 2r (gate row r) and 2r+1 (up row r), column c
    const at = (row: number, c: number) => {
      const g = Math.floor(c / 32);
      const byte = blocks[((3 * 64 + row) * 1 + g) * 16 + Math.floor((c % 32) / 2)]!;
      const code = c % 2 === 0 ? byte & 15 : byte >> 4;
      return fp4[code]! * 2 ** (scales[(3 * 64 + row) * 1 + g]! - 127);
    };
    for (const r of [0, 7, 31]) {
      for (const c of [0, 1, 17, 31]) {
        expect(gate.w[r * 32 + c]).toBe(at(2 * r, c));
        expect(up.w[r * 32 + c]).toBe(at(2 * r + 1, c));
      }
    }
    expect([gate.out, gate.in, down.out, down.in]).toEqual([32, 32, 32, 32]);
    expect(gate.b).toHaveLength(32);
    await m.ckpt.close();
  });

  it('encodeMxfp4 round-trips values on the FP4 grid exactly and bounds the error of others', () => {
    const rows = 3,
      cols = 64;
    // each 32-group: FP4 grid values times one power of two per group (max 6 * 2^k, so the scale is exactly 2^k)
    const grid = new Float32Array(rows * cols);
    for (let g = 0; g < rows * 2; g++)
      for (let j = 0; j < 32; j++) grid[g * 32 + j] = [0, 0.5, 1, 1.5, 2, 3, 4, 6][j % 8]! * (j % 3 ? 1 : -1) * 2 ** (g - 2) + 0;
    const { blocks, scales } = encodeMxfp4(grid, rows, cols);
    expect(decodeMxfp4(blocks, scales)).toEqual(grid);
    const noisy = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i * 1.3) * 0.37);
    const enc = encodeMxfp4(noisy, rows, cols);
    const dec = decodeMxfp4(enc.blocks, enc.scales);
    for (let i = 0; i < noisy.length; i++) expect(Math.abs(dec[i]! - noisy[i]!)).toBeLessThanOrEqual(0.37 / 6 + 1e-7);
  });
});

describe('norms and routers', () => {
  it('loadNorm returns weight and bias; loadRouter returns weight, bias and correction bias', async () => {
    await makeTinyCheckpoint('phimoe', join(root, 'phi'));
    await makeTinyCheckpoint('deepseek_v3', join(root, 'ds3'));
    const phi = await openModel(join(root, 'phi'));
    const n = await loadNorm(phi.ckpt, phi.view.layers[1]!.postAttnNorm);
    expect(n.weight).toEqual(await phi.ckpt.readF32('model.layers.1.post_attention_layernorm.weight'));
    expect(n.bias).toEqual(await phi.ckpt.readF32('model.layers.1.post_attention_layernorm.bias'));
    const ds = await openModel(join(root, 'ds3'));
    const r = await loadRouter(ds.ckpt, moeBlock(ds, 2).router);
    expect(r.w).toHaveLength(4 * 32);
    expect(r.correctionBias).toEqual(await ds.ckpt.readF32('model.layers.2.mlp.gate.e_score_correction_bias'));
    await phi.ckpt.close();
    await ds.ckpt.close();
  });

  it('a weight whose shape disagrees with the config is an error naming it', async () => {
    await makeTinyCheckpoint('mixtral', join(root, 'badshape'), { intermediate: 16 });
    const m = await openModel(join(root, 'badshape'));
    const ref = { ...moeBlock(m, 0).experts[0]!.gate, outFeatures: 20 };
    const e = await loadLinear(m.ckpt, ref).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(MoeError);
    expect((e as MoeError).message).toMatch(/experts\.0\.w1\.weight.*is \[16, 32\], the config says \[20, 32\]/);
    await m.ckpt.close();
  });
});

describe('registerLinearFormat', () => {
  it('lets another on-disk form (low-rank factors) be opened and loaded transparently', async () => {
    await makeTinyCheckpoint('mixtral', join(root, 'lr-src'));
    const src = await openModel(join(root, 'lr-src'));
    const target = 'model.layers.1.block_sparse_moe.experts.2.w1.weight';
    const stem = target.slice(0, -'.weight'.length);
    const A = Float32Array.from({ length: 3 * 32 }, (_, i) => Math.cos(i)); // [r=3, in=32]
    const B = Float32Array.from({ length: 16 * 3 }, (_, i) => Math.sin(i)); // [out=16, r=3]
    await rewriteCheckpoint(
      src,
      {
        fates: new Map([[target, { kind: 'replace', tensors: [f32Tensor(`${stem}.lr_a`, [3, 32], A), f32Tensor(`${stem}.lr_b`, [16, 3], B)] }]]),
      },
      join(root, 'lr'),
    );
    await src.ckpt.close();

    const before = await openModel(join(root, 'lr')).catch((x: unknown) => x);
    expect((before as MoeError).code).toBe('TensorNotFound');

    const unregister = registerLinearFormat(
      (ckpt, ref) => !ckpt.has(ref.tensor) && ckpt.has(ref.tensor.replace(/\.weight$/, '.lr_a')),
      async (ckpt, ref) => {
        const s = ref.tensor.replace(/\.weight$/, '');
        const a = await ckpt.readF32(`${s}.lr_a`);
        const b = await ckpt.readF32(`${s}.lr_b`);
        const r = a.length / ref.inFeatures;
        const w = new Float32Array(ref.outFeatures * ref.inFeatures);
        for (let o = 0; o < ref.outFeatures; o++)
          for (let i = 0; i < ref.inFeatures; i++) for (let k = 0; k < r; k++) w[o * ref.inFeatures + i] += b[o * r + k]! * a[k * ref.inFeatures + i]!;
        return { out: ref.outFeatures, in: ref.inFeatures, w };
      },
      (_ckpt, ref) => [ref.tensor.replace(/\.weight$/, '.lr_a'), ref.tensor.replace(/\.weight$/, '.lr_b')],
      'lowrank-test',
    );
    try {
      const m = await openModel(join(root, 'lr'));
      const ref = moeBlock(m, 1).experts[2]!.gate;
      const got = await loadLinear(m.ckpt, ref);
      expect(got.w[5 * 32 + 7]).toBeCloseTo(B[15]! * A[7]! + B[16]! * A[39]! + B[17]! * A[71]!, 6);
      expect(linearTensors(m.ckpt, ref)).toEqual([`${stem}.lr_a`, `${stem}.lr_b`]);
      // other linears still load as plain tensors
      expect((await loadLinear(m.ckpt, moeBlock(m, 1).experts[1]!.gate)).w).toEqual(
        await m.ckpt.readF32('model.layers.1.block_sparse_moe.experts.1.w1.weight'),
      );
      await m.ckpt.close();
    } finally {
      unregister();
    }
  });
});
