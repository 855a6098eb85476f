/**
 * SVD time for expert-sized matrices on the active tfjs backend, against a dense-product baseline measured in
 * the same run (the Gram product M^T M of the same matrix, which the Gram route itself starts with).
 *
 *   npx tsx bench/svd.ts [--backend auto|wasm|cpu|tensorflow] [--sizes 256x128,512x256,...] [--big]
 *
 * Gram route = full spectrum (what rank allocation needs): tfjs Gram + float64 eigendecomposition + one product.
 * Randomized route = leading `rank` triplets only: power iterations whose products all go through tfjs.
 * --big adds a Mixtral-8x7B expert (14336 x 4096) with the randomized route at rank 256.
 *
 *   npx tsx bench/svd.ts --decompose [--layer HxIxE (256x704x4)] [--mode whitened|svd|...] [--threads 1,2] [--rounds 5]
 *
 * --decompose times decompose's own per-unit work instead (src/decompose/unit-task.ts `factorLayer`, what the score
 * and apply passes run for each MoE layer): one synthetic layer of E experts [H -> I -> H] with synthetic Grams,
 * factorised (score pass) and then factorised, cut at the uniform rank and measured (apply pass), at each thread
 * count in turn (a block of rounds each, after a warm-up); the medians over the rounds and their ratio against 1
 * thread are printed, with the load average (the machine is shared) and a check that the spectra and factors are the
 * same bytes at every count. Beside wall time, the busiest OS thread's CPU time (from /proc): on a machine whose other
 * load leaves this process one core, wall time cannot fall with a second thread, but the busiest thread's CPU still
 * shows how the work splits (the wall time on idle cores, where each thread has its own).
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import type { LayerGrams } from '../src/decompose/grams.js';
import { factorLayer } from '../src/decompose/unit-task.js';
import { layerUnitShapes } from '../src/decompose/units.js';
import { uniformRank } from '../src/decompose/plan.js';
import type { DecomposeMode } from '../src/decompose/format.js';
import type { SwiGLUWeights } from '../src/runtime/api.js';
import { initBackend } from '../src/runtime/backend.js';
import { closePool, setThreads } from '../src/runtime/pool.js';
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
if (process.argv.includes('--decompose')) {
  await decomposeScaling();
  process.exit(0);
}
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

/**
 * CPU seconds of each OS thread of this process (main, workers, V8 and libuv helpers), from /proc (Linux; empty
 * elsewhere): per-thread times tell the critical path apart from the share of CPU a loaded machine gave the process.
 */
function threadSeconds(): Map<string, number> {
  // USER_HZ, the unit of utime and stime: 100 on Linux x86-64 and arm64 (a function-level constant: the bench's
  // top-level code runs before module-level constants declared below it)
  const CLOCK_TICKS = 100;
  const out = new Map<string, number>();
  let tids: string[] = [];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      // fields after the command name (which may hold spaces): state is field 3, utime 14 and stime 15
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(tid, (Number(f[11]) + Number(f[12])) / CLOCK_TICKS);
    } catch {
      // the thread exited between the listing and the read
    }
  }
  return out;
}

