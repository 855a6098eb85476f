/** `moe run`: recipes validated up front, stages chained, finished stages reused after a failure, output published last. */
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModel } from '../../src/model/open.js';
import { parseRecipe } from '../../src/recipe/schema.js';
import { runDirFor, runRecipe } from '../../src/recipe/run.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { runMoe } from '../helpers/cli.js';

let root: string;
let model: string;
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-recipe-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 8 });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('recipe schema', () => {
  it.each([
    [{ stages: [] }, /stages/],
    [{ stages: [{ prune: { keep: 2, ratio: 0.5 } }] }, /stages\[0\]\.prune: give exactly one of --keep N or --ratio R/],
    [{ stages: [{ prune: { keep: 2, methd: 'reap' } }] }, /stages\[0\]\.prune: .*methd/],
    [{ stages: [{ shrink: {} }] }, /exactly one key among prune, merge, quantize, decompose/],
    [{ stages: [{ quantize: { bits: 2.5 } }], outt: 'x' }, /outt/],
    [{ stages: [{ decompose: { ratio: 1.5 } }] }, /stages\[0\]\.decompose: --ratio must be a number in \(0, 1\], got 1.5/],
  ])('rejects %j', (raw, message) => {
    const r = parseRecipe(raw);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.message).toMatch(message);
  });

  it('accepts a prune -> quantize recipe and maps snake_case options', () => {
    const r = parseRecipe({ calib: 'calib.txt', calib_tokens: 512, stages: [{ prune: { ratio: 0.75 } }, { quantize: { bits: 2.5, dense_bits: 4 } }] });
    expect(r.ok && r.recipe.stages.map((s) => s.kind)).toEqual(['prune', 'quantize']);
    expect(r.ok && r.recipe.calibTokens).toBe(512);
  });

  it('takes a seed for the randomized SVD of a decompose stage', () => {
    const r = parseRecipe({ stages: [{ decompose: { ratio: 0.5, seed: 3, mode: 'svd' } }] });
    expect(r.ok && r.recipe.stages[0]!.options).toMatchObject({ seed: 3 });
    expect(parseRecipe({ stages: [{ merge: { groups: 4, seed: 3 } }] }).ok).toBe(false);
  });
});

describe('moe run', () => {
  it('chains prune -> decompose and publishes only the last stage', async () => {
    const recipe = join(root, 'chain.yaml');
    await writeFile(
      recipe,
      `model: ./mixtral\nout: ./chain-out\nseed: 3\nstages:\n  - prune: { keep: 4, method: random }\n  - decompose: { ratio: 0.5, mode: svd, uniform: true }\n`,
    );
    const report = await runRecipe({ recipe });
    expect(report.stages.map((s) => s.kind)).toEqual(['prune', 'decompose']);
    const out = join(root, 'chain-out');
    const m = await openModel(out);
    expect(m.view.dims.numExperts).toBe(4);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.num_local_experts).toBe(4);
    expect(cfg.moe).toBeDefined();
    expect(await exists(join(out, 'moe-run-report.json'))).toBe(true);
    expect(await exists(runDirFor(out))).toBe(false);
    await m.ckpt.close();
  });

  it('a stage that fails at its start keeps the finished stages before it; a changed earlier stage reruns', async () => {
    // --bits 1 is below what 4-bit experts take: known only once the pruned checkpoint is open (stage start)
    const stage1 = 'prune: { keep: 6, method: random }';
    const a = join(root, 'a.yaml');
    await writeFile(a, `model: ./mixtral\nout: ./ab-out\nstages:\n  - ${stage1}\n  - quantize: { bits: 1, method: rtn, candidates: [4] }\n`);
    await expect(runRecipe({ recipe: a })).rejects.toThrow(/stages\[1\]\.quantize: --bits 1 is below the smallest true size/);
    expect(await exists(join(runDirFor(join(root, 'ab-out')), 'stage-1-prune'))).toBe(true);
    // the fixed recipe reuses stage 1 (its digest covers the model, the defaults and stages up to it)
    const b = join(root, 'b.yaml');
    await writeFile(b, `model: ./mixtral\nout: ./ab-out\nstages:\n  - ${stage1}\n  - quantize: { bits: 7, method: rtn, candidates: [4] }\n`);
    const fixed = await runRecipe({ recipe: b });
    expect(fixed.resumedStages).toBe(1);
    expect(fixed.stages.map((s) => s.resumed)).toEqual([true, false]);
    // a changed first stage reruns everything
    const c = join(root, 'c.yaml');
    await writeFile(c, `model: ./mixtral\nout: ./c-out\nstages:\n  - ${stage1}\n  - quantize: { bits: 1, method: rtn, candidates: [4] }\n`);
    await expect(runRecipe({ recipe: c })).rejects.toThrow(/--bits 1/);
    const c2 = join(root, 'c2.yaml');
    await writeFile(
      c2,
      `model: ./mixtral\nout: ./c-out\nstages:\n  - prune: { keep: 5, method: random }\n  - quantize: { bits: 7, method: rtn, candidates: [4] }\n`,
    );
    expect((await runRecipe({ recipe: c2 })).resumedStages).toBe(0);
  });

  it('a run directory of the previous state version is reused only for the same recipe, else refused naming the version', async () => {
    const d = join(root, 'old.yaml');
    await writeFile(d, `model: ./mixtral\nout: ./old-out\nstages:\n  - prune: { keep: 6, method: random }\n`);
    const runDir = runDirFor(join(root, 'old-out'));
    await mkdir(runDir, { recursive: true });
    await writeFile(join(runDir, 'state.json'), JSON.stringify({ version: 1, digest: '0123456789abcdef', model: model, completed: [] }));
    await expect(runRecipe({ recipe: d })).rejects.toThrow(/different recipe or model \(run state version 1/);
  });

  it('a dry run plans the first stage with its memory estimate and writes nothing', async () => {
    const recipe = join(root, 'dry.yaml');
    await writeFile(
      recipe,
      `model: ./mixtral\nout: ./dry-out\nstages:\n  - prune: { keep: 6, method: random }\n  - quantize: { bits: 4.5, method: rtn, candidates: [4] }\n`,
    );
    const before = (await readdir(root)).sort();
    const r = await runMoe(['run', recipe, '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/stage 1: estimated peak memory \d+ MiB: runtime \(node\) \d+ MiB; writer: one tensor copy in flight/);
    expect((await readdir(root)).sort()).toEqual(before);
  });

  it('reports a bad recipe as one line and exit code 2 on the command line', () => {
    const bad = join(root, 'bad.yaml');
    return writeFile(bad, 'stages:\n  - prune: { keep: 2, ratio: 0.5 }\n').then(() => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'run', bad, '--model', model, '--out', join(root, 'x')], {
        encoding: 'utf8',
      });
      expect(r.status).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^moe: .*stages\[0\]\.prune: give exactly one of --keep N or --ratio R/);
    });
  });
});
