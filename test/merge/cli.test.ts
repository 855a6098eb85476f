/** `moe merge` through the command line: JSON report, dry-run plan, and one-line errors with exit codes. */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { writeWordTokenizer, wordLines } from '../eval/tokenizer.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { rng } from './synthetic.js';
import { runMoe } from '../helpers/cli.js';

let root: string;
let model: string;
let calib: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-merge-cli-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 8, seed: 4 });
  await writeWordTokenizer(model);
  const r = rng(2);
  calib = join(root, 'calib.txt');
  await writeFile(calib, wordLines(30, r, 10).join('\n') + '\n');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const run = (...args: string[]) => runMoe(['merge', ...args]);

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

describe('moe merge CLI', () => {
  it('--json prints the report; the output has the merged expert count', async () => {
    const out = join(root, 'out');
    const r = await run('--model', model, '--out', out, '--groups', '6', '--calib', calib, '--calib-tokens', '128', '--seq-len', '32', '--json');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const rep = JSON.parse(r.stdout);
    expect(rep.tool).toBe('moe merge');
    expect(rep.groups).toBe(6);
    expect(rep.choices).toEqual({ grouping: 'msmoe', align: 'weights', weighting: 'frequency', router: 'mean' });
    expect(rep.layers[0].groups).toHaveLength(6);
    expect(await exists(join(out, 'moe-merge-report.json'))).toBe(true);
  });

  it('--dry-run prints one line per layer with the groups', async () => {
    const r = await run(
      '--model',
      model,
      '--groups',
      '4',
      '--calib',
      calib,
      '--calib-tokens',
      '128',
      '--seq-len',
      '32',
      '--grouping',
      'hierarchical',
      '--dry-run',
      '--quiet',
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^plan: mixtral, 8 -> 4 experts per layer/);
    expect(r.stdout.match(/^ {2}layer \d+: /gm)!.length).toBeGreaterThan(0);
  });

  const bad: Array<[string, string[], RegExp, number]> = [
    ['more groups than experts', ['--groups', '12', '--calib', 'CALIB', '--seq-len', '32'], /--groups 12 is more than the 8 experts/, ExitCode.usage],
    ['fewer groups than top-k', ['--groups', '1', '--calib', 'CALIB', '--seq-len', '32'], /fewer than the 2 experts each token is routed to/, ExitCode.usage],
    ['no calibration', ['--groups', '4'], /give calibration text \(--calib FILE\), saved statistics/, ExitCode.usage],
    ['fit from stats', ['--groups', '4', '--stats', 'x', '--router', 'fit'], /--router fit needs calibration hidden states/, ExitCode.usage],
    ['non-integer groups', ['--groups', 'four', '--calib', 'x'], /--groups must be a whole number/, ExitCode.usage],
    ['missing stats dir', ['--groups', '4', '--stats', '/nonexistent/stats'], /\/nonexistent\/stats/, ExitCode.badInput],
    [
      '--drop auto from stats',
      ['--groups', '4', '--stats', 'x', '--drop', 'auto'],
      /--drop auto measures each layer on calibration hidden states/,
      ExitCode.usage,
    ],
    [
      '--drop with a saved plan',
      ['--groups', '4', '--plan', 'CALIB', '--drop', 'never'],
      /a saved plan \(--plan\) already holds its decisions/,
      ExitCode.usage,
    ],
    [
      '--keep-per-layer auto from stats',
      ['--groups', '4', '--stats', 'x', '--keep-per-layer', 'auto'],
      /--keep-per-layer auto measures each layer/,
      ExitCode.usage,
    ],
  ];
  for (const [what, args, msg, code] of bad) {
    it(`${what}: one line on stderr, exit ${code}`, async () => {
      const r = await run('--model', model, '--out', join(root, 'bad'), ...args.map((a) => (a === 'CALIB' ? calib : a)));
      expect(r.code).toBe(code);
      expect(r.stderr).toMatch(msg);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    });
  }

  it('--dry-run prints which candidate --drop auto chose, what it chose per layer, and --keep-per-layer auto', async () => {
    const r = await run(
      '--model',
      model,
      '--groups',
      '6',
      '--calib',
      calib,
      '--calib-tokens',
      '256',
      '--seq-len',
      '32',
      '--keep-per-layer',
      'auto',
      '--dry-run',
      '--json',
    );
    expect(r.code).toBe(0);
    const rep = JSON.parse(r.stdout);
    // the whole-model choice (NLL on the calibration windows) and, where the merge candidate wins, its per-layer decisions
    const cands = rep.choice.candidates as { candidate: string; grouping?: string; nll: number }[];
    expect(cands.map((c) => `${c.candidate} ${c.grouping ?? ''}`.trim())).toEqual([
      'merge msmoe',
      'planned msmoe',
      'merge hierarchical',
      'planned hierarchical',
      'merge saliency',
      'planned saliency',
      'prune-reap',
    ]);
    expect(cands[rep.choice.chosen]!.nll).toBe(Math.min(...cands.map((c) => c.nll)));
    for (const l of rep.layers) {
      if (cands[rep.choice.chosen]!.candidate !== 'merge') {
        expect(l.decision).toBeUndefined();
        continue;
      }
      expect(['merge', 'merge-drop', 'prune-reap', 'prune-frequency']).toContain(l.decision.choice);
      expect(l.decision.error).toBeLessThanOrEqual(l.decision.errors.reap);
    }
    expect(rep.keepPerLayer.counts.reduce((a: number, b: number) => a + b, 0)).toBe(6 * rep.layers.length);
    expect(rep.keepPerLayer.errorAllocated).toBeLessThanOrEqual(rep.keepPerLayer.errorUniform);
    expect(rep.keepPerLayer.written).toBe(false);
  });

  it('an unknown --align value is a usage error', async () => {
    const r = await run('--model', model, '--out', join(root, 'bad'), '--groups', '4', '--calib', calib, '--align', 'magic');
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr).toMatch(/^moe: --align must be one of none, weights, activations, got 'magic'\n$/);
  });
});
