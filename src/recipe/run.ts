/**
 * `moe run RECIPE`: stages in order, each reading the previous stage's checkpoint, with one report for the
 * whole run.
 *
 * Every stage writes into a run directory beside the output (`.moe-run-<name>/stage-<i>-<kind>`), published there
 * atomically by the stage itself; `state.json` records finished stages, each with a digest of the recipe up to it
 * and of the files it read (model, calibration text, statistics). A killed run restarted with the same command
 * skips the finished stages; a stage whose recipe or input files changed (even under the same path) reruns, with
 * every stage after it, rather than being silently mixed with old results. Only when every stage (and the optional evaluation) has finished is the last stage's
 * checkpoint renamed to the output, so an interrupted run never leaves an output that looks complete.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { Progress } from '../progress.js';
import { fail, isMoeError, MoeError } from '../errors.js';
import { checkOutputPath, checkOutputTarget, checkReplaceable, deferPublish, pathExists } from '../io/output.js';
import { inputsFingerprint } from '../io/fingerprint.js';
import { openModel } from '../model/open.js';
import { PIPELINES } from '../pipeline/registry.js';
import { schemaOptions } from '../pipeline/schema.js';
import { checkModelOptions, checkPath, checkPaths, parseOptions } from '../pipeline/validate.js';
import { parseRecipe, type Recipe, type RecipeStage, type StageKind, stageRequestOf } from './schema.js';
import { runStage, type StageContext } from './stages.js';

export const RUN_REPORT_FILE = 'moe-run-report.json';
/**
 * 2: every finished stage records the digest of the recipe up to it, so a recipe changed in a later stage keeps
 * the finished earlier ones. 1 (one digest of the whole recipe) is still read: reused when the recipe is unchanged.
 */
const STATE_VERSION = 2;

export interface RunRequest {
  recipe: string;
  /** command-line overrides of the recipe's model / out */
  model?: string;
  out?: string;
  force?: boolean;
  dryRun?: boolean;
  progress?: Progress;
}

interface StageRecord {
  index: number;
  kind: StageKind;
  /** digest of the model, the recipe's defaults and stages 0..index (version 2) */
  digest?: string;
  dir: string;
  report: unknown;
  seconds: number;
}

interface RunState {
  version: number;
  /** version 1: digest of the whole recipe */
  digest?: string;
  model: string;
  completed: StageRecord[];
}

export interface RunReport {
  tool: 'moe run';
  recipe: string;
  model: string;
  out: string;
  dryRun: boolean;
  resumedStages: number;
  stages: Array<{ index: number; kind: StageKind; report: unknown; seconds: number; resumed: boolean }>;
  eval?: unknown;
  seconds: number;
}

export async function loadRecipe(path: string): Promise<Recipe> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    fail('MissingFile', `recipe not found: ${path}`);
  }
  let raw: unknown;
  try {
    raw = /\.json$/i.test(path) ? JSON.parse(text) : parseYaml(text);
  } catch (e) {
    fail('Usage', `${path}: not valid ${/\.json$/i.test(path) ? 'JSON' : 'YAML'} (${(e as Error).message.split('\n')[0]})`);
  }
  const parsed = parseRecipe(raw);
  if (!parsed.ok) fail('Usage', `${path}: ${parsed.message}`);
  return parsed.recipe;
}

/** Paths in a recipe are relative to the recipe file, as a reader of the recipe would expect. */
function relativeTo(recipePath: string, p: string | undefined): string | undefined {
  return p === undefined ? undefined : resolve(dirname(resolve(recipePath)), p);
}

function digestOf(recipe: Recipe, model: string): string {
  return createHash('sha256').update(JSON.stringify({ recipe, model })).digest('hex').slice(0, 16);
}

/**
 * What stage i's output depends on: the model, the recipe's defaults and stages 0..i (not later stages, not eval),
 * and the identity of the files they read (src/io/fingerprint.ts: each file's size, modification time and first
 * bytes), so a model or calibration file replaced under the same path reruns the stages that read it.
 */
async function stageDigest(recipe: Recipe, model: string, i: number): Promise<string> {
  const { stages, eval: _eval, out: _out, ...defaults } = recipe;
  const read = [recipe.calib, ...stages.slice(0, i + 1).flatMap((s) => [s.options.calib, s.options.stats])].filter((p): p is string => typeof p === 'string');
  const files = await inputsFingerprint([model, ...read]);
  return createHash('sha256')
    .update(JSON.stringify({ defaults, stages: stages.slice(0, i + 1), model, files }))
    .digest('hex')
    .slice(0, 16);
}

