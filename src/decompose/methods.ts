/**
 * The factorisation modes of `moe decompose`, one registered unit each (src/decompose/methods/<mode>.ts: its
 * descriptor, its rank units, its scoring and its memory part; the factor kernels: factorize.ts, the on-disk
 * layout: format.ts). The names are the --mode values and recipe values; all but `svd` whiten by the Gram matrices
 * of each expert's routed inputs, collected in a forward pass over calibration text. A new mode is one file there
 * plus its tests, listed below.
 */
import { fail } from '../errors.js';
import type { DecomposeMode } from './format.js';
import { baseDelta } from './methods/base-delta.js';
import type { DecomposeModeMethod } from './methods/common.js';
import { sharedInput } from './methods/shared-input.js';
import { sharedOutput } from './methods/shared-output.js';
import { svd } from './methods/svd.js';
import { whitened } from './methods/whitened.js';

export type { DecomposeMemoryContext, DecomposeModeMethod } from './methods/common.js';

export const MODE_METHODS: readonly DecomposeModeMethod[] = [svd, whitened, sharedInput, sharedOutput, baseDelta];

export const MODE_NAMES = MODE_METHODS.map((m) => m.name) as [DecomposeMode, ...DecomposeMode[]];

export function getMode(name: string): DecomposeModeMethod {
  const m = MODE_METHODS.find((x) => x.name === name);
  if (!m) fail('Usage', `unknown decompose mode '${name}' (choose one of: ${MODE_NAMES.join(', ')})`);
  return m;
}
