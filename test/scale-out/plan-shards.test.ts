/**
 * `moe plan-shards`: the jobs it prints, run in their listed order (each job only after its `needs`), assemble to
 * the bytes one whole run writes; the estimates are the dry run's and the input's bytes per owned layer.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ShardPlan } from '../../src/cli/commands/plan-shards.js';
import { runMoe } from '../helpers/cli.js';
import { outputFiles } from '../helpers/files.js';

const MODEL = 'test/fixtures/tiny-mixtral';
const CALIB = 'test/fixtures/text/calib.txt';
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-plan-shards-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Plan into a shared directory that exists (as a mounted volume or an artifact directory does). */
async function plan(args: string[]): Promise<ShardPlan> {
  await mkdir(args[args.indexOf('--dir') + 1]!, { recursive: true });
  const r = await runMoe(['plan-shards', ...args, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as ShardPlan;
}

/** Run every job in the listed order, checking that each one's needs ran before it. */
async function runJobs(p: ShardPlan): Promise<void> {
  const done = new Set<string>();
  for (const j of p.jobs) {
    for (const n of j.needs) expect(done.has(n), `${j.id} needs ${n}`).toBe(true);
    const r = await runMoe([...j.argv, '--quiet']);
    expect(r.code, `${j.id}: ${r.stderr}`).toBe(0);
    done.add(j.id);
  }
}

/** The largest tensor's byte length in a single-file checkpoint, read from its header by hand. */
async function largestTensorBytes(dir: string): Promise<number> {
  const buf = await readFile(join(dir, 'model.safetensors'));
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { data_offsets?: [number, number] }>;
  return Math.max(...Object.values(header).map((t) => (t.data_offsets ? t.data_offsets[1] - t.data_offsets[0] : 0)));
}

async function safetensorsBytes(dir: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(dir)) if (f.endsWith('.safetensors')) n += (await stat(join(dir, f))).size;
  return n;
}

describe('moe plan-shards', () => {
  it('prune --method random, 2 shards: plan, layer shards, assemble; the same bytes as one run', async () => {
    const dir = join(root, 'prune');
    const out = join(dir, 'out');
    const flags = ['--model', MODEL, '--method', 'random', '--seed', '3', '--keep', '5'];
    const p = await plan(['--shards', '2', '--dir', dir, '--', 'prune', ...flags, '--out', out]);
    expect(p.jobs.map((j) => j.id)).toEqual(['plan', 'shard-0', 'shard-1', 'assemble']);
    expect(p.jobs[1]!.argv).toEqual(['prune', ...flags, '--plan', join(dir, 'plan.json'), '--shard', '0/2', '--out', join(dir, 'part-0')]);
    await runJobs(p);
    const single = join(root, 'prune-single');
    expect((await runMoe(['prune', ...flags, '--out', single, '--quiet'])).code).toBe(0);
    expect(await outputFiles(out)).toEqual(await outputFiles(single));
    // a uniform edit of every layer: each shard's predicted bytes are its part's tensor bytes (headers aside)
    for (const j of p.jobs.filter((j) => j.phase === 'layer-shard')) {
      const actual = await safetensorsBytes(j.writes[0]!);
      expect(Math.abs(j.estBytesWritten! - actual) / actual).toBeLessThan(0.02);
      expect(j.estPeakBytes).toBeGreaterThan(100 * 2 ** 20);
    }
    const whole = await safetensorsBytes(out);
    expect(Math.abs(p.jobs.at(-1)!.estBytesWritten! - whole) / whole).toBeLessThan(0.02);
    // assemble: the bare runtime (100 MiB) plus one copy chunk read and written (tensors under 64 MiB: the largest)
    expect(p.jobs.at(-1)!.estPeakBytes).toBe(100 * 2 ** 20 + 2 * (await largestTensorBytes(MODEL)));
  }, 120_000);

  it('quantize --method rtn with a saved plan, 3 shards: the same bytes as one run', async () => {
    const dir = join(root, 'quantize');
    const out = join(dir, 'out');
    const flags = ['--model', MODEL, '--method', 'rtn', '--bits', '4.4', '--candidates', '4'];
    const p = await plan(['--shards', '3', '--dir', dir, '--', 'quantize', ...flags, '--out', out]);
    expect(p.jobs.filter((j) => j.phase === 'layer-shard')).toHaveLength(3);
    await runJobs(p);
    const single = join(root, 'quantize-single');
    expect((await runMoe(['quantize', ...flags, '--out', single, '--quiet'])).code).toBe(0);
    expect(await outputFiles(out)).toEqual(await outputFiles(single));
  }, 120_000);

  it('--data adds calibrate shards and a merge; the pipeline reads the summed --stats: the same bytes as one --calib run', async () => {
    const dir = join(root, 'calib');
    const out = join(dir, 'out');
    const flags = ['--model', MODEL, '--method', 'frequency', '--keep', '6'];
    const p = await plan([
      '--shards',
      '2',
      '--calib-shards',
      '3',
      '--data',
      CALIB,
      '--calib-tokens',
      '1024',
      '--seq-len',
      '128',
      '--dir',
      dir,
      '--',
      'prune',
      ...flags,
      '--out',
      out,
    ]);
    expect(p.jobs.map((j) => j.phase)).toEqual([
      'calibrate-shard',
      'calibrate-shard',
      'calibrate-shard',
      'calibrate-merge',
      'plan',
      'layer-shard',
      'layer-shard',
      'assemble',
    ]);
    // the calibration pass's estimate names more than the bare runtime
    expect(p.jobs[0]!.estPeakBytes).toBeGreaterThan(p.jobs[3]!.estPeakBytes!);
    await runJobs(p);
    const single = join(root, 'calib-single');
    const r = await runMoe(['prune', ...flags, '--calib', CALIB, '--calib-tokens', '1024', '--seq-len', '128', '--out', single, '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    expect(await outputFiles(out)).toEqual(await outputFiles(single));
  }, 180_000);

  it('refuses what it cannot plan, in one line, exit 2', async () => {
    const cases = [
      ['--shards', '2'],
      ['--shards', '2', '--', 'inspect', '--model', MODEL],
      ['--shards', '2', '--', 'prune', '--model', MODEL, '--method', 'random', '--keep', '5'],
      ['--shards', '2', '--', 'prune', '--model', MODEL, '--method', 'random', '--keep', '5', '--out', 'x', '--shard', '0/2'],
      ['--shards', '2', '--', 'prune', '--model', MODEL, '--bogus', '--out', 'x'],
      ['--shards', '0', '--', 'prune', '--model', MODEL, '--method', 'random', '--keep', '5', '--out', 'x'],
    ];
    for (const c of cases) {
      const r = await runMoe(['plan-shards', ...c]);
      expect(r.code, c.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^moe: /);
    }
  });
});
