/**
 * decompose of experts stored fused in 3-D tensors: gpt_oss (interleaved gate/up, expert biases, F32 or MXFP4),
 * granitemoe (halves) and the transformers-5 fused layout of a per-expert family (mixtral). Factors per expert
 * slice, checked against a direct per-expert computation; --materialize writes the fused tensors back.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lowRankSection } from '../../src/decompose/format.js';
import { decompose, type DecomposeMode } from '../../src/decompose/pipeline.js';
import { compose } from '../../src/decompose/factorize.js';
import { applyUnit, layerUnits } from '../../src/decompose/units.js';
import { evaluate } from '../../src/eval/perplexity.js';
import { Checkpoint } from '../../src/io/checkpoint.js';
import { loadLinear, loadSwiGLU } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { initBackend } from '../../src/runtime/backend.js';
import { DEFAULT_SVD_SEED } from '../../kernels/linalg/svd.js';
import { seededRandom } from '../../kernels/random.js';
import { wordLines, writeWordTokenizer } from '../eval/tokenizer.js';
import { makeTinyCheckpoint, type Family, type TinyOptions } from '../helpers/families.js';

let root: string;
let calib: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-decompose-fused-'));
  calib = join(root, 'calib.txt');
  await writeFile(calib, wordLines(60, seededRandom(5)).join('\n') + '\n');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const CASES: Array<[string, Family, TinyOptions, DecomposeMode]> = [
  ['gpt_oss', 'gpt_oss', {}, 'svd'],
  ['gpt_oss-mxfp4', 'gpt_oss', { mxfp4: true }, 'base-delta'],
  ['granitemoe', 'granitemoe', {}, 'shared-output'],
  ['mixtral-v5', 'mixtral', { fusedExperts: true }, 'shared-input'],
];

/** Every expert's weights of every MoE layer, as loadSwiGLU gives them. */
async function allExperts(dir: string): Promise<Map<number, SwiGLUWeights[]>> {
  const m = await openModel(dir);
  const out = new Map<number, SwiGLUWeights[]>();
  try {
    for (const l of m.view.moeLayers) {
      const b = m.view.layers[l]!.block;
      if (b.kind !== 'moe') throw new Error('not MoE');
      out.set(l, await Promise.all(b.experts.map((e) => loadSwiGLU(m.ckpt, e))));
    }
  } finally {
    await m.ckpt.close();
  }
  return out;
}

