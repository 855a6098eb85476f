/**
 * Held-out perplexity of `moe quantize` at 2.5, 3 and 4 bits: GPTQ vs round-to-nearest, the LP allocation vs
 * uniform widths and a uniform 2/3-bit mix of at least the same true size (non-expert linears at 4 bits in every
 * row). Prints the markdown table of docs/quantize.md.
 *   npx tsx bench/quantize-table.ts --model test/fixtures/tiny-mixtral --calib test/fixtures/text/calib.txt \
 *     --heldout test/fixtures/text/heldout.txt [--calib-tokens 8192] [--eval-tokens 16384] [--seq-len 256]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { evaluate } from '../src/eval/perplexity.js';
import { openModel } from '../src/model/open.js';
import { uniformMix } from '../src/quantize/baselines.js';
import { quantize, type QuantizeRequest } from '../src/quantize/pipeline.js';
import { initBackend } from '../src/runtime/backend.js';

const arg = (k: string, d?: string) => {
  const i = process.argv.indexOf(k);
  return i > 0 ? process.argv[i + 1]! : d;
};
const model = arg('--model', 'test/fixtures/tiny-mixtral')!;
const calib = arg('--calib', 'test/fixtures/text/calib.txt')!;
const heldout = arg('--heldout', 'test/fixtures/text/heldout.txt')!;
const calibTokens = Number(arg('--calib-tokens', '8192'));
const evalTokens = Number(arg('--eval-tokens', '16384'));
const seqLen = Number(arg('--seq-len', '256'));

await initBackend('auto');
const root = await mkdtemp(join(tmpdir(), 'moe-qtable-'));
const rows: string[] = [];
const ppl = async (dir: string) => (await evaluate({ model: dir, data: heldout, seqLen, maxTokens: evalTokens })).perplexity;
try {
  const basePpl = await ppl(model);
  rows.push(`| unquantized | - | - | - | ${basePpl.toFixed(3)} |`);
  const opened = await openModel(model);
  const view = opened.view;
  await opened.ckpt.close();
  let k = 0;
  const run = async (label: string, req: Partial<QuantizeRequest> & { bits: number }) => {
    const out = join(root, `q${k++}`);
    const t0 = performance.now();
    const rep = await quantize({ model, out, calib, calibTokens, seqLen, ...req });
    const s = (performance.now() - t0) / 1000;
    const p = await ppl(out);
    rows.push(`| ${label} | ${req.method ?? 'gptq'} | ${rep.bpw.experts.toFixed(4)} | ${rep.sizes.afterMiB.toFixed(2)} MiB | ${p.toFixed(3)} |`);
    console.error(
      `${label} ${req.method ?? 'gptq'}: bpw ${rep.bpw.experts.toFixed(4)} ppl ${p.toFixed(3)} (${s.toFixed(0)} s, solver ${rep.solver.solveMs.toFixed(0)} ms, fallbacks ${rep.fallbacks.length})`,
    );
    await rm(out, { recursive: true, force: true });
    return rep;
  };
  for (const b of [4, 3] as const) {
    for (const method of ['gptq', 'rtn'] as const) await run(`uniform ${b}-bit experts`, { bits: 16, candidates: [b], method });
  }
  for (const target of [4, 3, 2.5]) {
    for (const method of ['gptq', 'rtn'] as const) {
      const rep = await run(`LP allocation --bits ${target}`, { bits: target, method });
      if (target === 2.5 && method === 'gptq') {
        const mix = uniformMix(view, rep.bpw.experts, 2, 3, 128);
        await run(`uniform 2/3 mix (${mix.high} of ${view.dims.numExperts} experts at 3 bits per layer)`, { bits: 16, override: mix.override, method });
      }
    }
  }
  console.log('| experts | quantizer | true bpw (routed experts) | checkpoint size | held-out perplexity |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) console.log(r);
} finally {
  await rm(root, { recursive: true, force: true });
}
