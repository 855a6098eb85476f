/**
 * Quantizing an already-quantized (GPTQ) checkpoint is refused up front: exit 3, one `moe:` line naming
 * quant_method and what to do, for both output formats and for dry runs, with nothing written. Before, the GPTQ
 * run failed only inside the plan ("internal plan error", exit 4) after scoring.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
let quantized: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-requant-'));
  const model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 4, layers: 2, intermediate: 64 });
  quantized = join(root, 'q');
  const r = await runMoe(['quantize', '--model', model, '--bits', '5.5', '--candidates', '4', '--method', 'rtn', '--out', quantized, '--quiet']);
  expect(r.code, r.stderr).toBe(0);
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('quantize refuses a quantized input', () => {
  const cases: [string, string[]][] = [
    ['gptq output', ['--method', 'rtn', '--bits', '5.5', '--candidates', '4']],
    ['gptq dry run', ['--method', 'rtn', '--bits', '5.5', '--candidates', '4', '--dry-run']],
    ['gguf output', ['--format', 'gguf', '--method', 'rtn', '--bits', '4.5']],
    ['gguf f16 export', ['--format', 'gguf', '--candidates', 'f16']],
  ];
  for (const [what, args] of cases) {
    it(`${what}: exit 3, one line, nothing written`, async () => {
      const out = join(root, `out-${what.replace(/\W/g, '')}`);
      const r = await runMoe(['quantize', '--model', quantized, ...args, ...(args.includes('--dry-run') ? [] : ['--out', out])]);
      expect(r.code).toBe(ExitCode.badInput);
      expect(r.stderr.trim().split('\n')).toEqual([
        `moe: ${quantized} is already quantized (config.json quantization_config.quant_method 'gptq'): quantize its full-precision source, or restore one with moe dequantize --model ${quantized} --out DIR`,
      ]);
      expect((await readdir(root)).filter((f) => f.startsWith('out-') || f.startsWith('.moe-staging-out'))).toEqual([]);
    });
  }
});
