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
