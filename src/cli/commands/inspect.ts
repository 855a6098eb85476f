import type { Command } from 'commander';
import { z } from 'zod';
// the on-disk linear formats other pipelines write, so inspect describes their outputs too
import '../../decompose/format.js';
import '../../quantize/format.js';
import '../../quantize/fused.js';
import { formatReport, inspectModel, withBackend } from '../../inspect/report.js';
import { openModel } from '../../model/open.js';
import { registerCommand } from '../../pipeline/cli.js';
import { command } from '../../pipeline/descriptor.js';
import { common, field } from '../../pipeline/fields.js';
import { parseOptions } from '../../pipeline/validate.js';
import { describeBackends } from '../../runtime/backend.js';

const INSPECT_OPTIONS = z.object({
  model: common.model('checkpoint directory (config.json + safetensors)'),
  backend: common.backend('which backend to describe'),
  probe: field(z.boolean().default(true), { help: 'skip probing the compute backends' }),
});

export const INSPECT_COMMAND = command({
  name: 'inspect',
  summary:
    'describe a checkpoint: family, dense/MoE layers, experts, routing, parameters (total, experts, active per token), bytes by dtype, shards, compute backend',
  options: INSPECT_OPTIONS,
  examples: ['moe inspect --model ./mixtral', 'moe inspect --model ./mixtral --json --no-probe   # stable keys, for CI'],
  async run(raw) {
    const o = parseOptions({ options: INSPECT_OPTIONS }, raw);
    const model = await openModel(o.model);
    try {
      const report = inspectModel(model);
      return o.probe ? withBackend(report, await describeBackends(o.backend)) : report;
    } finally {
      await model.ckpt.close();
    }
  },
  print: (r) => formatReport(r).replace(/\n$/, ''),
});

/** `moe inspect` alone on a program (the hostile-input tests wire it without the other commands). */
export function registerInspect(program: Command): void {
  registerCommand(program, INSPECT_COMMAND);
}
