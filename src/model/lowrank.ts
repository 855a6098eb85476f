/**
 * The identity a low-rank (factor) checkpoint shows stock loaders. Its expert weights are `weight_u`/`weight_v`
 * factors (src/decompose/format.ts), which no stock loader reads: under the family's own `model_type` and class,
 * transformers would load the model with those weights missing (initialised randomly, one warning) and vLLM would
 * serve it. So a factor checkpoint gets its own `model_type` (`moe_lowrank_<family>`) and class
 * (`MoeLowRank<Class>`), which AutoConfig and vLLM refuse as unknown; the stock names are kept in the `moe`
 * section, and every output without factors (decompose --materialize, quantize, ...) gets them back.
 *
 * moe itself reads the family under the prefix (registry.ts getArchitecture).
 */
import type { HFConfig } from '../io/checkpoint.js';

export const LOWRANK_FORMAT = 'moe-lowrank';
export const LOWRANK_TYPE_PREFIX = 'moe_lowrank_';
export const LOWRANK_CLASS_PREFIX = 'MoeLowRank';

/** The stock names a factor checkpoint came from, as its `moe` section records them. */
export interface StockIdentity {
  model_type: string;
  architectures?: string[];
}

/** Whether a config's `moe` section is of this format (our own formats: low-rank here, per-layer in perlayer.ts). */
export const isSectionOf =
  <T extends object = Record<string, unknown>>(format: string) =>
  (s: unknown): s is T =>
    s !== null && typeof s === 'object' && !Array.isArray(s) && (s as Record<string, unknown>).format === format;

/** A model_type or class name without one of our formats' prefixes. */
export const withoutPrefix = (prefix: string, name: string): string => (name.startsWith(prefix) ? name.slice(prefix.length) : name);

/** A config's `architectures` with the prefix taken off each class name (anything else as it is). */
export const classesWithout = (prefix: string, classes: unknown): unknown =>
  Array.isArray(classes) ? classes.map((c) => (typeof c === 'string' ? withoutPrefix(prefix, c) : c)) : classes;

const isLowRankSection = isSectionOf(LOWRANK_FORMAT);

/** model_type without the low-rank prefix (the family moe reads it as). */
export const stockModelType = (modelType: string): string => withoutPrefix(LOWRANK_TYPE_PREFIX, modelType);

/** Class names without the low-rank prefix. */
export const stockClasses = (classes: unknown): unknown => classesWithout(LOWRANK_CLASS_PREFIX, classes);

/**
 * The config.json keys to change so that `out` (the output's config, after the edit's own updates) shows the right
 * identity: factors in it (a moe-lowrank `moe` section) -> the low-rank names, the stock ones recorded in the
 * section; no factors -> the stock names back (from the input's section). Empty when nothing changes.
 */
export function lowRankIdentityUpdates(input: HFConfig, out: HFConfig): Record<string, unknown> {
  const mt = out.model_type;
  if (typeof mt !== 'string') return {};
  const prefixed = mt.startsWith(LOWRANK_TYPE_PREFIX);
  const inSection = isLowRankSection(input.moe) ? input.moe : undefined;
  const recorded = inSection?.stock as StockIdentity | undefined;
  const stock: StockIdentity = prefixed
    ? {
        model_type: recorded?.model_type ?? stockModelType(mt),
        ...(recorded?.architectures
          ? { architectures: recorded.architectures }
          : Array.isArray(out.architectures)
            ? { architectures: stockClasses(out.architectures) as string[] }
            : {}),
      }
    : { model_type: mt, ...(Array.isArray(out.architectures) ? { architectures: out.architectures } : {}) };
  if (isLowRankSection(out.moe)) {
    const updates: Record<string, unknown> = {};
    if (!prefixed) {
      updates.model_type = LOWRANK_TYPE_PREFIX + mt;
      if (stock.architectures) updates.architectures = stock.architectures.map((c) => LOWRANK_CLASS_PREFIX + c);
    }
    if (JSON.stringify(out.moe.stock) !== JSON.stringify(stock)) updates.moe = { ...out.moe, stock };
    return updates;
  }
  if (!prefixed) return {};
  return { model_type: stock.model_type, ...(stock.architectures ? { architectures: stock.architectures } : {}) };
}
