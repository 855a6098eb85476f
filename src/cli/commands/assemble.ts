import type { Command } from 'commander';
import { assembleShards } from '../../model/shard.js';
import { createProgress } from '../progress.js';

export function registerAssemble(program: Command): void {
  program
    .command('assemble')
    .description('join the outputs of a layer-parallel run (--shard i/n jobs) into one checkpoint')
    .argument('<parts...>', 'the shard output directories, in any order')
    .requiredOption('--out <dir>', 'output checkpoint directory')
    .option('--force', 'replace an existing --out')
    .option('--json', 'print the JSON report on stdout')
    .option('--quiet', 'no progress output')
    .addHelpText(
      'after',
      `
Example (a CI matrix of 4 jobs sharing one statistics artifact):
  moe calibrate --model M --data calib.txt --out stats            # or --shard i/n per job, then --merge
  moe prune --model M --stats stats --keep 6 --out part-$I --shard $I/4   # job I = 0..3
  moe assemble part-0 part-1 part-2 part-3 --out M-pruned`,
    )
    .action(async (parts: string[], o: Record<string, any>) => {
      const progress = createProgress({ quiet: o.quiet, json: o.json });
      const ph = progress.phase(`assembling ${parts.length} shards into ${o.out}`);
      const r = await assembleShards(parts, o.out, { force: !!o.force, onProgress: (d, t) => ph.tick(d, t, 'tensors') });
      ph.succeed(`assembled ${r.tensors} tensors (${(r.bytes / 2 ** 20).toFixed(2)} MiB) from ${r.parts} shards into ${o.out}`);
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    });
}
