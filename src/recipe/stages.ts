/**
 * A recipe stage runs its pipeline through the pipeline's descriptor (src/pipeline/registry.ts), with the request
 * the recipe gives it (src/recipe/schema.ts stageRequestOf): the same library function, options and validation as
 * the command line. Pipelines are imported lazily by their descriptors, so a recipe that only prunes never loads
 * the quantizer.
 */
import type { Progress } from '../progress.js';
import { PIPELINES } from '../pipeline/registry.js';
import { type Recipe, type RecipeStage, stageRequestOf } from './schema.js';

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

export async function runStage(ctx: StageContext): Promise<unknown> {
  const d = PIPELINES[ctx.stage.kind];
  const req = stageRequestOf(ctx.recipe, ctx.stage, ctx.input, ctx.out, ctx.dryRun);
  return d.run({ ...req, ...(ctx.progress ? { progress: ctx.progress } : {}) }, { args: [], ...(ctx.progress ? { progress: ctx.progress } : {}) });
}
