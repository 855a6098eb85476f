/** `moe prune` through the command line: every bad request is one line on stderr and a non-zero exit. */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { writeWordTokenizer, wordLines } from '../eval/tokenizer.js';
import { seededRandom } from '../../kernels/random.js';
import { runMoe } from '../helpers/cli.js';

let root: string;
let model: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-prune-cli-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 8 });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const run = (...args: string[]) => runMoe(['prune', ...args]);

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

describe('moe prune: bad requests', () => {
  const cases: Array<[string, () => string[], RegExp, number]> = [
    [
      'keep more than exist',
      () => ['--model', model, '--out', join(root, 'o1'), '--keep', '99', '--method', 'random'],
      /cannot keep 99 experts: the model has \d+/,
      ExitCode.usage,
    ],
    [
      'keep fewer than top-k',
      () => ['--model', model, '--out', join(root, 'o2'), '--keep', '1', '--method', 'random'],
      /fewer than the 2 each token is routed to/,
      ExitCode.usage,
    ],
    [
      'data-driven method without calibration',
      () => ['--model', model, '--out', join(root, 'o3'), '--keep', '2'],
      /reap is data-driven: give calibration text/,
      ExitCode.usage,
    ],
    [
      'reconstruct with saved statistics only',
      () => ['--model', model, '--out', join(root, 'o4'), '--keep', '2', '--method', 'reconstruct', '--stats', root],
      /--stats is not enough/,
      ExitCode.usage,
    ],
    [
      'neither --keep nor --ratio',
      () => ['--model', model, '--out', join(root, 'o5'), '--method', 'random'],
      /exactly one of --keep N or --ratio R/,
      ExitCode.usage,
    ],
    [
      '--ratio out of range',
      () => ['--model', model, '--out', join(root, 'o6'), '--ratio', '1.5', '--method', 'random'],
      /--ratio must be a number in \(0, 1\]/,
      ExitCode.usage,
    ],
    [
      '--keep not a number',
      () => ['--model', model, '--out', join(root, 'o7'), '--keep', 'four', '--method', 'random'],
      /--keep must be a whole number/,
      ExitCode.usage,
    ],
    ['out == model', () => ['--model', model, '--out', model, '--keep', '2', '--method', 'random'], /--out must differ from --model/, ExitCode.output],
    [
      'missing model',
      () => ['--model', join(root, 'nope'), '--out', join(root, 'o8'), '--keep', '2', '--method', 'random'],
      /model directory not found/,
      ExitCode.badInput,
    ],
  ];
  it.each(cases)('%s', async (_name, args, msg, code) => {
    const r = await run(...args());
    expect(r.code).toBe(code);
    expect(r.stderr).toMatch(msg);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^moe: /);
  });

  it('--keep and --ratio together are refused before anything runs', async () => {
    const r = await run('--model', model, '--out', join(root, 'o9'), '--keep', '2', '--ratio', '0.5', '--method', 'random');
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr).toMatch(/^moe: give exactly one of --keep N or --ratio R\n$/);
    expect(await exists(join(root, 'o9'))).toBe(false);
  });

  it('an existing output needs --force', async () => {
    const out = join(root, 'exists');
    expect((await run('--model', model, '--out', out, '--keep', '4', '--method', 'random', '--quiet')).code).toBe(0);
    const again = await run('--model', model, '--out', out, '--keep', '4', '--method', 'random', '--quiet');
    expect(again.code).toBe(ExitCode.output);
    expect(again.stderr).toMatch(/already exists \(use --force/);
    expect((await run('--model', model, '--out', out, '--keep', '4', '--method', 'random', '--quiet', '--force')).code).toBe(0);
  });
});

describe('moe prune: dry run and JSON', () => {
  it('reconstruct through the CLI: absent search flags keep their defaults, every subset is scored', async () => {
    const calib = join(root, 'calib.txt');
    await writeWordTokenizer(model);
    const r = seededRandom(2);
    await writeFile(calib, wordLines(30, r, 10).join('\n') + '\n');
    const res = await run(
      '--model',
      model,
      '--keep',
      '4',
      '--method',
      'reconstruct',
      '--calib',
      calib,
      '--seq-len',
      '32',
      '--dry-run',
      '--json',
      '--backend',
      'wasm',
    );
    expect(res.code).toBe(0);
    const rep = JSON.parse(res.stdout);
    for (const l of rep.layers) {
      expect(l.subsetsEvaluated).toBe(70);
      expect(l.relError).toBeGreaterThan(0);
      expect(l.scores.some((s: number) => s > 0)).toBe(true);
    }
    const bad = await run('--model', model, '--keep', '4', '--method', 'reconstruct', '--calib', calib, '--beam', '0', '--dry-run');
    expect(bad.code).toBe(ExitCode.usage);
    expect(bad.stderr).toMatch(/beam must be a positive whole number/);
  });

  it('--dry-run prints the plan, writes nothing, and predicts the sizes the real run produces', async () => {
    const out = join(root, 'dry');
    const dry = await run('--model', model, '--out', out, '--ratio', '0.5', '--method', 'random', '--seed', '5', '--dry-run', '--json');
    expect(dry.code).toBe(0);
    expect(await exists(out)).toBe(false);
    const plan = JSON.parse(dry.stdout);
    expect(plan.dryRun).toBe(true);
    expect(plan.sizes.predicted).toBe(true);
    const real = await run('--model', model, '--out', out, '--ratio', '0.5', '--method', 'random', '--seed', '5', '--json');
    expect(real.code).toBe(0);
    const rep = JSON.parse(real.stdout);
    expect(rep.layers.map((l: { kept: number[] }) => l.kept)).toEqual(plan.layers.map((l: { kept: number[] }) => l.kept));
    expect(rep.sizes.predicted).toBe(false);
    expect(rep.sizes.after.params).toBe(plan.sizes.after.params);
    expect(rep.sizes.after.expertBytes).toBe(plan.sizes.after.expertBytes);
  });

  it('--seed changes the random choice, the same seed repeats it', async () => {
    const plan = async (seed: string) =>
      JSON.parse((await run('--model', model, '--keep', '4', '--method', 'random', '--seed', seed, '--dry-run', '--json')).stdout).layers.map(
        (l: { kept: number[] }) => l.kept,
      );
    expect(await plan('1')).toEqual(await plan('1'));
    expect(await plan('1')).not.toEqual(await plan('2'));
  });
});
