import { describe, expect, it } from 'vitest';
import type { LayerStats } from '../../src/calibrate/types.js';
import { signalsFromInput, signalsFromStats } from '../../src/merge/signals.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { expertForward, measureSignals, moeForward, randomArray, randomExpert, rng } from './synthetic.js';

const H = 8;

function forwardAll(w: SwiGLUWeights, x: Float32Array, T: number): Float32Array {
  const y = new Float32Array(T * H);
  for (let t = 0; t < T; t++) y.set(expertForward(w, x, t * H), t * H);
  return y;
}

describe('signals', () => {
  it('measured in a hook: counts, REAP saliency and mean outputs agree with a direct computation', () => {
    const r = rng(1);
    const experts = Array.from({ length: 5 }, () => randomExpert(H, 16, r));
    const router = randomArray(5 * H, r);
    const T = 80;
    const x = randomArray(T * H, r);
    const f = moeForward(experts, router, x, T, 2);
    const sig = signalsFromInput({ T, hidden: H, x, logits: f.logits, routing: f.routing, experts }, forwardAll);
    const ref = measureSignals(experts, router, x, T, 2);
    expect(Array.from(sig.count)).toEqual(Array.from(ref.count));
    expect(sig.count.reduce((a, b) => a + b, 0)).toBe(2 * T);
    for (let e = 0; e < 5; e++) expect(sig.saliency[e]).toBeCloseTo(ref.saliency[e], 4);
    for (let i = 0; i < 5 * H; i++) expect(sig.meanOutput![i]).toBeCloseTo(ref.meanOutput![i], 4);
    expect(sig.logitRows).toBe(T);
  });

  it('from saved statistics: sums become means, a never-routed expert gets zeros', () => {
    const ls: LayerStats = {
      layer: 3,
      numExperts: 2,
      hidden: 2,
      tokens: 10,
      count: Float64Array.from([4, 0]),
      probMass: new Float64Array(2),
      gateSum: new Float64Array(2),
      reapSum: Float64Array.from([2, 0]),
      easyEpSum: new Float64Array(2),
      outputSum: Float64Array.from([4, 8, 0, 0]),
      logitSample: new Float32Array(4),
      logitSampleRows: 2,
    };
    const s = signalsFromStats(ls);
    expect(Array.from(s.saliency)).toEqual([0.5, 0]);
    expect(Array.from(s.meanOutput!)).toEqual([1, 2, 0, 0]);
    expect(s.logitRows).toBe(2);
  });
});
