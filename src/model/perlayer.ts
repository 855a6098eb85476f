/**
 * The identity of a checkpoint whose MoE layers keep different numbers of experts (`moe prune --keep-per-layer auto
 * --write-per-layer`). Stock loaders read one expert count for every layer: under the family's own `model_type`
 * transformers and vLLM would build every layer with the config's count and fail (or mis-route) on the smaller
 * ones. So, as for low-rank factor checkpoints (lowrank.ts), such a checkpoint gets its own `model_type`
 * (`moe_perlayer_<family>`) and class (`MoePerLayer<Class>`), which AutoConfig and vLLM refuse as unknown; the
 * stock names and each MoE layer's count are kept in the `moe` section, and the config's own expert-count key
 * holds the largest count.
 *
 * moe itself reads the family under the prefix (registry.ts) and each layer's count from the section (view.ts).
 * A checkpoint that is both per-layer and low-rank is refused: one `moe` section describes one format.
 */
import { fail } from '../errors.js';
import type { HFConfig } from '../io/checkpoint.js';
import { classesWithout, isSectionOf, type StockIdentity, withoutPrefix } from './lowrank.js';

export const PERLAYER_FORMAT = 'moe-per-layer';
export const PERLAYER_TYPE_PREFIX = 'moe_perlayer_';
export const PERLAYER_CLASS_PREFIX = 'MoePerLayer';

export interface PerLayerSection {
  format: typeof PERLAYER_FORMAT;
  version: 1;
  /** experts of each MoE layer, in layer order (the view's moeLayers) */
  experts_per_layer: number[];
  stock: StockIdentity;
}

export const isPerLayerSection = isSectionOf<PerLayerSection>(PERLAYER_FORMAT);

export const stripPerLayerType = (modelType: string): string => withoutPrefix(PERLAYER_TYPE_PREFIX, modelType);

export const stripPerLayerClasses = (classes: unknown): unknown => classesWithout(PERLAYER_CLASS_PREFIX, classes);

/** The stock names of a config (prefixed or not). */
function stockOf(config: HFConfig): StockIdentity {
  if (isPerLayerSection(config.moe)) return config.moe.stock;
  const mt = String(config.model_type);
  return { model_type: mt, ...(Array.isArray(config.architectures) ? { architectures: config.architectures as string[] } : {}) };
}

/**
 * Each MoE layer's count from the section, checked against the config: one entry per MoE layer, each a whole
 * number in [top-k, count key], the largest equal to the count key. Undefined for a uniform checkpoint.
 */
export function perLayerCounts(config: HFConfig, where: string, moeLayers: number, numExperts: number, topK: number): number[] | undefined {
  const s = config.moe;
  const prefixed = typeof config.model_type === 'string' && config.model_type.startsWith(PERLAYER_TYPE_PREFIX);
  if (!isPerLayerSection(s)) {
    if (prefixed) fail('InvalidConfig', `${where}: model_type '${config.model_type}' needs a "moe" section with format "${PERLAYER_FORMAT}"`);
    return undefined;
  }
  const c = s.experts_per_layer;
  if (!Array.isArray(c) || c.length !== moeLayers || c.some((n) => !Number.isInteger(n) || n < topK || n > numExperts))
    fail('InvalidConfig', `${where}: moe.experts_per_layer must list ${moeLayers} whole numbers in ${topK}..${numExperts} (one per MoE layer)`);
  if (Math.max(...c) !== numExperts) fail('InvalidConfig', `${where}: the expert-count key (${numExperts}) must equal the largest of moe.experts_per_layer`);
  return c;
}

/** Refuse per-layer counts for an input whose `moe` section is another format (low-rank factors). */
export function checkPerLayerInput(input: HFConfig): void {
  if (input.moe !== undefined && !isPerLayerSection(input.moe))
    fail(
      'Usage',
      'per-layer expert counts cannot be written into a checkpoint that already has a "moe" section of another format (low-rank factors): materialize it first',
    );
}

/**
 * Config keys that make the output per-layer (`counts`: one per MoE layer) or uniform again (`counts` undefined:
 * the stock names back, the section removed; nothing when the input was not per-layer).
 */
export function perLayerIdentityUpdates(input: HFConfig, counts: number[] | undefined): Record<string, unknown> {
  const wasPerLayer = isPerLayerSection(input.moe);
  const stock = stockOf(input);
  if (!counts) return wasPerLayer ? { model_type: stock.model_type, ...(stock.architectures ? { architectures: stock.architectures } : {}), moe: null } : {};
  checkPerLayerInput(input);
  const section: PerLayerSection = { format: PERLAYER_FORMAT, version: 1, experts_per_layer: counts, stock };
  return {
    model_type: PERLAYER_TYPE_PREFIX + stock.model_type,
    ...(stock.architectures ? { architectures: stock.architectures.map((c) => PERLAYER_CLASS_PREFIX + c) } : {}),
    moe: section,
  };
}
