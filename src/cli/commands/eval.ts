import { z } from 'zod';
import { fail } from '../../errors.js';
import type { EvalReport } from '../../eval/perplexity.js';
import { command } from '../../pipeline/descriptor.js';
import { common, DEFAULT_SEQ_LEN, field, int } from '../../pipeline/fields.js';
import { prepare } from '../../pipeline/validate.js';

function skipArg(v: string): number | 'auto' {
  if (v === 'auto') return 'auto';
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) fail('Usage', `--skip must be 'auto' or a beta in [0, 1], got '${v}'`);
  return n;
}

const EVAL_OPTIONS = z.object({
  model: common.model('checkpoint directory'),
  data: field(z.string().min(1), { help: 'text file, one document or sentence per line', arg: 'file', path: 'data' }),
  dataIds: field(z.string().min(1).optional(), {
    help: 'pre-tokenized data in place of --data: one JSON array of token ids per line (a tokenizer moe cannot read)',
    arg: 'file',
    path: 'data',
  }),
  seqLen: field(int(2).default(DEFAULT_SEQ_LEN), { help: 'tokens per window', arg: 'n' }),
  maxTokens: field(int(1).optional(), { help: 'score only the first windows up to this many tokens', arg: 'n', defaultText: 'the whole file' }),
  base: field(z.string().min(1).optional(), { help: 'base checkpoint to compare against (same tokenizer)', arg: 'dir' }),
  skip: field(z.string().optional(), {
    help: "dynamic expert skipping: drop a token's weaker experts when w < beta * w_max; 'auto' = median w2/w1 per layer on --calib",
    arg: 'beta',
  }),
  calib: common.calib('calibration text for --skip auto'),
  calibIds: common.calibIds(),
  calibTokens: field(int(1).optional(), { help: 'calibration tokens for --skip auto', arg: 'n', defaultText: 'the whole file' }),
  backend: common.backend(),
  threads: common.threads(),
});

function checkEval(o: z.output<typeof EVAL_OPTIONS>): void {
  if (o.skip !== undefined) skipArg(o.skip);
}

function summary(r: EvalReport): string {
  const lines = [
    `perplexity ${r.perplexity.toFixed(4)} over ${r.tokens} tokens (${r.windows} windows of ${r.seqLen}${r.bos === null ? ', no BOS' : `, BOS ${r.bos}`}; ${r.tokensPerSecond.toFixed(0)} tokens/s on ${r.backend})`,
  ];
  if (r.base) {
    const b = r.base;
    lines.push(
      `base perplexity ${b.perplexity.toFixed(4)}: delta ${b.perplexityDelta >= 0 ? '+' : ''}${b.perplexityDelta.toFixed(4)} (x${b.perplexityRatio.toFixed(4)}), mean KL(base||model) ${b.meanKl.toFixed(5)} nats/token, top-1 agreement ${(100 * b.top1Agreement).toFixed(2)}%`,
    );
  }
  if (r.skip) {
    const beta = typeof r.skip.beta === 'number' ? r.skip.beta.toFixed(3) : `per layer [${r.skip.beta.map((b) => b.toFixed(3)).join(' ')}]`;
    lines.push(
      `dynamic skipping (beta ${beta}): ${r.skip.skipped} of ${r.skip.slots} expert calls skipped (${(100 * r.skip.savedFraction).toFixed(2)}% saved)`,
    );
  }
  return lines.join('\n');
}

export const EVAL_COMMAND = command({
  name: 'eval',
  summary: 'perplexity on a text file (lines tokenized alone, one stream, windows of --seq-len fed as [BOS]+window); with --base: delta, KL, top-1 agreement',
  options: EVAL_OPTIONS,
  check: checkEval,
  examples: [
    'moe eval --model ./mixtral-2.5bit --base ./mixtral --data heldout.txt --seq-len 128 --max-tokens 16384',
    'moe eval --model ./mixtral --data heldout.txt --skip auto --calib calib.txt   # dynamic expert skipping',
  ],
  async run(raw, { progress }) {
    const o = await prepare({ options: EVAL_OPTIONS, check: checkEval }, raw);
    const { initBackend } = await import('../../runtime/backend.js');
    const { evaluate } = await import('../../eval/perplexity.js');
    await initBackend(o.backend);
    if (o.threads !== undefined) await (await import('../../runtime/pool.js')).setThreads(o.threads);
    return evaluate({
      model: o.model,
      data: o.data,
      seqLen: o.seqLen,
      ...(o.maxTokens !== undefined ? { maxTokens: o.maxTokens } : {}),
      ...(o.base !== undefined ? { base: o.base } : {}),
      ...(o.skip !== undefined ? { skip: skipArg(o.skip) } : {}),
      ...(o.calib !== undefined ? { calib: o.calib } : {}),
      ...(o.dataIds !== undefined ? { dataIds: o.dataIds } : {}),
      ...(o.calibIds !== undefined ? { calibIds: o.calibIds } : {}),
      ...(o.calibTokens !== undefined ? { calibTokens: o.calibTokens } : {}),
      ...(progress ? { progress } : {}),
    });
  },
  print: summary,
});
