/**
 * Data-blind baselines for the allocation, expressed as --override patterns so they run through the same
 * pipeline: a uniform width for every routed expert, or a uniform 2/3-bit style mix with the same number of
 * high-width experts in every layer (chosen by index, not by any score), sized to match a given true bpw.
 */
import type { QuantBits } from '../../kernels/quant/types.js';
import type { ModelView } from '../model/types.js';
import { linearBytesAt } from './plan.js';

function expertPattern(view: ModelView, layer: number, expert: number): string {
  const b = view.layers[layer]!.block;
  if (b.kind !== 'moe') throw new Error(`layer ${layer} is not an MoE layer`);
  const t = b.experts[expert]!.gate.tensor;
  // the module prefix of the expert: everything before its projection's name
  const prefix = t.slice(0, t.lastIndexOf('.', t.length - '.weight'.length - 1) + 1);
  return `^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`;
}

/** True bits per weight of the routed experts when `high` experts per layer take `hi` bits and the rest `lo`. */
export function mixBpw(view: ModelView, high: number, lo: QuantBits, hi: QuantBits, groupSize: number): number {
  let bits = 0,
    params = 0;
  for (const l of view.moeLayers) {
    const b = view.layers[l]!.block;
    if (b.kind !== 'moe') continue;
    b.experts.forEach((e, j) => {
      for (const r of [e.gate, e.up, e.down]) {
        bits += 8 * linearBytesAt(r.outFeatures, r.inFeatures, j < high ? hi : lo, groupSize);
        params += r.outFeatures * r.inFeatures;
      }
    });
  }
  return bits / params;
}

/**
 * Overrides for the mix whose true bpw is the smallest at or above `targetBpw` (experts 0..high-1 of every
 * layer at `hi`, the rest at `lo`), and that bpw. The baseline is never smaller than the allocation it is
 * compared with.
 */
export function uniformMix(
  view: ModelView,
  targetBpw: number,
  lo: QuantBits,
  hi: QuantBits,
  groupSize: number,
): { override: string[]; bpw: number; high: number } {
  const E = view.dims.numExperts;
  let high = 0;
  while (high < E && mixBpw(view, high, lo, hi, groupSize) < targetBpw - 1e-12) high++;
  const override: string[] = [];
  for (const l of view.moeLayers) for (let j = 0; j < E; j++) override.push(`${expertPattern(view, l, j)}=${j < high ? hi : lo}`);
  return { override, bpw: mixBpw(view, high, lo, hi, groupSize), high };
}
