/**
 * The writability probe: every command that writes checks, before any heavy work, that its output can be created
 * where it goes. On a real read-only mount each fails with exit 4, one `moe:` line naming the real cause (EROFS, not
 * the ENOENT mkdir -p reports there), and no work done: the --save-plan file (written after the scoring pass, to a
 * writable place) does not exist, and no progress line (they go to stderr, which holds only the error) was printed.
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from '../helpers/cli.js';
import { oneLine, snapshot, tinyModel } from './helpers.js';
import { canMount, mountTmpfs, remountReadOnly, unmount } from './mounts.js';

let root: string;
let model: string;
let calib: string;
let ro: string;

describe.runIf(canMount)('a read-only output location fails first, with its real cause (exit 4)', () => {
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'moe-safety-ro-'));
    ({ model, calib } = await tinyModel(join(root, 'model')));
    ro = join(root, 'ro');
    mountTmpfs(ro, '1m', true);
  });
  afterAll(async () => {
    unmount(ro);
    await rm(root, { recursive: true, force: true });
  });

  const PIPELINES: [string, string[]][] = [
    ['prune', ['prune', '--keep', '3', '--method', 'frequency', '--calib', '$C', '--seq-len', '8']],
    ['merge', ['merge', '--groups', '2', '--calib', '$C', '--seq-len', '8']],
    ['quantize', ['quantize', '--bits', '7', '--candidates', '4', '--method', 'rtn']],
    ['decompose', ['decompose', '--ratio', '0.5', '--mode', 'svd']],
  ];

  it.each(PIPELINES)('%s: no scoring pass, no plan, nothing on the mount', async (name, args) => {
    const plan = join(root, `${name}.plan.json`);
    // not --quiet: any progress of a pass that ran would be a second stderr line
    const cmd = [...args.map((a) => (a === '$C' ? calib : a)), '--model', model, '--out', join(ro, 'deep', name), '--save-plan', plan];
    const r = await runMoe(cmd);
    expect(r.code, r.stderr).toBe(4);
    oneLine(r.stderr, new RegExp(`cannot write .*ro/deep/${name}: .*ro is on a read-only filesystem \\(EROFS\\)`));
    expect(existsSync(plan)).toBe(false);
    expect(readdirSync(ro)).toEqual([]);
  });

  it('a dry run says so too (the real run could not publish there), leaving nothing', async () => {
    const r = await runMoe(['prune', '--keep', '3', '--method', 'random', '--model', model, '--out', join(ro, 'x'), '--dry-run']);
    expect(r.code, r.stderr).toBe(4);
    oneLine(r.stderr, /EROFS/);
  });

  it('calibrate: fails before the forward pass', async () => {
    const r = await runMoe(['calibrate', '--model', model, '--data', calib, '--seq-len', '8', '--out', join(ro, 'stats')]);
    expect(r.code, r.stderr).toBe(4);
    oneLine(r.stderr, /cannot write .*ro\/stats: .* read-only filesystem \(EROFS\)/);
  });

  it('dequantize, assemble and run: the same probe', async () => {
    const q = join(root, 'q');
    expect((await runMoe(['quantize', '--bits', '7', '--candidates', '4', '--method', 'rtn', '--model', model, '--out', q, '--quiet'])).code).toBe(0);
    const d = await runMoe(['dequantize', '--model', q, '--out', join(ro, 'dq')]);
    expect(d.code, d.stderr).toBe(4);
    oneLine(d.stderr, /EROFS/);

    const parts = [0, 1].map((i) => join(root, `part${i}`));
    for (const [i, p] of parts.entries()) {
      const r = await runMoe(['prune', '--keep', '3', '--method', 'random', '--shard', `${i}/2`, '--model', model, '--out', p, '--quiet']);
      expect(r.code, r.stderr).toBe(0);
    }
    const a = await runMoe(['assemble', ...parts, '--out', join(ro, 'asm')]);
    expect(a.code, a.stderr).toBe(4);
    oneLine(a.stderr, /EROFS/);

    const recipe = join(root, 'r.yaml');
    writeFileSync(recipe, `model: ${model}\nout: ${join(ro, 'run-out')}\nstages:\n  - prune: { keep: 3, method: random }\n`);
    const run = await runMoe(['run', recipe]);
    expect(run.code, run.stderr).toBe(4);
    oneLine(run.stderr, /EROFS/);
    expect(readdirSync(ro)).toEqual([]);
  });

  it('--force over a previous output on a filesystem since made read-only: refused, the output survives byte for byte', async () => {
    const m = join(root, 'm2');
    mountTmpfs(m, '8m');
    try {
      const out = join(m, 'out');
      const cmd = ['prune', '--keep', '3', '--method', 'random', '--model', model, '--out', out, '--quiet'];
      expect((await runMoe(cmd)).code).toBe(0);
      const before = snapshot(m);
      remountReadOnly(m);
      const r = await runMoe([...cmd, '--force']);
      expect(r.code, r.stderr).toBe(4);
      oneLine(r.stderr, /EROFS/);
      expect(snapshot(m)).toEqual(before);
    } finally {
      unmount(m);
    }
  });
});
