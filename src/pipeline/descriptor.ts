/**
 * Descriptors: a command (pipeline or tool) and the methods of a pipeline, each declared as one object.
 *
 * - A method says who it is (name, paper), what it computes from, and which data it needs: none, saved statistics
 *   (or a calibration pass that makes them), a forward pass over calibration text, or a sequential pass (each layer
 *   measured through the already-compressed layers before it). The engine derives the data checks from `needs`.
 * - A command says its options (one zod object of fields, src/pipeline/fields.ts), the combinations it refuses
 *   (`check`, pure: no file is read), worked examples for --help, how to run it and how to print its report.
 *
 * The CLI (cli.ts), recipe stages (recipe.ts) and validation (validate.ts) are generated from these.
 */
import type { z } from 'zod';
import type { Progress } from '../progress.js';
import type { MemoryPart } from '../runtime/memory.js';

/** What data a method needs before it can plan. */
export type DataNeed = 'none' | 'stats' | 'forward' | 'sequential';

export const DATA_NEEDS: Record<DataNeed, string> = {
  none: 'no data',
  stats: 'calibration statistics (--stats DIR, or --calib FILE)',
  forward: 'a forward pass over --calib FILE',
  sequential: 'a sequential pass over --calib FILE (each layer through the compressed ones before it)',
};

/** `C`: what the technique tells its methods about the phase whose memory is estimated (shapes, token counts). */
export interface MethodDescriptor<C = unknown> {
  name: string;
  /** one line: what it does */
  summary: string;
  paper?: string;
  needs: DataNeed;
  /**
   * the method's own working set in one phase of the run (none: nothing beyond the pipeline's); the engine adds the
   * shared terms and composes the run's peak (src/pipeline/memory.ts)
   */
  memory?(c: C): MemoryPart[];
}

/** A family of interchangeable methods selected by one option (prune --method, merge --grouping, ...). */
export interface MethodFamily {
  /** the option that selects the method */
  option: string;
  title: string;
  methods: readonly MethodDescriptor[];
}

/** What every command's run gets besides its options. */
export interface RunContext {
  progress?: Progress;
  /** positional arguments, in the order of `args` */
  args: string[];
}

/** A command's options and the combinations it refuses: what validation needs (a pipeline imports only this). */
export interface OptionSpec<S extends z.ZodObject = z.ZodObject> {
  options: S;
  /** combinations the command refuses; runs on parsed options before any file is read */
  check?(o: z.output<S>): void;
}

export interface CommandDescriptor<S extends z.ZodObject = z.ZodObject, R = unknown> extends OptionSpec<S> {
  name: string;
  /** one line for `moe --help` and the command's own --help */
  summary: string;
  /** positional arguments */
  args?: ReadonlyArray<{ name: string; help: string; variadic?: boolean }>;
  /** the method families, listed in --help (names, papers, data needs) */
  methods?: readonly MethodFamily[];
  /** worked examples, one command each (shown under Examples: in --help) */
  examples: readonly string[];
  /** more text under the examples */
  notes?: string;
  /** a pipeline stage of recipes (prune, merge, quantize, decompose) */
  stage?: boolean;
  /** run with the options as given (validated inside, so library callers get the same checks) */
  run(o: z.input<S> & { progress?: Progress }, ctx: RunContext): Promise<R>;
  /** the report as text (undefined: nothing); --json prints the report itself */
  print?(r: R, o: z.input<S> & { json: boolean; quiet: boolean }): string | undefined;
  /** what --json prints (default: the report) */
  json?(r: R): unknown;
}

/** Any descriptor, whatever its schema (the generators' view). */
// biome-ignore lint/suspicious/noExplicitAny: descriptors of different schemas are walked alike
export type AnyCommand = CommandDescriptor<z.ZodObject, any>;

/** Declare a command with its types inferred from its schema. */
export function command<S extends z.ZodObject, R>(d: CommandDescriptor<S, R>): CommandDescriptor<S, R> {
  return d;
}
