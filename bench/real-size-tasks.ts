/**
 * Tasks of bench/real-size.ts, run inline (1 thread) or on the worker pool (src/runtime/pool.ts). Each task builds
 * its own seeded synthetic operands (nothing large crosses threads), waits on a barrier shared by the tasks of its
 * round (so that the timed parts of a round overlap), then times the kernel the pipelines use: the SwiGLU expert
 * forward, GPTQ's three parts (Hessian accumulation, the damped Cholesky of the inverse, the column loop), or the
 * Gram-route SVD.
 */
import { gaussian, svd } from '../kernels/linalg/svd.js';
import { accumulateHessian, gptqQuantize, prepareGptq } from '../kernels/quant/gptq.js';
import { swiglu } from '../src/runtime/swiglu.js';

export interface Timed {
  /** wall ms of each timed part, and the absolute start / end of the timed span (performance.timeOrigin based) */
  parts: Record<string, number>;
  start: number;
  end: number;
  /** process-wide CPU microseconds (user + system) at the start and end of the timed span */
  cpu0: number;
  cpu1: number;
  /** a number from the result, so that no work can be skipped */
  check: number;
}

interface Barrier {
  /** Int32Array over a SharedArrayBuffer: [arrived] */
  sab: SharedArrayBuffer;
  size: number;
}

function arrive(b: Barrier): void {
  const a = new Int32Array(b.sab);
  Atomics.add(a, 0, 1);
  Atomics.notify(a, 0);
  for (;;) {
    const v = Atomics.load(a, 0);
    if (v >= b.size) return;
    Atomics.wait(a, 0, v, 60_000);
  }
}

const f32 = (n: number, seed: number, scale: number) => {
  const g = gaussian(n, seed);
  const o = new Float32Array(n);
  for (let i = 0; i < n; i++) o[i] = g[i]! * scale;
  return o;
};

const now = () => performance.timeOrigin + performance.now();
const cpu = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

function span<T>(b: Barrier, parts: Record<string, number>, run: (time: (name: string, f: () => void) => void) => T): Omit<Timed, 'check'> & { v: T } {
  arrive(b);
  const cpu0 = cpu();
  const start = now();
  const time = (name: string, f: () => void) => {
    const t = performance.now();
    f();
    parts[name] = (parts[name] ?? 0) + performance.now() - t;
  };
  const v = run(time);
  return { parts, start, end: now(), cpu0, cpu1: cpu(), v };
}

export interface ExpertArgs {
  H: number;
  I: number;
  n: number;
  seed: number;
  barrier: Barrier;
}

export function expertTask(a: ExpertArgs): Timed {
  const w = {
    gate: { out: a.I, in: a.H, w: f32(a.I * a.H, a.seed, 0.02) },
    up: { out: a.I, in: a.H, w: f32(a.I * a.H, a.seed + 1, 0.02) },
    down: { out: a.H, in: a.I, w: f32(a.H * a.I, a.seed + 2, 0.02) },
  };
  const x = f32(a.n * a.H, a.seed + 3, 1);
  let y: Float32Array | undefined;
  const r = span(a.barrier, {}, (time) => time('forward', () => (y = swiglu(w, x, a.n))));
  return { ...r, check: y![0]! };
}

export interface GptqArgs {
  inF: number;
  out: number;
  n: number;
  seed: number;
  barrier: Barrier;
}

/** one projection: its Hessian from n tokens, the prepared inverse factor, the quantized rows (4-bit, groups of 128) */
export function gptqTask(a: GptqArgs): Timed {
  // correlated inputs (a few shared directions plus noise), as activations are; keeps H well conditioned enough
  const k = 16;
  const z = f32(a.n * k, a.seed, 1);
  const mix = f32(k * a.inF, a.seed + 1, 1);
  const x = f32(a.n * a.inF, a.seed + 2, 0.1);
  for (let t = 0; t < a.n; t++)
    for (let j = 0; j < k; j++) {
      const zz = z[t * k + j]!;
      for (let i = 0; i < a.inF; i++) x[t * a.inF + i]! += zz * mix[j * a.inF + i]!;
    }
  const w = f32(a.out * a.inF, a.seed + 3, 0.02);
  const h = new Float64Array(a.inF * a.inF);
  let check = 0;
  const r = span(a.barrier, {}, (time) => {
    time('hessian', () => accumulateHessian(h, x, a.n, a.inF));
    let prep: ReturnType<typeof prepareGptq> | undefined;
    time('prepare', () => (prep = prepareGptq(h, a.inF, { damp: 0.01 })));
    time('loop', () => (check = gptqQuantize(w, a.out, a.inF, prep!, { bits: 4, groupSize: 128, sym: false }).loss));
  });
  return { ...r, check };
}

export interface SvdArgs {
  m: number;
  n: number;
  seed: number;
  barrier: Barrier;
}

export function svdTask(a: SvdArgs): Timed {
  const M = gaussian(a.m * a.n, a.seed);
  for (let i = 0; i < a.m; i++) for (let j = 0; j < a.n; j++) M[i * a.n + j]! *= 0.02 * (1 + 4 * Math.exp(-j / 64));
  let check = 0;
  const r = span(a.barrier, {}, (time) => time('svd', () => (check = svd(M, a.m, a.n).spectrum[0]!)));
  return { ...r, check };
}

export function newBarrier(size: number): Barrier {
  return { sab: new SharedArrayBuffer(4), size };
}

export const REAL_SIZE_TASKS = import.meta.url;
