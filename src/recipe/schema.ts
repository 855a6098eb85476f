/**
 * Recipes: a YAML or JSON file that chains compression stages, e.g. prune -> quantize. One strict schema
 * (unknown keys are errors, cross-field rules say what to do) so a typo in a CI recipe fails in the first
 * second rather than after an hour of calibration.
 */
import { z } from 'zod';

const positiveInt = z.number().int().positive();
const ratio = z.number().gt(0).lt(1);

const common = {
  calib: z.string().optional(),
  calib_tokens: positiveInt.optional(),
  stats: z.string().optional(),
  backend: z.enum(['auto', 'tensorflow', 'wasm', 'cpu']).optional(),
};

export const PruneStage = z
  .object({
    keep: positiveInt.optional(),
    ratio: ratio.optional(),
    method: z.string().optional(),
    seed: z.number().int().nonnegative().optional(),
    ...common,
  })
  .strict()
  .refine((s) => (s.keep === undefined) !== (s.ratio === undefined), 'prune: give exactly one of keep or ratio');

export const MergeStage = z
  .object({
    groups: positiveInt,
    grouping: z.string().optional(),
    align: z.string().optional(),
    weighting: z.string().optional(),
    router: z.string().optional(),
    ...common,
  })
  .strict();

export const QuantizeStage = z
  .object({
    bits: z.number().positive().max(16),
    method: z.enum(['gptq', 'rtn']).optional(),
    granularity: z.enum(['expert', 'layer']).optional(),
    candidates: z.array(positiveInt).nonempty().optional(),
    dense_bits: positiveInt.optional(),
    group_size: positiveInt.optional(),
    sym: z.boolean().optional(),
    act_order: z.boolean().optional(),
    override: z.array(z.string()).optional(),
    ignore: z.array(z.string()).optional(),
    ...common,
  })
  .strict();

export const DecomposeStage = z
  .object({
    ratio,
    mode: z.string().optional(),
    uniform: z.boolean().optional(),
    seed: z.number().int().nonnegative().optional(),
    materialize: z.boolean().optional(),
    ...common,
  })
  .strict();

export const STAGE_SCHEMAS = {
  prune: PruneStage,
  merge: MergeStage,
  quantize: QuantizeStage,
  decompose: DecomposeStage,
} as const;
export type StageKind = keyof typeof STAGE_SCHEMAS;
export const STAGE_KINDS = Object.keys(STAGE_SCHEMAS) as StageKind[];

const StageEntry = z.record(z.string(), z.unknown()).superRefine((entry, ctx) => {
  const keys = Object.keys(entry);
  if (keys.length !== 1 || !(STAGE_KINDS as string[]).includes(keys[0]!)) {
    ctx.addIssue({
      code: 'custom',
      message: `each stage is an object with exactly one key among ${STAGE_KINDS.join(', ')} (got ${keys.join(', ') || 'none'})`,
    });
  }
});

export const RecipeSchema = z
  .object({
    model: z.string().optional(),
    out: z.string().optional(),
    calib: z.string().optional(),
    calib_tokens: positiveInt.optional(),
    seed: z.number().int().nonnegative().optional(),
    backend: z.enum(['auto', 'tensorflow', 'wasm', 'cpu']).optional(),
    stages: z.array(StageEntry).nonempty(),
    eval: z.object({ data: z.string(), seq_len: positiveInt.optional(), max_tokens: positiveInt.optional() }).strict().optional(),
  })
  .strict();

export interface RecipeStage {
  kind: StageKind;
  options: Record<string, unknown>;
}

export interface Recipe {
  model?: string;
  out?: string;
  calib?: string;
  calibTokens?: number;
  seed?: number;
  backend?: 'auto' | 'tensorflow' | 'wasm' | 'cpu';
  stages: RecipeStage[];
  eval?: { data: string; seqLen?: number; maxTokens?: number };
}

/** Validate a parsed recipe object; the error names the first offending path. */
export function parseRecipe(raw: unknown): { ok: true; recipe: Recipe } | { ok: false; message: string } {
  const top = RecipeSchema.safeParse(raw);
  if (!top.success) return { ok: false, message: firstIssue(top.error) };
  const stages: RecipeStage[] = [];
  for (let i = 0; i < top.data.stages.length; i++) {
    const entry = top.data.stages[i]!;
    const kind = Object.keys(entry)[0] as StageKind;
    const parsed = STAGE_SCHEMAS[kind].safeParse(entry[kind] ?? {});
    if (!parsed.success) return { ok: false, message: `stages[${i}].${kind}: ${firstIssue(parsed.error)}` };
    stages.push({ kind, options: parsed.data as Record<string, unknown> });
  }
  const r = top.data;
  return {
    ok: true,
    recipe: {
      model: r.model,
      out: r.out,
      calib: r.calib,
      calibTokens: r.calib_tokens,
      seed: r.seed,
      backend: r.backend,
      stages,
      eval: r.eval && { data: r.eval.data, seqLen: r.eval.seq_len, maxTokens: r.eval.max_tokens },
    },
  };
}

function firstIssue(err: z.ZodError): string {
  const issue = err.issues[0]!;
  const path = issue.path.length ? issue.path.join('.') + ': ' : '';
  return `${path}${issue.message}`;
}
