/** The request and allocation-unit types of `moe quantize` (apart from the pipeline, so the report imports no orchestration). */
import type { z } from 'zod';
import type { QuantBits } from '../../kernels/quant/types.js';
import type { Progress } from '../progress.js';
import type { QUANTIZE_OPTIONS, QuantizeOptions } from './options.js';
import type { AllocatableClass, LinearDecision, Proj } from './plan.js';

/**
 * What a caller gives: the options (src/quantize/options.ts, the same for the command line and recipes) plus, for
 * library callers, progress and MC-MoE's importance exponents.
 */
export type QuantizeRequest = z.input<typeof QUANTIZE_OPTIONS> & {
  progress?: Progress;
  /** MC-MoE exponents of the importance f^alpha * w^beta (default 1 and 1.5) */
  alpha?: number;
  beta?: number;
};
/** The request after validation: every option resolved. */
export type QuantizeRun = QuantizeOptions & Omit<QuantizeRequest, keyof QuantizeOptions>;

export interface Unit {
  id: string;
  layer: number;
  /** expert granularity: the expert; projection and layer granularity: undefined */
  expert?: number;
  /** projection granularity: the projection */
  proj?: Proj;
  /** --allocate: the layer's attention, shared expert or dense MLP as a unit of its own (undefined: routed experts) */
  cls?: AllocatableClass;
  /** linears whose bits the unit's choice sets */
  free: LinearDecision[];
  /** linears of the unit with fixed bits or kept (their bytes count, the choice does not change them) */
  fixed: LinearDecision[];
  options: UnitOption[];
}

/** One width assignment for a unit's free linears (by projection; `all`: every linear of an attention unit). */
export interface UnitOption {
  label: string;
  bits: Partial<Record<Proj | 'all', QuantBits>>;
}

/** The width an option gives one of its unit's free linears. */
export function optionBits(o: UnitOption, d: Pick<LinearDecision, 'proj'>): QuantBits {
  return o.bits[d.proj ?? 'all']!;
}
