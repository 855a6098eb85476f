/**
 * A real full disk mid-write: the output goes to a small tmpfs that fills while the checkpoint's tensors are being
 * written. The command fails with exit 4 and one `moe:` line naming ENOSPC, publishes nothing, leaves no staging
 * directory, and does not touch its input; once the filesystem has room, the same command completes and its output is
 * byte-identical to a run that never ran out of space. (MOE_FAULT, publish-order.test.ts, fakes ENOSPC at the
 * report only; this is the kernel's ENOSPC at an arbitrary point of the data.)
 */
import { readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from '../helpers/cli.js';
import { oneLine, snapshot, stagingLeft, tinyModel } from './helpers.js';
import { canMount, mountTmpfs, resizeTmpfs, unmount } from './mounts.js';

let root: string;
let model: string;
let parts: string[];
const mounts: string[] = [];

/**
 * An output's files, byte for byte; in its report the wall-clock fields (`seconds`, `timings`, `...Ms`) are left
 * out: they are the only bytes two correct runs may differ in.
 */
function outputBytes(dir: string): Record<string, unknown> {
  const files: Record<string, unknown> = snapshot(dir);
  const untimed = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(untimed)
      : v && typeof v === 'object'
        ? Object.fromEntries(
            Object.entries(v)
              .filter(([k]) => !/^(seconds|timings)$|Ms$/.test(k))
              .map(([k, x]) => [k, untimed(x)]),
          )
        : v;
  for (const f of Object.keys(files)) {
    if (/^moe-.*report.*\.json$/.test(f)) files[f] = untimed(JSON.parse(Buffer.from(files[f] as string, 'base64').toString('utf8')));
  }
  return files;
}

/** Every input of the tests (the model and the parts), byte for byte. */
const inputsNow = () => [model, ...parts].map((d) => snapshot(d));

describe.runIf(canMount)('a disk that fills mid-write: exit 4, nothing published, the rerun completes byte-identical', () => {
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'moe-safety-full-'));
    ({ model } = await tinyModel(join(root, 'model')));
    parts = [0, 1].map((i) => join(root, `part${i}`));
    for (const [i, p] of parts.entries()) {
      const r = await runMoe(['prune', '--keep', '3', '--method', 'random', '--shard', `${i}/2`, '--model', model, '--out', p, '--quiet']);
      expect(r.code, r.stderr).toBe(0);
    }
  });
  afterAll(async () => {
    for (const m of mounts) unmount(m);
    await rm(root, { recursive: true, force: true });
  });

  // each output is 60-90 KB, its checkpoint 47-83 KB: a 32 KB tmpfs holds the staging bookkeeping and the header,
  // then fills partway through the tensor data
  const CASES: [string, () => string[]][] = [
    ['prune', () => ['prune', '--keep', '3', '--method', 'random', '--model', model]],
    ['quantize', () => ['quantize', '--bits', '7', '--candidates', '4', '--method', 'rtn', '--model', model]],
    ['assemble', () => ['assemble', ...parts]],
  ];

  it.each(CASES)('%s', async (name, args) => {
    const m = join(root, `fs-${name}`);
    mountTmpfs(m, '4m');
    mounts.push(m);
    const out = join(m, 'out');
    const cmd = [...args(), '--out', out, '--quiet'];
    const inputs = inputsNow();
    // the reference: the same command, same path, on a filesystem with room
    const ok = await runMoe(cmd);
    expect(ok.code, ok.stderr).toBe(0);
    const reference = outputBytes(out);
    await rm(out, { recursive: true });

    resizeTmpfs(m, '32k');
    const r = await runMoe(cmd);
    expect(r.code, r.stderr).toBe(4);
    oneLine(r.stderr, /cannot write .*\/fs-\w+\/\.moe-staging-out\/(model\.safetensors|\.moe-journal): ENOSPC \(no space left on the device\)$/);
    expect(readdirSync(m)).toEqual([]);
    expect(stagingLeft(m)).toEqual([]);
    expect(inputsNow()).toEqual(inputs);

    resizeTmpfs(m, '4m');
    const again = await runMoe(cmd);
    expect(again.code, again.stderr).toBe(0);
    expect(outputBytes(out)).toEqual(reference);
    expect(Object.keys(reference)).toContain('model.safetensors');
    expect(readdirSync(m)).toEqual(['out']);
  });
});
