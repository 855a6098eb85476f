/**
 * Real-size figures from synthetic single layers of Qwen3-30B-A3B, Mixtral-8x7B and DeepSeek-V3 shapes: the
 * forward pass's tokens/s, GPTQ time per layer and SVD time per layer at 1 and 2 threads, and the projected time of
 * `moe calibrate`, `moe prune`, `moe quantize` and `moe decompose` on the whole model at 8,192 calibration tokens
 * on 16 cores.
 *
 *   nice -n 10 npx tsx bench/real-size.ts [--models qwen3,mixtral,deepseek] [--threads 1,2] [--rounds 3] [--tokens 8192]
 *
 * What is measured and what is extrapolated (every figure printed says which):
 * - A layer's routed experts are not all built: each round builds one synthetic expert per thread and times it;
 *   a layer is E times the per-expert figure. Operands are capped to keep this machine's memory (a Mixtral expert
 *   is 0.7 GB in float32, a DeepSeek-V3 layer 22 GB in BF16), and each measured part is scaled by its cost law:
 *   expert forward linear in tokens and intermediate size; GPTQ's Hessian n*in^2, its damped Cholesky of the
 *   inverse in^3, its column loop out*in^2; the Gram-route SVD min(m,n)^3 at the same aspect ratio.
 * - Attention, router, shared and dense MLPs run on the caller's thread today (not on the pool): they are timed
 *   once at 1 thread, on a token subset scaled to the calibration tokens.
 * - Scaling 1 -> 2 threads: one round = one task per thread, started together behind a barrier; speed-up is the
 *   per-task time at 1 thread x threads / the round's span. On a shared, loaded machine this is unreliable: the
 *   load average is printed, and CPU time per task (process CPU over the span / threads) is given beside wall time.
 * - 16-core projections assume the per-task CPU time measured here and linear scaling over 16 threads (the
 *   pool's work is independent per expert); the serial parts (attention, router, shared/dense MLPs) are divided by
 *   16 only where a pool could split them (attention windows), which is not done today — the projection states both.
 */
import { loadavg } from 'node:os';
import { initBackend } from '../src/runtime/backend.js';
import { linear } from '../src/runtime/ops.js';
import { closePool, runTasks, setThreads } from '../src/runtime/pool.js';
import { swiglu } from '../src/runtime/swiglu.js';
import { gaussian } from '../kernels/linalg/svd.js';
import * as tf from '@tensorflow/tfjs-core';
import { newBarrier, REAL_SIZE_TASKS, type Timed } from './real-size-tasks.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
}

interface Shape {
  name: string;
  layers: number;
  moeLayers: number;
  H: number;
  /** routed expert intermediate */
  I: number;
  E: number;
  K: number;
  sharedI: number;
  denseI: number;
  attn:
    | { kind: 'gqa'; heads: number; kv: number; hd: number }
    | { kind: 'mla'; heads: number; qLora: number; kvLora: number; nope: number; rope: number; v: number };
}

const SHAPES: Record<string, Shape> = {
  qwen3: {
    name: 'Qwen3-30B-A3B',
    layers: 48,
    moeLayers: 48,
    H: 2048,
    I: 768,
    E: 128,
    K: 8,
    sharedI: 0,
    denseI: 0,
    attn: { kind: 'gqa', heads: 32, kv: 4, hd: 128 },
  },
  mixtral: {
    name: 'Mixtral-8x7B',
    layers: 32,
    moeLayers: 32,
    H: 4096,
    I: 14336,
    E: 8,
    K: 2,
    sharedI: 0,
    denseI: 0,
    attn: { kind: 'gqa', heads: 32, kv: 8, hd: 128 },
  },
  deepseek: {
    name: 'DeepSeek-V3',
    layers: 61,
    moeLayers: 58,
    H: 7168,
    I: 2048,
    E: 256,
    K: 8,
    sharedI: 2048,
    denseI: 18432,
    attn: { kind: 'mla', heads: 128, qLora: 1536, kvLora: 512, nope: 128, rope: 64, v: 128 },
  },
};

const T = Number(arg('tokens', '8192'));
const S = 256;
const THREADS = arg('threads', '1,2').split(',').map(Number);
const ROUNDS = Number(arg('rounds', '2'));
/** caps on what one synthetic task builds (floats of one expert, GPTQ input width / rows / tokens, SVD min dim) */
const EXPERT_FLOATS = 16 << 20;
const GPTQ_IN = 1024;
const GPTQ_OUT = 512;
const GPTQ_TOKENS = 256;
const SVD_DIM = 512;
const EXPERT_TOKENS = 256;

