/**
 * The pipeline engine: the mechanics every pipeline (prune, merge, quantize, decompose) shares, written once.
 *
 * `runPipeline(def, request, body)`:
 * 1. validates the request from the descriptor's options (src/pipeline/validate.ts: ranges, combinations, input
 *    paths, the output rule), so a library call, a command line and a recipe stage are checked alike;
 * 2. optionally diverts to another pipeline on the validated options (quantize --format gguf);
 * 3. starts the tensor backend first when the pipeline always needs it (else the body starts it when it does);
 * 4. opens the model, checks the options against it (--seq-len within its positions), runs the body with a
 *    `PipelineRun` (the options, the model, and the shared steps below), and always closes the model;
 * 5. writes the report into the output (`<out>/<reportFile>`) unless it is a dry run.
 *
 * The body keeps the algorithm: score, plan, apply, write. The shared steps it calls on `PipelineRun`:
 * backend start (once), calibration windows, plan load/save with the model fingerprint (src/model/planfile.ts),
 * the shard payload of the writer's manifest, and hidden-state resume after the last completed layer
 * (src/pipeline/resume.ts) for forward-pass methods.
 */
import type { z } from 'zod';
import type { Progress } from '../progress.js';
import { loadWindows } from '../data/windows.js';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { stagingDirFor, writeReport as writeOutputReport } from '../io/output.js';
import { openModel, type Model } from '../model/open.js';
import { loadPlan, modelFingerprint, savePlan, type PlanTool } from '../model/planfile.js';
import { passResume, resumeKey, type PassResume, type PassResumeOptions } from './resume.js';
import type { OptionSpec } from './descriptor.js';
import { calibFormat } from './fields.js';
import { composeMemory, type MemoryPhase } from './memory.js';
import type { MemoryEstimate } from '../runtime/memory.js';
import { checkModelOptions, prepare } from './validate.js';

/** The options every pipeline has (src/pipeline/fields.ts `common`), as the engine reads them. */
export interface CommonRun {
  model: string;
  out?: string;
  calib?: string;
  /** --calib-ids: --calib then holds this path, read as token ids (src/pipeline/validate.ts) */
  calibIds?: string;
  calibTokens?: number;
  seqLen?: number;
  backend?: 'auto' | 'tensorflow' | 'wasm' | 'cpu';
  threads?: number;
  plan?: string;
  savePlan?: string;
  shard?: { index: number; count: number };
  dryRun?: boolean;
  force?: boolean;
  progress?: Progress;
}

export interface PipelineDef<S extends z.ZodObject> {
  /** the plan files' tool name, and the report's */
  tool: PlanTool;
  spec: OptionSpec<S>;
  /** the report file written into --out */
  reportFile: string;
  /** start the tensor backend before the model opens (the pipeline needs it whatever the options) */
  backendFirst?: boolean;
  /** checks of the opened model that refuse the run before any work (e.g. quantize: an already-quantized input) */
  checkModel?: (model: Model, o: z.output<S> & CommonRun) => void;
}

/** What a pipeline's body gets: its validated options, the open model, and the shared steps. */
export interface PipelineRun<O> {
  o: O;
  model: Model;
  /** Date.now() when the run started */
  started: number;
  /** seconds since the start */
  seconds(): number;
  /** start the tensor backend and the worker threads (--backend, --threads); once, later calls are no-ops */
  startBackend(): Promise<void>;
  /** the calibration windows of --calib (the first --calib-tokens tokens in windows of --seq-len) */
  windows(): Promise<Int32Array[]>;
  /** the plan of --plan, checked against this model's fingerprint and these settings; undefined without --plan */
  loadPlan<T>(settings: Record<string, unknown>): Promise<T | undefined>;
  /** write the plan to --save-plan (nothing without it) */
  savePlan(settings: Record<string, unknown>, plan: unknown): Promise<void>;
  /** the writer's shard (--shard i/n) with the payload its manifest records; undefined without --shard */
  shard<P>(payload: P): { index: number; count: number; plan: P } | undefined;
  /**
   * Hidden-state resume of a forward pass named `pass` (src/pipeline/resume.ts), keyed by the model's fingerprint,
   * `parts` (everything else that determines the pass) and the windows; kept in --out's staging directory, so a
   * dry run (or a run without --out) neither saves nor resumes.
   */
  passResume<E>(pass: string, parts: unknown, windows: readonly Int32Array[], opts?: PassResumeOptions): PassResume<E>;
  /** the run's estimated peak memory from its phases (src/pipeline/memory.ts adds the runtime, pass and writer terms) */
  memory(phases: readonly MemoryPhase[]): MemoryEstimate;
}

