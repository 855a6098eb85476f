/**
 * Stale resume: a run killed mid-write leaves a staging directory. Rerun with the same command, it continues; rerun
 * with another model of the same shape, another --seed or other calibration text, it must not reuse what the killed
 * run wrote (that published a checkpoint mixed from both runs, exit 0): the staging directory is discarded with one
 * line saying so, and the output equals a clean run of the new command, byte for byte.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../../kernels/random.js';
import { stagingDirFor } from '../../src/io/output.js';
import { wordLines } from '../eval/tokenizer.js';
import { spawnMoe } from '../helpers/cli.js';
import { outputFiles } from '../helpers/files.js';
import { tinyModel } from './helpers.js';

let root: string;
let modelA: string;
let modelB: string;
let calibA: string;
let calibB: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-resume-'));
  ({ model: modelA, calib: calibA } = await tinyModel(join(root, 'a'), { seed: 3 }));
  // the same shape, other weights
  ({ model: modelB } = await tinyModel(join(root, 'b'), { seed: 4 }));
  calibB = join(root, 'other-calib.txt');
  writeFileSync(calibB, wordLines(24, seededRandom(99)).join('\n') + '\n');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const DISCARDED = /held an unfinished run of .* with other inputs or options; discarded it, starting over/;

/** Kill `first` after a few tensors, run `second` on the same output; compare with a clean run of `second`. */
async function killThenRerun(name: string, first: (out: string) => string[], second: (out: string) => string[], compare = true): Promise<string> {
  const out = join(root, name);
  const killed = spawnMoe(first(out), { MOE_TEST_KILL_AFTER_WRITES: '20' });
  expect(killed.signal, killed.stderr).toBe('SIGKILL');
  expect(existsSync(out)).toBe(false);
  expect(existsSync(stagingDirFor(out))).toBe(true);
  const rerun = spawnMoe(second(out));
  expect(rerun.status, rerun.stderr).toBe(0);
  expect(existsSync(stagingDirFor(out))).toBe(false);
  if (!compare) return rerun.stderr;
  const ref = join(root, `${name}-reference`);
  const clean = spawnMoe(second(ref));
  expect(clean.status, clean.stderr).toBe(0);
  expect(await outputFiles(out)).toEqual(await outputFiles(ref));
  if (first(out).join(' ') !== second(out).join(' ')) {
    // the two commands write different bytes, so a resumed mix would have shown above
    const firstRef = join(root, `${name}-first`);
    expect(spawnMoe(first(firstRef)).status).toBe(0);
    expect(await outputFiles(firstRef)).not.toEqual(await outputFiles(ref));
  }
  expect(existsSync(stagingDirFor(out))).toBe(false);
  return rerun.stderr;
}

const prune = (model: string, seed: string) => (out: string) => [
  'prune',
  '--model',
  model,
  '--keep',
  '2',
  '--method',
  'random',
  '--seed',
  seed,
  '--out',
  out,
  '--quiet',
];
const reap = (calib: string) => (out: string) => [
  'prune',
  '--model',
  modelA,
  '--keep',
  '2',
  '--method',
  'reap',
  '--calib',
  calib,
  '--seq-len',
  '8',
  '--out',
  out,
  '--quiet',
];

describe('a staging directory of another run is discarded, not resumed', () => {
  it('same command: resumes (no discard line), same bytes as a clean run', async () => {
    const stderr = await killThenRerun('same', prune(modelA, '1'), prune(modelA, '1'));
    expect(stderr).not.toMatch(DISCARDED);
  }, 480_000);

  it('another --seed: discarded with one line, the output is the new run alone', async () => {
    const stderr = await killThenRerun('seed', prune(modelA, '1'), prune(modelA, '2'));
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(DISCARDED);
  }, 480_000);

  it('another model of the same shape at another path: discarded', async () => {
    expect(await killThenRerun('model', prune(modelA, '1'), prune(modelB, '1'))).toMatch(DISCARDED);
  }, 480_000);

  it('other calibration text: discarded', async () => {
    // (a forward pass per run: the byte comparison is left to the cases above, to keep this within a loaded machine's time)
    expect(await killThenRerun('calib', reap(calibA), reap(calibB), false)).toMatch(DISCARDED);
  }, 480_000);
});
