import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatReport, inspectModel } from '../../src/inspect/report.js';
import { openModel } from '../../src/model/open.js';
import type { TensorSpec } from '../../src/io/writer.js';
import { FAMILIES, makeTinyCheckpoint, type Family, type TinyOptions } from '../helpers/families.js';

const run = promisify(execFile);
let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-inspect-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/**
 * Parameter counts straight from the generator's tensor list, by name pattern (independent of the view):
 * scales are not parameters, an MXFP4 block byte holds two.
 */
function independentCounts(tensors: TensorSpec[], E: number, K: number) {
  let total = 0,
    routed = 0,
    shared = 0;
  for (const t of tensors) {
    if (t.name.endsWith('_scale_inv') || t.name.endsWith('_scales')) continue;
    const n = t.shape.reduce((a, b) => a * b, 1) * (t.name.endsWith('_blocks') ? 2 : 1);
    total += n;
    if (/shared_expert|shared_mlp/.test(t.name)) shared += n;
    else if (/experts\.\d+\.|mlp\.experts\.|feed_forward\.experts\.|input_linear|output_linear/.test(t.name)) routed += n;
  }
  return { total, routed, shared, active: total - routed + (routed * K) / E };
}

const CASES: [string, Family, TinyOptions][] = [
  ...FAMILIES.map((f): [string, Family, TinyOptions] => [f, f, {}]),
  ['deepseek_v3 fp8', 'deepseek_v3', { dtype: 'FP8' }],
  ['gpt_oss mxfp4', 'gpt_oss', { mxfp4: true }],
  ['mixtral v5 fused', 'mixtral', { fusedExperts: true }],
  ['qwen2_moe 6 experts top-3 sharded', 'qwen2_moe', { experts: 6, topK: 3, maxShardBytes: 30_000 }],
];

describe.each(CASES)('inspect %s', (label, family, opts) => {
  it('counts parameters as an independent count from the tensor shapes does; bytes and shards add up', async () => {
    const dir = join(root, label.replace(/\W/g, '_'));
    const tiny = await makeTinyCheckpoint(family, dir, opts);
    const m = await openModel(dir);
    try {
      const r = inspectModel(m);
      const E = opts.experts ?? 4;
      const K = opts.topK ?? 2;
      const want = independentCounts(tiny.tensors, E, K);
      expect(r.params.total).toBe(want.total);
      expect(r.params.routedExperts).toBe(want.routed);
      expect(r.params.sharedExperts).toBe(want.shared);
      expect(r.params.activePerToken).toBeCloseTo(want.active, 6);
      expect(r.params.routedExperts).toBeGreaterThan(0);
      expect(r.experts).toMatchObject({ routed: E, topK: K });
      expect(r.layers.moe + r.layers.dense).toBe(3);
      const bytes = tiny.tensors.reduce(
        (a, t) => a + t.shape.reduce((x, y) => x * y, 1) * ({ F32: 4, BF16: 2, U8: 1, F8_E4M3: 1 } as Record<string, number>)[t.dtype]!,
        0,
      );
      expect(r.bytes.total).toBe(bytes);
      expect(Object.values(r.bytes.byDtype).reduce((a, b) => a + b, 0)).toBe(bytes);
      expect(r.shards.reduce((a, s) => a + s.bytes, 0)).toBe(bytes);
      expect(r.shards.reduce((a, s) => a + s.tensors, 0)).toBe(tiny.tensors.length);
      if (opts.maxShardBytes) {
        expect(r.shards.length).toBeGreaterThan(1);
        expect(formatReport(r)).toMatch(r.shards.length > 4 ? /^shards\s+\d+ files, .* to .* each/m : /^shards\s+\d+: model-00001-of-/m);
      }
      if (opts.mxfp4) expect(r.formats.mxfp4).toBe(3 * E * 3);
      if (opts.dtype === 'FP8') expect(r.bytes.byDtype.F8_E4M3).toBeGreaterThan(0);
      const text = formatReport(r);
      expect(text).toContain(family);
      expect(text).toMatch(/active per token/);
    } finally {
      await m.ckpt.close();
    }
  });
});

describe('inspect with a multi-token-prediction layer', () => {
  it('counts layers beyond num_hidden_layers in the total only, not as active', async () => {
    const dir = join(root, 'mtp');
    const tiny = await makeTinyCheckpoint('deepseek_v3', dir, { layers: 3 });
    const { writeFile, readFile } = await import('node:fs/promises');
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 2, num_nextn_predict_layers: 1 }));
    const m = await openModel(dir);
    const r = inspectModel(m);
    await m.ckpt.close();
    const layer2 = tiny.tensors.filter((t) => t.name.startsWith('model.layers.2.')).reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    const all = independentCounts(tiny.tensors, 4, 2);
    expect(r.params.extraLayers).toBe(layer2);
    expect(r.params.total).toBe(all.total);
    const routedInView = tiny.tensors
      .filter((t) => /^model\.layers\.1\.mlp\.experts\./.test(t.name))
      .reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    expect(r.params.routedExperts).toBe(routedInView);
    expect(r.params.activePerToken).toBeCloseTo(all.total - layer2 - routedInView / 2, 6);
  });
});

