/**
 * Data loss (issue 12): --force replaces only what moe wrote, an empty --out is refused, and no command may publish
 * over one of its own inputs (model, statistics, parts, plan, recipe, data files). Every case checks the exit code,
 * the one-line message, that decoys and inputs survive byte for byte, and that nothing was published or left staged.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from '../helpers/cli.js';
import { decoy, oneLine, snapshot, stagingLeft, tinyModel } from './helpers.js';

let root: string;
let model: string;
let calib: string;
const prune = (out: string, ...extra: string[]) => ['prune', '--model', model, '--keep', '3', '--method', 'random', '--out', out, '--quiet', ...extra];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-loss-'));
  ({ model, calib } = await tinyModel(join(root, 'model')));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('--force replaces only a previous moe output or an empty directory', () => {
  it("a user's directory is refused (exit 4) with how to remove it by hand, and survives byte for byte", async () => {
    const d = decoy(join(root, 'thesis'));
    const before = snapshot(d);
    for (const out of [d, `${d}/.`, join(d, 'figures', '..')]) {
      const r = await runMoe(prune(out, '--force'));
      expect(r.code).toBe(4);
      oneLine(r.stderr, /--force replaces only an output moe wrote.*holds "figures".*remove it by hand \(rm -r /);
      expect(snapshot(d)).toEqual(before);
    }
    expect(stagingLeft(root)).toEqual([]);
  });

  it('a file as --out is refused with --force too', async () => {
    const f = join(root, 'notes.txt');
    writeFileSync(f, 'keep me');
    const r = await runMoe(prune(f, '--force'));
    expect(r.code).toBe(4);
    oneLine(r.stderr, /is not a directory; remove it by hand/);
    expect(readFileSync(f, 'utf8')).toBe('keep me');
  });

  it('a previous moe output is replaced; the same output with a file the user added is refused', async () => {
    const out = join(root, 'pruned');
    expect((await runMoe(prune(out))).code).toBe(0);
    expect(readdirSync(out)).toContain('moe-prune-report.json');
    // without --force: exists
    const again = await runMoe(prune(out));
    expect(again.code).toBe(4);
    oneLine(again.stderr, /already exists \(use --force/);
    // with --force: replaced
    expect((await runMoe(prune(out, '--force', '--seed', '9'))).code).toBe(0);
    expect(JSON.parse(readFileSync(join(out, 'moe-prune-report.json'), 'utf8')).seed).toBe(9);
    // a user's file inside makes it the user's
    writeFileSync(join(out, 'my-eval-notes.md'), 'results');
    const before = snapshot(out);
    const r = await runMoe(prune(out, '--force'));
    expect(r.code).toBe(4);
    oneLine(r.stderr, /holds "my-eval-notes\.md", which moe did not write/);
    expect(snapshot(out)).toEqual(before);
    // a directory with moe's file names but no moe report is not moe's either
    const fake = join(root, 'fake');
    mkdirSync(fake);
    writeFileSync(join(fake, 'config.json'), '{}');
    const f = await runMoe(prune(fake, '--force'));
    expect(f.code).toBe(4);
    oneLine(f.stderr, /has no moe report/);
    expect(readdirSync(fake)).toEqual(['config.json']);
  });

  it('an empty directory is replaced', async () => {
    const out = join(root, 'empty');
    mkdirSync(out);
    expect((await runMoe(prune(out, '--force'))).code).toBe(0);
    expect(readdirSync(out)).toContain('model.safetensors');
  });
});

describe('empty output paths', () => {
  it('--out "" is a usage error (exit 2), on the command line and in a recipe', async () => {
    const r = await runMoe(prune('', '--force'));
    expect(r.code).toBe(2);
    oneLine(r.stderr, /--out/);
    const recipe = join(root, 'recipe-empty-out.yaml');
    writeFileSync(recipe, `model: ./model\nout: ""\nstages:\n  - prune: { keep: 3, method: random }\n`);
    const before = snapshot(root);
    const rr = await runMoe(['run', recipe, '--force', '--quiet']);
    expect(rr.code).toBe(2);
    oneLine(rr.stderr, /empty/);
    expect(snapshot(root)).toEqual(before);
  });
});

describe('the output may not overlap any input', () => {
  let stats: string;
  let s2: string;
  beforeAll(async () => {
    const parent = join(root, 'calib-runs');
    mkdirSync(parent);
    stats = join(parent, 's1');
    s2 = join(parent, 's2');
    for (const [i, s] of [stats, s2].entries()) {
      const r = await runMoe(['calibrate', '--model', model, '--data', calib, '--seq-len', '8', '--shard', `${i}/2`, '--out', s, '--quiet']);
      expect(r.code, r.stderr).toBe(0);
    }
  });

  it('calibrate --merge: --out equal to a part or a parent of the parts is refused (exit 4), the parts survive', async () => {
    const before = snapshot(join(root, 'calib-runs'));
    for (const out of [stats, join(root, 'calib-runs'), root]) {
      const r = await runMoe(['calibrate', '--merge', stats, s2, '--out', out, '--force', '--quiet']);
      expect(r.code, r.stderr).toBe(4);
      oneLine(r.stderr, /is an input|contains an input|contains the input/);
      expect(snapshot(join(root, 'calib-runs'))).toEqual(before);
    }
    // and a proper target works
    expect((await runMoe(['calibrate', '--merge', stats, s2, '--out', join(root, 'merged'), '--quiet'])).code).toBe(0);
    expect(stagingLeft(join(root, 'calib-runs'))).toEqual([]);
  });

  it('calibrate: --out containing the data file is refused', async () => {
    const dir = join(root, 'with-data');
    mkdirSync(dir);
    const data = join(dir, 'text.txt');
    writeFileSync(data, readFileSync(calib));
    writeFileSync(join(dir, 'moe-prune-report.json'), '{"tool":"moe prune"}');
    const r = await runMoe(['calibrate', '--model', model, '--data', data, '--seq-len', '8', '--out', dir, '--force', '--quiet']);
    expect(r.code).toBe(4);
    oneLine(r.stderr, /contains an input/);
    expect(existsSync(data)).toBe(true);
  });

  it('prune --stats / --calib / --plan inside the output are refused', async () => {
    // a moe output that happens to hold the statistics (so the marker rule alone would allow --force)
    const out = join(root, 'calib-runs');
    const before = snapshot(out);
    const r = await runMoe(['prune', '--model', model, '--keep', '3', '--method', 'frequency', '--stats', stats, '--out', out, '--force', '--quiet']);
    expect(r.code).toBe(4);
    oneLine(r.stderr, /contains an input/);
    const plan = join(root, 'plan.json');
    expect((await runMoe(['prune', '--model', model, '--keep', '3', '--method', 'random', '--dry-run', '--save-plan', plan, '--quiet'])).code).toBe(0);
    const p = await runMoe(['prune', '--model', model, '--keep', '3', '--method', 'random', '--plan', plan, '--out', plan, '--force', '--quiet']);
    expect(p.code).toBe(4);
    oneLine(p.stderr, /is an input|not a directory/);
    expect(snapshot(out)).toEqual(before);
  });

  it('assemble: --out equal to a part or their parent is refused, the parts survive', async () => {
    const parent = join(root, 'parts');
    mkdirSync(parent);
    const parts = [0, 1].map((i) => join(parent, `p${i}`));
    for (const [i, p] of parts.entries()) expect((await runMoe(prune(p, '--shard', `${i}/2`))).code).toBe(0);
    const before = snapshot(parent);
    for (const out of [parts[0]!, parent]) {
      const r = await runMoe(['assemble', ...parts, '--out', out, '--force', '--quiet']);
      expect(r.code).toBe(4);
      oneLine(r.stderr, /is an input|contains an input/);
      expect(snapshot(parent)).toEqual(before);
    }
    expect((await runMoe(['assemble', ...parts, '--out', join(root, 'assembled'), '--quiet'])).code).toBe(0);
  });

  it('run: --out containing the recipe or its calibration text is refused', async () => {
    const dir = join(root, 'recipes');
    mkdirSync(dir);
    writeFileSync(join(dir, 'moe-run-report.json'), '{"tool":"moe run"}');
    const recipe = join(dir, 'r.yaml');
    writeFileSync(recipe, `model: ../model\nout: .\nstages:\n  - prune: { keep: 3, method: random }\n`);
    const before = snapshot(dir);
    const r = await runMoe(['run', recipe, '--force', '--quiet']);
    expect(r.code).toBe(4);
    oneLine(r.stderr, /contains an input/);
    expect(snapshot(dir)).toEqual(before);
  });
});
