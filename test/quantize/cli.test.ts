/** `moe quantize` / `moe dequantize` through the command line: one-line errors with exit codes, the dry-run plan. */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from '../helpers/cli.js';
import { ExitCode } from '../../src/errors.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
let model: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-quantize-cli-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 4, layers: 2, intermediate: 64 });
  await writeFile(join(root, 'c.txt'), 'some text\n');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const run = (...args: string[]) => runMoe(args);

describe('moe quantize CLI', () => {
  it('prints the plan on --dry-run: fates with reasons, budgeted sizes, no output written', async () => {
    // round-to-nearest at one width needs no calibration: the plan is the fates and the budget
    const r = await run(
      'quantize',
      '--model',
      model,
      '--bits',
      '6',
      '--method',
      'rtn',
      '--candidates',
      '4',
      '--dry-run',
      '--group-size',
      '32',
      '--override',
      'experts\\.1\\.w2=8',
      '--quiet',
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/plan: mixtral, rtn, --bits 6/);
    expect(r.stdout).toMatch(/model size = [\d.]+ MiB, quant size = [\d.]+ MiB \(planned\)/);
    expect(r.stdout).toMatch(/experts\.1\.w2\.weight: 8 \(--override experts\\\.1\\\.w2=8\)/);
    expect(r.stdout).toMatch(/self_attn\.q_proj\.weight: 4 \(attention: --dense-bits 4\)/);
    expect(r.stdout).toMatch(/one width per unit: nothing to score/);
  });

  const cases: [string, string[], RegExp, number][] = [
    ['impossible budget', ['--bits', '1', '--method', 'rtn', '--dry-run'], /moe: --bits 1 is below the smallest true size .* bpw \(largest/, ExitCode.usage],
    ['bad bits', ['--bits', 'x', '--dry-run'], /--bits must be a number/, ExitCode.usage],
    ['bad candidate', ['--bits', '3', '--candidates', '2,5', '--dry-run'], /--candidates must be one of 2, 3, 4, 8/, ExitCode.usage],
    ['no calibration', ['--bits', '3', '--out', 'OUT'], /needs calibration text .* --calib FILE/, ExitCode.usage],
    ['no output', ['--bits', '3', '--calib', 'x.txt'], /give --out DIR/, ExitCode.usage],
    // a dry run refuses what the real run refuses: it predicts that run
    ['GPTQ dry run without calibration', ['--bits', '3', '--dry-run'], /GPTQ needs calibration text for its Hessians/, ExitCode.usage],
    [
      '--bits above every candidate',
      ['--bits', '9', '--method', 'rtn', '--calib', 'CALIB', '--seq-len', '32', '--dry-run'],
      /--bits 9 is above the largest true size/,
      ExitCode.usage,
    ],
    ['bad override', ['--bits', '3', '--override', 'w2=5', '--dry-run'], /--override 'w2=5': bits must be one of/, ExitCode.usage],
  ];
  for (const [what, args, re, code] of cases) {
    it(`${what}: one line, exit ${code}`, async () => {
      const r = await run('quantize', '--model', model, ...args.map((a) => (a === 'OUT' ? join(root, 'o') : a === 'CALIB' ? join(root, 'c.txt') : a)));
      expect(r.code).toBe(code);
      expect(r.stderr).toMatch(re);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(
        await stat(join(root, 'o')).then(
          () => true,
          () => false,
        ),
      ).toBe(false);
    });
  }

  it('dequantize refuses a checkpoint without GPTQ or compressed-tensors tensors', async () => {
    const r = await run('dequantize', '--model', model, '--out', join(root, 'dq'));
    expect(r.code).toBe(ExitCode.badInput);
    expect(r.stderr).toMatch(/moe: .* has no GPTQ \(\*\.qweight\) or compressed-tensors \(\*\.weight_packed\) tensors/);
  });
});