describe('moe inspect on the command line', () => {
  const bin = join(process.cwd(), 'bin/moe.js');
  beforeAll(async () => {
    // the CLI runs from dist: rebuild when the sources this test exercises are newer than the build
    const built = await stat('dist/src/inspect/report.js').then(
      (s) => s.mtimeMs,
      () => 0,
    );
    const srcs = ['src/inspect/report.ts', 'src/cli/commands/inspect.ts', 'src/model/view.ts', 'src/model/load.ts'];
    const newest = Math.max(...(await Promise.all(srcs.map((s) => stat(s).then((x) => x.mtimeMs)))));
    if (newest > built) await run('npx', ['tsc', '-p', '.']).catch(() => undefined);
  }, 120_000);

  it('--json prints stable JSON with the counts', async () => {
    const dir = join(root, 'cli-mixtral');
    const tiny = await makeTinyCheckpoint('mixtral', dir);
    const { stdout } = await run('node', [bin, 'inspect', '--model', dir, '--json', '--no-probe']);
    const r = JSON.parse(stdout);
    expect(Object.keys(r.params)).toEqual(['total', 'routedExperts', 'sharedExperts', 'nonExpert', 'extraLayers', 'activePerToken']);
    expect(Object.keys(r)).toEqual([
      'model',
      'family',
      'architectures',
      'layers',
      'experts',
      'routing',
      'attention',
      'hidden',
      'vocab',
      'params',
      'bytes',
      'shards',
      'formats',
      'warnings',
    ]);
    // the helper writes router_jitter_noise as 0, which transformers 5 refuses (MixtralConfig types it float)
    expect(r.warnings).toEqual([expect.stringContaining('(router_jitter_noise)')]);
    expect(r.family).toBe('mixtral');
    expect(r.params.total).toBe(independentCounts(tiny.tensors, 4, 2).total);
  });

  it('prints a table with the backend that would be used and why', async () => {
    const dir = join(root, 'cli-olmoe');
    await makeTinyCheckpoint('olmoe', dir);
    const { stdout } = await run('node', [bin, 'inspect', '--model', dir]);
    expect(stdout).toMatch(/^family\s+olmoe/m);
    expect(stdout).toMatch(/^backend\s+(tensorflow|wasm|cpu) — /m);
    // the ladder starts at tensorflow: when it is not chosen the table says why it was skipped
    if (!/^backend\s+tensorflow/m.test(stdout)) expect(stdout).toMatch(/skipped tensorflow: @tensorflow\/tfjs-node-gpu/);
  });

  async function failing(dir: string): Promise<{ code: number; stderr: string }> {
    const e = await run('node', [bin, 'inspect', '--model', dir, '--json']).then(
      () => undefined,
      (x: { code: number; stderr: string }) => x,
    );
    expect(e).toBeDefined();
    return e!;
  }

  it('unknown model_type: one line listing the supported families, exit 3', async () => {
    const dir = join(root, 'cli-unknown');
    await makeTinyCheckpoint('mixtral', dir, { config: { model_type: 'mystery_moe' } });
    const { code, stderr } = await failing(dir);
    expect(code).toBe(3);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/^moe: .*model_type 'mystery_moe' is not supported \(supported: .*deepseek_v3.*gpt_oss/);
  });

  it('--json with the backend probe lists every candidate with a reason', async () => {
    const dir = join(root, 'cli-probe');
    await makeTinyCheckpoint('qwen3_moe', dir);
    const { stdout } = await run('node', [bin, 'inspect', '--model', dir, '--json']);
    const r = JSON.parse(stdout);
    expect(r.backend.candidates.map((c: { name: string }) => c.name)).toEqual(['tensorflow', 'webgpu', 'wasm', 'cpu']);
    expect(r.backend.candidates.every((c: { reason: string }) => c.reason.length > 0)).toBe(true);
    expect(['tensorflow', 'wasm', 'cpu']).toContain(r.backend.chosen);
  });

  it('reports the worker threads and where the count comes from: the cores by default, MOE_THREADS, --threads', async () => {
    const dir = join(root, 'cli-threads');
    await makeTinyCheckpoint('mixtral', dir);
    const { availableParallelism } = await import('node:os');
    const env = { ...process.env };
    delete env['MOE_THREADS'];
    const def = JSON.parse((await run('node', [bin, 'inspect', '--model', dir, '--json'], { env })).stdout);
    expect(def.threads).toEqual({ threads: availableParallelism(), available: availableParallelism(), reason: expect.stringMatching(/cores available/) });
    const fromEnv = JSON.parse((await run('node', [bin, 'inspect', '--model', dir, '--json'], { env: { ...env, MOE_THREADS: '5' } })).stdout);
    expect(fromEnv.threads).toMatchObject({ threads: 5, reason: 'MOE_THREADS=5' });
    const flag = await run('node', [bin, 'inspect', '--model', dir, '--threads', '3'], { env: { ...env, MOE_THREADS: '5' } });
    expect(flag.stdout).toMatch(/^threads +3 — --threads 3( \(more than the \d+ cores available\))?$/m);
    const bad = await run('node', [bin, 'inspect', '--model', dir, '--json'], { env: { ...env, MOE_THREADS: 'many' } }).catch((e) => e);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^moe: MOE_THREADS must be a whole number >= 1, got 'many'/);
  });

  it('missing config key: one line naming it, exit 3', async () => {
    const dir = join(root, 'cli-nokey');
    await makeTinyCheckpoint('deepseek_v2', dir, { config: { kv_lora_rank: null } });
    const { code, stderr } = await failing(dir);
    expect(code).toBe(3);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/^moe: .*required key 'kv_lora_rank' is missing/);
  });
});
