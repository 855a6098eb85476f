/**
 * `moe prune --keep-per-layer auto --write-per-layer` (issue 19): the knapsack's per-layer counts written in moe's
 * own format. On the uneven fixture (dead and near-dead experts, so the allocation is far from uniform) the output
 * names itself moe_perlayer_mixtral with a `moe` section, each layer holds the reported number of experts, and moe's
 * runtime gives the unpruned model's log-likelihood with the removed experts masked; without the flag the output is
 * the uniform stock checkpoint.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../../kernels/random.js';
import { ExitCode } from '../../src/errors.js';
import { Checkpoint } from '../../src/io/checkpoint.js';
import { openModel } from '../../src/model/open.js';
import { prune, type PruneReport } from '../../src/prune/pipeline.js';
import { initBackend } from '../../src/runtime/backend.js';
import { maskedEdit } from '../../src/runtime/mask.js';
import { streamModel } from '../../src/runtime/stream.js';
import { runMoe } from '../helpers/cli.js';

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'tiny-mixtral-uneven');
const CALIB = join(import.meta.dirname, '..', 'fixtures', 'text', 'calib.txt');

let root: string;
let written: PruneReport;
let uniform: PruneReport;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-prune-perlayer-'));
  const base = { model: FIXTURE, calib: CALIB, calibTokens: 1024, keep: 8, method: 'reap', keepPerLayer: 'auto' as const };
  written = await prune({ ...base, out: join(root, 'w'), writePerLayer: true });
  uniform = await prune({ ...base, out: join(root, 'u') });
}, 240_000);
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const config = async (dir: string) => JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));

/** Experts stored per layer (each expert is three tensors: w1, w2, w3). */
async function expertsPerLayer(dir: string, layers: number): Promise<number[]> {
  const ckpt = await Checkpoint.open(dir);
  try {
    return Array.from({ length: layers }, (_, l) => {
      const ids = new Set(ckpt.tensorNames.filter((n) => n.startsWith(`model.layers.${l}.block_sparse_moe.experts.`)).map((n) => n.split('.')[5]));
      return ids.size;
    });
  } finally {
    await ckpt.close();
  }
}

/** A uniform output: stock names, no `moe` section, n experts in the config and in each of the 4 MoE layers' tensors. */
async function expectUniformStock(dir: string, n: number): Promise<void> {
  const c = await config(dir);
  expect(c.model_type).toBe('mixtral');
  expect(c.architectures).toEqual(['MixtralForCausalLM']);
  expect(c.moe).toBeUndefined();
  expect(c.num_local_experts).toBe(n);
  expect(await expertsPerLayer(dir, 4)).toEqual([n, n, n, n]);
}

