import type { Command } from 'commander';
// the on-disk linear formats other pipelines write, so inspect describes their outputs too
import '../../decompose/format.js';
import '../../quantize/format.js';
import '../../quantize/fused.js';
import { formatReport, inspectModel, withBackend } from '../../inspect/report.js';
import { openModel } from '../../model/open.js';
import { describeBackends, parseBackendOption, type BackendChoice } from '../../runtime/backend.js';

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description(
      'describe a checkpoint: family, dense/MoE layers, experts, routing, parameters (total, experts, active per token), bytes by dtype, shards, compute backend',
    )
    .requiredOption('--model <dir>', 'checkpoint directory (config.json + safetensors)')
    .option('--json', 'print one JSON object (stable keys, for CI)')
    .option('--backend <name>', 'which backend to describe: auto, tensorflow, wasm or cpu', parseBackendOption, 'auto' as BackendChoice)
    .option('--no-probe', 'skip probing the compute backends')
    .action(async (opts: { model: string; json?: boolean; backend: BackendChoice; probe: boolean }) => {
      const model = await openModel(opts.model);
      try {
        let report = inspectModel(model);
        if (opts.probe) report = withBackend(report, await describeBackends(opts.backend));
        process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
      } finally {
        await model.ckpt.close();
      }
    });
}