/** Prefix a stage's error with where it is in the recipe, keeping its code (and so its exit status). */
function inStage(recipePath: string, i: number, kind: StageKind, e: unknown): unknown {
  return isMoeError(e) ? new MoeError(e.code, `${recipePath}: stages[${i}].${kind}: ${e.message}`) : e;
}

/**
 * Every stage checked as its real run will check it, before the first one starts: options, ranges and
 * combinations (already by parseRecipe), the input paths each stage names, and the options that depend on the model
 * but not on what earlier stages do to it (calibration windows within its positions). What depends on the data of
 * earlier stages (an achievable budget after a prune) is checked at the start of that stage, before its work.
 */
async function validateStages(recipePath: string, recipe: Recipe, model: string): Promise<void> {
  const m = await openModel(model);
  try {
    for (let i = 0; i < recipe.stages.length; i++) {
      const stage = recipe.stages[i]!;
      const d = PIPELINES[stage.kind];
      try {
        const o = parseOptions(d, stageRequestOf(recipe, stage, model, '(stage output)', false));
        await checkPaths(schemaOptions(d.options), o as Record<string, unknown>);
        checkModelOptions(o as { seqLen?: unknown }, m.view);
      } catch (e) {
        throw inStage(recipePath, i, stage.kind, e);
      }
    }
  } finally {
    await m.ckpt.close();
  }
  if (recipe.eval) await checkPath('data', recipe.eval.data);
}

export function runDirFor(out: string): string {
  const target = resolve(out);
  return join(dirname(target), `.moe-run-${basename(target)}`);
}

async function readState(runDir: string): Promise<RunState | undefined> {
  try {
    return JSON.parse(await readFile(join(runDir, 'state.json'), 'utf8')) as RunState;
  } catch {
    return undefined;
  }
}

async function writeState(runDir: string, state: RunState): Promise<void> {
  // write-then-rename: a kill during the write leaves the previous state, never a torn one
  const tmp = join(runDir, 'state.json.tmp');
  await writeFile(tmp, JSON.stringify(state, null, 2) + '\n');
  await rename(tmp, join(runDir, 'state.json'));
}

