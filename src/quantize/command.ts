/** `moe quantize` as a command descriptor: its options (options.ts), quantizers, worked examples, run and report text. */
import { formatGgufReport, type GgufQuantizeReport } from '../gguf/quantize-report.js';
import { formatSummary, type GgufExportReport } from '../gguf/export.js';
import { command } from '../pipeline/descriptor.js';
import { OUTPUT_FORMATS, QUANTIZERS } from './methods.js';
import { checkQuantize, QUANTIZE_OPTIONS } from './options.js';
import { summaryTable, type QuantizeReport } from './report.js';

export function quantizeSummary(r: QuantizeReport | GgufQuantizeReport | GgufExportReport, dryRun: boolean): string {
  if ('format' in r && r.format === 'gguf') return 'units' in r ? formatGgufReport(r) : formatSummary(r.summary);
  r = r as QuantizeReport;
  const lines = [summaryTable(r)];
  if (dryRun) for (const d of r.decisions) lines.push(`  ${d.tensor}: ${d.bits} (${d.reason})`);
  return lines.join('\n');
}

export const QUANTIZE_COMMAND = command({
  name: 'quantize',
  summary: 'mixed-precision GPTQ: a bit-width per expert chosen by one 0/1 program so the routed experts meet --bits true bits per weight; GPTQ-format output',
  options: QUANTIZE_OPTIONS,
  check: checkQuantize,
  stage: true,
  methods: [
    { option: '--method', title: 'Methods', methods: QUANTIZERS },
    { option: '--format', title: 'Formats', methods: OUTPUT_FORMATS },
  ],
  examples: [
    'moe quantize --model ./mixtral --calib calib.txt --bits 2.5 --out ./mixtral-2.5bit          # 2/3/4-bit experts, GPTQ',
    'moe quantize --model ./mixtral --bits 4.2 --candidates 4 --method rtn --out ./mixtral-rtn4   # no calibration',
    'moe quantize --model ./mixtral --calib calib.txt --bits 3 --dry-run --save-plan plan.json    # then: --plan plan.json --shard i/n',
    'moe quantize --model ./mixtral --calib calib.txt --bits 2.5 --format gguf --out ./mixtral-gguf   # llama.cpp types, DIR/model.gguf',
    'moe quantize --model ./mixtral-pruned --format gguf --candidates f16 --out ./pruned-gguf        # unquantized GGUF',
  ],
  async run(o) {
    const { quantize } = await import('./pipeline.js');
    return quantize(o);
  },
  print: (r, o) => (!o.quiet || o.dryRun ? quantizeSummary(r, !!o.dryRun) : undefined),
});
