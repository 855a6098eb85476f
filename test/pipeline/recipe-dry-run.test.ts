/**
 * `moe run --dry-run` validates every stage exactly as its real run will, before any stage runs: an out-of-range or
 * inconsistent option in a LATER stage (here the second, after a valid prune) exits 2 with nothing run or written,
 * and the same values given to the stage's own command exit 2 with the same message (the recipe only prefixes where
 * the stage is). Paths that must exist are checked alike (exit 3), and so are windows beyond the model's positions.
 */
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ExitCode } from '../../src/errors.js';
import { PIPELINES, type StageKind } from '../../src/pipeline/registry.js';
import { commandOptions } from '../../src/pipeline/schema.js';
import { runMoe } from '../helpers/cli.js';

const MODEL = resolve('test/fixtures/tiny-mixtral');
const CALIB = resolve('test/fixtures/text/calib.txt');
let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-recipe-dry-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** The stage's options as command-line arguments, through the descriptor's own flags. */
function argv(kind: StageKind, options: Record<string, unknown>): string[] {
  const infos = commandOptions(PIPELINES[kind]);
  const out: string[] = [];
  for (const [k, v] of Object.entries(options)) {
    const info = infos.find((i) => i.recipeKey === k)!;
    if (info.kind === 'boolean') {
      if (v !== info.default) out.push(info.flag);
    } else out.push(info.flag, Array.isArray(v) ? v.join(',') : String(v));
  }
  return out;
}