/** --backend and --threads (both idempotent: a second start with the same choice does nothing). */
async function startBackend(o: CommonRun): Promise<void> {
  // loaded on demand: a pipeline that needs no tensors (prune --method random) never loads tfjs
  const { initBackend } = await import('../runtime/backend.js');
  await initBackend(o.backend);
  if (o.threads !== undefined) await (await import('../runtime/pool.js')).setThreads(o.threads);
}

/**
 * The report file of a run: pretty JSON, one trailing newline, written into the staged output, which is published
 * only then, report included (src/io/output.ts writeReport).
 */
export async function writeReport(out: string, file: string, report: unknown): Promise<void> {
  await writeOutputReport(out, file, report);
}

/**
 * Run a pipeline: validate, open, body, report, close. `divert` may hand the validated options to another
 * pipeline (its result is returned as is: no model opened here, no report written here).
 */
export async function runPipeline<S extends z.ZodObject, R>(
  def: PipelineDef<S>,
  request: Record<string, unknown>,
  body: (run: PipelineRun<z.output<S> & CommonRun>) => Promise<R>,
  opts: {
    /** hand the validated options to another pipeline instead (undefined: go on) */
    divert?: (o: z.output<S> & CommonRun, started: number) => Promise<R> | undefined;
    /** more checks of the validated options (and what the run derives from them), before the model opens */
    before?: (o: z.output<S> & CommonRun) => void;
  } = {},
): Promise<R> {
  const started = Date.now();
  const o = (await prepare(def.spec, request)) as z.output<S> & CommonRun;
  const diverted = opts.divert?.(o, started);
  if (diverted) return diverted;
  opts.before?.(o);
  if (def.backendFirst) await startBackend(o);
  const model = await openModel(o.model);
  const resumeFiles: string[] = [];
  try {
    checkModelOptions(o, model.view);
    def.checkModel?.(model, o);
    const run: PipelineRun<typeof o> = {
      o,
      model,
      started,
      seconds: () => (Date.now() - started) / 1000,
      startBackend: () => startBackend(o),
      windows: () => loadWindows(model.dir, o.calib!, { maxTokens: o.calibTokens, seqLen: o.seqLen, format: calibFormat(o) }),
      loadPlan: async <T>(settings: Record<string, unknown>) => (o.plan ? loadPlan<T>(o.plan, def.tool, model.ckpt, settings) : undefined),
      savePlan: async (settings, plan) => {
        if (o.savePlan) await savePlan(o.savePlan, def.tool, model.ckpt, settings, plan);
      },
      shard: (payload) => (o.shard ? { index: o.shard.index, count: o.shard.count, plan: payload } : undefined),
      passResume: <E>(pass: string, parts: unknown, windows: readonly Int32Array[], ropts?: PassResumeOptions) => {
        const out = o.dryRun ? undefined : o.out;
        if (out === undefined) return passResume<E>(undefined);
        const tokens = windows.reduce((a, w) => a + w.length, 0);
        const key = resumeKey({ format: `moe-${def.tool}-${pass}`, version: 1, model: modelFingerprint(model.ckpt), parts }, windows);
        const file = `.moe-resume-${def.tool}-${pass}`;
        resumeFiles.push(file);
        return passResume<E>({ out, file, key, values: tokens * model.view.dims.hidden, ...ropts });
      },
      memory: (phases) => composeMemory(model, phases),
    };
    const report = await body(run).catch(async (e: unknown) => {
      // a run that fails in-process (bad data, NaN, a refusal) leaves nothing behind, as the writer's own failures
      // do: its hidden-state resume files are for a run killed from outside (kill -9), which never gets here
      if (o.out && resumeFiles.length) await dropResumeFiles(stagingDirFor(o.out), resumeFiles);
      throw e;
    });
    if (!o.dryRun && o.out) await writeReport(o.out, def.reportFile, report);
    return report;
  } finally {
    await model.ckpt.close();
  }
}

/** Remove a failed run's resume files, and its staging directory when nothing else (but lock and fingerprint) is in it. */
async function dropResumeFiles(staging: string, files: readonly string[]): Promise<void> {
  for (const f of files) await rm(join(staging, f), { force: true });
  const rest = await readdir(staging).catch(() => undefined);
  if (rest?.every((f) => f === '.moe-lock' || f === '.moe-fingerprint')) await rm(staging, { recursive: true, force: true });
}
