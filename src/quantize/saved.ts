/**
 * Quantize plan files (`--save-plan FILE` / `--plan FILE`, on src/model/planfile.ts): the allocation's choice for
 * every unit and the final width of every linear, plus the scores and solver figures the report shows. A run with
 * --plan skips the scoring pass and the 0/1 program and writes exactly what the saving run wrote; every job of a
 * layer-parallel run (--shard i/n) applies the same plan.
 *
 * loadPlan (shared) checks the model fingerprint and the settings; checkPlan here checks the plan against this
 * model's decisions: every unit present once with one of its options, every linear's width what that choice (or its
 * fixed fate) gives. A mismatch is a one-line error naming the first offender.
 */
import { fail } from '../errors.js';
import type { QuantBits } from '../../kernels/quant/types.js';
import type { LinearDecision } from './plan.js';

export interface QuantizePlan {
  /** the options were scored on calibration data (false: cheapest widths, nothing to choose, or no data) */
  scored: boolean;
  /** per allocation unit, in the pipeline's order: the option chosen and, when scored, each option's loss */
  units: { id: string; choice: string; losses?: Record<string, number> }[];
  /** every quantizable linear (by tensor name): its final width, or 'keep' */
  linears: Record<string, QuantBits | 'keep'>;
  solver: { optimal: boolean; gap: number; loss: number; solveMs: number };
}

/** What a plan must match: the units (their option labels) and the linears' fates. */
export interface PlanTarget {
  units: { id: string; options: { label: string }[] }[];
  decisions: readonly LinearDecision[];
  /** final width of a linear given the units' choices (option index per unit) */
  finalBits(choice: readonly number[]): (d: LinearDecision) => QuantBits | 'keep';
}

/** Check a loaded plan against this model; returns the option index chosen for each unit, in target order. */
export function checkPlan(path: string, raw: unknown, t: PlanTarget): number[] {
  const bad = (why: string): never => fail('InvalidData', `${path}: ${why}`);
  const p = raw as Partial<QuantizePlan> | null;
  if (!p || typeof p !== 'object' || !Array.isArray(p.units) || !p.linears || typeof p.linears !== 'object' || !p.solver)
    bad('not a quantize plan (units, linears and solver expected)');
  const byId = new Map<string, { choice: string }>();
  for (const u of p!.units!) {
    if (!u || typeof u.id !== 'string' || typeof u.choice !== 'string') bad('a unit entry lacks its id or choice');
    if (byId.has(u.id)) bad(`unit ${u.id} is listed twice`);
    byId.set(u.id, u);
  }
  const ids = new Set(t.units.map((u) => u.id));
  const extra = [...byId.keys()].find((id) => !ids.has(id));
  if (extra !== undefined) bad(`unit ${extra} is not an allocation unit of this model and these flags`);
  const choice = t.units.map((u) => {
    const e = byId.get(u.id) ?? bad(`no choice for unit ${u.id}`);
    const k = u.options.findIndex((o) => o.label === e.choice);
    if (k < 0) bad(`unit ${u.id}: '${e.choice}' is not one of its options (${u.options.map((o) => o.label).join(', ')})`);
    return k;
  });
  const fb = t.finalBits(choice);
  const linears = p!.linears as Record<string, unknown>;
  const known = new Set(t.decisions.map((d) => d.tensor));
  const stray = Object.keys(linears).find((n) => !known.has(n));
  if (stray !== undefined) bad(`linear ${stray} is not a quantizable linear of this model`);
  for (const d of t.decisions) {
    if (!(d.tensor in linears)) bad(`no width for linear ${d.tensor}`);
    const want = fb(d);
    if (linears[d.tensor] !== want) bad(`linear ${d.tensor} has ${JSON.stringify(linears[d.tensor])} bits, but its unit's choice and fate give ${want}`);
  }
  return choice;
}
