/**
 * `moe quantize --bits 2.5` end to end on a Mixtral-shaped model of hidden 256, 4 layers, 8 experts of 512,
 * top-2 (synthetic N(0, 0.02) weights, word-level tokenizer, 8192 calibration tokens), against the owner's
 * target of two minutes. Prints the phase times and the GPTQ-vs-RTN wall-time ratio measured in the same run.
 *   npx tsx bench/quantize-e2e.ts [--tokens 8192] [--method gptq|rtn]
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeSynthetic } from './make-synthetic.js';
import { writeWordTokenizer, WORDS, wordLines } from '../test/eval/tokenizer.js';
import { quantize } from '../src/quantize/pipeline.js';
import { summaryTable } from '../src/quantize/report.js';
import { initBackend } from '../src/runtime/backend.js';
import { createProgress } from '../src/cli/progress.js';

const arg = (k: string, d: string) => {
  const i = process.argv.indexOf(k);
  return i > 0 ? process.argv[i + 1]! : d;
};
const tokens = Number(arg('--tokens', '8192'));
const root = await mkdtemp(join(tmpdir(), 'moe-q-e2e-'));
try {
  const model = join(root, 'model');
  const vocab = await (async () => {
    await makeSynthetic({
      out: model,
      hidden: 256,
      intermediate: 512,
      experts: 8,
      layers: 4,
      heads: 8,
      kvHeads: 4,
      vocab: WORDS.length + 3,
      dtype: 'BF16',
      force: true,
    });
    return writeWordTokenizer(model);
  })();
  let s = 12345;
  const rnd = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
  const lines = wordLines(Math.ceil(tokens / 10) + 50, rnd);
  const calib = join(root, 'calib.txt');
  await writeFile(calib, lines.join('\n') + '\n');
  await initBackend('auto');
  console.log(`model: hidden 256, 4 layers, 8 experts x 512, top-2, vocab ${Object.keys(vocab).length}; calibration ${tokens} tokens`);
  const res: Record<string, number> = {};
  for (const method of arg('--method', 'gptq,rtn').split(',') as ('gptq' | 'rtn')[]) {
    const t0 = performance.now();
    const rep = await quantize({
      model,
      out: join(root, `q-${method}`),
      bits: 2.5,
      method,
      calib,
      calibTokens: tokens,
      seqLen: 256,
      progress: createProgress({}),
    });
    const sec = (performance.now() - t0) / 1000;
    res[method] = sec;
    console.log(
      `\n--- ${method}: ${sec.toFixed(1)} s end to end (score ${(rep.timings.scoreMs / 1000).toFixed(1)} s, apply ${(rep.timings.applyMs / 1000).toFixed(1)} s, solve ${rep.solver.solveMs.toFixed(0)} ms); target < 120 s: ${sec < 120 ? 'met' : 'MISSED'}`,
    );
    console.log(summaryTable(rep));
  }
  if (res['gptq'] && res['rtn']) console.log(`\nGPTQ / RTN wall time: ${(res['gptq'] / res['rtn']).toFixed(2)}x`);
} finally {
  await rm(root, { recursive: true, force: true });
}