describe('--write-per-layer', () => {
  it('writes the reported counts (uneven) under moe_perlayer_mixtral with a moe section', async () => {
    const k = written.keepPerLayer!;
    expect(k.written).toBe(true);
    expect(k.counts.reduce((a, b) => a + b, 0)).toBe(8 * 4);
    // not all equal, else nothing here tests per-layer counts
    expect(new Set(k.counts).size).toBeGreaterThan(1);
    expect(written.layers.map((l) => l.kept.length)).toEqual(k.counts);
    const c = await config(join(root, 'w'));
    expect(c.model_type).toBe('moe_perlayer_mixtral');
    expect(c.architectures).toEqual(['MoePerLayerMixtralForCausalLM']);
    expect(c.num_local_experts).toBe(Math.max(...k.counts));
    expect(c.moe).toEqual({
      format: 'moe-per-layer',
      version: 1,
      experts_per_layer: k.counts,
      stock: { model_type: 'mixtral', architectures: ['MixtralForCausalLM'] },
    });
    expect(await expertsPerLayer(join(root, 'w'), 4)).toEqual(k.counts);
    const out = await openModel(join(root, 'w'));
    try {
      expect(out.view.family).toBe('mixtral');
      expect(out.view.expertsPerLayer).toEqual(k.counts);
      expect(out.view.layers.map((l) => (l.block.kind === 'moe' ? l.block.experts.length : 0))).toEqual(k.counts);
      // the router rows of each layer are its kept experts' rows
      expect(out.view.layers.map((l) => out.ckpt.shape((l.block as { router: { weight: string } }).router.weight)[0])).toEqual(k.counts);
    } finally {
      await out.ckpt.close();
    }
  });

  it('moe inspect lists the count of each layer, and active parameters count top-k of each layer', async () => {
    const r = await runMoe(['inspect', '--model', join(root, 'w'), '--json']);
    expect(r.code).toBe(0);
    const rep = JSON.parse(r.stdout);
    const counts = written.keepPerLayer!.counts;
    expect(rep.experts.perLayer).toEqual(counts);
    // equal-sized experts: each MoE layer's active routed part is top-k experts' worth
    const perExpert = rep.params.routedExperts / counts.reduce((a: number, b: number) => a + b, 0);
    expect(rep.params.activePerToken).toBeCloseTo(rep.params.nonExpert + rep.params.sharedExperts + perExpert * 2 * counts.length, 3);
  });

  it('runs in moe and gives the unpruned model with the removed experts masked', async () => {
    const src = await openModel(FIXTURE);
    const out = await openModel(join(root, 'w'));
    const r = seededRandom(3);
    const win = Array.from({ length: 2 }, () => Int32Array.from({ length: 16 }, () => Math.floor(r() * src.view.dims.vocab)));
    const kept = new Map(written.layers.map((l) => [l.layer, l.kept]));
    try {
      const pruned = await streamModel(out, win, {}, { scoreLogits: true });
      const masked = await streamModel(src, win, { onMoeLayer: (inp) => maskedEdit(inp, kept.get(inp.layer.index)!), routerOnly: true }, { scoreLogits: true });
      const full = await streamModel(src, win, {}, { scoreLogits: true });
      expect(pruned.scored).toBeGreaterThan(0);
      expect(pruned.nll / pruned.scored).toBeCloseTo(masked.nll / masked.scored, 4);
      expect(Math.abs(full.nll - pruned.nll)).toBeGreaterThan(1e-4);
    } finally {
      await src.ckpt.close();
      await out.ckpt.close();
    }
  });

  it('without it the same allocation is only reported: the output keeps 8 in every layer, stock names', async () => {
    expect(uniform.keepPerLayer!.written).toBe(false);
    expect(uniform.keepPerLayer!.counts).toEqual(written.keepPerLayer!.counts);
    await expectUniformStock(join(root, 'u'), 8);
  });

  it('pruning a per-layer checkpoint to one count again gives the stock identity back', async () => {
    // scored by calibration on the per-layer model: statistics sized by each layer's own count
    const r = await prune({ model: join(root, 'w'), out: join(root, 'w2'), keep: 2, method: 'reap', calib: CALIB, calibTokens: 512 });
    written.keepPerLayer!.counts.forEach((n, i) => expect(r.layers[i]!.scores).toHaveLength(n));
    expect(r.layers.map((l) => l.kept.length)).toEqual([2, 2, 2, 2]);
    // each layer chose among its own experts
    written.keepPerLayer!.counts.forEach((n, i) => expect(Math.max(...r.layers[i]!.kept)).toBeLessThan(n));
    await expectUniformStock(join(root, 'w2'), 2);
  });

  it('a section that disagrees with the config or the tensors is refused when the model is opened', async () => {
    const dir = join(root, 'bad');
    await cp(join(root, 'w'), dir, { recursive: true });
    const c = await config(dir);
    const counts = written.keepPerLayer!.counts;
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...c, moe: { ...c.moe, experts_per_layer: counts.slice(1) } }));
    await expect(openModel(dir)).rejects.toThrow(/experts_per_layer must list 4 whole numbers/);
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...c, num_local_experts: 16, moe: { ...c.moe, experts_per_layer: counts.map(() => 16) } }));
    await expect(openModel(dir)).rejects.toThrow(/is missing tensor/);
    const { moe: _, ...noSection } = c;
    await writeFile(join(dir, 'config.json'), JSON.stringify(noSection));
    await expect(openModel(dir)).rejects.toThrow(/needs a "moe" section/);
  });
});

describe('per-layer counts and low-rank factors are not combined (one moe section, one format)', () => {
  it('decompose refuses a per-layer checkpoint; prune --write-per-layer refuses a low-rank one before calibrating', async () => {
    const dec = await runMoe(['decompose', '--model', join(root, 'w'), '--mode', 'svd', '--ratio', '0.5', '--uniform', '--out', join(root, 'wlr')]);
    expect(dec.code).toBe(ExitCode.usage);
    expect(dec.stderr.trim().split('\n')).toHaveLength(1);
    expect(dec.stderr).toMatch(/has per-layer expert counts .* low-rank factors cannot be added/);
    // a low-rank checkpoint of the uniform 2-expert output the re-prune test above wrote (small, for speed)
    const lr = await runMoe(['decompose', '--model', join(root, 'w2'), '--mode', 'svd', '--ratio', '0.5', '--uniform', '--out', join(root, 'lr')]);
    expect(lr.code).toBe(0);
    expect((await config(join(root, 'lr'))).model_type).toBe('moe_lowrank_mixtral');
    const p = await runMoe([
      'prune',
      '--model',
      join(root, 'lr'),
      '--calib',
      CALIB,
      '--keep',
      '2',
      '--keep-per-layer',
      'auto',
      '--write-per-layer',
      '--out',
      join(root, 'lrp'),
    ]);
    expect(p.code).toBe(ExitCode.usage);
    expect(p.stderr.trim().split('\n')).toHaveLength(1);
    expect(p.stderr).toMatch(/cannot be written into a checkpoint that already has a "moe" section of another format/);
  });
});

describe('--write-per-layer: bad requests are one line, exit 2', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['without --keep-per-layer auto', [], /--write-per-layer writes the counts --keep-per-layer auto allocates/],
    ['with --refit-router', ['--keep-per-layer', 'auto', '--refit-router'], /cannot be combined/],
  ];
  it.each(cases)('%s', async (_name, extra, message) => {
    const r = await runMoe(['prune', '--model', FIXTURE, '--calib', CALIB, '--keep', '8', '--write-per-layer', '--out', join(root, 'x'), ...extra]);
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(message);
  });
});
