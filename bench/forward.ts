/**
 * Forward-pass throughput on a Mixtral-shaped model (hidden 256, 4 layers, 8 experts of 512, top-2, 8 heads / 2 kv,
 * vocab 32000), one thread: tokens/s of the calibration forward (no lm_head) and of eval (with the streamed
 * lm_head), peak RSS, and the achieved matmul FLOP rate as a ratio of the same backend's plain matmul rate measured
 * here (the baseline: how close the forward comes to the backend's own speed).
 *
 *   npx tsx bench/forward.ts [--windows 16] [--seq-len 256] [--backend auto|wasm|cpu] [--vocab 32000]
 */
import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openModel } from '../src/model/open.js';
import { initBackend, type BackendChoice } from '../src/runtime/backend.js';
import { streamModel } from '../src/runtime/stream.js';
import { makeSynthetic } from './make-synthetic.js';

const { values } = parseArgs({
  options: {
    windows: { type: 'string', default: '16' },
    'seq-len': { type: 'string', default: '256' },
    backend: { type: 'string', default: 'auto' },
    vocab: { type: 'string', default: '32000' },
  },
});
const N = Number(values.windows);
const S = Number(values['seq-len']);
const V = Number(values.vocab);
const H = 256,
  I = 512,
  E = 8,
  L = 4,
  K = 2,
  heads = 8,
  kvHeads = 2;

function matmulRate(m: number, k: number, n: number, transposeB = false): { wall: number; cpu: number } {
  const a = tf.randomNormal([m, k]) as tf.Tensor2D;
  const b = tf.randomNormal(transposeB ? [n, k] : [k, n]) as tf.Tensor2D;
  // (a tidy must not return the typed array: tfjs would walk its every element looking for tensors)
  const once = () => {
    const c = tf.matMul(a, b, false, transposeB);
    c.dataSync();
    c.dispose();
  };
  for (let i = 0; i < 3; i++) once();
  const it = 20;
  const u0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < it; i++) once();
  const s = (performance.now() - t0) / 1000;
  const u = process.cpuUsage(u0);
  a.dispose();
  b.dispose();
  const flops = 2 * m * k * n * it;
  return { wall: flops / s / 1e9, cpu: flops / ((u.user + u.system) / 1e6) / 1e9 };
}

const dir = await mkdtemp(join(tmpdir(), 'moe-bench-fwd-'));
try {
  await makeSynthetic({ out: join(dir, 'm'), hidden: H, intermediate: I, experts: E, layers: L, heads, kvHeads, vocab: V, dtype: 'F32', quiet: true });
  const backend = await initBackend(values.backend as BackendChoice);
  const model = await openModel(join(dir, 'm'));
  let seed = 1;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % V;
  const windows = Array.from({ length: N }, () => Int32Array.from({ length: S + 1 }, rnd));
  const T = N * (S + 1);
  // warm-up (wasm tier-up, first-use kernel setup)
  await streamModel(model, windows.slice(0, 1));
  // CPU seconds as well as wall seconds: on a shared machine the process gets a fraction of a core, and tokens per
  // CPU-second is the per-thread rate (the forward is single-threaded)
  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  };
  const c0 = cpu();
  const t0 = performance.now();
  await streamModel(model, windows);
  const fwd = (performance.now() - t0) / 1000;
  const fwdCpu = cpu() - c0;
  const c1 = cpu();
  const t1 = performance.now();
  const ev = await streamModel(model, windows, {}, { scoreLogits: true });
  const evs = (performance.now() - t1) / 1000;
  const evCpu = cpu() - c1;
  // matmul flops per token of one layer: q,k,v,o + router + k experts x 3 projections; attention scores + values
  const hd = H / heads;
  const layerFlops = 2 * (H * heads * hd + 2 * H * kvHeads * hd + heads * hd * H + E * H + K * 3 * H * I) + (2 * 2 * heads * hd * (S + 1)) / 2;
  const fwdFlops = L * layerFlops * T;
  const rate = matmulRate(4096, 256, 512);
  const rateT = matmulRate(4096, 256, 512, true);
  const achievedCpu = fwdFlops / fwdCpu / 1e9;
  const rss = process.resourceUsage().maxRSS / 1024;
  console.log(`backend ${backend}; ${N} windows x ${S + 1} tokens = ${T} tokens; H ${H}, ${L} layers, ${E} experts of ${I}, top-${K}, vocab ${V}`);
  console.log(
    `calibration forward: ${(T / fwdCpu).toFixed(0)} tokens per CPU-second (per thread; target >= 1300), wall ${(T / fwd).toFixed(0)} tokens/s (${fwd.toFixed(2)} s wall, ${fwdCpu.toFixed(2)} s CPU); ${achievedCpu.toFixed(2)} GFLOP per CPU-second in matmuls`,
  );
  console.log(
    `eval (forward + lm_head ${V}): ${(ev.scored / evCpu).toFixed(0)} scored tokens per CPU-second, wall ${(ev.scored / evs).toFixed(0)} tokens/s; ppl ${Math.exp(ev.nll / ev.scored).toFixed(1)}`,
  );
  console.log(
    `baseline: plain ${backend} matmul [4096x256]x[256x512] ${rate.cpu.toFixed(2)} GFLOP per CPU-second (wall ${rate.wall.toFixed(2)} GFLOP/s); the forward reaches ${(achievedCpu / rate.cpu).toFixed(2)} of it (with transposeB, as the forward first did: ${rateT.cpu.toFixed(2)})`,
  );
  console.log(
    `peak RSS ${rss.toFixed(0)} MB; load average ${loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')} on this machine during the run (other jobs share the cores)`,
  );
  await model.ckpt.close();
} finally {
  await rm(dir, { recursive: true, force: true });
}
