/**
 * Expert-scoring methods for `moe prune`, one registered unit each (src/prune/methods/<name>.ts), in a flat
 * registry (mergekit's registry.py, llm-compressor's requires_calibration_data flag). A method either scores
 * experts from calibration statistics (higher = keep), or, for `reconstruct`, chooses the kept set itself inside a
 * sequential forward pass (src/prune/reconstruct.ts); `random` is the measurement baseline. A new method is one
 * file here plus its tests; its name becomes a --method choice and a recipe value by being listed below.
 */
import { fail } from '../errors.js';
import type { PruneMethod } from './methods/common.js';
import { easyEp } from './methods/easy-ep.js';
import { frequency } from './methods/frequency.js';
import { gateMass } from './methods/gate-mass.js';
import { random } from './methods/random.js';
import { reap } from './methods/reap.js';
import { reconstruct } from './methods/reconstruct.js';

export type { PruneMethod, ScoreContext } from './methods/common.js';

export const PRUNE_METHODS = [reap, frequency, gateMass, easyEp, reconstruct, random] as const satisfies readonly PruneMethod[];

export function methodNames(): string[] {
  return PRUNE_METHODS.map((m) => m.name);
}

export function getMethod(name: string): PruneMethod {
  const m = PRUNE_METHODS.find((x) => x.name === name);
  if (!m) fail('Usage', `unknown pruning method '${name}' (choose one of: ${methodNames().join(', ')})`);
  return m;
}
