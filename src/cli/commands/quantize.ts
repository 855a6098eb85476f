import { type Command, Option } from 'commander';
import { parseBackendOption } from '../../runtime/backend.js';
import { DEFAULT_CALIB_TOKENS, DEFAULT_MIN_TOKENS, quantize } from '../../quantize/pipeline.js';
import { summaryTable } from '../../quantize/report.js';
import { count, number, shard } from '../options.js';
import { createProgress } from '../progress.js';

function intList(flag: string) {
  return (v: string): number[] => v.split(',').map((s) => count(flag)(s));
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function registerQuantize(program: Command): void {
  program
    .command('quantize')
    .description(
      'mixed-precision GPTQ: a bit-width per expert chosen by one 0/1 program so the routed experts meet --bits true bits per weight; GPTQ-format output',
    )
    .requiredOption('--model <dir>', 'input checkpoint directory')
    .option('--out <dir>', 'output checkpoint directory')
    .requiredOption('--bits <b>', 'target true bits per weight of the routed experts (every stored byte counted)', number('--bits'))
    .addOption(new Option('--method <m>', 'quantizer').choices(['gptq', 'rtn']).default('gptq'))
    .addOption(
      new Option(
        '--granularity <g>',
        "allocation unit: expert, or layer (all experts of a layer's projection share bits: what vLLM fused MoE and GGUF can serve)",
      )
        .choices(['expert', 'layer'])
        .default('expert'),
    )
    .option('--candidates <list>', 'bit-widths the allocation may choose', intList('--candidates'), [2, 3, 4])
    .option('--dense-bits <b>', 'bits of attention, dense MLP and shared-expert linears', count('--dense-bits'), 4)
    .option('--group-size <n>', 'input columns per scale group: 128, 64 or 32', count('--group-size'), 128)
    .option('--sym', 'symmetric quantization (zero point fixed at 2^(bits-1))')
    .option('--act-order', 'GPTQ act-order (desc_act): columns by decreasing Hessian diagonal, written as g_idx')
    .option('--damp <f>', 'GPTQ damping, fraction of the mean Hessian diagonal', number('--damp'), 0.01)
    .option('--no-mixed-down', 'expert units take only uniform widths (by default also a width with down_proj one candidate higher)')
    .option('--min-tokens <n>', 'experts routed fewer calibration tokens fall back to round-to-nearest', count('--min-tokens'), DEFAULT_MIN_TOKENS)
    .option('--override <regex=bits>', 'fixed bits for matching linear modules (repeatable; applied before the allocation)', collect)
    .option('--ignore <regex>', 'leave matching linear modules unquantized (repeatable)', collect)
    .option('--calib <file>', 'calibration text')
    .option('--calib-tokens <n>', `calibration tokens (default ${DEFAULT_CALIB_TOKENS})`, count('--calib-tokens'))
    .option('--seq-len <n>', 'calibration window length in tokens', count('--seq-len'))
    .option('--solver-time-limit <s>', 'allocation solver time limit in seconds (default 20)', number('--solver-time-limit'))
    .option('--backend <name>', 'tensor backend: auto | tensorflow | wasm | cpu', parseBackendOption, 'auto')
    .option(
      '--save-plan <file>',
      "write the plan (every unit's width, every linear's bits, scores) to FILE after the allocation; with --dry-run nothing else is written",
    )
    .option(
      '--plan <file>',
      "apply a plan saved by --save-plan (same model and flags): no scoring pass, no allocation; with the same --calib the output is byte-identical to the saving run's",
    )
    .option(
      '--shard <i/n>',
      'layer-parallel job i of n: quantize and write only layers l with l % n = i (join the parts with moe assemble); needs --plan when widths are chosen by scores; implies --no-sequential for GPTQ',
      shard('--shard'),
    )
    .option(
      '--no-sequential',
      "GPTQ Hessians from the full-precision model's activations instead of through the already-quantized earlier layers (layers independent; what --shard does)",
    )
    .option('--dry-run', 'print the plan (fates, allocation when --calib is given, sizes) and the estimated peak memory, write nothing')
    .option('--force', 'replace an existing --out')
    .option('--json', 'print the JSON report on stdout')
    .option('--quiet', 'no progress output')
    .action(async (o: Record<string, any>) => {
      const progress = createProgress({ quiet: o.quiet, json: o.json });
      const report = await quantize({
        model: o.model,
        out: o.out,
        bits: o.bits,
        method: o.method,
        granularity: o.granularity,
        candidates: o.candidates,
        denseBits: o.denseBits,
        groupSize: o.groupSize,
        sym: !!o.sym,
        actOrder: !!o.actOrder,
        damp: o.damp,
        minTokens: o.minTokens,
        override: o.override ?? [],
        ignore: o.ignore ?? [],
        calib: o.calib,
        calibTokens: o.calibTokens,
        seqLen: o.seqLen,
        mixedDown: o.mixedDown !== false,
        solverTimeLimit: o.solverTimeLimit,
        backend: o.backend,
        dryRun: !!o.dryRun,
        force: !!o.force,
        progress,
        savePlan: o.savePlan,
        plan: o.plan,
        shard: o.shard,
        sequential: o.sequential !== false,
      });
      if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
      else if (!o.quiet || o.dryRun) {
        process.stdout.write(summaryTable(report) + '\n');
        if (o.dryRun) for (const d of report.decisions) process.stdout.write(`  ${d.tensor}: ${d.bits} (${d.reason})\n`);
      }
    });
}
