/**
 * Options declared once. Every option of every command is one zod schema (type, range, default) registered with
 * its command-line facts (help text, value placeholder, how a string becomes the value, whether it is a path that
 * must exist). The commander flags, `--help`, the recipe stage keys, and the validation of a single command and of
 * every recipe stage are all generated from these declarations (src/pipeline/cli.ts, recipe.ts, validate.ts), so
 * they cannot disagree.
 */
import { z } from 'zod';
import { DEFAULT_SEQ_LEN } from '../data/windows.js';

/** Input paths the engine checks before anything runs, each with the message its loader would give later. */
export type PathKind = 'data' | 'stats' | 'plan' | 'dir';

export interface FieldMeta {
  /** one line for --help (the default and the choices are appended by the generator) */
  help: string;
  /** placeholder of the value in --help (`--calib <file>`); absent for a boolean flag */
  arg?: string;
  /** the flag, when it is not `--<kebab-case key>`; a boolean that defaults to true is offered as `--no-<key>` */
  flag?: string;
  /**
   * how a command-line string becomes the value, when the schema's type does not say it: `list` = comma-separated
   * whole numbers, `repeat` = the flag given several times, `shard` = i/n, `variadic` = several values after the flag
   */
  parse?: 'list' | 'repeat' | 'shard' | 'variadic';
  /** --help text of the default when the schema has none (e.g. 'the whole file') */
  defaultText?: string;
  /** a key of the recipe stage (default: true); model, out, plans, shards and dry runs are the command line's */
  recipe?: boolean;
  /** an input path that must exist before any work starts */
  path?: PathKind;
}

/** The registry the generators read: schema instance -> its command-line facts. */
export const FIELD_META = z.registry<FieldMeta>();

/** Declare one option: its schema (type, range, default) and its command-line facts. */
export function field<T extends z.ZodType>(schema: T, meta: FieldMeta): T {
  FIELD_META.add(schema, meta);
  return schema;
}

export const DEFAULT_CALIB_TOKENS = 8192;
export { DEFAULT_SEQ_LEN };

/** Whole numbers >= min (a count of tokens, steps, experts). */
export const int = (min: number, max?: number) => {
  const s = z.number().int().min(min);
  return max === undefined ? s : s.max(max);
};

export const BACKENDS = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'] as const;

/**
 * The options most commands share, as factories so each command can word its help. They are ordinary fields:
 * a command lists the ones it takes in its schema.
 */
export const common = {
  model: (help = 'input checkpoint directory') => field(z.string().min(1), { help, arg: 'dir', recipe: false }),
  out: (help = 'output checkpoint directory') => field(z.string().min(1).optional(), { help, arg: 'dir', recipe: false }),
  calib: (help = 'calibration text, one document or sentence per line') => field(z.string().min(1).optional(), { help, arg: 'file', path: 'data' }),
  calibIds: (help = 'pre-tokenized calibration in place of --calib: one JSON array of token ids per line (a tokenizer moe cannot read)') =>
    field(z.string().min(1).optional(), { help, arg: 'file', path: 'data' }),
  calibTokens: (help = 'calibration tokens used from --calib (the first windows)') => field(int(1).default(DEFAULT_CALIB_TOKENS), { help, arg: 'n' }),
  seqLen: (help = 'calibration window length in tokens') => field(int(2).default(DEFAULT_SEQ_LEN), { help, arg: 'n' }),
  stats: (help = 'saved calibration statistics (moe calibrate --out)') => field(z.string().min(1).optional(), { help, arg: 'dir', path: 'stats' }),
  backend: (help = 'tensor backend') => field(z.enum(BACKENDS).default('auto'), { help, arg: 'name' }),
  threads: (help = 'worker threads, each with its own tensor backend (outputs are byte-identical for any count)') =>
    field(int(1).optional(), { help, arg: 'n', defaultText: 'MOE_THREADS, else the cores available' }),
  savePlan: (help = 'also write the plan to this file (with --dry-run: only the plan)') =>
    field(z.string().min(1).optional(), { help, arg: 'file', recipe: false }),
  plan: (help = 'apply a plan saved by --save-plan instead of planning (same model and flags as the run that saved it)') =>
    field(z.string().min(1).optional(), { help, arg: 'file', recipe: false, path: 'plan' }),
  shard: (help = 'layer-parallel job i of n: write only layers l with l % n = i (join the parts with moe assemble)') =>
    field(
      z
        .object({ index: z.number().int().min(0), count: z.number().int().min(1) })
        .refine((s) => s.index < s.count, 'i/n needs 0 <= i < n')
        .optional(),
      { help, arg: 'i/n', parse: 'shard', recipe: false },
    ),
  dropMtp: (help = 'drop the multi-token-prediction layers (num_nextn_predict_layers -> 0) instead of editing them like the others') =>
    field(z.boolean().default(false), { help }),
  dryRun: (help = 'print the plan and the estimated peak memory, write nothing') => field(z.boolean().default(false), { help, recipe: false }),
  force: (help = 'replace an existing --out') => field(z.boolean().default(false), { help, recipe: false }),
};

/** --json and --quiet: every command has them; they shape what is printed, never what is computed. */
export const outputFields = {
  json: field(z.boolean().default(false), { help: 'print the JSON report on stdout', recipe: false }),
  quiet: field(z.boolean().default(false), { help: 'no progress output', recipe: false }),
};

/**
 * Pre-tokenized stand-ins of text options: [text key, ids key, their flags]. When the ids key is given, the text key
 * takes its path (so every "needs calibration" check and every loader sees one calibration source) and the loaders
 * read it as ids because the ids key is set (src/data/windows.ts, format 'ids').
 */
export const ID_ALTERNATIVES = [
  ['calib', 'calibIds', '--calib', '--calib-ids'],
  ['data', 'dataIds', '--data', '--data-ids'],
] as const;

/** The window format of a run's calibration (or data) file. */
export function calibFormat(o: { calibIds?: unknown }): 'text' | 'ids' {
  return typeof o.calibIds === 'string' ? 'ids' : 'text';
}
