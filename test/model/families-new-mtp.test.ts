/**
 * Multi-token-prediction layers (issue 15), DeepSeek/GLM convention: prune keeps the MTP layer consistent (its
 * experts pruned to the same count, scored on the MTP layer's own inputs, router rows and correction bias sliced,
 * its own tensors copied), --drop-mtp drops it and says so, and plans that leave it out are refused.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadLinear } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import { writeExpertEdit } from '../../src/model/rewrite.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyMtpCheckpoint } from '../helpers/mtp.js';

let root: string;
let dir: string;
let ids: string;
const WINDOWS = 6;
const SEQ = 15; // +BOS (config bos_token_id 0): windows of 16 tokens
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-mtp-'));
  dir = join(root, 'ds3-mtp');
  await makeTinyMtpCheckpoint(dir);
  ids = join(root, 'calib.jsonl');
  const lines = Array.from({ length: WINDOWS }, (_, i) => JSON.stringify(Array.from({ length: SEQ }, (_, j) => 1 + ((i * 13 + j * 7 + ((i * j) % 5)) % 63))));
  await writeFile(ids, lines.join('\n') + '\n');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const block = (m: Awaited<ReturnType<typeof openModel>>) => m.view.mtp![0]!.layer.block;

describe('MTP layers (DeepSeek/GLM convention)', () => {
  it('the view has the MTP layer after the decoder layers, an MoE layer with every expert', async () => {
    const m = await openModel(dir);
    try {
      expect(m.view.layers.length).toBe(2);
      expect(m.view.moeLayers).toEqual([1]);
      expect(m.view.mtp?.map((x) => x.layer.index)).toEqual([2]);
      expect(block(m).experts.length).toBe(8);
      expect(block(m).router.correctionBias).toBe('model.layers.2.mlp.gate.e_score_correction_bias');
      expect(m.view.mtp![0]!.ehProj).toBe('model.layers.2.eh_proj.weight');
    } finally {
      await m.ckpt.close();
    }
  });

  it('prune frequency: the MTP layer is pruned to the same count, scored on its own inputs, tensor by tensor', async () => {
    const out = join(root, 'pruned');
    const r = await runMoe([
      'prune',
      '--model',
      dir,
      '--out',
      out,
      '--keep',
      '4',
      '--method',
      'frequency',
      '--calib-ids',
      ids,
      '--seq-len',
      String(SEQ),
      '--quiet',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const rep = JSON.parse(await readFile(join(out, 'moe-prune-report.json'), 'utf8'));
    expect(rep.mtp).toEqual({ kept: [2], dropped: [] });
    const byLayer = new Map<number, { kept: number[]; scores: number[] }>(rep.layers.map((l: { layer: number }) => [l.layer, l]));
    expect([...byLayer.keys()]).toEqual([1, 2]);
    // frequency = routed slots: top-2 of 16 positions per window in layer 1; the MTP layer sees one position
    // fewer per window (token t+1's embedding with position t's hidden state)
    const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
    expect(sum(byLayer.get(1)!.scores)).toBe(2 * WINDOWS * (SEQ + 1));
    expect(sum(byLayer.get(2)!.scores)).toBe(2 * WINDOWS * SEQ);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.num_nextn_predict_layers).toBe(1);
    expect(cfg.n_routed_experts).toBe(4);
    const a = await openModel(dir);
    const o = await openModel(out);
    try {
      expect(o.view.mtp?.length).toBe(1);
      const kept = byLayer.get(2)!.kept;
      const H = a.view.dims.hidden;
      const rw = await a.ckpt.readF32(block(a).router.weight);
      const cb = await a.ckpt.readF32(block(a).router.correctionBias!);
      expect(o.ckpt.shape(block(o).router.weight)).toEqual([4, H]);
      expect(Array.from(await o.ckpt.readF32(block(o).router.weight))).toEqual(kept.flatMap((j) => Array.from(rw.subarray(j * H, (j + 1) * H))));
      expect(Array.from(await o.ckpt.readF32(block(o).router.correctionBias!))).toEqual(kept.map((j) => cb[j]!));
      for (let i = 0; i < 4; i++)
        for (const p of ['gate', 'up', 'down'] as const)
          expect(await loadLinear(o.ckpt, block(o).experts[i]![p])).toEqual(await loadLinear(a.ckpt, block(a).experts[kept[i]!]![p]));
      for (const n of [
        'eh_proj.weight',
        'enorm.weight',
        'hnorm.weight',
        'shared_head.norm.weight',
        'self_attn.kv_b_proj.weight',
        'mlp.shared_experts.down_proj.weight',
      ])
        expect(Array.from(await o.ckpt.readF32(`model.layers.2.${n}`))).toEqual(Array.from(await a.ckpt.readF32(`model.layers.2.${n}`)));
    } finally {
      await a.ckpt.close();
      await o.ckpt.close();
    }
  });

  it('--drop-mtp drops the layer, sets num_nextn_predict_layers 0 and says so in the report', async () => {
    const out = join(root, 'dropped');
    const r = await runMoe(['prune', '--model', dir, '--out', out, '--keep', '4', '--method', 'random', '--drop-mtp', '--quiet']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    const rep = JSON.parse(await readFile(join(out, 'moe-prune-report.json'), 'utf8'));
    expect(rep.mtp).toEqual({ kept: [], dropped: [2] });
    expect(rep.layers.map((l: { layer: number }) => l.layer)).toEqual([1]);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.num_nextn_predict_layers).toBe(0);
    const o = await openModel(out);
    expect(o.ckpt.tensorNames.filter((n) => n.startsWith('model.layers.2.'))).toEqual([]);
    expect(o.view.mtp).toBeUndefined();
    await o.ckpt.close();
  });

  it('refuses an edit that leaves the MTP layer out, and saved statistics without it, one line each', async () => {
    const m = await openModel(dir);
    try {
      await expect(writeExpertEdit(m, { layers: [{ layer: 1, experts: [0, 1, 4, 5].map((from) => ({ from })) }] }, join(root, 'x'))).rejects.toThrow(
        /multi-token-prediction layer 2 has no edit: its 8 experts would not match the other layers' 4 \(plan it with them, or give --drop-mtp\)/,
      );
    } finally {
      await m.ckpt.close();
    }
    const stats = join(root, 'stats');
    const c = await runMoe(['calibrate', '--model', dir, '--data-ids', ids, '--seq-len', String(SEQ), '--out', stats]);
    expect(c.code).toBe(0);
    const r = await runMoe(['prune', '--model', dir, '--out', join(root, 'y'), '--keep', '4', '--stats', stats, '--quiet']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^moe: the statistics have no multi-token-prediction layer 2 .*give --calib FILE, or --drop-mtp\n$/);
  });
});

describe('MTP layers through quantize and merge', () => {
  it('quantize: the MTP layer is copied byte for byte and declared unquantized in quantization_config; --drop-mtp drops it', async () => {
    const out = join(root, 'q');
    const r = await runMoe(['quantize', '--model', dir, '--out', out, '--bits', '11', '--candidates', '8', '--method', 'rtn', '--group-size', '32', '--quiet']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.num_nextn_predict_layers).toBe(1);
    expect(cfg.quantization_config.dynamic['-:^model\\.layers\\.2\\.']).toEqual({});
    const rep = JSON.parse(await readFile(join(out, 'moe-quantize-report.json'), 'utf8'));
    expect(rep.mtp).toEqual({ unquantized: [2], dropped: [] });
    const a = await openModel(dir);
    const { Checkpoint } = await import('../../src/io/checkpoint.js');
    const o = await Checkpoint.open(out);
    try {
      const names = a.ckpt.tensorNames.filter((n) => n.startsWith('model.layers.2.'));
      expect(names.length).toBeGreaterThan(30);
      for (const n of names) expect(Buffer.from(await o.readBytes(n)).equals(Buffer.from(await a.ckpt.readBytes(n)))).toBe(true);
      // the decoder layer's experts are GPTQ
      expect(o.has('model.layers.1.mlp.experts.0.gate_proj.qweight')).toBe(true);
    } finally {
      await a.ckpt.close();
      await o.close();
    }
    const d = await runMoe([
      'quantize',
      '--model',
      dir,
      '--out',
      join(root, 'q-drop'),
      '--bits',
      '11',
      '--candidates',
      '8',
      '--method',
      'rtn',
      '--group-size',
      '32',
      '--drop-mtp',
      '--quiet',
    ]);
    expect([d.code, d.stderr]).toEqual([0, '']);
    const dcfg = JSON.parse(await readFile(join(root, 'q-drop', 'config.json'), 'utf8'));
    expect(dcfg.num_nextn_predict_layers).toBe(0);
    expect(JSON.parse(await readFile(join(root, 'q-drop', 'moe-quantize-report.json'), 'utf8')).mtp).toEqual({ unquantized: [], dropped: [2] });
    const od = await Checkpoint.open(join(root, 'q-drop'));
    expect(od.tensorNames.filter((n) => n.startsWith('model.layers.2.'))).toEqual([]);
    await od.close();
  });

  it('merge --calib: the MTP layer is merged to the same count on its own inputs, tensor by tensor; --plan reproduces it', async () => {
    const out = join(root, 'm');
    const plan = join(root, 'm-plan.json');
    // anchor rows and no alignment: each merged expert is the weighted average of its members as stored
    const args = ['--groups', '4', '--align', 'none', '--router', 'anchor', '--quiet'];
    const r = await runMoe([
      'merge',
      '--model',
      dir,
      '--out',
      out,
      ...args,
      '--drop',
      'never',
      '--calib-ids',
      ids,
      '--seq-len',
      String(SEQ),
      '--save-plan',
      plan,
    ]);
    expect([r.code, r.stderr]).toEqual([0, '']);
    const rep = JSON.parse(await readFile(join(out, 'moe-merge-report.json'), 'utf8'));
    expect(rep.mtp).toEqual({ kept: [2], dropped: [] });
    expect(rep.layers.map((l: { layer: number }) => l.layer)).toEqual([1, 2]);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect([cfg.n_routed_experts, cfg.num_nextn_predict_layers]).toEqual([4, 1]);
    const groups = rep.layers.find((l: { layer: number }) => l.layer === 2).groups as { anchor: number; members: number[]; weights: number[] }[];
    expect(groups.flatMap((g) => g.members).sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    const a = await openModel(dir);
    const o = await openModel(out);
    try {
      expect(o.view.mtp?.length).toBe(1);
      const H = a.view.dims.hidden;
      const rw = await a.ckpt.readF32(block(a).router.weight);
      const cb = await a.ckpt.readF32(block(a).router.correctionBias!);
      expect(o.ckpt.shape(block(o).router.weight)).toEqual([4, H]);
      expect(Array.from(await o.ckpt.readF32(block(o).router.weight))).toEqual(
        groups.flatMap((g) => Array.from(rw.subarray(g.anchor * H, (g.anchor + 1) * H))),
      );
      expect(Array.from(await o.ckpt.readF32(block(o).router.correctionBias!))).toEqual(groups.map((g) => cb[g.anchor]!));
      for (const [i, g] of groups.entries())
        for (const p of ['gate', 'up', 'down'] as const) {
          const got = (await loadLinear(o.ckpt, block(o).experts[i]![p])).w;
          const parts = await Promise.all(g.members.map(async (j) => (await loadLinear(a.ckpt, block(a).experts[j]![p])).w));
          const want = Float64Array.from(got, (_, k) => g.weights.reduce((acc, w, m) => acc + w * parts[m]![k]!, 0));
          const worst = got.reduce((acc, v, k) => Math.max(acc, Math.abs(v - want[k]!)), 0);
          expect(worst).toBeLessThan(1e-6);
        }
      for (const n of ['eh_proj.weight', 'enorm.weight', 'hnorm.weight', 'shared_head.norm.weight', 'self_attn.kv_b_proj.weight'])
        expect(Array.from(await o.ckpt.readF32(`model.layers.2.${n}`))).toEqual(Array.from(await a.ckpt.readF32(`model.layers.2.${n}`)));
    } finally {
      await a.ckpt.close();
      await o.ckpt.close();
    }
    // the saved plan holds the MTP layer: applied without calibration, the same bytes
    const again = join(root, 'm-again');
    const p = await runMoe(['merge', '--model', dir, '--out', again, ...args, '--plan', plan]);
    expect([p.code, p.stderr]).toEqual([0, '']);
    for (const f of ['model.safetensors', 'config.json']) expect((await readFile(join(again, f))).equals(await readFile(join(out, f)))).toBe(true);
  });

  it('merge: saved statistics without the MTP layer are refused in one line; --drop-mtp drops the layer and says so', async () => {
    const stats = join(root, 'stats-merge');
    const c = await runMoe(['calibrate', '--model', dir, '--data-ids', ids, '--seq-len', String(SEQ), '--out', stats]);
    expect(c.code).toBe(0);
    const r = await runMoe(['merge', '--model', dir, '--out', join(root, 'ms'), '--groups', '4', '--stats', stats, '--quiet']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^moe: the statistics have no multi-token-prediction layer 2 .*give --calib FILE, or --drop-mtp\n$/);
    const d = await runMoe(['merge', '--model', dir, '--out', join(root, 'md'), '--groups', '4', '--stats', stats, '--drop-mtp', '--quiet']);
    expect([d.code, d.stderr]).toEqual([0, '']);
    const cfg = JSON.parse(await readFile(join(root, 'md', 'config.json'), 'utf8'));
    expect([cfg.n_routed_experts, cfg.num_nextn_predict_layers]).toEqual([4, 0]);
    const rep = JSON.parse(await readFile(join(root, 'md', 'moe-merge-report.json'), 'utf8'));
    expect(rep.mtp).toEqual({ kept: [], dropped: [2] });
    expect(rep.layers.map((l: { layer: number }) => l.layer)).toEqual([1]);
  });
});
