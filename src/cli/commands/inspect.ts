import type { Command } from 'commander';
import { z } from 'zod';
// the on-disk linear formats other pipelines write, so inspect describes their outputs too
import '../../decompose/format.js';
import '../../quantize/format.js';
import '../../quantize/fused.js';
import { formatGgufInspect, ggufPathOf, inspectGguf, type GgufInspectReport } from '../../gguf/inspect.js';
import { formatReport, inspectModel, withBackend, type InspectReport } from '../../inspect/report.js';
import { openModel } from '../../model/open.js';
import { registerCommand } from '../../pipeline/cli.js';
import { command } from '../../pipeline/descriptor.js';
import { common, field } from '../../pipeline/fields.js';
import { parseOptions } from '../../pipeline/validate.js';
import { describeBackends } from '../../runtime/backend.js';
import { describeThreads, setThreads } from '../../runtime/pool.js';

const INSPECT_OPTIONS = z.object({
  model: common.model('checkpoint directory (config.json + safetensors), or a GGUF file (or a directory holding model.gguf)'),
  backend: common.backend('which backend to describe'),
  threads: common.threads('the worker thread count to report (what a computing command given the same --threads would use)'),
  probe: field(z.boolean().default(true), { help: 'skip probing the compute backends' }),
});

export const INSPECT_COMMAND = command({
  name: 'inspect',
  summary:
    'describe a checkpoint: family, dense/MoE layers, experts, routing, parameters (total, experts, active per token), bytes by dtype, shards, compute backend',
  options: INSPECT_OPTIONS,
  examples: [
    'moe inspect --model ./mixtral',
    'moe inspect --model ./mixtral --json --no-probe   # stable keys, for CI',
    'moe inspect --model ./mixtral-gguf/model.gguf     # architecture, metadata, MiB and bpw per tensor class and type',
  ],
  async run(raw): Promise<InspectReport | GgufInspectReport> {
    const o = parseOptions({ options: INSPECT_OPTIONS }, raw);
    const gguf = await ggufPathOf(o.model);
    if (gguf) return inspectGguf(gguf);
    const model = await openModel(o.model);
    try {
      const report = inspectModel(model);
      if (o.threads !== undefined) await setThreads(o.threads);
      return o.probe ? { ...withBackend(report, await describeBackends(o.backend)), threads: describeThreads() } : report;
    } finally {
      await model.ckpt.close();
    }
  },
  print: (r) => ('format' in r && r.format === 'gguf' ? formatGgufInspect(r) : formatReport(r as InspectReport).replace(/\n$/, '')),
});

/** `moe inspect` alone on a program (the hostile-input tests wire it without the other commands). */
export function registerInspect(program: Command): void {
  registerCommand(program, INSPECT_COMMAND);
}
