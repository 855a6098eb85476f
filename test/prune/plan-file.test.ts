/** `moe prune --save-plan / --plan`: kept sets computed once, applied by every job of a run, refused when they do not fit. */
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { pathExists } from '../../src/io/output.js';
import { outputFiles } from '../helpers/files.js';

const MODEL = 'test/fixtures/tiny-mixtral';
const CALIB = 'test/fixtures/text/calib.txt';
const DATA = ['--method', 'reap', '--calib', CALIB, '--calib-tokens', '2048', '--seq-len', '128'];
let root: string;
let plan: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-prune-plan-'));
  plan = join(root, 'plan.json');
  const r = await runMoe(['prune', '--model', MODEL, '--keep', '6', ...DATA, '--dry-run', '--save-plan', plan, '--json']);
  expect(r.code, r.stderr).toBe(0);
  const report = JSON.parse(r.stdout);
  // the dry run estimates the calibration pass's memory: above the bare runtime, and it names its parts
  expect(report.memory.peakBytes).toBeGreaterThan(150 * 2 ** 20);
  expect(report.memory.parts.some((p: { label: string }) => /forward pass over \d+ calibration tokens/.test(p.label))).toBe(true);
}, 120_000);
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('prune plan files', () => {
  it('a dry run with --save-plan writes the plan and no checkpoint', async () => {
    const f = JSON.parse(await readFile(plan, 'utf8'));
    expect(f).toMatchObject({ format: 'moe-plan', version: 1, tool: 'prune', settings: { method: 'reap', keep: 6 } });
    expect(f.plan).toHaveLength(4);
    for (const l of f.plan) expect(l.kept).toHaveLength(6);
    expect((await readdir(root)).sort()).toEqual(['plan.json']);
  });

  it('applying the plan writes what scoring writes, and sharded jobs given the plan assemble to the same bytes', async () => {
    const scored = join(root, 'scored');
    const applied = join(root, 'applied');
    expect((await runMoe(['prune', '--model', MODEL, '--keep', '6', ...DATA, '--out', scored, '--quiet'])).code).toBe(0);
    const r = await runMoe(['prune', '--model', MODEL, '--keep', '6', '--method', 'reap', '--plan', plan, '--out', applied, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).calibration).toMatchObject({ source: 'plan', path: plan });
    expect(await outputFiles(applied)).toEqual(await outputFiles(scored));
    const parts = [0, 1].map((i) => join(root, `part-${i}`));
    for (const [i, p] of parts.entries()) {
      expect(
        (await runMoe(['prune', '--model', MODEL, '--keep', '6', '--method', 'reap', '--plan', plan, '--out', p, '--shard', `${i}/2`, '--quiet'])).code,
      ).toBe(0);
    }
    const joined = join(root, 'joined');
    expect((await runMoe(['assemble', ...parts, '--out', joined, '--quiet'])).code).toBe(0);
    const a = await outputFiles(joined);
    delete a['moe-shard.json'];
    expect(a).toEqual(await outputFiles(scored));
  }, 120_000);

  it('refuses a plan made with other flags, for another model, or broken, before writing anything', async () => {
    const out = join(root, 'refused');
    const other = await runMoe(['prune', '--model', MODEL, '--keep', '5', '--method', 'reap', '--plan', plan, '--out', out]);
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(/^moe: .*computed with keep = 6, this command has 5/);

    const tiny = join(root, 'tiny');
    await makeTinyCheckpoint('mixtral', tiny, { experts: 8, layers: 4 });
    const model = await runMoe(['prune', '--model', tiny, '--keep', '6', '--method', 'reap', '--plan', plan, '--out', out]);
    expect(model.code).toBe(3);
    expect(model.stderr).toMatch(/^moe: .*different model/);

    const f = JSON.parse(await readFile(plan, 'utf8'));
    f.plan[2].kept = [0, 1, 2, 3, 4, 9];
    const broken = join(root, 'broken.json');
    await writeFile(broken, JSON.stringify(f));
    const b = await runMoe(['prune', '--model', MODEL, '--keep', '6', '--method', 'reap', '--plan', broken, '--out', out]);
    expect(b.code).toBe(3);
    expect(b.stderr).toMatch(/layer 2 must keep 6 distinct experts of 0\.\.7/);

    await writeFile(broken, '{"format":"moe-plan"');
    expect((await runMoe(['prune', '--model', MODEL, '--keep', '6', '--method', 'reap', '--plan', broken, '--out', out])).stderr).toMatch(/not a plan file/);
    expect((await runMoe(['prune', '--model', MODEL, '--keep', '6', '--method', 'reap', '--plan', plan, '--calib', CALIB, '--out', out])).code).toBe(2);
    expect(await pathExists(out)).toBe(false);
  }, 120_000);
});
