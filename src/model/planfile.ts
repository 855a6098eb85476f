/**
 * Plan files: a pipeline's decisions (kept experts, bit map, merge groups, ranks) saved once with `--save-plan FILE`
 * and applied with `--plan FILE`, so that the layer-parallel jobs of one run (`--shard i/n`) all execute the plan
 * computed once from the summed statistics instead of each recomputing (or, for a global allocation, being unable
 * to compute) it.
 *
 * A plan is tied to what it was computed for. The file records a fingerprint of the input model (config plus every
 * tensor's name, dtype and shape; no weight bytes, so it costs nothing on a 100 GB checkpoint) and the settings that
 * shape the plan or its application (group size, candidates, mode, ...). Loading checks both and names the first
 * difference: a plan applied to another model or with other flags would write a plausible but wrong checkpoint.
 */
import { createHash } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { fail } from '../errors.js';
import type { Checkpoint } from '../io/checkpoint.js';

export type PlanTool = 'prune' | 'quantize' | 'merge' | 'decompose';

export interface PlanFile<T = unknown> {
  format: 'moe-plan';
  version: 1;
  tool: PlanTool;
  /** modelFingerprint() of the input the plan was computed on */
  model: string;
  /** settings the plan depends on; loadPlan compares them key by key */
  settings: Record<string, unknown>;
  plan: T;
}

/** sha256 over the config and the tensor table: identifies a checkpoint's structure without reading its weights. */
export function modelFingerprint(ckpt: Checkpoint): string {
  const tensors = [...ckpt.tensorNames].sort().map((n) => {
    const i = ckpt.info(n);
    return [n, i.dtype, i.shape];
  });
  return createHash('sha256')
    .update(JSON.stringify({ config: ckpt.config, tensors }))
    .digest('hex');
}

/** Write atomically (temporary file, then rename): a killed job never leaves half a plan for the others to read. */
export async function savePlan<T>(path: string, tool: PlanTool, ckpt: Checkpoint, settings: Record<string, unknown>, plan: T): Promise<void> {
  const file: PlanFile<T> = { format: 'moe-plan', version: 1, tool, model: modelFingerprint(ckpt), settings: normalise(settings), plan };
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, JSON.stringify(file, null, 2) + '\n');
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    fail('OutputError', `cannot write the plan to ${path}: ${(e as Error).message}`);
  }
}

/**
 * Read a plan for `tool` and check it against this model and these settings. The returned plan is the file's
 * `plan` field, still to be validated in detail by the pipeline (layer indices, expert counts, widths).
 */
export async function loadPlan<T>(path: string, tool: PlanTool, ckpt: Checkpoint, settings: Record<string, unknown>): Promise<T> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    fail('MissingFile', `cannot read the plan ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    fail('InvalidData', `${path} is not a plan file (not JSON)`);
  }
  const f = raw as Partial<PlanFile<T>>;
  if (f?.format !== 'moe-plan' || f.version !== 1 || typeof f.model !== 'string' || typeof f.settings !== 'object' || f.settings === null || !('plan' in f)) {
    fail('InvalidData', `${path} is not a version-1 moe plan file`);
  }
  if (f.tool !== tool) fail('Usage', `${path} is a plan of moe ${f.tool}, not of moe ${tool}`);
  if (f.model !== modelFingerprint(ckpt)) fail('InvalidData', `${path} was computed for a different model (its tensors or config differ from this --model)`);
  const want = normalise(settings);
  for (const k of new Set([...Object.keys(want), ...Object.keys(f.settings!)])) {
    const a = JSON.stringify(f.settings![k] ?? null);
    const b = JSON.stringify(want[k] ?? null);
    if (a !== b) fail('Usage', `${path} was computed with ${k} = ${a}, this command has ${b}: give the same flags as the run that saved it`);
  }
  return f.plan as T;
}

/** undefined values drop out, so an omitted flag and its default compare by what the pipeline resolved. */
function normalise(s: Record<string, unknown>): Record<string, unknown> {
  return JSON.parse(JSON.stringify(s)) as Record<string, unknown>;
}
