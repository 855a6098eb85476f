/**
 * Weighting and averaging: a group's merged expert is W = sum_i w_i W_i over its (aligned) members, with w the
 * members' routing frequency (M-SMoE, HC-SMoE), REAP saliency (REAM) or uniform, normalised to sum 1.
 */
import { fail } from '../errors.js';
import type { Linear, SwiGLUWeights } from '../runtime/api.js';
import { getWeighting } from './methods.js';
import type { LayerSignals, WeightingMethod } from './types.js';

/**
 * Normalised member weights. A group whose members were never routed (all weights 0) falls back to uniform:
 * there is no evidence to prefer one of them.
 */
export function memberWeights(method: WeightingMethod, members: readonly number[], sig: Pick<LayerSignals, 'count' | 'saliency'>): number[] {
  const w = getWeighting(method);
  const raw = members.map((m) => w.weight(sig, m));
  if (raw.some((r) => !Number.isFinite(r) || r < 0)) fail('InvalidStats', `merge weighting ${method}: statistics hold a negative or non-finite value`);
  const sum = raw.reduce((a, b) => a + b, 0);
  return sum > 0 ? raw.map((r) => r / sum) : members.map(() => 1 / members.length);
}

/**
 * A weighted average built one member at a time (float64 accumulators, members added in group order), so a group
 * is merged with one member in memory besides the running sum; the result equals averaging the whole list at once,
 * bit for bit (each element sums w_k * x_k in the same order).
 */
export class ExpertAverager {
  private sums?: { gate: LinearSum; up: LinearSum; down: LinearSum };
  private first?: { e: SwiGLUWeights; weight: number };
  private n = 0;

  add(e: SwiGLUWeights, weight: number): void {
    if (this.n === 0) this.first = { e, weight };
    else {
      if (!this.sums) {
        // a second member: start the sums from the first (kept aside so that a group of one stays untouched)
        const f = this.first!;
        this.sums = { gate: new LinearSum(f.e.gate), up: new LinearSum(f.e.up), down: new LinearSum(f.e.down) };
        this.addToSums(f.e, f.weight);
        this.first = undefined;
      }
      this.addToSums(e, weight);
    }
    this.n++;
  }

  private addToSums(e: SwiGLUWeights, weight: number): void {
    this.sums!.gate.add(e.gate, weight);
    this.sums!.up.add(e.up, weight);
    this.sums!.down.add(e.down, weight);
  }

  /** one member: returned untouched (bit-exact, no float64 round trip) */
  result(): SwiGLUWeights {
    if (this.n === 0) fail('ComputeError', 'merge: a group has no members');
    if (!this.sums) return this.first!.e;
    return { gate: this.sums.gate.result(), up: this.sums.up.result(), down: this.sums.down.result() };
  }
}

class LinearSum {
  readonly out: number;
  readonly in: number;
  // accumulate in float64: a merged group of many experts would otherwise collect rounding from each addition
  private readonly w: Float64Array;
  private b?: Float64Array;

  constructor(shape: Linear) {
    this.out = shape.out;
    this.in = shape.in;
    this.w = new Float64Array(shape.out * shape.in);
  }

  add(l: Linear, wk: number): void {
    if (l.out !== this.out || l.in !== this.in) fail('ComputeError', `cannot merge experts of different shapes (${l.out}x${l.in} vs ${this.out}x${this.in})`);
    const acc = this.w;
    const src = l.w;
    for (let i = 0; i < acc.length; i++) acc[i] += wk * src[i];
    if (l.b) {
      this.b ??= new Float64Array(this.out);
      for (let i = 0; i < this.out; i++) this.b[i] += wk * l.b[i];
    }
  }

  result(): Linear {
    const res: Linear = { out: this.out, in: this.in, w: Float32Array.from(this.w) };
    if (this.b) res.b = Float32Array.from(this.b);
    return res;
  }
}

export function averageExperts(experts: readonly SwiGLUWeights[], weights: readonly number[]): SwiGLUWeights {
  if (experts.length === 0 || experts.length !== weights.length) fail('ComputeError', 'merge: group and weights differ in size');
  const avg = new ExpertAverager();
  experts.forEach((e, k) => avg.add(e, weights[k]));
  return avg.result();
}
