import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../src/runtime/backend.js';
import { MAX_ROWS, swigluRowsPerChunk } from '../../src/runtime/chunks.js';
import { swiglu } from '../../src/runtime/swiglu.js';
import { seededRandom } from '../../kernels/random.js';

beforeAll(async () => {
  await initBackend('wasm');
});

const rand = (n: number, rng: () => number, s = 0.05) => Float32Array.from({ length: n }, () => (rng() * 2 - 1) * s);

describe('expert chunking', () => {
  it('caps rows per chunk by the intermediate size, between 64 and MAX_ROWS', () => {
    expect(swigluRowsPerChunk(512)).toBe(MAX_ROWS);
    expect(swigluRowsPerChunk(14336)).toBe(146);
    expect(swigluRowsPerChunk(1 << 20)).toBe(64);
  });

  it('gives every row the same output whether it runs in a chunk of many rows or alone', () => {
    // I = 32768 makes chunks of 64 rows, so 200 rows cross three chunk boundaries
    const H = 8;
    const I = 32768;
    expect(swigluRowsPerChunk(I)).toBe(64);
    const rng = seededRandom(3);
    const w = { gate: { out: I, in: H, w: rand(I * H, rng) }, up: { out: I, in: H, w: rand(I * H, rng) }, down: { out: H, in: I, w: rand(H * I, rng) } };
    const T = 200;
    const x = rand(T * H, rng, 1);
    const all = swiglu(w, x, T);
    for (const t of [0, 63, 64, 127, 128, 199]) {
      const one = swiglu(w, x.subarray(t * H, (t + 1) * H), 1);
      for (let j = 0; j < H; j++) expect(all[t * H + j]).toBeCloseTo(one[j]!, 6);
    }
    expect(Math.max(...all.map(Math.abs))).toBeGreaterThan(0);
  });
});