type Case = [what: string, kind: StageKind, options: Record<string, unknown>, message: RegExp, code: number];
const C = CALIB;
const CASES: Case[] = [
  ['prune: keep and ratio together', 'prune', { keep: 4, ratio: 0.5, method: 'random' }, /give exactly one of --keep N or --ratio R/, ExitCode.usage],
  ['prune: keep 0', 'prune', { keep: 0, method: 'random' }, /--keep must be a positive whole number, got 0/, ExitCode.usage],
  ['prune: unknown method', 'prune', { keep: 4, method: 'magnitude', calib: C }, /--method must be one of reap, .*random, got 'magnitude'/, ExitCode.usage],
  [
    'prune: reconstruct from statistics',
    'prune',
    { keep: 4, method: 'reconstruct', stats: './s' },
    /re-runs the forward pass .*--stats is not enough/,
    ExitCode.usage,
  ],
  ['prune: beam 0', 'prune', { keep: 4, method: 'reconstruct', calib: C, beam: 0 }, /--beam must be a positive whole number, got 0/, ExitCode.usage],
  ['merge: groups 0', 'merge', { groups: 0, calib: C }, /--groups must be a positive whole number, got 0/, ExitCode.usage],
  [
    'merge: unknown grouping',
    'merge',
    { groups: 4, grouping: 'kmeans', calib: C },
    /--grouping must be one of msmoe, hierarchical, saliency, got 'kmeans'/,
    ExitCode.usage,
  ],
  ['merge: router fit from statistics', 'merge', { groups: 4, router: 'fit', stats: './s' }, /--router fit needs calibration hidden states/, ExitCode.usage],
  ['merge: no data', 'merge', { groups: 4 }, /merging is data-driven/, ExitCode.usage],
  ['quantize: group_size 100', 'quantize', { bits: 3, group_size: 100, calib: C }, /--group-size must be one of -1, 32, 64, 128, got 100/, ExitCode.usage],
  ['quantize: candidates [5]', 'quantize', { bits: 3, candidates: [5], calib: C }, /--candidates must be one of 2, 3, 4, 8, f32, .*, got 5/, ExitCode.usage],
  ['quantize: damp 2', 'quantize', { bits: 3, damp: 2, calib: C }, /--damp must be a number in \(0, 1\), got 2/, ExitCode.usage],
  ['quantize: GPTQ without calibration', 'quantize', { bits: 3 }, /GPTQ needs calibration text/, ExitCode.usage],
  ['quantize: bad override', 'quantize', { bits: 3, method: 'rtn', override: ['w2=5'] }, /--override 'w2=5': bits must be one of/, ExitCode.usage],
  ['quantize: unknown method', 'quantize', { bits: 3, method: 'awq', calib: C }, /--method must be one of gptq, rtn, auto, got 'awq'/, ExitCode.usage],
  ['quantize: seq_len beyond the positions', 'quantize', { bits: 3, calib: C, seq_len: 600 }, /--seq-len 600 is beyond the model's positions/, ExitCode.usage],
  ['decompose: ratio 1.5', 'decompose', { ratio: 1.5, mode: 'svd' }, /--ratio must be a number in \(0, 1\], got 1.5/, ExitCode.usage],
  ['decompose: whitened without calibration', 'decompose', { ratio: 0.5 }, /--mode whitened whitens by the activations/, ExitCode.usage],
  ['decompose: negative seed', 'decompose', { ratio: 0.5, mode: 'svd', seed: -1 }, /--seed must be a whole number >= 0, got -1/, ExitCode.usage],
  ['decompose: unknown mode', 'decompose', { ratio: 0.5, mode: 'tucker' }, /--mode must be one of svd, whitened, .*, got 'tucker'/, ExitCode.usage],
  ['decompose: missing calibration file', 'decompose', { ratio: 0.5, calib: './missing.txt' }, /data file not found: .*missing\.txt/, ExitCode.badInput],
];

describe('moe run --dry-run refuses a bad later stage before anything runs, as the stage command does', () => {
  const kinds = new Set(CASES.map((c) => c[1]));
  it('covers every stage type', () => {
    expect([...kinds].sort()).toEqual(Object.keys(PIPELINES).sort());
  });

  it.each(CASES)('%s', async (what, kind, options, message, code) => {
    const dir = join(root, what.replace(/\W+/g, '-'));
    // paths in a recipe are relative to it; on the command line relative to the working directory: make both absolute
    const abs = Object.fromEntries(Object.entries(options).map(([k, v]) => [k, typeof v === 'string' && v.startsWith('./') ? join(dir, v) : v]));
    const recipe = join(root, `${what.replace(/\W+/g, '-')}.yaml`);
    await writeFile(recipe, stringify({ model: MODEL, out: join(dir, 'out'), stages: [{ prune: { keep: 6, method: 'random' } }, { [kind]: abs }] }));
    const before = (await readdir(root)).sort();

    const r = await runMoe(['run', recipe, '--dry-run']);
    expect({ what, code: r.code }).toEqual({ what, code });
    expect(r.stdout).toBe('');
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^moe: ${recipe.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: stages\\[1\\]\\.${kind}: `));
    expect(lines[0]).toMatch(message);
    // nothing ran: no run directory, no output, not even stage 1's plan
    expect((await readdir(root)).sort()).toEqual(before);

    // the real run refuses the same way, before stage 1 starts
    const real = await runMoe(['run', recipe]);
    expect(real.code).toBe(code);
    expect(real.stderr).toBe(r.stderr);
    expect((await readdir(root)).sort()).toEqual(before);

    // the stage's own command, same values: the same message
    const single = await runMoe([kind, '--model', MODEL, '--out', join(dir, 'single'), ...argv(kind, abs)]);
    expect(single.code).toBe(code);
    const msg = single.stderr.trimEnd();
    expect(msg).toMatch(/^moe: /);
    expect(lines[0]!.endsWith(`stages[1].${kind}: ${msg.slice('moe: '.length)}`)).toBe(true);
  });

  it('stage-level calibration overrides the recipe default, and a later stage gets the recipe default', async () => {
    const recipe = join(root, 'defaults.yaml');
    await writeFile(
      recipe,
      stringify({
        model: MODEL,
        out: join(root, 'defaults-out'),
        calib: CALIB,
        seq_len: 128,
        calib_tokens: 512,
        stages: [{ prune: { keep: 6, method: 'random' } }, { quantize: { bits: 3, seq_len: 600 } }],
      }),
    );
    const r = await runMoe(['run', recipe, '--dry-run']);
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr).toMatch(/stages\[1\]\.quantize: --seq-len 600 is beyond/);
    await writeFile(
      recipe,
      stringify({
        model: MODEL,
        out: join(root, 'defaults-out'),
        calib: CALIB,
        seq_len: 128,
        calib_tokens: 512,
        stages: [{ prune: { keep: 6, method: 'random' } }, { quantize: { bits: 3 } }],
      }),
    );
    const ok = await runMoe(['run', recipe, '--dry-run', '--quiet']);
    expect(ok.code, ok.stderr).toBe(0);
  });

  it('an existing output is refused by the dry run as by the real run (exit 4)', async () => {
    const recipe = join(root, 'exists.yaml');
    await writeFile(recipe, stringify({ model: MODEL, out: root, stages: [{ prune: { keep: 6, method: 'random' } }] }));
    const r = await runMoe(['run', recipe, '--dry-run']);
    expect(r.code).toBe(ExitCode.output);
    expect(r.stderr).toMatch(/already exists \(use --force/);
  });

  it('every pipeline applies the output rule in a dry run too: an existing --out is exit 4 without --force', async () => {
    const existing = join(root, 'existing');
    await mkdir(existing, { recursive: true });
    const args: Record<StageKind, string[]> = {
      prune: ['--keep', '6', '--method', 'random'],
      merge: ['--groups', '6', '--calib', CALIB, '--seq-len', '128', '--calib-tokens', '256'],
      quantize: ['--bits', '7', '--method', 'rtn', '--candidates', '4'],
      decompose: ['--ratio', '0.5', '--mode', 'svd', '--uniform'],
    };
    for (const kind of Object.keys(PIPELINES) as StageKind[]) {
      const r = await runMoe([kind, '--model', MODEL, '--out', existing, '--dry-run', ...args[kind]]);
      expect({ kind, code: r.code }).toEqual({ kind, code: ExitCode.output });
      expect(r.stderr).toMatch(/already exists \(use --force/);
      const forced = await runMoe([kind, '--model', MODEL, '--out', existing, '--dry-run', '--force', '--quiet', ...args[kind]]);
      expect({ kind, code: forced.code, err: forced.stderr }).toEqual({ kind, code: 0, err: '' });
    }
  });

  it("a stage's backend (from the recipe) is the one its pipeline starts, for merge and decompose too", async () => {
    const { describeBackends } = await import('../../src/runtime/backend.js');
    const tf = (await describeBackends('tensorflow')).candidates.find((c) => c.name === 'tensorflow')!;
    for (const stage of [{ merge: { groups: 6, calib: CALIB, seq_len: 128, calib_tokens: 256 } }, { decompose: { ratio: 0.5, mode: 'svd', uniform: true } }]) {
      const recipe = join(root, 'backend.yaml');
      await writeFile(recipe, stringify({ model: MODEL, out: join(root, 'backend-out'), backend: 'tensorflow', stages: [stage] }));
      const r = await runMoe(['run', recipe, '--dry-run', '--quiet']);
      // where libtensorflow is not installed the explicit choice is refused; where it is, it is used
      if (tf.available) expect(r.code, r.stderr).toBe(0);
      else {
        expect(r.code).toBe(ExitCode.usage);
        expect(r.stderr).toMatch(/backend 'tensorflow' is not available here/);
      }
    }
  });
});