const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
const fmt = (s: number) => (s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`);

await initBackend('wasm');
let seed = 11;

/** per-task wall ms (median over tasks and rounds), span speed-up vs 1 thread, CPU ms per task */
interface Scaled {
  threads: number;
  taskMs: number;
  spanMs: number;
  cpuMsPerTask: number;
  parts: Record<string, number>;
}

async function rounds(fn: string, make: (barrier: ReturnType<typeof newBarrier>, i: number) => object): Promise<Scaled[]> {
  const out: Scaled[] = [];
  for (const t of THREADS) {
    await setThreads(t);
    const spans: number[] = [];
    const tasks: number[] = [];
    const cpus: number[] = [];
    const parts: Record<string, number[]> = {};
    for (let r = 0; r < ROUNDS; r++) {
      const b = newBarrier(t);
      const args = Array.from({ length: t }, (_, i) => make(b, i));
      const res = await runTasks<object, Timed>('wasm', REAL_SIZE_TASKS, fn, args);
      const start = Math.min(...res.map((x) => x.start));
      const end = Math.max(...res.map((x) => x.end));
      spans.push(end - start);
      // process-wide CPU from the first task's start reading to the last end reading, per task
      const c0 = Math.min(...res.map((x) => x.cpu0));
      const c1 = Math.max(...res.map((x) => x.cpu1));
      cpus.push((c1 - c0) / 1000 / t);
      for (const x of res) {
        tasks.push(x.end - x.start);
        for (const [k, v] of Object.entries(x.parts)) (parts[k] ??= []).push(v);
      }
    }
    out.push({
      threads: t,
      taskMs: median(tasks),
      spanMs: median(spans),
      cpuMsPerTask: median(cpus),
      parts: Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, median(v)])),
    });
  }
  await setThreads(1);
  return out;
}

function scalingLine(label: string, r: Scaled[], scale: number, unit = 'per layer'): string {
  const one = r.find((x) => x.threads === 1)!;
  return r
    .map((x) => {
      const speedup = (one.taskMs * x.threads) / x.spanMs;
      return `  ${label} @${x.threads}t: task ${x.taskMs.toFixed(0)} ms wall, ${x.cpuMsPerTask.toFixed(0)} ms CPU; ${unit} ${fmt(((x.spanMs / x.threads) * scale) / 1000)} wall-equivalent${x.threads > 1 ? `, speed-up ${speedup.toFixed(2)}x` : ''}`;
    })
    .join('\n');
}

/** CPU ms of f on this thread (process CPU: the pool is idle meanwhile), median of reps after one warm-up; wall
 *  time on a loaded machine says more about the other jobs than about f */
function timeSerial(f: () => void, reps = 1): number {
  f();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const c = process.cpuUsage();
    f();
    const d = process.cpuUsage(c);
    ts.push((d.user + d.system) / 1000);
  }
  return median(ts);
}

const rnd = (n: number, sc = 0.02) => {
  const g = gaussian(n, seed++);
  const o = new Float32Array(n);
  for (let i = 0; i < n; i++) o[i] = g[i]! * sc;
  return o;
};

/** attention of one layer over T tokens (projections on a token subset, the scores of one window), ms */
function attentionMs(s: Shape): { ms: number; note: string } {
  const Tsub = Math.min(T, 512);
  const x = rnd(Tsub * s.H, 1);
  let projMs = 0;
  const lin = (inF: number, out: number, xin: Float32Array, rows: number) => {
    const l = { out, in: inF, w: rnd(out * inF) };
    let y: Float32Array | undefined;
    projMs += timeSerial(() => (y = linear(xin, rows, l)));
    return y!;
  };
  let groups: { g: number; dq: number; dv: number; n: number };
  if (s.attn.kind === 'gqa') {
    const a = s.attn;
    lin(s.H, a.heads * a.hd, x, Tsub);
    lin(s.H, a.kv * a.hd, x, Tsub);
    lin(s.H, a.kv * a.hd, x, Tsub);
    lin(a.heads * a.hd, s.H, rnd(Tsub * a.heads * a.hd, 1), Tsub);
    groups = { g: a.heads / a.kv, dq: a.hd, dv: a.hd, n: a.kv };
  } else {
    const a = s.attn;
    lin(s.H, a.qLora, x, Tsub);
    lin(a.qLora, a.heads * (a.nope + a.rope), rnd(Tsub * a.qLora, 1), Tsub);
    lin(s.H, a.kvLora + a.rope, x, Tsub);
    lin(a.kvLora, a.heads * (a.nope + a.v), rnd(Tsub * a.kvLora, 1), Tsub);
    lin(a.heads * a.v, s.H, rnd(Tsub * a.heads * a.v, 1), Tsub);
    groups = { g: 1, dq: a.nope + a.rope, dv: a.v, n: a.heads };
  }
  // one window: per kv head, the g query heads stacked along rows (as src/runtime/attention.ts runs it)
  const q = tf.tensor2d(rnd(groups.g * S * groups.dq, 1), [groups.g * S, groups.dq]);
  const kT = tf.tensor2d(rnd(groups.dq * S, 1), [groups.dq, S]);
  const v = tf.tensor2d(rnd(S * groups.dv, 1), [S, groups.dv]);
  const coreMs = timeSerial(() => {
    for (let h = 0; h < groups.n; h++) {
      const o = tf.tidy(() => tf.matMul(tf.softmax(tf.matMul(q, kT)), v));
      o.dataSync();
      o.dispose();
    }
  });
  tf.dispose([q, kT, v]);
  return { ms: (projMs * T) / Tsub + (coreMs * T) / S, note: `projections on ${Tsub} tokens x ${T / Tsub}, scores of one window x ${T / S}` };
}

console.log(
  `real-size layers, ${T} calibration tokens (context ${S}), wasm backend; load average ${loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')} on this machine`,
);
console.log('(sampled experts and capped operands, scaled by cost laws; see the header of bench/real-size.ts)\n');

const summary: string[] = [];
for (const key of arg('models', 'qwen3,mixtral,deepseek').split(',')) {
  const s = SHAPES[key];
  if (!s) throw new Error(`unknown model ${key}`);
  console.log(
    `== ${s.name}: ${s.layers} layers (${s.moeLayers} MoE), hidden ${s.H}, ${s.E} experts of ${s.I}, top-${s.K}${s.sharedI ? `, shared ${s.sharedI}` : ''}`,
  );
  const nE = Math.round((T * s.K) / s.E);

  // ---- forward: routed experts on the pool
  const Ie = Math.min(s.I, Math.floor(EXPERT_FLOATS / (3 * s.H)));
  const ne = Math.min(nE, EXPERT_TOKENS);
  const fScale = (s.I / Ie) * (nE / ne);
  const fwd = await rounds('expertTask', (barrier, i) => ({ H: s.H, I: Ie, n: ne, seed: 100 + i, barrier }));
  console.log(`  expert forward: measured at intermediate ${Ie}, ${ne} tokens; scaled x${fScale.toFixed(2)} to ${s.I} x ${nE} routed tokens, x${s.E} experts`);
  console.log(scalingLine('experts', fwd, fScale * s.E));

  // ---- forward: the serial parts, 1 thread
  const att = attentionMs(s);
  const Tsub = Math.min(T, 512);
  const routerMs = timeSerial(() => linear(rnd(Tsub * s.H, 1), Tsub, { out: s.E, in: s.H, w: rnd(s.E * s.H) })) * (T / Tsub);
  const mlpMs = (inter: number) => {
    if (!inter) return 0;
    const Ic = Math.min(inter, Math.floor(EXPERT_FLOATS / (3 * s.H)));
    const w = { gate: { out: Ic, in: s.H, w: rnd(Ic * s.H) }, up: { out: Ic, in: s.H, w: rnd(Ic * s.H) }, down: { out: s.H, in: Ic, w: rnd(s.H * Ic) } };
    return timeSerial(() => swiglu(w, rnd(Tsub * s.H, 1), Tsub)) * (T / Tsub) * (inter / Ic);
  };
  const sharedMs = mlpMs(s.sharedI);
  const denseMs = s.layers > s.moeLayers ? mlpMs(s.denseI) : 0;
  console.log(
    `  serial per layer (1 thread, CPU time): attention ${fmt(att.ms / 1000)} (${att.note}), router ${fmt(routerMs / 1000)}${sharedMs ? `, shared expert ${fmt(sharedMs / 1000)}` : ''}${denseMs ? `, dense MLP ${fmt(denseMs / 1000)} (${s.layers - s.moeLayers} layers)` : ''}`,
  );
  const one = fwd.find((x) => x.threads === 1)!;
  const expertCpuLayer = (one.cpuMsPerTask * fScale * s.E) / 1000;
  const serialLayer = (att.ms + routerMs + sharedMs) / 1000;
  const layer1 = expertCpuLayer + serialLayer;
  const modelCpu = layer1 * s.moeLayers + ((denseMs + att.ms) / 1000) * (s.layers - s.moeLayers);
  console.log(
    `  forward per MoE layer at 1 thread (CPU): ${fmt(layer1)} -> ${(T / layer1).toFixed(0)} tokens per CPU-second per layer; whole model ${(T / modelCpu).toFixed(1)} tokens per CPU-second, ${((16 * T) / modelCpu).toFixed(0)} tokens/s projected on 16 cores`,
  );

  // ---- GPTQ: gate and up share the input Hessian (in = H), down has its own (in = I)
  const gp = async (inF: number, out: number, projections: number) => {
    const inS = Math.min(inF, GPTQ_IN);
    const outS = Math.min(out, GPTQ_OUT);
    const nS = Math.min(nE, GPTQ_TOKENS);
    const r = await rounds('gptqTask', (barrier, i) => ({ inF: inS, out: outS, n: nS, seed: 300 + i, barrier }));
    const a = inF / inS;
    // each part by its own cost law; `projections` loops share one Hessian and one prepared factor (gate and up)
    const p = r[0]!.parts;
    const full = p['hessian']! * (nE / nS) * a * a + p['prepare']! * a ** 3 + projections * p['loop']! * (out / outS) * a * a;
    return { r, scale: full / (p['hessian']! + p['prepare']! + p['loop']!), note: `in ${inS}/${inF}, out ${outS}/${out}, tokens ${nS}/${nE}` };
  };
  const gu = await gp(s.H, s.I, 2);
  const dn = await gp(s.I, s.H, 1);
  console.log(`  GPTQ (4-bit, groups of 128) gate+up (one Hessian): ${gu.note}; down: ${dn.note}`);
  const gptqLayerCpu = (t: number) => {
    const a = gu.r.find((x) => x.threads === t)!;
    const b = dn.r.find((x) => x.threads === t)!;
    return ((a.cpuMsPerTask * gu.scale + b.cpuMsPerTask * dn.scale) * s.E) / 1000;
  };
  for (const t of THREADS) {
    const a = gu.r.find((x) => x.threads === t)!;
    const b = dn.r.find((x) => x.threads === t)!;
    const a1 = gu.r.find((x) => x.threads === 1)!;
    const b1 = dn.r.find((x) => x.threads === 1)!;
    const wallLayer = (((a.spanMs / t) * gu.scale + (b.spanMs / t) * dn.scale) * s.E) / 1000;
    const sp = ((a1.taskMs * t) / a.spanMs + (b1.taskMs * t) / b.spanMs) / 2;
    console.log(
      `  GPTQ @${t}t: per layer ${fmt(wallLayer)} wall-equivalent, ${fmt(gptqLayerCpu(t))} CPU (tasks ${a.taskMs.toFixed(0)} + ${b.taskMs.toFixed(0)} ms; parts ${Object.entries(
        a.parts,
      )
        .map(([k, v]) => `${k} ${v.toFixed(0)}`)
        .join(', ')})${t > 1 ? `, speed-up ${sp.toFixed(2)}x` : ''}`,
    );
  }

  // ---- SVD (Gram route, full spectrum): gate and up [I, H], down [H, I]
  const m = s.I;
  const n = s.H;
  const d = Math.min(m, n);
  const dS = Math.min(d, SVD_DIM);
  const mS = Math.round((m * dS) / d);
  const nS = Math.round((n * dS) / d);
  const svdScale = (d / dS) ** 3;
  const sv = await rounds('svdTask', (barrier, i) => ({ m: mS, n: nS, seed: 500 + i, barrier }));
  console.log(`  SVD per matrix: measured at ${mS} x ${nS}, scaled x${svdScale.toFixed(1)} (min dim ^3) to ${m} x ${n}; 3 per expert`);
  console.log(scalingLine('SVD', sv, svdScale * 3 * s.E));
  const svdLayerCpu = (sv.find((x) => x.threads === 1)!.cpuMsPerTask * svdScale * 3 * s.E) / 1000;

  // ---- projections to the whole model on 16 cores (linear scaling of the per-task CPU time measured here)
  const forwardCpu = layer1 * s.moeLayers + ((denseMs + att.ms) / 1000) * (s.layers - s.moeLayers);
  const serialCpu = serialLayer * s.moeLayers + ((denseMs + att.ms) / 1000) * (s.layers - s.moeLayers);
  const parallelForward = forwardCpu - serialCpu;
  const c16 = (par: number, ser: number) => `${fmt(par / 16 + ser)} (serial parts on one thread) / ${fmt((par + ser) / 16)} (all split)`;
  const calib = c16(parallelForward, serialCpu);
  const quant = c16(parallelForward + gptqLayerCpu(1) * s.moeLayers, serialCpu);
  const decomp = c16(parallelForward + svdLayerCpu * s.moeLayers, serialCpu);
  console.log(`  projected, whole model, ${T} tokens, 16 cores (from measured CPU per task, linear scaling assumed):`);
  console.log(`    moe calibrate / moe prune (one forward pass): ${calib}`);
  console.log(`    moe quantize (forward + GPTQ of every routed expert; attention/shared GPTQ not counted): ${quant}`);
  console.log(`    moe decompose (forward + Gram-route SVD of every routed expert matrix): ${decomp}`);
  console.log('');
  summary.push(`${s.name}: calibrate/prune ${calib}; quantize ${quant}; decompose ${decomp}`);
}
await closePool();
console.log(summary.join('\n'));