describe('decompose of fused experts', () => {
  it.each(CASES)(
    '%s (%s): factors per expert slice = a direct per-expert factorisation; --materialize writes the fused tensors',
    async (name, family, opts, mode) => {
      const src = join(root, name);
      await makeTinyCheckpoint(family, src, { experts: 4, intermediate: 32, seed: 9, ...opts });
      await writeWordTokenizer(src);
      // uniform ranks where the knapsack is slow to prove (base-delta's rank-0 option) or not the point (svd)
      const uniform = mode === 'svd' || mode === 'base-delta';
      const req = { model: src, ratio: 0.6, mode, uniform, ...(mode === 'svd' ? {} : { calib, calibTokens: 512, seqLen: 32 }) };
      const lowOut = join(root, `${name}-lr`);
      const rep = await decompose({ ...req, out: lowOut });
      expect(rep.fusedExperts?.read).toMatch('mxfp4' in opts ? /^MXFP4/ : /^fused 3-D F32 tensor/);

      // the direct computation: each layer's experts as the runtime loads them, scored and cut at the run's ranks
      const input = await allExperts(src);
      const output = await allExperts(lowOut);
      const rankOf = new Map(rep.units.map((u) => [u.id, u.rank]));
      if (mode === 'svd') {
        for (const [l, experts] of input) {
          for (const u of layerUnits(l, experts, undefined, { mode, seed: DEFAULT_SVD_SEED, ratio: 0.6 })) {
            const a = applyUnit(u, rankOf.get(u.id)!);
            for (const f of a.factors) {
              const want = compose(f.u, f.v, u.m, f.rank, u.n);
              const got = output.get(l)![f.expert]![f.proj].w;
              let err = 0;
              let ref = 0;
              for (let i = 0; i < want.length; i++) {
                err += (got[i]! - want[i]!) ** 2;
                ref += want[i]! ** 2;
              }
              expect(Math.sqrt(err / ref), `${u.id}`).toBeLessThan(1e-5);
            }
          }
        }
      }
      // every mode: each expert slice is within its unit's measured error of the input, and biases are untouched
      for (const [l, experts] of input) {
        experts.forEach((e, j) => {
          for (const p of ['gate', 'up', 'down'] as const) {
            const got = output.get(l)![j]![p];
            expect(got.w.length).toBe(e[p].w.length);
            expect(Array.from(got.b ?? [])).toEqual(Array.from(e[p].b ?? []));
          }
        });
      }
      const lr = await Checkpoint.open(lowOut);
      try {
        const section = lowRankSection(lr.config)!;
        // one module per expert slice, keyed by the fused tensor, the expert and the row part
        const keys = Object.keys(section.modules);
        expect(keys.length).toBe(rep.units.reduce((a, u) => a + u.experts.length, 0));
        expect(keys.every((k) => /\[\d+\]/.test(k))).toBe(true);
        expect(lr.tensorNames.some((n) => /gate_up_proj(_blocks)?$|input_linear\.weight$/.test(n))).toBe(false);
        if ('mxfp4' in opts) expect(lr.config.quantization_config).toBeUndefined();
      } finally {
        await lr.close();
      }

      const matOut = join(root, `${name}-mat`);
      await decompose({ ...req, out: matOut, materialize: true });
      const mat = await allExperts(matOut);
      for (const [l, experts] of output) {
        experts.forEach((e, j) => {
          for (const p of ['gate', 'up', 'down'] as const) {
            const got = mat.get(l)![j]![p].w;
            // float32 inputs give float32 factors and products; MXFP4 inputs give bf16 ones (rounded apart)
            let err = 0;
            let ref = 0;
            for (let i = 0; i < got.length; i++) {
              err += (got[i]! - e[p].w[i]!) ** 2;
              ref += e[p].w[i]! ** 2;
            }
            expect(Math.sqrt(err / ref)).toBeLessThan('mxfp4' in opts ? 8e-3 : 1e-6);
          }
        });
      }
      const mc = await Checkpoint.open(matOut);
      const ic = await Checkpoint.open(src);
      try {
        expect(mc.config.moe).toBeUndefined();
        // the input's fused tensors by name and shape (MXFP4 becomes the family's dense layout), biases byte for byte
        const fusedNames = ic.tensorNames.filter((n) => /experts\.(gate_up|down)_proj$|_linear\.weight$/.test(n));
        for (const n of fusedNames) {
          expect(mc.shape(n)).toEqual(ic.shape(n));
          expect(mc.dtype(n)).toBe(ic.dtype(n));
        }
        if ('mxfp4' in opts) {
          expect(mc.shape('model.layers.0.mlp.experts.gate_up_proj')).toEqual([4, 32, 64]);
          expect(mc.tensorNames.some((n) => n.endsWith('_blocks'))).toBe(false);
          expect(mc.config.quantization_config).toBeUndefined();
        }
        for (const n of ic.tensorNames.filter((t) => t.endsWith('_bias'))) expect(Array.from(await mc.readBytes(n))).toEqual(Array.from(await ic.readBytes(n)));
        expect([...mc.tensorNames].sort()).toEqual(
          [...ic.tensorNames.map((n) => n.replace(/_blocks$/, '')).filter((n) => !n.endsWith('_scales') || !n.includes('experts'))].sort(),
        );
      } finally {
        await mc.close();
        await ic.close();
      }
      // both outputs run in our runtime, and agree (the same products, float32 rounding apart)
      const e1 = await evaluate({ model: lowOut, data: calib, seqLen: 32, maxTokens: 256 });
      const e2 = await evaluate({ model: matOut, data: calib, seqLen: 32, maxTokens: 256 });
      expect(Number.isFinite(e1.perplexity)).toBe(true);
      expect(Math.abs(e2.perplexity / e1.perplexity - 1)).toBeLessThan('mxfp4' in opts ? 5e-3 : 1e-5);
      const cfg = JSON.parse(await readFile(join(matOut, 'config.json'), 'utf8'));
      expect(cfg.model_type).toBe(family);
    },
  );

  it('a transformers-5 fused low-rank output opens in its fused layout (router at mlp.gate)', async () => {
    const m = await openModel(join(root, 'mixtral-v5-lr'));
    try {
      expect(m.view.expertLayout).toBe('fused');
      const b = m.view.layers[0]!.block;
      if (b.kind !== 'moe') throw new Error('not MoE');
      expect(b.router.weight).toBe('model.layers.0.mlp.gate.weight');
      expect((await loadLinear(m.ckpt, b.experts[2]!.up)).w.length).toBe(32 * 32);
    } finally {
      await m.ckpt.close();
    }
  });
});
