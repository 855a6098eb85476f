import { type Command, Option } from 'commander';
import { createProgress } from '../progress.js';
import { parseBackendOption } from '../../runtime/backend.js';
import { methodNames, PRUNE_METHODS } from '../../prune/methods.js';
import { DEFAULT_METHOD, prune, type PruneReport } from '../../prune/pipeline.js';
import { mib, number, shard, wholeNumber } from '../options.js';
import { formatEstimate } from '../../runtime/memory.js';

function summary(r: PruneReport): string {
  const lines = [`${r.dryRun ? 'plan' : 'pruned'}: ${r.family}, ${r.method}, keep ${r.keep} of ${r.numExperts} experts per layer (top-k ${r.topK})`];
  for (const l of r.layers) {
    const err = l.relError !== undefined ? `  rel. error ${l.relError.toExponential(3)} (${l.search})` : '';
    lines.push(`  layer ${l.layer}: keep [${l.kept.join(' ')}] remove [${l.removed.join(' ')}]${err}`);
  }
  const { before, after, predicted } = r.sizes;
  lines.push(
    `size ${mib(before.bytes)} -> ${mib(after.bytes)}${predicted ? ' (predicted)' : ''}; expert params ${before.expertParams} -> ${after.expertParams}`,
  );
  if (r.dryRun) lines.push(formatEstimate(r.memory));
  return lines.join('\n');
}

export function registerPrune(program: Command): void {
  const methodHelp = PRUNE_METHODS.map((m) => `${m.name}: ${m.description}`).join('; ');
  program
    .command('prune')
    .description("remove experts: the same count in every MoE layer, written in the family's own format")
    .requiredOption('--model <dir>', 'input checkpoint directory')
    .option('--out <dir>', 'output checkpoint directory')
    .addOption(new Option('--keep <n>', 'experts kept per MoE layer').argParser(wholeNumber('--keep')).conflicts('ratio'))
    .addOption(
      new Option('--ratio <r>', 'fraction of experts kept, round(R x experts) (0.75 removes a quarter)').argParser(number('--ratio')).conflicts('keep'),
    )
    .addOption(new Option('--method <name>', `expert score (${methodHelp})`).default(DEFAULT_METHOD).choices(methodNames()))
    .option('--calib <file>', 'calibration text file (data-driven methods)')
    .option('--calib-tokens <n>', 'calibration tokens to use from --calib', wholeNumber('--calib-tokens'))
    .option('--seq-len <n>', 'calibration window length in tokens', wholeNumber('--seq-len'))
    .option('--stats <dir>', 'saved calibration statistics (moe calibrate --out)')
    .option('--seed <n>', 'seed of --method random', wholeNumber('--seed'), 0)
    .option(
      '--shard <i/n>',
      'layer-parallel job i of n: write only layers l with l % n = i (join the parts with moe assemble; use the same --stats or --seed in every job)',
      shard('--shard'),
    )
    .option('--save-plan <file>', 'also write the kept sets to this plan file (with --dry-run: only the plan)')
    .option('--plan <file>', 'apply the kept sets of a saved plan (--save-plan) instead of scoring: every --shard job of one run takes the same file')
    .option('--sample-tokens <n>', 'reconstruct: calibration tokens sampled per layer', wholeNumber('--sample-tokens'))
    .option('--beam <n>', 'reconstruct: beam width when subsets are too many to enumerate', wholeNumber('--beam'))
    .option('--backend <name>', 'tensor backend for data-driven methods: auto | tensorflow | wasm | cpu', parseBackendOption, 'auto')
    .option('--dry-run', 'print the plan, write nothing')
    .option('--force', 'replace an existing --out')
    .option('--json', 'print the JSON report on stdout')
    .option('--quiet', 'no progress output')
    .action(async (o: Record<string, any>) => {
      const progress = createProgress({ quiet: o.quiet, json: o.json });
      const report = await prune({
        model: o.model,
        out: o.out,
        keep: o.keep,
        ratio: o.ratio,
        method: o.method,
        calib: o.calib,
        calibTokens: o.calibTokens,
        seqLen: o.seqLen,
        stats: o.stats,
        seed: o.seed,
        force: !!o.force,
        dryRun: !!o.dryRun,
        backend: o.backend,
        shard: o.shard,
        savePlan: o.savePlan,
        plan: o.plan,
        reconstruct: { maxTokens: o.sampleTokens, beam: o.beam },
        progress,
      });
      if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
      else if (!o.quiet || o.dryRun) process.stdout.write(summary(report) + '\n');
    });
}
