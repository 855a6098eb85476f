/**
 * One runner per stage kind: maps a recipe stage (snake_case options, recipe-level defaults for calibration,
 * seed and backend) onto the pipeline's own request and calls the same library function the CLI command calls.
 * Pipelines are imported lazily so a recipe that only prunes never loads the quantizer.
 */
import type { Progress } from '../cli/progress.js';
import type { Recipe, RecipeStage, StageKind } from './schema.js';

export interface StageContext {
  recipe: Recipe;
  stage: RecipeStage;
  index: number;
  /** checkpoint the stage reads */
  input: string;
  /** checkpoint directory the stage writes (undefined in a dry run) */
  out?: string;
  dryRun: boolean;
  progress?: Progress;
}

type StageRunner = (ctx: StageContext) => Promise<unknown>;

/** recipe keys are snake_case (YAML custom); pipeline requests are camelCase */
export function camelKeys(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) out[k.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())] = v;
  return out;
}

function baseRequest(ctx: StageContext): Record<string, unknown> {
  const o = camelKeys(ctx.stage.options);
  return {
    calib: ctx.recipe.calib,
    calibTokens: ctx.recipe.calibTokens,
    backend: ctx.recipe.backend,
    ...o,
    model: ctx.input,
    out: ctx.out,
    dryRun: ctx.dryRun,
    // the run directory is the runner's: each stage's output is new there
    force: false,
    progress: ctx.progress,
  };
}

export const STAGE_RUNNERS: Record<StageKind, StageRunner> = {
  async prune(ctx) {
    const { prune } = await import('../prune/pipeline.js');
    const req = baseRequest(ctx);
    return prune({ seed: ctx.recipe.seed, ...req } as unknown as Parameters<typeof prune>[0]);
  },
  async merge(ctx) {
    const { merge } = await import('../merge/pipeline.js');
    return merge(baseRequest(ctx) as unknown as Parameters<typeof merge>[0]);
  },
  async decompose(ctx) {
    const { decompose } = await import('../decompose/pipeline.js');
    return decompose({ seed: ctx.recipe.seed, ...baseRequest(ctx) } as unknown as Parameters<typeof decompose>[0]);
  },
  async quantize(ctx) {
    const { quantize } = await import('../quantize/pipeline.js');
    return quantize({ seed: ctx.recipe.seed, ...baseRequest(ctx) } as unknown as Parameters<typeof quantize>[0]);
  },
};
