/**
 * Held-out perplexity and true bpw of the outputs vLLM can serve (issue 16) on the trained fixture:
 * compressed-tensors with layer-allocated 4/8-bit experts against uniform 4 and uniform 8, and the same for
 * vLLM-shaped GPTQ (--serve vllm), each with GPTQ and with round-to-nearest. Every run is checked by the
 * vLLM-rules checker of test/serving (a row that breaks a rule is marked). Prints the markdown table of
 * docs/quantize.md ("Serving engines").
 *   nice -n 10 npx tsx bench/serving-table.ts [--calib-tokens 8192] [--eval-tokens 0 (all)] [--seq-len 128]
 * Budgets: at layer granularity the 4-layer fixture reaches 4.1289 + k bpw (compressed-tensors) and
 * 4.3229 + 1.0078 k (GPTQ, qzeros and g_idx included), k = layers at 8 bits.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { evaluate } from '../src/eval/perplexity.js';
import { quantize, type QuantizeRequest } from '../src/quantize/pipeline.js';
import { initBackend } from '../src/runtime/backend.js';
import { checkVllm } from '../test/serving/vllm-rules.js';

const arg = (k: string, d?: string) => {
  const i = process.argv.indexOf(k);
  return i > 0 ? process.argv[i + 1]! : d;
};
const model = arg('--model', 'test/fixtures/tiny-mixtral')!;
const calib = arg('--calib', 'test/fixtures/text/calib.txt')!;
const heldout = arg('--heldout', 'test/fixtures/text/heldout.txt')!;
const calibTokens = Number(arg('--calib-tokens', '8192'));
const evalTokens = Number(arg('--eval-tokens', '0'));
const seqLen = Number(arg('--seq-len', '128'));

await initBackend('auto');
const root = await mkdtemp(join(tmpdir(), 'moe-stable-'));
const rows: string[] = [];
const ppl = async (dir: string) => (await evaluate({ model: dir, data: heldout, seqLen, ...(evalTokens ? { maxTokens: evalTokens } : {}) })).perplexity;
try {
  const t0 = performance.now();
  const basePpl = await ppl(model);
  rows.push(`| unquantized | - | - | - | 16 | ${basePpl.toFixed(3)} | - |`);
  console.error(`unquantized: ppl ${basePpl.toFixed(3)} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  let k = 0;
  const run = async (format: string, label: string, req: Partial<QuantizeRequest> & { bits: number }) => {
    for (const method of ['gptq', 'rtn'] as const) {
      const out = join(root, `q${k++}`);
      const t1 = performance.now();
      const rep = await quantize({ model, out, calib, calibTokens, seqLen, method, ...req });
      const p = await ppl(out);
      const v = checkVllm(out);
      const widths = rep.bitMap.map((l) => [...new Set(l.experts.flat())].join('/')).join(' ');
      rows.push(
        `| ${format} | ${label} | ${method} | ${widths} | ${rep.bpw.experts.toFixed(4)} | ${p.toFixed(3)} | ${v.length ? `**${v.length} violations**` : 'pass'} |`,
      );
      console.error(
        `${format} ${label} ${method}: widths ${widths} bpw ${rep.bpw.experts.toFixed(4)} ppl ${p.toFixed(3)} rules ${v.length ? v.join('; ') : 'pass'} (${((performance.now() - t1) / 1000).toFixed(0)} s)`,
      );
      await rm(out, { recursive: true, force: true });
    }
  };
  const ct = { format: 'compressed-tensors' as const };
  await run('compressed-tensors', 'uniform 4', { ...ct, bits: 4.2, candidates: [4] });
  await run('compressed-tensors', '--bits 5.13 (4/8 by layer)', { ...ct, bits: 5.13 });
  await run('compressed-tensors', '--bits 6.13 (4/8 by layer)', { ...ct, bits: 6.13 });
  await run('compressed-tensors', 'uniform 8', { ...ct, bits: 8.2, candidates: [8] });
  const vg = { format: 'gptq' as const, serve: 'vllm' as const };
  await run('gptq --serve vllm', 'uniform 4', { ...vg, bits: 4.4, candidates: [4] });
  await run('gptq --serve vllm', '--bits 5.34 (4/8 by layer)', { ...vg, bits: 5.34 });
  await run('gptq --serve vllm', '--bits 6.34 (4/8 by layer)', { ...vg, bits: 6.34 });
  await run('gptq --serve vllm', 'uniform 8', { ...vg, bits: 8.4, candidates: [8] });
} finally {
  await rm(root, { recursive: true, force: true });
}
console.log(`held-out perplexity, ${model}, calibration ${calibTokens} tokens, windows of ${seqLen}, ${evalTokens || 'all'} eval tokens`);
console.log('| format | experts | method | widths per layer | true bpw (experts) | perplexity | vLLM rules |');
console.log('|---|---|---|---|---|---|---|');
for (const r of rows) console.log(r);
