/**
 * moe quantize for production runs: plan files (--save-plan / --plan), layer-parallel jobs (--shard i/n joined by
 * moe assemble), --no-sequential, the apply pass writing concurrently with backpressure, and the peak-memory
 * estimate. Byte-for-byte comparisons on a tiny random Mixtral (3 layers, 4 experts).
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../src/runtime/backend.js';
import { quantize, type QuantizeRequest } from '../../src/quantize/pipeline.js';
import { LayerHandoff } from '../../src/pipeline/handoff.js';
import { ExitCode } from '../../src/errors.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { runMoe } from '../helpers/cli.js';
import { outputFiles } from '../helpers/files.js';
import { makeQuantizeModel } from './word-model.js';

let root: string;
let model: string;
let calib: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-quantize-prod-'));
  ({ model, calib } = await makeQuantizeModel(root, 3));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const base = (out: string | undefined, extra: Partial<QuantizeRequest> = {}): QuantizeRequest => ({
  model,
  ...(out ? { out: join(root, out) } : {}),
  bits: 4,
  calib,
  calibTokens: 512,
  seqLen: 32,
  groupSize: 32,
  minTokens: 8,
  ...extra,
});
/** the same flags on the command line */
const flags = ['--model', '', '--bits', '4', '--calib-tokens', '512', '--seq-len', '32', '--group-size', '32', '--min-tokens', '8', '--quiet'];
const cli = (...args: string[]) => runMoe(['quantize', ...flags.map((f) => (f === '' ? model : f)), ...args]);

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

