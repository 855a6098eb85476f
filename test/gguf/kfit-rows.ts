/** Seeded rows and an importance matrix for the k-quant fit checks (test/gguf/kfit.test.ts, bench/gguf-kfit.ts). */
import { seededRandom } from '../../kernels/random.js';

export function kfitRows(rows: number, n: number): { x: Float32Array; im: Float32Array } {
  const rnd = seededRandom(20261204);
  const gauss = () => Math.sqrt(-2 * Math.log(rnd() + 1e-12)) * Math.cos(2 * Math.PI * rnd());
  // weights with a few outliers, importance spread over two orders of magnitude (as calibration imatrices are)
  const x = Float32Array.from({ length: rows * n }, () => gauss() * 0.02 * (rnd() < 0.01 ? 8 : 1));
  const im = Float32Array.from({ length: n }, () => 0.05 + 5 * rnd() ** 3);
  return { x, im };
}

/** Rows of n values that meet the block formats' special cases, with an importance matrix (bench/gguf-iq34.ts). */
export function hardRows(n: number): { x: Float32Array; im: Float32Array; rows: number } {
  const rnd = seededRandom(11);
  const rows = 8;
  const x = Float32Array.from({ length: rows * n }, () => (rnd() * 2 - 1) * 0.05);
  for (let i = 0; i < n; i++) {
    x[n + i] = Math.abs(x[n + i]!) + 0.01; // all positive
    x[2 * n + i] = -Math.abs(x[2 * n + i]!) - 0.01; // all negative
    x[3 * n + i] = 0.25; // constant
    x[4 * n + i] = 0; // zero
    x[7 * n + i] *= 1e-6; // tiny
  }
  x[5 * n + 7] = 3; // outliers
  x[5 * n + 300] = -5;
  x.fill(0, 6 * n + 64, 6 * n + 96); // one zero 32-value sub-block
  const im = Float32Array.from({ length: n }, () => 0.1 + 10 * rnd() ** 3);
  return { x, im, rows };
}
