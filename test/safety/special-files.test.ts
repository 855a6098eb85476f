/**
 * Special files: a FIFO (or any non-regular file) as a shard, tokenizer file, data file, plan or statistics file made
 * the command wait forever, and a statistics file linked to /dev/zero grew memory without bound. Every input is
 * stat'ed before it is opened: exit 3, one line, at once, nothing written.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, rmSync, symlinkSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from '../helpers/cli.js';
import { oneLine, tinyModel } from './helpers.js';

let root: string;
let model: string;
let calib: string;
let stats: string;

function fifo(p: string): void {
  execFileSync('mkfifo', [p]);
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-special-'));
  ({ model, calib } = await tinyModel(join(root, 'model')));
  stats = join(root, 'stats');
  const r = await runMoe(['calibrate', '--model', model, '--data', calib, '--seq-len', '8', '--out', stats, '--quiet']);
  expect(r.code, r.stderr).toBe(0);
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const prune = (m: string, out: string, ...extra: string[]) => ['prune', '--model', m, '--keep', '2', '--out', out, '--quiet', ...extra];

describe('non-regular inputs are refused before they are opened (exit 3)', () => {
  it('a FIFO as the shard', async () => {
    const m = join(root, 'fifo-shard');
    cpSync(model, m, { recursive: true });
    rmSync(join(m, 'model.safetensors'));
    fifo(join(m, 'model.safetensors'));
    const r = await runMoe(prune(m, join(root, 'o1'), '--method', 'random'));
    expect(r.code).toBe(3);
    oneLine(r.stderr, /model\.safetensors is a FIFO, not a regular file/);
    expect(existsSync(join(root, 'o1'))).toBe(false);
  }, 30_000);

  it('a FIFO as tokenizer.json', async () => {
    const m = join(root, 'fifo-tok');
    cpSync(model, m, { recursive: true });
    rmSync(join(m, 'tokenizer.json'));
    fifo(join(m, 'tokenizer.json'));
    const r = await runMoe(['eval', '--model', m, '--data', calib, '--seq-len', '8']);
    expect(r.code).toBe(3);
    oneLine(r.stderr, /tokenizer\.json .*FIFO, not a regular file/);
  }, 30_000);

  it('a FIFO as the data file, the plan, and stats.json', async () => {
    const data = join(root, 'data.fifo');
    fifo(data);
    const d = await runMoe(prune(model, join(root, 'o2'), '--method', 'reap', '--calib', data, '--seq-len', '8'));
    expect(d.code).toBe(3);
    oneLine(d.stderr, /not a regular file/);
    const plan = join(root, 'plan.fifo');
    fifo(plan);
    const p = await runMoe(prune(model, join(root, 'o3'), '--method', 'random', '--plan', plan));
    expect(p.code).toBe(3);
    oneLine(p.stderr, /not a regular file/);
    const s = join(root, 'stats-fifo');
    cpSync(stats, s, { recursive: true });
    rmSync(join(s, 'stats.json'));
    fifo(join(s, 'stats.json'));
    const q = await runMoe(prune(model, join(root, 'o4'), '--method', 'frequency', '--stats', s));
    expect(q.code).toBe(3);
    oneLine(q.stderr, /stats\.json is not a regular file/);
  }, 30_000);

  it('a statistics array linked to /dev/zero, or larger than declared', async () => {
    const s = join(root, 'stats-zero');
    cpSync(stats, s, { recursive: true });
    rmSync(join(s, 'layer-0.count.bin'));
    symlinkSync('/dev/zero', join(s, 'layer-0.count.bin'));
    const r = await runMoe(prune(model, join(root, 'o5'), '--method', 'frequency', '--stats', s));
    expect(r.code).toBe(3);
    oneLine(r.stderr, /layer-0\.count\.bin is not a regular file/);
    const big = join(root, 'stats-big');
    cpSync(stats, big, { recursive: true });
    execFileSync('truncate', ['-s', '1G', join(big, 'layer-0.gateSum.bin')]);
    const b = await runMoe(prune(model, join(root, 'o6'), '--method', 'frequency', '--stats', big));
    expect(b.code).toBe(3);
    oneLine(b.stderr, /layer-0\.gateSum\.bin is 1073741824 bytes, expected/);
  }, 30_000);
});
