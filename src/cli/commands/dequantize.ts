import { type Command, Option } from 'commander';
import { dequantizeCheckpoint } from '../../quantize/dequantize.js';
import { createProgress } from '../progress.js';

export function registerDequantize(program: Command): void {
  program
    .command('dequantize')
    .description('write a dense BF16/F16 checkpoint of the same family from a GPTQ checkpoint, for tools that cannot read GPTQ')
    .requiredOption('--model <dir>', 'GPTQ checkpoint directory')
    .option('--out <dir>', 'output checkpoint directory')
    .addOption(new Option('--dtype <t>', 'output dtype of the dequantized weights').choices(['bf16', 'f16']))
    .option('--dry-run', 'print what would be written')
    .option('--force', 'replace an existing --out')
    .option('--json', 'print the JSON report on stdout')
    .option('--quiet', 'no progress output')
    .action(async (o: Record<string, any>) => {
      const progress = createProgress({ quiet: o.quiet, json: o.json });
      const r = await dequantizeCheckpoint({
        model: o.model,
        out: o.out,
        force: !!o.force,
        dryRun: !!o.dryRun,
        progress,
        ...(o.dtype ? { dtype: o.dtype === 'f16' ? 'F16' : 'BF16' } : {}),
      });
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else if (!o.quiet || o.dryRun) {
        const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
        process.stdout.write(`${r.dryRun ? 'plan' : 'dequantized'}: ${r.modules} GPTQ modules -> ${r.dtype}; ${mib(r.beforeBytes)} -> ${mib(r.afterBytes)}\n`);
      }
    });
}
