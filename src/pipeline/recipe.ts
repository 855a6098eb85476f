/**
 * Recipe stages, generated from the pipelines' descriptors: a stage's keys are its command's options in
 * snake_case (minus what belongs to the command line alone: model, out, plans, shards, dry runs), with the same
 * schema, so a recipe value is valid exactly when the same value on the command line is, and the message for a bad
 * one is the command line's (naming the flag), prefixed by where it is in the recipe.
 */
import { z } from 'zod';
import type { AnyCommand } from './descriptor.js';
import { camel, commandOptions, type OptionInfo } from './schema.js';
import { issueMessage } from './validate.js';

export function stageKeys(d: AnyCommand): OptionInfo[] {
  return commandOptions(d).filter((o) => o.recipe);
}

const schemas = new WeakMap<AnyCommand, z.ZodObject>();

/** The strict zod schema of a stage: recipe keys -> the option's own schema. */
export function stageSchema(d: AnyCommand): z.ZodObject {
  let s = schemas.get(d);
  if (!s) {
    const shape = d.options.shape as Record<string, z.ZodType>;
    s = z.object(Object.fromEntries(stageKeys(d).map((o) => [o.recipeKey, shape[o.key]!]))).strict();
    schemas.set(d, s);
  }
  return s;
}

/**
 * Check a stage's keys and values; the options are kept as written (snake_case, no defaults filled in), so the
 * recipe's digest is that of what the user wrote.
 */
export function parseStage(d: AnyCommand, raw: unknown): { ok: true; options: Record<string, unknown> } | { ok: false; message: string } {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return { ok: false, message: `a ${d.name} stage is a mapping of its options` };
  const keys = stageKeys(d);
  const given = raw as Record<string, unknown>;
  const unknown = Object.keys(given).filter((k) => !keys.some((o) => o.recipeKey === k));
  if (unknown.length) {
    return { ok: false, message: `unknown option '${unknown[0]}' (a ${d.name} stage takes: ${keys.map((o) => o.recipeKey).join(', ')})` };
  }
  const r = stageSchema(d).safeParse(given);
  if (!r.success) {
    // the command line's message: the same option, named by its flag
    const byFlag = keys.map((o) => ({ ...o, key: o.recipeKey }));
    return { ok: false, message: issueMessage(byFlag, r.error.issues, given) };
  }
  return { ok: true, options: { ...given } };
}

/**
 * The request a stage hands its pipeline: the stage's options in the command's spelling, with the recipe-level
 * defaults (calibration, seed, backend, ...) for the keys the command has and the stage leaves out.
 */
export function stageRequest(d: AnyCommand, options: Record<string, unknown>, defaults: Record<string, unknown>): Record<string, unknown> {
  const keys = new Set(commandOptions(d).map((o) => o.key));
  const req: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(defaults)) if (keys.has(k) && v !== undefined) req[k] = v;
  for (const [k, v] of Object.entries(options)) req[camel(k)] = v;
  return req;
}
