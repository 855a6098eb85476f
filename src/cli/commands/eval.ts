import type { Command } from 'commander';
import { fail } from '../../errors.js';
import { evaluate, type EvalReport } from '../../eval/perplexity.js';
import { initBackend, parseBackendOption } from '../../runtime/backend.js';
import { createProgress } from '../progress.js';
import { count } from '../options.js';

function skipArg(v: string): number | 'auto' {
  if (v === 'auto') return 'auto';
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) fail('Usage', `--skip must be 'auto' or a beta in [0, 1], got '${v}'`);
  return n;
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

export function registerEval(program: Command): void {
  program
    .command('eval')
    .description(
      'perplexity on a text file (lines tokenized alone, one stream, windows of --seq-len fed as [BOS]+window); with --base: delta, KL, top-1 agreement',
    )
    .requiredOption('--model <dir>', 'checkpoint directory')
    .requiredOption('--data <file>', 'text file, one document or sentence per line')
    .option('--seq-len <n>', 'tokens per window', count('--seq-len'), 256)
    .option('--max-tokens <n>', 'score only the first windows up to this many tokens', count('--max-tokens'))
    .option('--base <dir>', 'base checkpoint to compare against (same tokenizer)')
    .option('--skip <beta>', "dynamic expert skipping: drop a token's weaker experts when w < beta * w_max; 'auto' = median w2/w1 per layer on --calib")
    .option('--calib <file>', 'calibration text for --skip auto')
    .option('--calib-tokens <n>', 'calibration tokens for --skip auto', count('--calib-tokens'))
    .option('--backend <name>', 'tensor backend: auto | tensorflow | wasm | cpu', parseBackendOption, 'auto')
    .option('--json', 'print the JSON report on stdout')
    .option('--quiet', 'no progress output')
    .action(async (o: Record<string, any>) => {
      const progress = createProgress({ quiet: o.quiet, json: o.json });
      await initBackend(o.backend);
      const report = await evaluate({
        model: o.model,
        data: o.data,
        seqLen: o.seqLen,
        maxTokens: o.maxTokens,
        base: o.base,
        ...(o.skip !== undefined ? { skip: skipArg(o.skip) } : {}),
        calib: o.calib,
        calibTokens: o.calibTokens,
        progress,
      });
      if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
      else process.stdout.write(summary(report) + '\n');
    });
}