export async function runRecipe(req: RunRequest): Promise<RunReport> {
  const started = Date.now();
  const recipe = await loadRecipe(req.recipe);
  const model = req.model ?? relativeTo(req.recipe, recipe.model);
  // an empty path would resolve to the recipe's own directory: refused, as on the command line
  if (req.out !== undefined) checkOutputPath(req.out);
  if (recipe.out !== undefined) checkOutputPath(recipe.out, "the recipe's `out:`");
  const out = req.out ?? relativeTo(req.recipe, recipe.out);
  if (!model) fail('Usage', 'no model: give --model or a `model:` entry in the recipe');
  if (!out) fail('Usage', 'no output: give --out or an `out:` entry in the recipe');
  const resolved: Recipe = {
    ...recipe,
    calib: relativeTo(req.recipe, recipe.calib),
    stages: recipe.stages.map((s) => ({
      kind: s.kind,
      options: {
        ...s.options,
        ...(typeof s.options.calib === 'string' ? { calib: relativeTo(req.recipe, s.options.calib) } : {}),
        ...(typeof s.options.stats === 'string' ? { stats: relativeTo(req.recipe, s.options.stats) } : {}),
      },
    })),
    eval: recipe.eval && { ...recipe.eval, data: relativeTo(req.recipe, recipe.eval.data)! },
  };

  // the output target and every stage, before anything runs (a dry run says what the real run would refuse)
  // every input (the recipe itself, calibration text, statistics, eval data) is protected like the model
  const inputs = [req.recipe, resolved.calib, ...resolved.stages.flatMap((s) => [s.options.calib, s.options.stats]), resolved.eval?.data].filter(
    (p): p is string => typeof p === 'string',
  );
  await checkOutputTarget(out, { force: req.force, inputDir: model, inputs });
  await validateStages(req.recipe, resolved, model);
  const ctx = (stage: RecipeStage, index: number, input: string, stageOut: string | undefined): StageContext => ({
    recipe: resolved,
    stage,
    index,
    input,
    out: stageOut,
    dryRun: !!req.dryRun,
    progress: req.progress,
  });

  if (req.dryRun) {
    // later stages read the previous stage's output, which a dry run does not write: plan the first stage on the
    // real input and validate the rest against their schemas (already done by loadRecipe)
    const first = resolved.stages[0]!;
    let report: unknown;
    try {
      report = await runStage(ctx(first, 0, model, undefined));
    } catch (e) {
      throw inStage(req.recipe, 0, first.kind, e);
    }
    return {
      tool: 'moe run',
      recipe: req.recipe,
      model,
      out,
      dryRun: true,
      resumedStages: 0,
      stages: [
        { index: 0, kind: first.kind, report, seconds: 0, resumed: false },
        ...resolved.stages.slice(1).map((s, i) => ({
          index: i + 1,
          kind: s.kind,
          report: { planned: 'after the previous stage has written its checkpoint', options: s.options },
          seconds: 0,
          resumed: false,
        })),
      ],
      seconds: (Date.now() - started) / 1000,
    };
  }

  const runDir = runDirFor(out);
  const digests = await Promise.all(resolved.stages.map((_, i) => stageDigest(resolved, resolve(model), i)));
  await mkdir(runDir, { recursive: true });
  let state = await readState(runDir);
  if (state && state.version === 1) {
    // a run directory of the previous version: its stages are reused only when the recipe is the same
    if (state.digest !== digestOf(resolved, resolve(model))) {
      fail(
        'OutputExists',
        `${runDir} holds an unfinished run of a different recipe or model (run state version 1, from an earlier moe); remove it to start over`,
      );
    }
    state = { version: STATE_VERSION, model: state.model, completed: state.completed.map((r) => ({ ...r, digest: digests[r.index] })) };
  } else if (state && state.version !== STATE_VERSION) {
    fail('OutputExists', `${runDir} holds a run state of version ${state.version}, which this moe does not read; remove it to start over`);
  } else if (state && state.model !== resolve(model)) {
    fail('OutputExists', `${runDir} holds an unfinished run of a different model (${state.model}); remove it to start over`);
  }
  state ??= { version: STATE_VERSION, model: resolve(model), completed: [] };
  // a stage killed mid-write left only its own staging directory: clear those, the stage reruns
  for (const entry of await readdir(runDir)) {
    if (entry.startsWith('.moe-staging-')) await rm(join(runDir, entry), { recursive: true, force: true });
  }

  const records: RunReport['stages'] = [];
  let input = resolve(model);
  let resumedStages = 0;
  for (let i = 0; i < resolved.stages.length; i++) {
    const stage = resolved.stages[i]!;
    const dir = join(runDir, `stage-${i + 1}-${stage.kind}`);
    // a finished stage is reused when nothing it depends on changed (a later stage's options may have)
    const done = state.completed.find((r) => r.index === i && r.digest === digests[i]);
    if (done && (await pathExists(dir))) {
      req.progress?.info(`stage ${i + 1}/${resolved.stages.length} ${stage.kind}: already complete, reusing ${dir}`);
      records.push({ index: i, kind: stage.kind, report: done.report, seconds: done.seconds, resumed: true });
      resumedStages++;
      input = dir;
      continue;
    }
    // an incomplete later history is void once an earlier stage reruns
    state.completed = state.completed.filter((r) => r.index < i);
    await rm(dir, { recursive: true, force: true });
    req.progress?.info(`stage ${i + 1}/${resolved.stages.length}: ${stage.kind}`);
    const t0 = Date.now();
    let report: unknown;
    try {
      // the stage's output (report included) is complete before the next stage reads it
      report = await deferPublish(() => runStage(ctx(stage, i, input, dir)));
    } catch (e) {
      throw inStage(req.recipe, i, stage.kind, e);
    }
    const seconds = (Date.now() - t0) / 1000;
    state.completed.push({ index: i, kind: stage.kind, digest: digests[i]!, dir, report, seconds });
    await writeState(runDir, state);
    records.push({ index: i, kind: stage.kind, report, seconds, resumed: false });
    input = dir;
  }

  let evalReport: unknown;
  if (resolved.eval) {
    const { evaluate } = await import('../eval/perplexity.js');
    evalReport = await evaluate({
      model: input,
      base: resolve(model),
      data: resolved.eval.data,
      seqLen: resolved.eval.seqLen,
      maxTokens: resolved.eval.maxTokens,
      progress: req.progress,
    });
  }

  const report: RunReport = {
    tool: 'moe run',
    recipe: req.recipe,
    model,
    out,
    dryRun: false,
    resumedStages,
    stages: records,
    eval: evalReport,
    seconds: (Date.now() - started) / 1000,
  };
  await writeFile(join(input, RUN_REPORT_FILE), JSON.stringify(report, null, 2) + '\n');
  // publish: the last stage's directory becomes the output; the run directory goes only after that
  const target = resolve(out);
  if (await pathExists(target)) {
    if (!req.force) fail('OutputExists', `output ${out} appeared while running (use --force to replace it)`);
    await checkReplaceable(target, out);
    await rm(target, { recursive: true, force: true });
  }
  await rename(input, target);
  await rm(runDir, { recursive: true, force: true });
  return report;
}
