import { type Command, Option } from 'commander';
import { DEFAULTS, merge, type MergeReport } from '../../merge/pipeline.js';
import { ALIGN_METHODS, GROUPING_METHODS, ROUTER_METHODS, WEIGHTING_METHODS } from '../../merge/types.js';
import { createProgress } from '../progress.js';
import { mib, shard, wholeNumber } from '../options.js';
import { formatEstimate } from '../../runtime/memory.js';

function summary(r: MergeReport): string {
  const c = r.choices;
  const lines = [
    `${r.dryRun ? 'plan' : 'merged'}: ${r.family}, ${r.numExperts} -> ${r.groups} experts per layer (top-k ${r.topK}); ` +
      `grouping ${c.grouping}, align ${c.align}, weighting ${c.weighting}, router ${c.router} ` +
      `(${r.mode}, ${r.calibration.tokens} calibration tokens${r.calibration.source === 'plan' ? `, from plan ${r.calibration.path}` : ''})`,
  ];
  for (const l of r.layers) {
    const groups = l.groups.map((g) => (g.members.length === 1 ? `${g.anchor}` : `{${g.members.map((m, i) => `${m}:${g.weights[i].toFixed(2)}`).join(' ')}}`));
    const kl = l.router.kl !== undefined ? `  router KL ${l.router.kl.toFixed(4)} (mean rows ${l.router.klMeanRows!.toFixed(4)})` : '';
    lines.push(`  layer ${l.layer}: ${groups.join(' ')}${kl}`);
  }
  const { before, after, predicted } = r.sizes;
  lines.push(
    `size ${mib(before.bytes)} -> ${mib(after.bytes)}${predicted ? ' (predicted)' : ''}; expert params ${before.expertParams} -> ${after.expertParams}`,
  );
  if (r.savedPlan) lines.push(`plan saved to ${r.savedPlan}`);
  if (r.shard) lines.push(`shard ${r.shard.index}/${r.shard.count}: layers l with l % ${r.shard.count} = ${r.shard.index} (join the parts with moe assemble)`);
  if (r.dryRun) lines.push(formatEstimate(r.memory));
  return lines.join('\n');
}

export function registerMerge(program: Command): void {
  program
    .command('merge')
    .description("merge experts into N per MoE layer (frequency-weighted, neuron-aligned), written in the family's own format")
    .requiredOption('--model <dir>', 'input checkpoint directory')
    .option('--out <dir>', 'output checkpoint directory')
    .requiredOption('--groups <n>', 'experts per MoE layer after merging', wholeNumber('--groups'))
    .addOption(
      new Option(
        '--grouping <m>',
        'msmoe: frequent experts absorb the rest by router-logit similarity; hierarchical: HC-SMoE clustering of mean outputs; saliency: REAP-saliency centroids',
      )
        .choices(GROUPING_METHODS)
        .default(DEFAULTS.grouping),
    )
    .addOption(
      new Option('--align <m>', "permute members' hidden units onto the anchor before averaging: by weights or by activations on calibration tokens")
        .choices(ALIGN_METHODS)
        .default(DEFAULTS.align),
    )
    .addOption(new Option('--weighting <m>', 'member weights in the average').choices(WEIGHTING_METHODS).default(DEFAULTS.weighting))
    .addOption(
      new Option('--router <m>', "new router row per group: the anchor's, the members' mean, or fitted on calibration hidden states")
        .choices(ROUTER_METHODS)
        .default(DEFAULTS.router),
    )
    .option('--calib <file>', 'calibration text file: sequential merging in one forward pass, each layer measured through the merged layers before it')
    .option('--calib-tokens <n>', 'calibration tokens to use from --calib', wholeNumber('--calib-tokens'))
    .option('--seq-len <n>', 'calibration window length in tokens', wholeNumber('--seq-len'))
    .option(
      '--stats <dir>',
      'saved calibration statistics of the unmerged model (moe calibrate --out); no hidden states, so no activation alignment or router fit',
    )
    .option(
      '--save-plan <file>',
      'also write the plan (groups, member weights, permutations and fitted router rows computed from data) to this file; with --dry-run only the plan',
    )
    .option(
      '--plan <file>',
      'apply a saved plan (--save-plan) instead of planning: no calibration needed; give the same --groups/--grouping/--align/--weighting/--router (and fit/align options) as the run that saved it',
    )
    .option(
      '--shard <i/n>',
      'layer-parallel job i of n: write only layers l with l % n = i (join the parts with moe assemble); needs --plan or --stats, the same in every job',
      shard('--shard'),
    )
    .option('--fit-steps <n>', 'router fit: optimisation steps', wholeNumber('--fit-steps'))
    .option('--fit-tokens <n>', 'router fit: calibration tokens per layer', wholeNumber('--fit-tokens'))
    .option('--align-tokens <n>', 'activation alignment: routed tokens per group', wholeNumber('--align-tokens'))
    .option('--dry-run', 'print the plan and the estimated peak memory, write no checkpoint (with --calib this runs the sequential pass)')
    .option('--force', 'replace an existing --out')
    .option('--json', 'print the JSON report on stdout')
    .option('--quiet', 'no progress output')
    .action(async (o: Record<string, any>) => {
      const progress = createProgress({ quiet: o.quiet, json: o.json });
      const report = await merge({
        model: o.model,
        out: o.out,
        groups: o.groups,
        grouping: o.grouping,
        align: o.align,
        weighting: o.weighting,
        router: o.router,
        calib: o.calib,
        calibTokens: o.calibTokens,
        seqLen: o.seqLen,
        stats: o.stats,
        savePlan: o.savePlan,
        plan: o.plan,
        shard: o.shard,
        force: !!o.force,
        dryRun: !!o.dryRun,
        fitSteps: o.fitSteps,
        fitTokens: o.fitTokens,
        alignTokens: o.alignTokens,
        progress,
      });
      if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
      else if (!o.quiet || o.dryRun) process.stdout.write(summary(report) + '\n');
    });
}
