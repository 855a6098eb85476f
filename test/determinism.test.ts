/**
 * Every command run twice with the same flags (and --seed where it has a randomized step) writes byte-identical
 * files, the first run at --threads 1 and the second at --threads 2 (outputs do not depend on the thread count);
 * where a seed drives a choice, another seed changes it. Reports are left out: they hold wall times.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from './helpers/cli.js';
import { outputFiles } from './helpers/files.js';

const MODEL = 'test/fixtures/tiny-mixtral';
const CALIB = 'test/fixtures/text/calib.txt';
const TOKENS = ['--calib-tokens', '512', '--seq-len', '128'];
let root: string;

async function twice(name: string, args: (out: string) => string[]): Promise<[Record<string, string>, Record<string, string>]> {
  const got: Record<string, string>[] = [];
  for (const k of [0, 1]) {
    const out = join(root, `${name}-${k}`);
    const r = await runMoe([...args(out), '--threads', String(k + 1), '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    got.push(await outputFiles(out));
  }
  expect(Object.keys(got[0]!).length).toBeGreaterThan(0);
  return got as [Record<string, string>, Record<string, string>];
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-determinism-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('same flags, same bytes', () => {
  it('prune --method random: the seed picks the experts, and the same seed the same bytes', async () => {
    const [a, b] = await twice('random', (out) => ['prune', '--model', MODEL, '--keep', '5', '--method', 'random', '--seed', '7', '--out', out]);
    expect(a).toEqual(b);
    const other = join(root, 'random-other');
    expect((await runMoe(['prune', '--model', MODEL, '--keep', '5', '--method', 'random', '--seed', '8', '--out', other, '--quiet'])).code).toBe(0);
    expect((await outputFiles(other))['model.safetensors']).not.toEqual(a['model.safetensors']);
  }, 60_000);

  it.each([
    ['calibrate', (out: string) => ['calibrate', '--model', MODEL, '--data', CALIB, '--max-tokens', '512', '--seq-len', '128', '--out', out]],
    ['prune reap', (out: string) => ['prune', '--model', MODEL, '--keep', '6', '--method', 'reap', '--calib', CALIB, ...TOKENS, '--out', out]],
    [
      'quantize gptq (one width: no scoring pass)',
      (out: string) => ['quantize', '--model', MODEL, '--bits', '3.5', '--candidates', '3', '--calib', CALIB, ...TOKENS, '--out', out],
    ],
    ['merge', (out: string) => ['merge', '--model', MODEL, '--groups', '6', '--calib', CALIB, ...TOKENS, '--out', out]],
    [
      'decompose (uniform ranks: no solver time limit in play)',
      (out: string) => ['decompose', '--model', MODEL, '--ratio', '0.6', '--uniform', '--seed', '3', '--calib', CALIB, '--calib-tokens', '512', '--out', out],
    ],
  ])(
    '%s',
    async (name, args) => {
      const [a, b] = await twice(name.replace(' ', '-'), args);
      expect(a).toEqual(b);
    },
    600_000,
  );
});
