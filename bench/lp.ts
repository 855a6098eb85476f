/**
 * LP solve time of the bit allocator against the number of units, up to DeepSeek-V3's 58 x 256 routed experts,
 * with 3 and 4 bit-width options per unit (costs = true bits of a 7168x2048 SwiGLU expert at 2/3/4/8 bits, group
 * 128; losses = importance x geometric error decay with noise). Baseline in the same script: a greedy
 * marginal-gain allocation (the usual heuristic), to show what the exact program buys.
 *   npx tsx bench/lp.ts
 */
import { allocate, type AllocUnit } from '../src/alloc/knapsack.js';
import { gptqBytes } from '../kernels/quant/pack.js';
import type { QuantBits } from '../kernels/quant/types.js';

function lcg(seed: number): () => number {
  let s = seed;
  return () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
}

const H = 7168,
  I = 2048;
const bitsOf = (b: QuantBits) => 8 * (2 * gptqBytes(I, H, { bits: b, groupSize: 128, sym: false }) + gptqBytes(H, I, { bits: b, groupSize: 128, sym: false }));
const params = 3 * H * I;

function units(n: number, cands: QuantBits[], seed: number): AllocUnit[] {
  const r = lcg(seed);
  return Array.from({ length: n }, (_, u) => {
    const imp = Math.exp(2 * (r() - 0.5)) ** 1.5;
    return { id: `e${u}`, options: cands.map((b) => ({ cost: bitsOf(b), loss: imp * 4 ** -b * (0.8 + 0.4 * r()), label: `${b}` })) };
  });
}

function greedy(us: AllocUnit[], budget: number): number {
  const ch = us.map(() => 0);
  let cost = us.reduce((a, u) => a + u.options[0]!.cost, 0);
  for (;;) {
    let best = -1,
      bestGain = 0;
    us.forEach((u, i) => {
      const c = ch[i]!;
      if (c + 1 >= u.options.length) return;
      const dc = u.options[c + 1]!.cost - u.options[c]!.cost;
      if (cost + dc > budget) return;
      const g = (u.options[c]!.loss - u.options[c + 1]!.loss) / dc;
      if (g > bestGain) {
        bestGain = g;
        best = i;
      }
    });
    if (best < 0) break;
    cost += us[best]!.options[ch[best]! + 1]!.cost - us[best]!.options[ch[best]!]!.cost;
    ch[best]!++;
  }
  return ch.reduce((a, c, i) => a + us[i]!.options[c]!.loss, 0);
}

console.log('units  options  solve_ms  optimal  gap_vs_LP_bound  bpw     loss_vs_greedy');
for (const cands of [
  [2, 3, 4],
  [2, 3, 4, 8],
] as QuantBits[][]) {
  for (const n of [64, 256, 1024, 2048, 4096, 58 * 256]) {
    const us = units(n, cands, n + cands.length);
    const budget = 2.5 * params * n;
    const res = await allocate(us, budget, { timeLimitSec: 20 });
    const g = greedy(us, budget);
    console.log(
      `${String(n).padStart(5)}  ${cands.length}        ${res.solveMs.toFixed(0).padStart(8)}  ${String(res.optimal).padEnd(7)}  ${res.gap.toExponential(2).padStart(15)}  ${(res.cost / params / n).toFixed(4)}  ${(res.loss / g).toFixed(4)}`,
    );
  }
}
