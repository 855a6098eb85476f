import { describe, expect, it } from 'vitest';
import { rmsNorm } from '../../src/runtime/ops.js';
import { applyRope, ropeFrequencies, ropeTables } from '../../src/runtime/rope.js';

const spec = (style: 'half' | 'interleaved', rotaryDim: number, scaling?: Record<string, unknown>) => ({
  style,
  theta: 10000,
  rotaryDim,
  ...(scaling ? { scaling } : {}),
});

describe('RoPE', () => {
  it('half-split rotates (i, i+d/2); interleaved rotates (2i, 2i+1)', () => {
    const d = 4;
    const t = ropeTables(spec('half', d), 3, 128);
    // inverse frequencies 1 and 0.01; position 2
    const c0 = Math.cos(2),
      s0 = Math.sin(2),
      c1 = Math.cos(0.02),
      s1 = Math.sin(0.02);
    const x = Float32Array.from([0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]); // rows at positions 0, 1, 2 (one head)
    const h = x.slice();
    applyRope(h, 3, 1, d, 3, t, 'half');
    const close = (got: Float32Array, want: number[]) => want.forEach((w, i) => expect(got[i]).toBeCloseTo(w, 5));
    close(h.subarray(8), [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1]);
    expect(Array.from(h.subarray(0, 4))).toEqual([0, 0, 0, 0]);
    const iv = x.slice();
    applyRope(iv, 3, 1, d, 3, t, 'interleaved');
    close(iv.subarray(8), [1 * c0 - 2 * s0, 2 * c0 + 1 * s0, 3 * c1 - 4 * s1, 4 * c1 + 3 * s1]);
  });

  it('partial rotary leaves the dims past rotaryDim untouched; MLA offset rotates the tail slice', () => {
    const t = ropeTables(spec('half', 2), 2, 128);
    const x = Float32Array.from([0, 0, 0, 0, 1, 2, 3, 4]);
    applyRope(x, 2, 1, 4, 2, t, 'half');
    expect(x[6]).toBe(3);
    expect(x[7]).toBe(4);
    expect(x[4]).toBeCloseTo(Math.cos(1) - 2 * Math.sin(1), 6);
    const y = Float32Array.from([0, 0, 0, 0, 1, 2, 3, 4]);
    applyRope(y, 2, 1, 4, 2, t, 'interleaved', 2);
    expect(y[4]).toBe(1);
    expect(y[6]).toBeCloseTo(3 * Math.cos(1) - 4 * Math.sin(1), 6);
  });

  it('scores depend only on the position difference, in both styles', () => {
    for (const style of ['half', 'interleaved'] as const) {
      const d = 8;
      const t = ropeTables(spec(style, d), 16, 128);
      const q = Float32Array.from({ length: 16 * d }, (_, i) => Math.sin((i % d) + 1));
      const k = Float32Array.from({ length: 16 * d }, (_, i) => Math.cos(2 * (i % d) + 1));
      applyRope(q, 16, 1, d, 16, t, style);
      applyRope(k, 16, 1, d, 16, t, style);
      const dot = (i: number, j: number) => {
        let s = 0;
        for (let a = 0; a < d; a++) s += q[i * d + a]! * k[j * d + a]!;
        return s;
      };
      expect(dot(5, 2)).toBeCloseTo(dot(13, 10), 4);
      expect(dot(5, 2)).not.toBeCloseTo(dot(5, 4), 2);
    }
  });

  it('scaling: linear divides frequencies; yarn blends and scales attention; llama3 keeps high frequencies', () => {
    const d = 64;
    const plain = ropeFrequencies(spec('half', d), 4096).invFreq;
    const lin = ropeFrequencies(spec('half', d, { rope_type: 'linear', factor: 4 }), 4096).invFreq;
    expect(lin[5]! * 4).toBeCloseTo(plain[5]!, 12);
    const y = ropeFrequencies(
      spec('half', d, { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 0 }),
      163840,
    );
    expect(y.attentionScaling).toBeCloseTo(0.1 * Math.log(40) + 1, 10);
    expect(y.invFreq[0]).toBeCloseTo(plain[0]!, 12); // fastest dims extrapolate
    expect(y.invFreq[d / 2 - 1]! * 40).toBeCloseTo(plain[d / 2 - 1]!, 12); // slowest interpolate
    const ds = ropeFrequencies(spec('half', d, { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, mscale: 1, mscale_all_dim: 1 }), 163840);
    expect(ds.attentionScaling).toBe(1); // deepseek: mscale / mscale_all_dim
    const l3 = ropeFrequencies(
      spec('half', d, { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 }),
      131072,
    ).invFreq;
    expect(l3[0]).toBe(plain[0]);
    expect(l3[d / 2 - 1]! * 8).toBeCloseTo(plain[d / 2 - 1]!, 12);
    expect(() => ropeFrequencies(spec('half', d, { type: 'mystery' }), 10)).toThrow(/not supported/);
  });
});

describe('q/k norm placement', () => {
  it('per-head (qwen3) normalises each head on its own; whole-projection (olmoe) shares one statistic', () => {
    const hd = 4;
    // head 0 small, head 1 large
    const q = Float32Array.from([0.1, 0.2, -0.1, 0.05, 3, -2, 4, 1]);
    const per = rmsNorm(q, hd, new Float32Array(hd).fill(1), 1e-6);
    const full = rmsNorm(q, 2 * hd, new Float32Array(2 * hd).fill(1), 1e-6);
    const rmsOf = (v: Float32Array) => Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
    expect(rmsOf(per.subarray(0, 4))).toBeCloseTo(1, 4);
    expect(rmsOf(per.subarray(4, 8))).toBeCloseTo(1, 4);
    expect(rmsOf(full)).toBeCloseTo(1, 4);
    expect(rmsOf(full.subarray(0, 4))).toBeLessThan(0.1);
  });
});
