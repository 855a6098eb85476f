/**
 * EACCES: root bypasses permission bits, so these tests run the CLI as an unprivileged user (nobody, via setpriv) on
 * a directory that user cannot write. The command fails in its first second with exit 4 and one `moe:` line naming
 * the real cause (EACCES), before any heavy work (the --save-plan file, written after scoring to a place it may
 * write, does not exist), and nothing is written. Skipped, loudly, only when this process is not root (then the
 * permission bits are real and a test as this user would need a directory it cannot write that it did not make).
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { oneLine, snapshot, tinyModel } from './helpers.js';

const NOBODY = 65534;
const asRoot = process.platform === 'linux' && process.getuid?.() === 0 && spawnSync('setpriv', ['--version']).status === 0;
if (!asRoot) {
  process.stderr.write('\n*** SKIPPING the EACCES safety tests: they need root (to run the CLI as nobody with setpriv) on Linux. ***\n\n');
}

let root: string;
let model: string;
let calib: string;
let locked: string;
let open_: string;

/** The CLI as nobody, from this checkout (its files are world-readable). */
function moeAsNobody(args: string[]) {
  return spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, '--import', 'tsx', 'src/cli/entry.ts', ...args], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, HOME: '/tmp' },
  });
}

describe.runIf(asRoot)('a directory this user may not write: exit 4, EACCES, before any work', () => {
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'moe-safety-eacces-'));
    chmodSync(root, 0o755); // nobody reads the model here
    ({ model, calib } = await tinyModel(join(root, 'model')));
    locked = join(root, 'locked');
    mkdirSync(locked, { mode: 0o755 }); // root's, not writable by nobody
    open_ = join(root, 'open');
    mkdirSync(open_);
    chmodSync(open_, 0o777); // where nobody may write its plan
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it.each([
    ['prune', ['prune', '--keep', '3', '--method', 'frequency', '--calib', '$C', '--seq-len', '8']],
    ['quantize', ['quantize', '--bits', '7', '--candidates', '4', '--method', 'rtn']],
    ['calibrate', ['calibrate', '--data', '$C', '--seq-len', '8']],
  ])(
    '%s',
    (name, args) => {
      const before = snapshot(model);
      const plan = join(open_, `${name}.plan.json`);
      const cmd = [...args.map((a) => (a === '$C' ? calib : a)), '--model', model, '--out', join(locked, 'deep', name)];
      const r = moeAsNobody(name === 'calibrate' ? cmd : [...cmd, '--save-plan', plan]);
      expect(r.status, r.stderr).toBe(4);
      oneLine(r.stderr, new RegExp(`^moe: cannot write .*locked/deep/${name}: .*/locked is not writable by this user \\(EACCES\\)$`));
      expect(existsSync(plan)).toBe(false);
      expect(readdirSync(locked)).toEqual([]);
      expect(snapshot(model)).toEqual(before);
    },
    120_000,
  );

  it('the control: the same user writes where it may (so the refusals above are the permission bits)', () => {
    const r = moeAsNobody(['prune', '--keep', '3', '--method', 'random', '--model', model, '--out', join(open_, 'ok'), '--quiet']);
    expect(r.status, r.stderr).toBe(0);
    expect(readdirSync(join(open_, 'ok'))).toContain('model.safetensors');
  }, 120_000);
});
