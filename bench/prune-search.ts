/**
 * Cost and quality of the reconstruction search when subsets are too many to enumerate (64 experts, top-8, keep
 * 32, OLMoE-like): seconds per layer, subsets scored, and the output error reached against REAP's set and random
 * sets on the same layer. Synthetic layer (random experts and router), so only the ratios mean anything.
 *
 *   npx tsx bench/prune-search.ts [--experts 64] [--keep 32] [--hidden 256] [--tokens 2048]
 */
import { parseArgs } from 'node:util';
import type { RoutingRule } from '../src/model/types.js';
import type { MoeLayerInput } from '../src/runtime/api.js';
import { initBackend } from '../src/runtime/backend.js';
import { route } from '../src/runtime/routing.js';
import { swiglu } from '../src/runtime/swiglu.js';
import { LayerReconstruction, selectByReconstruction, type ReconstructDeps } from '../src/prune/reconstruct.js';
import { seededRandom } from '../kernels/random.js';

const { values: a } = parseArgs({
  options: {
    experts: { type: 'string', default: '64' },
    keep: { type: 'string', default: '32' },
    hidden: { type: 'string', default: '256' },
    tokens: { type: 'string', default: '2048' },
    topk: { type: 'string', default: '8' },
  },
});
const E = Number(a.experts),
  keep = Number(a.keep),
  H = Number(a.hidden),
  T = Number(a.tokens),
  k = Number(a.topk);
const I = H / 2;
await initBackend('wasm');
const rng = seededRandom(1);
const rn = (n: number, s: number) => Float32Array.from({ length: n }, () => s * (rng() * 2 - 1));
const rule: RoutingRule = { score: 'softmax', afterTopk: 'none', selectionBias: false, topK: k, normalize: false, scale: 1 };
// experts of varied output scale, so some matter more than others
const experts = Array.from({ length: E }, (_, j) => {
  const s = 0.05 + (0.1 * ((j * 7) % E)) / E;
  return { gate: { out: I, in: H, w: rn(I * H, s) }, up: { out: I, in: H, w: rn(I * H, s) }, down: { out: H, in: I, w: rn(H * I, s) } };
});
const x = rn(T * H, 1);
const routerW = rn(E * H, 0.2);
const logits = new Float32Array(T * E);
for (let t = 0; t < T; t++)
  for (let j = 0; j < E; j++) {
    let s = 0;
    for (let h = 0; h < H; h++) s += routerW[j * H + h]! * x[t * H + h]!;
    logits[t * E + j] = s;
  }
const { routing, probs } = route(rule, logits, T, E);
const input = { layer: { index: 0 }, T, hidden: H, x, logits, probs, routing, experts, router: { w: routerW } } as unknown as MoeLayerInput;
const deps: ReconstructDeps = { route, expert: (w, xx, n) => swiglu(w, xx, n) };

let t0 = performance.now();
const lr = await LayerReconstruction.build(input, rule, deps, 2048);
const buildS = (performance.now() - t0) / 1000;
t0 = performance.now();
const r = await selectByReconstruction(input, keep, rule, deps);
const searchS = (performance.now() - t0) / 1000;
const reapSet = [...Array(E).keys()]
  .sort((p, q) => lr.reap[q]! - lr.reap[p]! || p - q)
  .slice(0, keep)
  .sort((p, q) => p - q);
const rand: number[] = [];
for (let s = 0; s < 20; s++) {
  const g = seededRandom(100 + s);
  rand.push(
    lr.error(
      [...Array(E).keys()]
        .map((j) => [g(), j] as const)
        .sort((p, q) => p[0] - q[0])
        .slice(0, keep)
        .map((p) => p[1])
        .sort((p, q) => p - q),
    ),
  );
}
const mean = rand.reduce((p, q) => p + q, 0) / rand.length;
console.log(
  `E ${E} keep ${keep} top-${k} H ${H} tokens ${T}: expert outputs + Grams ${buildS.toFixed(1)} s, search ${searchS.toFixed(1)} s (${r.search}, ${r.evaluated} subsets scored)`,
);
console.log(
  `relative output error: search ${r.relError.toFixed(4)} | REAP set ${lr.error(reapSet).toFixed(4)} | random sets mean ${mean.toFixed(4)} (min ${Math.min(...rand).toFixed(4)})`,
);
{
  const all = [...Array(E).keys()];
  const set = all.filter((j) => j % 2 === 0);
  let t = performance.now();
  for (let i = 0; i < 20; i++) lr.error(set, rule, 4);
  const per = (performance.now() - t) / 20;
  const sub = new Float32Array(512 * keep);
  t = performance.now();
  for (let i = 0; i < 20; i++) route(rule, sub, 512, keep);
  console.log(
    `one subset on ${Math.ceil(Math.min(T, 2048) / 4)} tokens: ${per.toFixed(2)} ms, of which routing ${((performance.now() - t) / 20).toFixed(2)} ms`,
  );
}
