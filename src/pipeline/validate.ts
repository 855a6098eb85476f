/**
 * Validation, generated from a command's descriptor, in the order a run needs it and the same for every caller
 * (the command line, a recipe stage, `moe run --dry-run`, a library call):
 *
 * 1. options: types, ranges, choices and defaults (the zod schema); the message names the flag and what it must be;
 * 2. combinations (`check`), pure;
 * 3. input paths that must exist (--calib, --stats, --plan);
 * 4. the output target (src/io's rule: not the input, not existing without --force, a creatable parent).
 *
 * 1 and 2 need no file, so a recipe validates every stage with them before its first stage runs; 3 and 4 read only
 * paths that exist before the run. Checks against the model (5: --seq-len within its positions) need its config.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { z } from 'zod';
import { fail } from '../errors.js';
import { checkOutputPath, checkOutputTarget } from '../io/output.js';
import type { ModelView } from '../model/types.js';
import type { OptionSpec } from './descriptor.js';
import { ID_ALTERNATIVES, type PathKind } from './fields.js';
import { type OptionInfo, schemaOptions, shown } from './schema.js';

/** The one-line message of the first problem zod found, in the command line's words. */
export function issueMessage(options: readonly OptionInfo[], issues: readonly z.core.$ZodIssue[], raw: Record<string, unknown>): string {
  // a wrong value the caller gave says more than a required option left out: report it first
  const issue = issues.find((i) => raw[String(i.path[0] ?? '')] !== undefined) ?? issues[0]!;
  const key = String(issue.path[0] ?? '');
  const info = options.find((o) => o.key === key);
  if (!info) return issue.path.length ? `${issue.path.join('.')}: ${issue.message}` : issue.message;
  const v = raw[key];
  if (v === undefined) return `${info.flag}${info.arg ? ` <${info.arg}>` : ''} is required`;
  return `${info.flag} must be ${info.mustBe}, got ${shown(v)}`;
}

/**
 * Options of a command from what a caller gave: defaults applied, every range and combination checked. Keys the
 * schema does not declare (a library caller's progress, engine, precollected data) are passed through unchanged.
 */
export function parseOptions<S extends z.ZodObject>(d: OptionSpec<S>, given: Record<string, unknown>): z.output<S> {
  const raw = { ...given };
  for (const [text, ids, textFlag, idsFlag] of ID_ALTERNATIVES) {
    if (raw[ids] === undefined || !(ids in d.options.shape)) continue;
    // parsed twice (a recipe stage, then its pipeline): the text key already holds the ids path
    if (raw[text] !== undefined && raw[text] !== raw[ids]) fail('Usage', `give either ${textFlag} FILE (text) or ${idsFlag} FILE (token ids), not both`);
    raw[text] = raw[ids];
  }
  const r = d.options.safeParse(raw);
  if (!r.success) fail('Usage', issueMessage(schemaOptions(d.options), r.error.issues, raw));
  const o = { ...raw, ...(r.data as object) } as z.output<S>;
  d.check?.(o);
  return o;
}

/** 'other': a FIFO, device or socket, which would block or never end when read (refused, exit 3). */
async function kindOf(p: string): Promise<'file' | 'dir' | 'other' | undefined> {
  const st = await stat(p).catch(() => undefined);
  return st ? (st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other') : undefined;
}

/** The messages are the ones the loaders give later, so a path fails alike whether caught early or late. */
export async function checkPath(kind: PathKind, p: string): Promise<void> {
  const k = await kindOf(p);
  switch (kind) {
    case 'data':
      if (!k) fail('MissingFile', `data file not found: ${p}`);
      if (k !== 'file') fail('InvalidData', `data file is not a regular file: ${p}`);
      return;
    case 'stats':
      if ((await kindOf(join(p, 'stats.json'))) === 'other') fail('UnsafePath', `${join(p, 'stats.json')} is not a regular file; refusing to read it`);
      if ((await kindOf(join(p, 'stats.json'))) !== 'file')
        fail('MissingFile', `calibration statistics not found: ${join(p, 'stats.json')} (make them with moe calibrate --out)`);
      return;
    case 'plan':
      if (k === 'other') fail('UnsafePath', `the plan ${p} is not a regular file; refusing to read it`);
      if (k !== 'file') fail('MissingFile', `cannot read the plan ${p}: ${k ? 'EISDIR' : 'ENOENT'}`);
      return;
    case 'dir':
      if (k !== 'dir') fail('MissingFile', `directory not found: ${p}`);
      return;
  }
}

/** Input paths declared by the schema (fields with `path`) must exist before anything runs. */
export async function checkPaths(options: readonly OptionInfo[], o: Record<string, unknown>): Promise<void> {
  for (const info of options) {
    const v = o[info.key];
    if (!info.path || v === undefined) continue;
    for (const p of Array.isArray(v) ? v : [v]) if (typeof p === 'string') await checkPath(info.path, p);
  }
}

/** Every input path a command was given (the model and each path-declared option): the output may overlap none. */
export function inputPaths(options: readonly OptionInfo[], o: Record<string, unknown>): string[] {
  const paths: string[] = [];
  for (const info of options) {
    const v = o[info.key];
    if (!info.path || v === undefined) continue;
    for (const p of Array.isArray(v) ? v : [v]) if (typeof p === 'string') paths.push(p);
  }
  return paths;
}

/** The output rule (src/io/output.ts), for dry runs too: a dry run says whether the real run could publish there. */
export async function checkOutput(o: { out?: unknown; force?: unknown; model?: unknown }, options: readonly OptionInfo[] = []): Promise<void> {
  if (o.out === undefined) return;
  checkOutputPath(o.out);
  await checkOutputTarget(o.out, {
    force: !!o.force,
    ...(typeof o.model === 'string' ? { inputDir: o.model } : {}),
    inputs: inputPaths(options, o as Record<string, unknown>),
  });
}

/**
 * Everything that can be checked before the model is opened: options, combinations, input paths, output target.
 * Every pipeline starts with this; a recipe runs it for every stage before the first one starts.
 */
export async function prepare<S extends z.ZodObject>(d: OptionSpec<S>, raw: Record<string, unknown>, opts: { output?: boolean } = {}): Promise<z.output<S>> {
  const o = parseOptions(d, raw);
  await checkPaths(schemaOptions(d.options), o as Record<string, unknown>);
  if (opts.output !== false) await checkOutput(o as Record<string, unknown>, schemaOptions(d.options));
  return o;
}

/**
 * Checks of options against the model they run on: calibration windows must fit its positions. A window is fed
 * with the BOS token in front when the tokenizer has one, so it takes seq_len + 1 positions.
 */
export function checkModelOptions(o: { seqLen?: unknown; calib?: unknown; data?: unknown }, view: Pick<ModelView, 'dims'>, flag = '--seq-len'): void {
  const max = view.dims.maxPositions;
  // only when text is cut into windows (the default --seq-len of a run without calibration is never used)
  const text = typeof o.calib === 'string' || typeof o.data === 'string';
  if (text && typeof o.seqLen === 'number' && max > 0 && o.seqLen + 1 > max) {
    fail(
      'Usage',
      `${flag} ${o.seqLen} is beyond the model's positions: max_position_embeddings is ${max} and a window takes ${flag} + 1 (BOS) of them; use at most ${max - 1}`,
    );
  }
}