/** decompose's per-unit work on one synthetic layer at each thread count (see the header). */
async function decomposeScaling(): Promise<void> {
  const [H, I, E] = (arg('layer') ?? '256x704x4').split('x').map(Number) as [number, number, number];
  const mode = (arg('mode') ?? 'whitened') as DecomposeMode;
  const threadList = (arg('threads') ?? '1,2').split(',').map(Number);
  const rounds = Number(arg('rounds') ?? 5);
  const ratio = 0.5;
  const f32 = (m: number, n: number, seed: number) => Float32Array.from(weightLike(m, n, seed));
  const experts: SwiGLUWeights[] = Array.from({ length: E }, (_, j) => ({
    gate: { out: I, in: H, w: f32(I, H, 10 + j) },
    up: { out: I, in: H, w: f32(I, H, 100 + j) },
    down: { out: H, in: I, w: f32(H, I, 1000 + j) },
  }));
  // Grams of N routed rows per expert (N > I, so both are full rank), as grams.ts divides them by the tokens
  const N = Math.ceil(1.25 * I);
  const T = (N * E) / 2;
  const scaled = (G: Float64Array) => G.map((v) => v / T);
  const grams: LayerGrams = {
    layer: 0,
    T,
    topK: 2,
    experts: Array.from({ length: E }, (_, j) => ({
      tokens: N,
      input: scaled(gram(gaussian(N * H, 7 + j), N, H, 'tf')),
      mid: scaled(gram(gaussian(N * I, 70 + j), N, I, 'tf')),
    })),
  };
  const opts = { mode, engine: 'auto' as const, ratio, seed: 1 };
  const shapes = layerUnitShapes(0, E, (p) => ({ m: experts[0]![p].out, n: experts[0]![p].in }), opts);
  const rank = new Map(shapes.map((u) => [u.id, uniformRank(u, ratio)]));
  const calibrated = mode !== 'svd';
  const pass = async (apply: boolean) => {
    const h = createHash('sha256');
    for await (const r of factorLayer(0, experts, calibrated ? grams : undefined, opts, apply ? (id) => rank.get(id)! : undefined)) {
      h.update(new Uint8Array(r.summary.tail.buffer, r.summary.tail.byteOffset, r.summary.tail.byteLength));
      for (const f of r.applied?.factors ?? []) {
        h.update(new Uint8Array(f.u.buffer, f.u.byteOffset, f.u.byteLength));
        h.update(new Uint8Array(f.v.buffer, f.v.byteOffset, f.v.byteLength));
      }
    }
    return h.digest('hex');
  };
  const timed = async (apply: boolean) => {
    const cpu0 = process.cpuUsage();
    const th0 = threadSeconds();
    const t0 = performance.now();
    const digest = await pass(apply);
    const cpu = process.cpuUsage(cpu0);
    const th1 = threadSeconds();
    // the busiest OS thread's CPU over the pass: with independent units that is the critical path on idle cores
    let busiest = 0;
    for (const [tid, s] of th1) busiest = Math.max(busiest, s - (th0.get(tid) ?? 0));
    return { s: (performance.now() - t0) / 1000, cpu: (cpu.user + cpu.system) / 1e6, busiest, digest };
  };
  console.log(
    `decompose --mode ${mode}: one layer of ${E} experts [${H} -> ${I} -> ${H}], ${shapes.length} units, ratio ${ratio}; threads ${threadList.join(', ')}; ${rounds} rounds; load average before: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  const runs = new Map<string, { s: number; cpu: number; busiest: number }[]>();
  const digests = new Map<string, Set<string>>();
  // each thread count in its own block, after an uncounted warm-up pass of each kind (workers started, task modules
  // loaded and compiled, wasm memory grown): switching the count closes the pool, so interleaving the counts round by
  // round would time a cold pool at every round
  for (const t of threadList) {
    await setThreads(t);
    for (let r = 0; r <= rounds; r++) {
      for (const apply of [false, true]) {
        const p = apply ? 'apply' : 'score';
        const x = await timed(apply);
        (digests.get(p) ?? digests.set(p, new Set()).get(p)!).add(x.digest);
        if (r === 0) continue;
        const key = `${p}@${t}`;
        (runs.get(key) ?? runs.set(key, []).get(key)!).push(x);
      }
    }
    console.log(
      `  ${t} thread(s) done; load average ${loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}`,
    );
  }
  const median = (v: number[]) => {
    const s = [...v].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  console.log(
    'pass    threads  wall median (s)  all rounds (s)                  speed-up (wall)  CPU median (s)  busiest thread CPU median (s)  speed-up (busiest thread)',
  );
  for (const p of ['score', 'apply']) {
    const one = runs.get(`${p}@${threadList[0]}`)!;
    const base = median(one.map((x) => x.s));
    const baseBusy = median(one.map((x) => x.busiest));
    for (const t of threadList) {
      const xs = runs.get(`${p}@${t}`)!;
      const wall = median(xs.map((x) => x.s));
      const busy = median(xs.map((x) => x.busiest));
      console.log(
        `${p.padEnd(6)}  ${String(t).padStart(7)}  ${wall.toFixed(3).padStart(15)}  ${xs
          .map((x) => x.s.toFixed(2))
          .join(' ')
          .padEnd(30)}  ${`${(base / wall).toFixed(2)}x`.padStart(15)}  ${median(xs.map((x) => x.cpu))
          .toFixed(3)
          .padStart(14)}  ${busy.toFixed(3).padStart(29)}  ${`${(baseBusy / busy).toFixed(2)}x`.padStart(25)}`,
      );
    }
  }
  for (const [p, d] of digests)
    console.log(`${p}: ${d.size === 1 ? 'the same bytes at every thread count' : `DIFFERENT bytes across thread counts (${d.size} digests)`}`);
  console.log(
    `load average after: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  await closePool();
}
