/**
 * Recipes: a YAML or JSON file that chains compression stages, e.g. prune -> quantize. The stages' schemas are
 * generated from the pipelines' descriptors (src/pipeline/recipe.ts): a stage takes its command's options in
 * snake_case, validated by the same schema and the same combination checks as the command line, with the same
 * messages, so a typo or an out-of-range value in any stage fails in the first second, before any stage runs.
 */
import { z } from 'zod';
import { isMoeError } from '../errors.js';
import { BACKENDS, common, field, int } from '../pipeline/fields.js';
import { parseStage, stageRequest } from '../pipeline/recipe.js';
import { PIPELINES, STAGE_KINDS, type StageKind } from '../pipeline/registry.js';
import { parseOptions } from '../pipeline/validate.js';

export { STAGE_KINDS, type StageKind };

const StageEntry = z.record(z.string(), z.unknown()).superRefine((entry, ctx) => {
  const keys = Object.keys(entry);
  if (keys.length !== 1 || !(STAGE_KINDS as string[]).includes(keys[0]!)) {
    ctx.addIssue({
      code: 'custom',
      message: `each stage is an object with exactly one key among ${STAGE_KINDS.join(', ')} (got ${keys.join(', ') || 'none'})`,
    });
  }
});

/** Recipe-level defaults every stage that has the option takes unless it sets its own. */
export const RecipeSchema = z
  .object({
    model: z.string().optional(),
    out: z.string().optional(),
    calib: common.calib(),
    calib_tokens: int(1).optional(),
    seq_len: int(2).optional(),
    seed: field(z.number().int().nonnegative().optional(), { help: 'seed of the stages that take one', arg: 'n' }),
    backend: z.enum(BACKENDS).optional(),
    stages: z.array(StageEntry).nonempty(),
    eval: z
      .object({ data: z.string(), seq_len: int(2).optional(), max_tokens: int(1).optional() })
      .strict()
      .optional(),
  })
  .strict();

export interface RecipeStage {
  kind: StageKind;
  /** as written in the recipe (snake_case keys, no defaults filled in) */
  options: Record<string, unknown>;
}

export interface Recipe {
  model?: string;
  out?: string;
  calib?: string;
  calibTokens?: number;
  seqLen?: number;
  seed?: number;
  backend?: (typeof BACKENDS)[number];
  stages: RecipeStage[];
  eval?: { data: string; seqLen?: number; maxTokens?: number };
}

/** The recipe-level values a stage takes as its defaults (in the commands' spelling). */
export function recipeDefaults(r: Recipe): Record<string, unknown> {
  return { calib: r.calib, calibTokens: r.calibTokens, seqLen: r.seqLen, seed: r.seed, backend: r.backend };
}

/**
 * A stage's request as its pipeline gets it in a real run: its options over the recipe's defaults, with the
 * checkpoint it reads and the one it writes (placeholders when only the combinations are checked).
 */
export function stageRequestOf(recipe: Recipe, stage: RecipeStage, input: string, out: string | undefined, dryRun: boolean): Record<string, unknown> {
  return { ...stageRequest(PIPELINES[stage.kind], stage.options, recipeDefaults(recipe)), model: input, out, dryRun, force: false };
}

/** Validate a parsed recipe object: structure, every stage's options and their combinations; the error names where. */
export function parseRecipe(raw: unknown): { ok: true; recipe: Recipe } | { ok: false; message: string } {
  const top = RecipeSchema.safeParse(raw);
  if (!top.success) return { ok: false, message: firstIssue(top.error) };
  const r = top.data;
  const recipe: Recipe = {
    model: r.model,
    out: r.out,
    calib: r.calib,
    calibTokens: r.calib_tokens,
    seqLen: r.seq_len,
    seed: r.seed,
    backend: r.backend,
    stages: [],
    eval: r.eval && { data: r.eval.data, seqLen: r.eval.seq_len, maxTokens: r.eval.max_tokens },
  };
  for (let i = 0; i < r.stages.length; i++) {
    const entry = r.stages[i]!;
    const kind = Object.keys(entry)[0] as StageKind;
    const where = `stages[${i}].${kind}`;
    const parsed = parseStage(PIPELINES[kind], entry[kind] ?? {});
    if (!parsed.ok) return { ok: false, message: `${where}: ${parsed.message}` };
    const stage: RecipeStage = { kind, options: parsed.options };
    // the combinations, exactly as the stage's real run checks them (its input and output are the runner's)
    try {
      parseOptions(PIPELINES[kind], stageRequestOf(recipe, stage, '(input checkpoint)', '(stage output)', false));
    } catch (e) {
      if (isMoeError(e)) return { ok: false, message: `${where}: ${e.message}` };
      throw e;
    }
    recipe.stages.push(stage);
  }
  return { ok: true, recipe };
}

function firstIssue(err: z.ZodError): string {
  const issue = err.issues[0]!;
  const path = issue.path.length ? issue.path.join('.') + ': ' : '';
  return `${path}${issue.message}`;
}
