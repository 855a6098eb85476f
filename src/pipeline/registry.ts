/** The pipelines: the commands that are also recipe stages, in the order docs list them. */
import { DECOMPOSE_COMMAND } from '../decompose/command.js';
import { MERGE_COMMAND } from '../merge/command.js';
import { PRUNE_COMMAND } from '../prune/command.js';
import { QUANTIZE_COMMAND } from '../quantize/command.js';
import type { AnyCommand } from './descriptor.js';

export const PIPELINES = {
  prune: PRUNE_COMMAND as AnyCommand,
  merge: MERGE_COMMAND as AnyCommand,
  quantize: QUANTIZE_COMMAND as AnyCommand,
  decompose: DECOMPOSE_COMMAND as AnyCommand,
} as const;

export type StageKind = keyof typeof PIPELINES;
export const STAGE_KINDS = Object.keys(PIPELINES) as StageKind[];
