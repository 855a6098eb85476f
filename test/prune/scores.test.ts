import { describe, expect, it } from 'vitest';
import type { LayerStats } from '../../src/calibrate/types.js';
import { isMoeError } from '../../src/errors.js';
import { getMethod, PRUNE_METHODS } from '../../src/prune/methods.js';
import { seededRandom } from '../../kernels/random.js';

function layerStats(over: Partial<LayerStats>): LayerStats {
  const E = 4;
  const z = () => new Float64Array(E);
  return {
    layer: 0,
    numExperts: E,
    hidden: 2,
    tokens: 10,
    count: z(),
    probMass: z(),
    gateSum: z(),
    reapSum: z(),
    easyEpSum: z(),
    outputSum: new Float64Array(E * 2),
    logitSample: new Float32Array(0),
    logitSampleRows: 0,
    ...over,
  };
}

const ctx = { numExperts: 4, rng: seededRandom(1) };
const score = (name: string, s: LayerStats) => Array.from(getMethod(name).score!(s, ctx));

describe('pruning scores from calibration statistics', () => {
  // expert 0 is chosen often with small outputs, expert 3 rarely with large ones: REAP and frequency disagree
  const s = layerStats({
    tokens: 10,
    count: Float64Array.from([8, 6, 4, 2]),
    probMass: Float64Array.from([3, 2.5, 2.5, 2]),
    reapSum: Float64Array.from([0.8, 1.2, 2.0, 3.0]),
    easyEpSum: Float64Array.from([0.1, 0.4, 0.3, 0.2]),
  });

  it('reap is the mean over routed tokens of g·‖f‖ (sum / count), not the sum', () => {
    expect(score('reap', s).map((v) => +v.toFixed(9))).toEqual([0.1, 0.2, 0.5, 1.5]);
  });
  it('frequency is the routed-token count', () => {
    expect(score('frequency', s)).toEqual([8, 6, 4, 2]);
  });
  it('gate-mass is the mean router probability over all tokens', () => {
    expect(score('gate-mass', s).map((v) => +v.toFixed(6))).toEqual([0.3, 0.25, 0.25, 0.2]);
  });
  it('easy-ep is the summed output-aware contribution', () => {
    expect(score('easy-ep', s)).toEqual([0.1, 0.4, 0.3, 0.2]);
  });
  it('an expert no token reached scores 0 under reap instead of NaN', () => {
    const dead = layerStats({ count: Float64Array.from([0, 1, 1, 1]), reapSum: Float64Array.from([0, 1, 2, 3]) });
    expect(score('reap', dead)).toEqual([0, 1, 2, 3]);
  });
  it('random scores depend only on the seed', () => {
    const a = Array.from(getMethod('random').score!(undefined, { numExperts: 8, rng: seededRandom(7) }));
    const b = Array.from(getMethod('random').score!(undefined, { numExperts: 8, rng: seededRandom(7) }));
    const c = Array.from(getMethod('random').score!(undefined, { numExperts: 8, rng: seededRandom(8) }));
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect(new Set(a).size).toBe(8);
  });
  it('registry: unique names, data-driven methods say so, unknown names are a usage error', () => {
    const names = PRUNE_METHODS.map((m) => m.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names).toEqual(expect.arrayContaining(['reap', 'frequency', 'gate-mass', 'easy-ep', 'reconstruct', 'random']));
    for (const m of PRUNE_METHODS) expect(m.needs !== 'none').toBe(m.name !== 'random');
    try {
      getMethod('magnitude');
      expect.unreachable();
    } catch (e) {
      expect(isMoeError(e) && e.code).toBe('Usage');
      expect((e as Error).message).toContain('reap');
    }
  });
  it('stats-based methods refuse a missing layer', () => {
    expect(() => getMethod('reap').score!(undefined, ctx)).toThrow(/calibration statistics/);
  });
});
