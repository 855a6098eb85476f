/**
 * `--allocate attention` against attention fixed at --dense-bits, at the same true size of experts + attention
 * (issue 16), on the trained fixture, compressed-tensors (vLLM): each baseline row fixes the experts' budget and the
 * attention width; the row after it gives the allocation the baseline's total bytes of routed experts and attention
 * to spend across both. Prints the markdown rows of docs/quantize.md and each allocated row's perplexity as a ratio
 * to its baseline's. Every output is checked by test/serving's vLLM-rules checker.
 *   nice -n 10 npx tsx bench/serving-allocate.ts [--calib-tokens 8192] [--eval-tokens 16384] [--seq-len 128]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { evaluate } from '../src/eval/perplexity.js';
import { quantize, type QuantizeRequest } from '../src/quantize/pipeline.js';
import type { QuantizeReport } from '../src/quantize/report.js';
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
const evalTokens = Number(arg('--eval-tokens', '16384'));
const seqLen = Number(arg('--seq-len', '128'));

/** true bits per weight of the routed experts and attention together (every stored byte) */
const expertsAndAttention = (r: QuantizeReport) => {
  const cs = r.sizes.classes.filter((c) => c.cls === 'expert' || c.cls === 'attention');
  return (8 * cs.reduce((a, c) => a + c.afterBytes, 0)) / cs.reduce((a, c) => a + c.params, 0);
};
const widths = (r: QuantizeReport, suffix: string) =>
  r.units
    .filter((u) => (suffix ? u.id.endsWith(suffix) : !u.id.includes('.')))
    .map((u) => u.bits)
    .join(' ');

await initBackend('auto');
const root = await mkdtemp(join(tmpdir(), 'moe-alloc-'));
const rows: string[] = [];
const ppl = async (dir: string) => (await evaluate({ model: dir, data: heldout, seqLen, ...(evalTokens ? { maxTokens: evalTokens } : {}) })).perplexity;
let k = 0;
const one = async (req: Partial<QuantizeRequest> & { bits: number }) => {
  const out = join(root, `q${k++}`);
  const t0 = performance.now();
  const rep = await quantize({ model, out, calib, calibTokens, seqLen, format: 'compressed-tensors', ...req });
  const p = await ppl(out);
  const v = checkVllm(out);
  await rm(out, { recursive: true, force: true });
  console.error(`${JSON.stringify(req)}: ppl ${p.toFixed(3)} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  return { rep, p, rules: v.length ? `**${v.length} violations**` : 'pass' };
};
try {
  const base = await ppl(model);
  rows.push(`| unquantized | - | - | - | - | 16 | ${base.toFixed(3)} | - | - |`);
  for (const method of ['gptq', 'rtn'] as const) {
    for (const dense of [4, 8] as const) {
      const a = await one({ method, bits: 5.13, denseBits: dense });
      const total = expertsAndAttention(a.rep);
      const b = await one({ method, bits: total + 1e-9, allocate: ['attention'] });
      rows.push(
        `| --bits 5.13, attention --dense-bits ${dense} | ${method} | ${widths(a.rep, '')} | ${dense} ${dense} ${dense} ${dense} | ${a.rep.bpw.experts.toFixed(4)} | ${total.toFixed(4)} | ${a.p.toFixed(3)} | 1 | ${a.rules} |`,
      );
      rows.push(
        `| --allocate attention at that size | ${method} | ${widths(b.rep, '')} | ${widths(b.rep, '.attention')} | ${b.rep.bpw.experts.toFixed(4)} | ${b.rep.bpw.budgeted!.toFixed(4)} | ${b.p.toFixed(3)} | ${(b.p / a.p).toFixed(5)} | ${b.rules} |`,
      );
    }
  }
} finally {
  await rm(root, { recursive: true, force: true });
}
console.log(`held-out perplexity, ${model}, calibration ${calibTokens} tokens, windows of ${seqLen}, ${evalTokens || 'all'} eval tokens`);
console.log(
  '| run | method | expert widths per layer | attention widths per layer | true bpw (experts) | true bpw (experts + attention) | perplexity | ratio to the row above | vLLM rules |',
);
console.log('|---|---|---|---|---|---|---|---|---|');
for (const r of rows) console.log(r);
