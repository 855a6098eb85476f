/**
 * Production use of `moe merge`: plan files (--save-plan / --plan give the same bytes as the run that saved the
 * plan; a plan of another model or other flags is refused in one line), layer-parallel --shard i/n joined by
 * `moe assemble` equal to one run, and the dry run's memory estimate.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveStats } from '../../src/calibrate/artifact.js';
import { resolveCalibration } from '../../src/calibrate/resolve.js';
import { ExitCode } from '../../src/errors.js';
import { merge } from '../../src/merge/pipeline.js';
import { openModel } from '../../src/model/open.js';
import { initBackend } from '../../src/runtime/backend.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { writeWordTokenizer, wordLines } from '../eval/tokenizer.js';
import { rng } from './synthetic.js';
import { outputFiles } from '../helpers/files.js';

let root: string;
let model: string;
let other: string;
let calib: string;
let stats: string;
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-merge-plan-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 8, layers: 3, seed: 5, dtype: 'BF16' });
  await writeWordTokenizer(model);
  other = join(root, 'other');
  await makeTinyCheckpoint('mixtral', other, { experts: 8, layers: 2, seed: 5, dtype: 'BF16' });
  await writeWordTokenizer(other);
  const r = rng(11);
  calib = join(root, 'calib.txt');
  await writeFile(calib, wordLines(40, r).join('\n') + '\n');
  const m = await openModel(model);
  try {
    stats = join(root, 'stats');
    await saveStats(await resolveCalibration({ model: m, calib, calibTokens: 256, seqLen: 32 }), stats);
  } finally {
    await m.ckpt.close();
  }
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

// the most data-dependent choices: activation alignment and fitted router rows, measured sequentially; every group
// merged (--drop never), so the plan holds permutations (--drop auto could write REAP pruning, which has none)
const seqFlags = { groups: 4, grouping: 'msmoe', align: 'activations', router: 'fit', fitSteps: 40 } as const;
const planned = { drop: 'never' } as const;
const seqCli = ['--groups', '4', '--grouping', 'msmoe', '--align', 'activations', '--router', 'fit', '--fit-steps', '40'];

describe('merge plans', () => {
  it('--plan writes the same bytes as the sequential run that saved it, without calibration; a dry run saves the same plan', async () => {
    const plan = join(root, 'seq.plan.json');
    const a = join(root, 'seq-a');
    const ra = await merge({ model, out: a, calib, calibTokens: 256, seqLen: 32, savePlan: plan, ...seqFlags, ...planned });
    expect(ra.mode).toBe('sequential');
    expect(ra.savedPlan).toBe(plan);
    const saved = JSON.parse(await readFile(plan, 'utf8'));
    expect(saved).toMatchObject({ format: 'moe-plan', tool: 'merge', settings: { groups: 4, align: 'activations', router: 'fit', fitSteps: 40 } });
    // permutations of every merged member and the fitted rows travel in the plan
    expect(saved.plan.layers).toHaveLength(3);
    for (const l of saved.plan.layers) {
      expect(typeof l.rows.w).toBe('string');
      // (a member the merge-or-drop decision dropped has weight 0 and no permutation)
      for (const g of l.groups)
        if (g.members.length > 1) expect(g.perms.every((p: unknown, k: number) => (k > 0 && g.weights[k] > 0 ? typeof p === 'string' : p === null))).toBe(true);
    }

    const b = join(root, 'seq-b');
    const rb = await merge({ model, out: b, plan, ...seqFlags });
    expect(rb.mode).toBe('sequential');
    expect(rb.calibration.source).toBe('plan');
    expect(rb.layers).toEqual(ra.layers);
    expect(await outputFiles(b)).toEqual(await outputFiles(a));

    const dryPlan = join(root, 'seq-dry.plan.json');
    const dry = join(root, 'seq-dry');
    const rd = await merge({ model, out: dry, calib, calibTokens: 256, seqLen: 32, savePlan: dryPlan, dryRun: true, ...seqFlags, ...planned });
    expect(rd.dryRun).toBe(true);
    expect(await exists(dry)).toBe(false);
    expect(await readFile(dryPlan, 'utf8')).toBe(await readFile(plan, 'utf8'));
  });

  it('a plan of another model or other flags is refused with a non-zero exit and one line', async () => {
    const plan = join(root, 'cli.plan.json');
    const ok = await runMoe([
      'merge',
      '--model',
      model,
      '--calib',
      calib,
      '--calib-tokens',
      '256',
      '--seq-len',
      '32',
      ...seqCli,
      '--drop',
      'never',
      '--dry-run',
      '--quiet',
      '--save-plan',
      plan,
    ]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^plan: mixtral, 8 -> 4 experts per layer/);
    expect(ok.stdout).toMatch(/^estimated peak memory \d+ MiB: /m);

    const applied = await runMoe(['merge', '--model', model, '--out', join(root, 'cli-out'), ...seqCli, '--plan', plan, '--quiet']);
    expect(applied.code).toBe(0);

    const tampered = JSON.parse(await readFile(plan, 'utf8'));
    tampered.plan.layers[1].groups[0].members.push(tampered.plan.layers[1].groups[1].members[0]);
    tampered.plan.layers[1].groups[0].weights.push(0);
    const bad = join(root, 'tampered.plan.json');
    await writeFile(bad, JSON.stringify(tampered));
    const missing = JSON.parse(await readFile(plan, 'utf8'));
    missing.plan.layers[0].groups[1].perms = null;
    delete missing.plan.layers[0].groups[1].perms;
    const noPerms = join(root, 'no-perms.plan.json');
    await writeFile(noPerms, JSON.stringify(missing));

    const cases: Array<[string, string[], RegExp, number]> = [
      ['another model', ['--model', other, ...seqCli, '--plan', plan], /computed for a different model/, ExitCode.badInput],
      [
        'another grouping',
        ['--model', model, ...seqCli.slice(0, 2), '--grouping', 'hierarchical', ...seqCli.slice(4), '--plan', plan],
        /computed with grouping = "msmoe", this command has "hierarchical"/,
        ExitCode.usage,
      ],
      [
        'another group count',
        ['--model', model, '--groups', '5', ...seqCli.slice(2), '--plan', plan],
        /computed with groups = 4, this command has 5/,
        ExitCode.usage,
      ],
      ['default fit steps', ['--model', model, ...seqCli.slice(0, -2), '--plan', plan], /computed with fitSteps = 40, this command has 300/, ExitCode.usage],
      ['an expert in two groups', ['--model', model, ...seqCli, '--plan', bad], /layer 1: expert \d+ is in groups 0 and 1/, ExitCode.badInput],
      [
        'activation alignment without permutations',
        ['--model', model, ...seqCli, '--plan', noPerms],
        /layer 0: group 1: activation alignment is data-dependent/,
        ExitCode.badInput,
      ],
      ['a plan with calibration', ['--model', model, ...seqCli, '--plan', plan, '--calib', calib], /--calib and --stats are not used with it/, ExitCode.usage],
      ['no such plan', ['--model', model, ...seqCli, '--plan', join(root, 'nope.json')], /cannot read the plan/, ExitCode.badInput],
      [
        'a --stats dry run with activation alignment (refused as the real run is)',
        ['--model', model, ...seqCli, '--stats', stats, '--dry-run', '--save-plan', join(root, 'never.json')],
        /--align activations needs calibration hidden states: give --calib FILE/,
        ExitCode.usage,
      ],
    ];
    for (const [what, args, msg, code] of cases) {
      const out = join(root, `refused-${what.replace(/\W+/g, '-')}`);
      const r = await runMoe(['merge', ...args, '--out', out]);
      expect({ what, code: r.code }).toEqual({ what, code });
      expect(r.stderr).toMatch(msg);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(await exists(out)).toBe(false);
    }
  });
});

describe('merge --shard i/n', () => {
  it('shards of a sequential plan, assembled, equal the sequential run byte for byte', async () => {
    const plan = join(root, 'shard.plan.json');
    const whole = join(root, 'shard-whole');
    await merge({ model, out: whole, calib, calibTokens: 256, seqLen: 32, savePlan: plan, ...seqFlags, ...planned });
    const parts = [0, 1].map((i) => join(root, `shard-part-${i}`));
    for (const [i, p] of parts.entries()) {
      const r = await merge({ model, out: p, plan, shard: { index: i, count: 2 }, ...seqFlags });
      expect(r.shard).toEqual({ index: i, count: 2 });
    }
    const r = await runMoe(['assemble', parts[1]!, parts[0]!, '--out', join(root, 'shard-assembled'), '--quiet']);
    expect(r.code).toBe(0);
    expect(await outputFiles(join(root, 'shard-assembled'))).toEqual(await outputFiles(whole));
  });

  it('shards from the same --stats equal one --stats run (each job aligns only its layers)', async () => {
    const flags = { groups: 5, grouping: 'hierarchical', align: 'weights', router: 'mean' } as const;
    const whole = join(root, 'stats-whole');
    await merge({ model, out: whole, stats, ...flags });
    const parts = [0, 1].map((i) => join(root, `stats-part-${i}`));
    const reports = [];
    for (const [i, p] of parts.entries()) reports.push(await merge({ model, out: p, stats, shard: { index: i, count: 2 }, ...flags }));
    // alignment is computed by the job that writes the layer: layers 0 and 2 in shard 0, layer 1 in shard 1
    const aligned = (rep: (typeof reports)[number]) => rep.layers.filter((l) => l.groups.some((g) => g.alignment.some((a) => a))).map((l) => l.layer);
    expect(aligned(reports[0]!)).toEqual([0, 2]);
    expect(aligned(reports[1]!)).toEqual([1]);
    const r = await runMoe(['assemble', parts[0]!, parts[1]!, '--out', join(root, 'stats-assembled'), '--quiet']);
    expect(r.code).toBe(0);
    expect(await outputFiles(join(root, 'stats-assembled'))).toEqual(await outputFiles(whole));
  });

  it('--shard with --calib is refused: a sequential plan is one pass over all layers', async () => {
    const r = await runMoe(['merge', '--model', model, '--out', join(root, 'x'), '--groups', '4', '--calib', calib, '--shard', '0/2']);
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr).toMatch(/--shard needs --plan FILE or --stats DIR/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});

describe('merge memory estimate', () => {
  it('every report carries an estimate; the sequential pass adds the forward pass and the layer being merged', async () => {
    const seq = await merge({ model, calib, calibTokens: 256, seqLen: 32, dryRun: true, groups: 4 });
    const st = await merge({ model, stats, dryRun: true, groups: 4 });
    expect(seq.memory.peakBytes).toBeGreaterThan(st.memory.peakBytes);
    expect(seq.memory.parts.map((p) => p.label).join('\n')).toMatch(/merged experts of one layer/);
    expect(st.memory.parts.map((p) => p.label).join('\n')).toMatch(/one group merged from lazily loaded members/);
    expect(st.memory.parts.map((p) => p.label).join('\n')).toMatch(/weight alignment/);
    for (const m of [seq.memory, st.memory]) expect(m.peakBytes).toBe(m.parts.reduce((a, p) => a + p.bytes, 0));
  });
});
