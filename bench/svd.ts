/**
 * SVD time for expert-sized matrices on the active tfjs backend, against a dense-product baseline measured in
 * the same run (the Gram product M^T M of the same matrix, which the Gram route itself starts with).
 *
 *   npx tsx bench/svd.ts [--backend auto|wasm|cpu|tensorflow] [--sizes 256x128,512x256,...] [--big]
 *
 * Gram route = full spectrum (what rank allocation needs): tfjs Gram + float64 eigendecomposition + one product.
 * Randomized route = leading `rank` triplets only: power iterations whose products all go through tfjs.
 * --big adds a Mixtral-8x7B expert (14336 x 4096) with the randomized route at rank 256.
 */
import { initBackend } from '../src/runtime/backend.js';
import { gram, matmul } from '../kernels/linalg/matmul.js';
import { gaussian, svd } from '../kernels/linalg/svd.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function time<T>(fn: () => T): { s: number; v: T } {
  const t = performance.now();
  const v = fn();
  return { s: (performance.now() - t) / 1000, v };
}

/** a weight-like matrix: decaying spectrum plus noise */
function weightLike(m: number, n: number, seed: number): Float64Array {
  const M = gaussian(m * n, seed);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) M[i * n + j]! *= 0.02 * (1 + 4 * Math.exp(-j / 64));
  return M;
}

const backend = await initBackend((arg('backend') ?? 'auto') as 'auto');
const sizes = (arg('sizes') ?? '256x128,512x256,1024x512,2048x1024').split(',').map((s) => s.split('x').map(Number) as [number, number]);
const rows: string[] = [];
console.log(`backend: ${backend}`);
console.log('matrix        gram-product  GFLOP/s   SVD(gram, full)  ratio   SVD(randomized, rank)      ratio   recon. rel. err');
for (const [m, n] of sizes) {
  const M = weightLike(m, n, m + n);
  gram(M, m, n, 'tf'); // warm-up: kernels compiled / wasm memory grown
  const base = time(() => gram(M, m, n, 'tf'));
  const flops = 2 * m * n * n;
  const full = time(() => svd(M, m, n, { engine: 'tf' }));
  const rank = Math.max(8, Math.floor(Math.min(m, n) / 4));
  const rnd = time(() => svd(M, m, n, { rank, method: 'randomized', engine: 'tf', powerIters: 2 }));
  // reconstruction at full rank through the Gram route: U S Vt vs M
  const sv = full.v;
  const k = sv.k;
  const US = Float64Array.from(sv.U);
  for (let i = 0; i < m; i++) for (let j = 0; j < k; j++) US[i * k + j]! *= sv.s[j]!;
  const R = matmul(US, sv.Vt, m, k, n, { engine: 'tf' });
  let num = 0;
  let den = 0;
  for (let i = 0; i < m * n; i++) {
    num += (R[i]! - M[i]!) ** 2;
    den += M[i]! ** 2;
  }
  const line = `${`${m}x${n}`.padEnd(12)}  ${base.s.toFixed(3).padStart(9)} s  ${(flops / base.s / 1e9).toFixed(1).padStart(7)}  ${full.s.toFixed(3).padStart(12)} s  ${(full.s / base.s).toFixed(1).padStart(6)}x  ${rnd.s.toFixed(3).padStart(10)} s (k=${String(rank).padEnd(4)})  ${(rnd.s / base.s).toFixed(1).padStart(6)}x   ${Math.sqrt(num / den).toExponential(2)}`;
  console.log(line);
  rows.push(line);
}
if (process.argv.includes('--big')) {
  const [m, n, rank] = [14336, 4096, 256];
  const M = weightLike(m, n, 7);
  const prod = time(() => matmul(M, gaussian(n * (rank + 10), 3), m, n, rank + 10, { engine: 'tf' }));
  const rnd = time(() => svd(M, m, n, { rank, method: 'randomized', engine: 'tf', powerIters: 2 }));
  console.log(
    `${m}x${n} randomized rank ${rank}: ${rnd.s.toFixed(1)} s; one M x [n, ${rank + 10}] product ${prod.s.toFixed(2)} s (${(rnd.s / prod.s).toFixed(1)}x)`,
  );
}
