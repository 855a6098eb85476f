import type { Command } from 'commander';
import { DECOMPOSE_COMMAND } from '../../decompose/command.js';
import { MERGE_COMMAND } from '../../merge/command.js';
import type { AnyCommand } from '../../pipeline/descriptor.js';
import { registerCommand } from '../../pipeline/cli.js';
import { PRUNE_COMMAND } from '../../prune/command.js';
import { QUANTIZE_COMMAND } from '../../quantize/command.js';
import { ASSEMBLE_COMMAND } from './assemble.js';
import { CALIBRATE_COMMAND } from './calibrate.js';
import { DEQUANTIZE_COMMAND } from './dequantize.js';
import { EVAL_COMMAND } from './eval.js';
import { INSPECT_COMMAND } from './inspect.js';
import { PLAN_SHARDS_COMMAND } from './plan-shards.js';
import { RUN_COMMAND } from './run.js';

/** Every command's descriptor, in the order `moe --help` lists them. */
export const DESCRIPTORS: readonly AnyCommand[] = [
  INSPECT_COMMAND,
  CALIBRATE_COMMAND,
  EVAL_COMMAND,
  PRUNE_COMMAND,
  QUANTIZE_COMMAND,
  DEQUANTIZE_COMMAND,
  MERGE_COMMAND,
  DECOMPOSE_COMMAND,
  RUN_COMMAND,
  ASSEMBLE_COMMAND,
  PLAN_SHARDS_COMMAND,
];

/** Every subcommand as a registration on the program (src/cli/main.ts), generated from its descriptor. */
export const COMMANDS: Array<(program: Command) => void> = DESCRIPTORS.map((d) => (program: Command) => {
  registerCommand(program, d);
});