describe('plan files', () => {
  it('--plan writes byte for byte what the run that saved the plan wrote, without scoring; --dry-run saves the same plan', async () => {
    const plan = join(root, 'plan.json');
    const a = await quantize(base('saved', { savePlan: plan }));
    expect(a.plan).toEqual({ saved: plan });
    expect(a.scored).toBe(true);
    const file = JSON.parse(await readFile(plan, 'utf8'));
    expect(file.tool).toBe('quantize');
    expect(new Set(Object.values(file.plan.linears)).size).toBeGreaterThan(1);

    const r = await cli('--calib', calib, '--plan', plan, '--out', join(root, 'applied'), '--json');
    expect(r.code).toBe(0);
    const b = JSON.parse(r.stdout);
    expect(b.plan).toEqual({ loaded: plan });
    expect(b.bitMap).toEqual(a.bitMap);
    expect(b.units).toEqual(a.units);
    expect(await outputFiles(join(root, 'applied'))).toEqual(await outputFiles(join(root, 'saved')));

    // a dry run scores and saves the same plan, and writes nothing else
    const dry = join(root, 'plan-dry.json');
    const d = await quantize(base('never', { savePlan: dry, dryRun: true }));
    expect(d.dryRun).toBe(true);
    expect(await exists(join(root, 'never'))).toBe(false);
    expect(JSON.parse(await readFile(dry, 'utf8')).plan.units).toEqual(file.plan.units);
  });

  it('refuses a plan of another model, other flags or with a bad entry: one line, exit 2 or 3', async () => {
    const plan = join(root, 'plan.json');
    const other = join(root, 'other-model');
    await makeTinyCheckpoint('mixtral', other, { experts: 4, layers: 2, intermediate: 64, seed: 3 });
    const cases: [string, string[], RegExp, number][] = [
      ['another model', ['--model', other], /computed for a different model/, ExitCode.badInput],
      ['another group size', ['--group-size', '64'], /computed with groupSize = 32, this command has 64/, ExitCode.usage],
      ['another method', ['--method', 'rtn'], /computed with method = "gptq", this command has "rtn"/, ExitCode.usage],
    ];
    const text = await readFile(plan, 'utf8');
    const edited = (f: (p: { plan: { units: { id: string; choice: string }[]; linears: Record<string, unknown> } }) => void) => {
      const p = JSON.parse(text);
      f(p);
      const path = join(root, `edited-${Math.random().toString(36).slice(2)}.json`);
      return writeFile(path, JSON.stringify(p)).then(() => path);
    };
    const badWidth = await edited((p) => (p.plan.units[0]!.choice = '5'));
    const missing = await edited((p) => p.plan.units.pop());
    const linear = await edited((p) => {
      const k = Object.keys(p.plan.linears).find((n) => /experts\.0\.w1/.test(n))!;
      p.plan.linears[k] = p.plan.linears[k] === 2 ? 4 : 2;
    });
    for (const [what, args, re, code] of cases) {
      const r = await runMoe(['quantize', ...flags.map((f) => (f === '' ? model : f)), '--calib', calib, '--plan', plan, '--out', join(root, 'x'), ...args]);
      expect(r.code, what).toBe(code);
      expect(r.stderr, what).toMatch(re);
      expect(r.stderr.trim().split('\n'), what).toHaveLength(1);
    }
    for (const [path, re] of [
      [badWidth, /unit L0\.E0: '5' is not one of its options \(2, 2\+down3, 3, 3\+down4, 4\)/],
      [missing, /no choice for unit L2\.E3/],
      [linear, /linear .*experts\.0\.w1\.weight has \d bits, but its unit's choice/],
    ] as const) {
      const r = await cli('--calib', calib, '--plan', path, '--out', join(root, 'x'));
      expect(r.code).toBe(ExitCode.badInput);
      expect(r.stderr).toMatch(re);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(await exists(join(root, 'x'))).toBe(false);
    const both = await cli('--calib', calib, '--plan', plan, '--save-plan', join(root, 'p2.json'), '--dry-run');
    expect(both.code).toBe(ExitCode.usage);
    expect(both.stderr).toMatch(/--plan FILE .* or --save-plan FILE .* not both/);
  });
});

describe('--shard i/n and --no-sequential', () => {
  it('--shard needs --plan when the widths are chosen by scores', async () => {
    const r = await cli('--calib', calib, '--shard', '0/2', '--out', join(root, 'y'));
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr).toMatch(/^moe: --shard: the widths are chosen by scores .* --save-plan FILE .* --plan FILE\n$/);
  });

  it('GPTQ: shards 0/2 and 1/2 assembled equal one --no-sequential run with the same plan, byte for byte', async () => {
    const plan = join(root, 'plan.json');
    const whole = await quantize(base('whole-nonseq', { plan, sequential: false }));
    expect(whole.sequential).toBe(false);
    expect(whole.calibration.hessians).toMatch(/not sequential/);
    const parts = [0, 1].map((i) => join(root, `gptq-part-${i}`));
    for (const [i, p] of parts.entries()) {
      const rep = await quantize({ ...base(undefined, { plan, shard: { index: i, count: 2 } }), out: p });
      // --shard implies --no-sequential for GPTQ
      expect(rep.sequential).toBe(false);
      expect(rep.shard).toEqual({ index: i, count: 2 });
    }
    const r = await runMoe(['assemble', parts[1]!, parts[0]!, '--out', join(root, 'gptq-assembled'), '--quiet']);
    expect(r.code).toBe(0);
    expect(await outputFiles(join(root, 'gptq-assembled'))).toEqual(await outputFiles(join(root, 'whole-nonseq')));
    // and the sequential run (the default) differs: layers >= 1 saw quantized activations
    expect(await outputFiles(join(root, 'whole-nonseq'))).not.toEqual(await outputFiles(join(root, 'saved')));
  });

  it('RTN: a plan scored once, then shards without calibration text, assembled equal one run', async () => {
    const plan = join(root, 'plan-rtn.json');
    const saved = await quantize(base(undefined, { method: 'rtn', savePlan: plan, dryRun: true }));
    expect(saved.scored).toBe(true);
    const noCalib = { calib: undefined, calibTokens: undefined, seqLen: undefined };
    const whole = await quantize(base('rtn-whole', { method: 'rtn', plan, ...noCalib }));
    expect(whole.calibration.tokens).toBe(0);
    expect(whole.bitMap).toEqual(saved.bitMap);
    const parts = [0, 1].map((i) => join(root, `rtn-part-${i}`));
    for (const [i, p] of parts.entries()) await quantize({ ...base(undefined, { method: 'rtn', plan, shard: { index: i, count: 2 }, ...noCalib }), out: p });
    const r = await runMoe(['assemble', parts[0]!, parts[1]!, '--out', join(root, 'rtn-assembled'), '--quiet']);
    expect(r.code).toBe(0);
    expect(await outputFiles(join(root, 'rtn-assembled'))).toEqual(await outputFiles(join(root, 'rtn-whole')));
  });
});

describe('peak memory', () => {
  it('dry runs and real runs report an estimate; the text summary prints it', async () => {
    const g = await quantize(base(undefined, { dryRun: true }));
    const labels = g.memory.parts.map((p) => p.label).join('\n');
    expect(g.memory.peakBytes).toBe(g.memory.parts.reduce((a, p) => a + p.bytes, 0));
    expect(labels).toMatch(/runtime/);
    expect(labels).toMatch(/forward pass over \d+ calibration tokens/);
    expect(labels).toMatch(/GPTQ/);
    // RTN at one width without calibration: no forward pass at all
    const rtn = await quantize({ model, bits: 16, method: 'rtn', candidates: [4], groupSize: 32, dryRun: true });
    expect(rtn.memory.parts.map((p) => p.label).join('\n')).not.toMatch(/forward pass|GPTQ/);
    expect(rtn.memory.peakBytes).toBeLessThan(g.memory.peakBytes);
    const r = await cli('--calib', calib, '--dry-run');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/estimated peak memory \d+ MiB: .*runtime \(node \+ tfjs\) \d+ MiB/);
  });

  it('the hand-off between the apply pass and the writer releases the other side when one fails', async () => {
    const h = new LayerHandoff();
    const wait = h.consumerAt(3);
    const ready = h.take(2);
    h.reached(1);
    h.fail(new Error('disk full'));
    await expect(wait).rejects.toThrow('disk full');
    await expect(ready).rejects.toThrow('disk full');
    await expect(h.take(5)).rejects.toThrow('disk full');
    const k = new LayerHandoff();
    const at = k.consumerAt(2);
    k.reached(2);
    await expect(at).resolves.toBeUndefined();
    k.publish(0);
    await expect(k.take(0)).resolves.toBeUndefined();
    k.close();
    await expect(k.take(1)).rejects.toThrow(/asked for layer 1, which the pass did not produce/);
  });
});
