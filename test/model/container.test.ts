/**
 * Multimodal containers (src/model/container.ts): a Llama4ForConditionalGeneration checkpoint is read as its
 * language model (llama4_text) under the container's tensor names; an edit writes the language model's tensors and
 * its config keys inside `text_config`, and copies the vision tower and projector byte for byte.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoeError } from '../../src/errors.js';
import { containerConfigUpdates, containers } from '../../src/model/container.js';
import { loadRouter, loadSwiGLU } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import { writeExpertEdit, type ExpertEditPlan } from '../../src/model/rewrite.js';
import type { MoeBlock } from '../../src/model/types.js';
import { initBackend } from '../../src/runtime/backend.js';
import { streamModel } from '../../src/runtime/stream.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint, makeTinyContainer } from '../helpers/families.js';

let root: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-container-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const eq = (a: Uint8Array, b: Uint8Array) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

describe('Llama4ForConditionalGeneration container', () => {
  it('is read as llama4_text under language_model.*, with the text config', async () => {
    const c = await makeTinyContainer('llama4', join(root, 'view'), { layers: 4 });
    const m = await openModel(c.dir);
    try {
      expect(m.view.family).toBe('llama4_text');
      expect(m.view.container?.model_type).toBe('llama4');
      expect(m.view.embed).toBe('language_model.model.embed_tokens.weight');
      expect(m.view.lmHead).toBe('language_model.lm_head.weight');
      expect(m.view.finalNorm.weight).toBe('language_model.model.norm.weight');
      expect(m.view.layers.map((l) => l.prefix)).toEqual([0, 1, 2, 3].map((l) => `language_model.model.layers.${l}.`));
      expect(m.view.moeLayers).toEqual([1, 3]);
      const b = m.view.layers[1]!.block as MoeBlock;
      expect(b.router.weight).toBe('language_model.model.layers.1.feed_forward.router.weight');
      expect(b.experts[2]!.gate).toMatchObject({ tensor: 'language_model.model.layers.1.feed_forward.experts.gate_up_proj', expert: 2, rows: [0, 16] });
      expect(m.view.config.model_type).toBe('llama4_text');
      expect(m.view.dims.numExperts).toBe(4);
    } finally {
      await m.ckpt.close();
    }
  });

  it('runs exactly as the same language model saved on its own', async () => {
    const c = await makeTinyContainer('llama4', join(root, 'fwd'), { layers: 4 });
    const inner = await openModel(`${c.dir}.text`);
    const outer = await openModel(c.dir);
    try {
      const win = [Int32Array.from({ length: 12 }, (_, i) => (i * 7 + 3) % 64)];
      const a = await streamModel(inner, win, {}, { scoreLogits: true });
      const b = await streamModel(outer, win, {}, { scoreLogits: true });
      expect(b.scored).toBe(11);
      expect(b.nll).toBe(a.nll);
    } finally {
      await inner.ckpt.close();
      await outer.ckpt.close();
    }
  });

  it('an expert edit goes into text_config and the language tensors; vision and projector are copied byte for byte', async () => {
    const c = await makeTinyContainer('llama4', join(root, 'edit'), { layers: 4 });
    const m = await openModel(c.dir);
    const out = join(root, 'edit-out');
    const kept = [3, 1];
    try {
      const plan: ExpertEditPlan = { layers: m.view.moeLayers.map((layer) => ({ layer, experts: kept.map((from) => ({ from })) })) };
      await writeExpertEdit(m, plan, out);
      const o = await openModel(out);
      try {
        expect(o.view.family).toBe('llama4_text');
        expect(o.view.dims.numExperts).toBe(2);
        const text = await readFile(join(out, 'config.json'), 'utf8');
        const cfg = JSON.parse(text) as Record<string, Record<string, unknown>>;
        expect(cfg.text_config!.num_local_experts).toBe(2);
        expect(cfg.num_local_experts).toBeUndefined();
        expect(cfg.model_type as unknown).toBe('llama4');
        expect(cfg.architectures as unknown).toEqual(['Llama4ForConditionalGeneration']);
        // the config's text differs from the input's in that one value only
        const before = await readFile(join(c.dir, 'config.json'), 'utf8');
        expect(text).toBe(before.replace('"num_local_experts": 4', '"num_local_experts": 2'));
        for (const v of c.vision) expect(eq(await o.ckpt.readBytes(v.name), c.bytes.get(v.name)!), v.name).toBe(true);
        for (const l of m.view.moeLayers) {
          const bi = m.view.layers[l]!.block as MoeBlock;
          const bo = o.view.layers[l]!.block as MoeBlock;
          expect(o.ckpt.shape(bo.router.weight)).toEqual([2, 32]);
          expect(o.ckpt.shape(bo.experts[0]!.gate.tensor)).toEqual([2, 32, 32]);
          const ri = await loadRouter(m.ckpt, bi.router);
          const ro = await loadRouter(o.ckpt, bo.router);
          for (let i = 0; i < kept.length; i++) {
            expect(ro.w.subarray(i * 32, (i + 1) * 32)).toEqual(ri.w.subarray(kept[i]! * 32, (kept[i]! + 1) * 32));
            const wi = await loadSwiGLU(m.ckpt, bi.experts[kept[i]!]!);
            const wo = await loadSwiGLU(o.ckpt, bo.experts[i]!);
            for (const r of ['gate', 'up', 'down'] as const) expect(wo[r].w).toEqual(wi[r].w);
          }
        }
        // dense layers, attention, embeddings, shared experts: byte for byte
        for (const n of [
          'language_model.model.layers.0.feed_forward.gate_proj.weight',
          'language_model.model.embed_tokens.weight',
          'language_model.model.layers.3.feed_forward.shared_expert.down_proj.weight',
        ])
          expect(eq(await o.ckpt.readBytes(n), await m.ckpt.readBytes(n)), n).toBe(true);
        expect(o.ckpt.tensorNames.length).toBe(m.ckpt.tensorNames.length);
      } finally {
        await o.ckpt.close();
      }
    } finally {
      await m.ckpt.close();
    }
  });

  it('refuses a text_config of another family and a class that is not the container', async () => {
    const c = await makeTinyContainer('llama4', join(root, 'bad'), { layers: 2 });
    const cfg = JSON.parse(await readFile(join(c.dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    const tc = cfg.text_config as Record<string, unknown>;
    const attempt = async (config: Record<string, unknown>, msg: RegExp) => {
      await writeFile(join(c.dir, 'config.json'), JSON.stringify(config));
      const e = await openModel(c.dir).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(MoeError);
      expect((e as MoeError).message).toMatch(msg);
      expect((e as MoeError).message).not.toContain('\n');
    };
    await attempt({ ...cfg, text_config: { ...tc, model_type: 'mixtral' } }, /text_config\.model_type 'mixtral' is not llama4_text/);
    await attempt({ ...cfg, architectures: ['Llama4ForCausalLM'] }, /model_type 'llama4' is read only as Llama4ForConditionalGeneration/);
    await attempt({ ...cfg, text_config: null }, /needs the language model's config as an object in 'text_config'/);
  });
});

describe('llama4_text: what moe does not do for it is refused in one line, nothing written', () => {
  it('passes that recompute experts on the block input, expert-input Grams, and GPTQ of its fused experts', async () => {
    const dir = join(root, 'refuse');
    await makeTinyCheckpoint('llama4_text', dir, { layers: 2 });
    const ids = join(root, 'refuse.jsonl');
    await writeFile(ids, `${JSON.stringify(Array.from({ length: 40 }, (_, i) => (i * 5 + 1) % 64))}\n`);
    const data = ['--calib-ids', ids, '--seq-len', '8', '--quiet'];
    const cases: [string[], RegExp][] = [
      [
        ['prune', '--model', dir, '--out', join(root, 'r1'), '--keep', '2', '--method', 'reconstruct', ...data],
        /scales each routed expert's input by its router weight/,
      ],
      [['merge', '--model', dir, '--out', join(root, 'r2'), '--groups', '2', ...data], /scales each routed expert's input by its router weight/],
      [
        ['calibrate', '--model', dir, '--out', join(root, 'r3'), '--data-ids', ids, '--seq-len', '8', '--grams', '--quiet'],
        /Gram matrices of the experts' inputs are not collected/,
      ],
      [
        ['quantize', '--model', dir, '--out', join(root, 'r4'), '--bits', '4', '--method', 'rtn', '--quiet'],
        /fused in 3-D tensors and GPTQModel defines no per-expert module layout/,
      ],
    ];
    for (const [args, msg] of cases) {
      const r = await runMoe(args);
      expect(r.code, args.join(' ')).toBe(3);
      expect(r.stderr.trim()).toMatch(msg);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(existsSync(args[args.indexOf('--out') + 1]!)).toBe(false);
    }
    // the statistics route works: prune by REAP counts ||f(w x)||, the contribution of each slot
    const ok = await runMoe(['prune', '--model', dir, '--out', join(root, 'r5'), '--keep', '2', '--method', 'reap', ...data]);
    expect(ok.code).toBe(0);
  });
});

describe('containerConfigUpdates', () => {
  it("puts the family's keys into text_config and keeps quantization_config and top-level-only keys at the top", () => {
    const c = containers().get('llama4')!;
    const config = {
      model_type: 'llama4',
      dtype: 'bfloat16',
      text_config: { num_local_experts: 16, num_experts_per_tok: 1, rope_theta: 5e5 },
      vision_config: {},
    };
    const u = containerConfigUpdates(c, config, {
      num_local_experts: 8,
      n_group: 2,
      rope_theta: null,
      quantization_config: { bits: 4 },
      dtype: 'float16',
      moe: { format: 'moe-lowrank' },
    });
    expect(u).toEqual({
      quantization_config: { bits: 4 },
      dtype: 'float16',
      moe: { format: 'moe-lowrank' },
      text_config: { num_local_experts: 8, num_experts_per_tok: 1, n_group: 2 },
    });
    // the input is not modified
    expect(config.text_config).toEqual({ num_local_experts: 16, num_experts_per_tok: 1, rope_theta: 5e5 });
    expect(containerConfigUpdates(c, config, { quantization_config: null })).toEqual({ quantization_config: null });
  });
});
