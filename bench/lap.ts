/**
 * Linear-assignment timing: random similarity matrices and the alignment-like case (a noisy permutation), at the
 * intermediate sizes merging meets (fixture 256, small MoEs 1024-2048). Run: npx tsx bench/lap.ts [n ...]
 * Prints ms per solve and the growth exponent between sizes (3 = cubic).
 */
import { linearAssignment } from '../kernels/assign/lap.js';

const sizes = process.argv
  .slice(2)
  .map(Number)
  .filter((n) => n > 0);
const ns = sizes.length ? sizes : [256, 512, 1024, 2048];
let prev: { n: number; ms: number } | undefined;
for (const n of ns) {
  const c = new Float64Array(n * n);
  const perm = Array.from({ length: n }, (_, i) => i).sort(() => Math.random() - 0.5);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) c[i * n + j] = Math.random() + (perm[i] === j ? 0.5 : 0);
  const t0 = performance.now();
  const a = linearAssignment(c, n, { maximize: true });
  const ms = performance.now() - t0;
  let hits = 0;
  for (let i = 0; i < n; i++) if (a.colOf[i] === perm[i]) hits++;
  const exp = prev ? (Math.log(ms / prev.ms) / Math.log(n / prev.n)).toFixed(2) : '-';
  console.log(`n=${n}  ${ms.toFixed(1)} ms  recovered ${hits}/${n}  growth exponent ${exp}`);
  prev = { n, ms };
}
