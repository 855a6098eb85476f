/**
 * What a serving engine can run, one table per target (`moe quantize --serve NAME`). The rules are read from the
 * engine's loading code, so that an output that passes them loads there; widen a table when the engine gains
 * kernels (a width, a group size), and every check below follows.
 *
 * vLLM (model_executor/layers/quantization: gptq_marlin.py, utils/gptq_utils.py, moe_wna16.py,
 * compressed_tensors/compressed_tensors_moe.py, read through the project's search tools):
 * - all experts of a MoE layer are one fused module with one scheme, looked up for expert 0 (`experts.0.gate_proj`,
 *   `.up_proj`, `.down_proj`), which must agree ("All MoE projections need to have same quantization scheme");
 *   different layers may differ. Per-expert widths cannot load: the allocation unit is the whole layer.
 * - GPTQ Marlin MoE and compressed-tensors WNA16 MoE: symmetric, 4 or 8 bits (WNA16_SUPPORTED_BITS), group size
 *   -1 (channel), 32, 64 or 128; hidden % 128 == 0 and intermediate % max(64, group) == 0 for the Marlin kernels
 *   (check_moe_marlin_supports_layer; the MoeWNA16 fallback takes 4/8 bits without desc_act);
 *   desc_act only with group-wise act order (a g_idx per input column, as our --act-order writes it; in
 *   compressed-tensors `actorder: group` with weight_g_idx, which CompressedTensorsWNA16MarlinMoEMethod loads).
 * - GPTQ `dynamic` overrides are matched (re.match) against the fused module's prefix
 *   (`model.layers.L.mlp.experts`), so they must be written per layer, not per expert.
 */
import { fail } from '../errors.js';
import type { QuantBits } from '../../kernels/quant/types.js';
import type { Granularity, OutputFormat } from './methods.js';

export interface ServeTarget {
  name: string;
  /** the engine, in words (help text and README's table) */
  engine: string;
  /** widths its fused-MoE kernels run (the allocation's candidates and --dense-bits must be among them) */
  widths: readonly QuantBits[];
  /** input columns per scale group; -1 is channel-wise (one group per row) */
  groupSizes: readonly number[];
  /** allocation units it can load */
  granularities: readonly Granularity[];
  /** only symmetric grids (no zero points) */
  symmetric: boolean;
  /** output formats it loads */
  formats: readonly OutputFormat[];
  /** formats in which act order (g_idx) is accepted */
  actOrderFormats: readonly OutputFormat[];
  /** largest tensor-parallel size it runs (--tensor-parallel) */
  maxTensorParallel: number;
  /** why a routed expert of this shape cannot run at tensor-parallel size tp (undefined: it can) */
  shape(dims: { hidden: number; intermediate: number }, groupSize: number, tp: number): string | undefined;
}

export const SERVE_TARGETS = {
  vllm: {
    name: 'vllm',
    engine: 'vLLM fused MoE (GPTQ Marlin / compressed-tensors WNA16 Marlin, MoeWNA16 fallback)',
    widths: [4, 8],
    groupSizes: [-1, 32, 64, 128],
    granularities: ['layer'],
    symmetric: true,
    formats: ['gptq', 'compressed-tensors'],
    actOrderFormats: ['gptq', 'compressed-tensors'],
    maxTensorParallel: 64,
    // tensor parallelism splits each expert's intermediate dimension over the ranks (w13's rows, w2's columns):
    // the Marlin MoE rule applies to intermediate_size_per_partition = intermediate / tp
    shape({ hidden, intermediate }, groupSize, tp) {
      if (hidden % 128 !== 0) return `hidden size ${hidden} is not a multiple of 128 (Marlin MoE)`;
      const m = Math.max(64, groupSize);
      if (intermediate % tp !== 0) return `expert intermediate size ${intermediate} does not split over --tensor-parallel ${tp} ranks`;
      const per = intermediate / tp;
      const what = tp > 1 ? `expert intermediate size per rank ${intermediate}/${tp} = ${per}` : `expert intermediate size ${intermediate}`;
      if (per % m !== 0) return `${what} is not a multiple of max(64, group size) = ${m} (Marlin MoE)`;
      return undefined;
    },
  },
} as const satisfies Record<string, ServeTarget>;

export type ServeTargetName = keyof typeof SERVE_TARGETS;
export const SERVE_TARGET_NAMES = Object.keys(SERVE_TARGETS) as [ServeTargetName, ...ServeTargetName[]];

export function serveTarget(name: ServeTargetName): ServeTarget {
  return SERVE_TARGETS[name];
}

/**
 * Flag-level checks of a --serve run, before any file is read: widths, group size, granularity, act order and
 * format against the target's table. `given` says which flags the user set (defaults are the target's own).
 */
export function checkServeFlags(
  t: ServeTarget,
  o: {
    format: OutputFormat;
    candidates?: readonly number[];
    denseBits: number;
    groupSize: number;
    granularity?: Granularity;
    actOrder: boolean;
    overrideBits: number[];
    tensorParallel: number;
  },
): void {
  const flag = `--serve ${t.name}`;
  const widths = t.widths.join(', ');
  if (!t.formats.includes(o.format)) fail('Usage', `${flag} loads --format ${t.formats.join(' or ')}, not --format ${o.format}`);
  const bad = (o.candidates ?? []).filter((b) => !t.widths.includes(b as QuantBits));
  if (bad.length)
    fail('Usage', `${flag}: --candidates ${o.candidates!.join(',')} has widths its fused-MoE kernels cannot run (${bad.join(', ')}); allowed: ${widths}`);
  if (!t.widths.includes(o.denseBits as QuantBits)) fail('Usage', `${flag}: --dense-bits ${o.denseBits} is not a width it runs; allowed: ${widths}`);
  const ov = o.overrideBits.filter((b) => !t.widths.includes(b as QuantBits));
  if (ov.length) fail('Usage', `${flag}: --override to ${ov.join(', ')} bits is not a width it runs; allowed: ${widths}`);
  if (!t.groupSizes.includes(o.groupSize)) fail('Usage', `${flag}: --group-size ${o.groupSize} is not one it runs (${t.groupSizes.join(', ')})`);
  if (o.granularity && !t.granularities.includes(o.granularity)) {
    fail('Usage', `${flag}: --granularity ${o.granularity} cannot load (one scheme per fused MoE layer); allowed: ${t.granularities.join(', ')}`);
  }
  if (o.actOrder && !t.actOrderFormats.includes(o.format)) {
    fail('Usage', `${flag}: --act-order is not available with --format ${o.format}; use --format ${t.actOrderFormats.join(' or ')}`);
  }
  // act order only reorders which columns share a scale; with one group per row there is nothing to reorder, and
  // vLLM's Marlin GPTQ path refuses desc_act with channel-wise scales
  if (o.actOrder && o.groupSize === -1) fail('Usage', `${flag}: --act-order needs scale groups; --group-size -1 has one per row (use 32, 64 or 128)`);
  if (o.tensorParallel > t.maxTensorParallel) fail('Usage', `${flag}: --tensor-parallel ${o.tensorParallel} is above ${t.maxTensorParallel}`);
}
