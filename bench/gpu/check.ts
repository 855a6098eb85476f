/**
 * GPU check (bundled by bench/gpu/bundle.sh, run by bench/gpu.sh on a GPU machine): tfjs-backend-webgpu on Dawn
 * against the wasm backend, on the products moe's forward pass is made of (expert SwiGLU of real shapes, the
 * attention projections, a whole MoE layer's routed experts), with the same tfjs-core ops the runtime uses
 * (src/runtime/ops.ts applyT: W^T kept on the backend, a plain 2-D matMul).
 *
 * Prints the adapter, then per workload the maximum relative error against wasm (max |gpu - wasm| / max |wasm|,
 * over the whole output) and the median per-element relative error, wasm and webgpu time, tokens/s on each; exits 1
 * when any maximum relative error exceeds 1e-4, 2 when Dawn finds no adapter.
 *
 * Reads go through the asynchronous `data()`: tfjs-backend-webgpu's synchronous read-back needs OffscreenCanvas,
 * which Node lacks (docs/runtime.md, "Backend ladder"), so this measures the GPU kernels, not moe's forward pass.
 *
 *   node check.mjs [--quick] [--flags 'backend=vulkan;adapter=NAME']
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const fi = argv.indexOf('--flags');
const flags = fi >= 0 ? argv[fi + 1]!.split(';').filter(Boolean) : [];
const TOL = 1e-4;

function gaussian(n: number, seed: number, scale: number): Float32Array {
  let s = seed >>> 0;
  const r = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    return (((s ^ (s >>> 15)) * (1 | s)) >>> 0) / 4294967296;
  };
  const o = new Float32Array(n);
  for (let i = 0; i < n; i++) o[i] = Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r()) * scale;
  return o;
}

interface Work {
  name: string;
  tokens: number;
  /** weights [out, in] row-major, as checkpoints store them */
  mats: { out: number; in: number; w: Float32Array }[];
  x: Float32Array;
  /** builds the output from the uploaded W^T tensors */
  run(x: tf.Tensor2D, wt: tf.Tensor2D[]): tf.Tensor;
  /** how many independent copies (experts) one timed call runs */
  copies: number;
}

const silu = (g: tf.Tensor2D) => tf.mul(g, tf.sigmoid(g));
function expert(H: number, I: number, n: number, seed: number, copies = 1, name?: string): Work {
  return {
    name: name ?? `expert H${H} I${I}, ${n} tokens`,
    tokens: n * copies,
    mats: Array.from({ length: copies }, (_, e) => [
      { out: I, in: H, w: gaussian(I * H, seed + 3 * e, 0.02) },
      { out: I, in: H, w: gaussian(I * H, seed + 3 * e + 1, 0.02) },
      { out: H, in: I, w: gaussian(H * I, seed + 3 * e + 2, 0.02) },
    ]).flat(),
    x: gaussian(n * H * copies, seed + 999, 1),
    copies,
    run: (x, wt) => {
      const outs: tf.Tensor2D[] = [];
      for (let e = 0; e < copies; e++) {
        const xe = copies === 1 ? x : tf.slice(x, [e * n, 0], [n, H]);
        const h = tf.mul(silu(tf.matMul(xe, wt[3 * e]!)), tf.matMul(xe, wt[3 * e + 1]!));
        outs.push(tf.matMul(h, wt[3 * e + 2]!));
      }
      return copies === 1 ? outs[0]! : tf.concat(outs, 0);
    },
  };
}

function projections(H: number, q: number, kv: number, n: number, seed: number): Work {
  return {
    name: `attention projections H${H} q${q} kv${kv}, ${n} tokens`,
    tokens: n,
    mats: [
      { out: q, in: H, w: gaussian(q * H, seed, 0.02) },
      { out: kv, in: H, w: gaussian(kv * H, seed + 1, 0.02) },
      { out: kv, in: H, w: gaussian(kv * H, seed + 2, 0.02) },
      { out: H, in: q, w: gaussian(H * q, seed + 3, 0.02) },
    ],
    x: gaussian(n * H, seed + 4, 1),
    copies: 1,
    run: (x, wt) => {
      const qq = tf.matMul(x, wt[0]!);
      const k = tf.matMul(x, wt[1]!);
      const v = tf.matMul(x, wt[2]!);
      return tf.concat([tf.matMul(qq, wt[3]!), k, v], 1);
    },
  };
}

const works: Work[] = quick
  ? [expert(256, 512, 512, 1), expert(2048, 768, 512, 2)]
  : [
      expert(256, 512, 2048, 1, 1, 'held-out-shaped expert H256 I512, 2048 tokens'),
      expert(2048, 768, 512, 2, 1, 'Qwen3-30B-A3B expert H2048 I768, 512 tokens (8192 x 8 / 128)'),
      expert(2048, 768, 512, 3, 16, 'Qwen3-30B-A3B: 16 experts of one layer, 512 tokens each'),
      expert(4096, 14336 / 4, 2048, 4, 1, 'Mixtral-8x7B expert at a quarter of I (3584), 2048 tokens'),
      expert(7168, 2048, 256, 5, 4, 'DeepSeek-V3: 4 experts H7168 I2048, 256 tokens each'),
      projections(2048, 4096, 512, 2048, 6),
    ];

async function runOn(backend: string, w: Work, reps: number): Promise<{ out: Float32Array; ms: number }> {
  await tf.setBackend(backend);
  await tf.ready();
  const wt = w.mats.map((m) => tf.tidy(() => tf.transpose(tf.tensor2d(m.w, [m.out, m.in]))));
  const x = tf.tensor2d(w.x, [w.tokens, w.mats[0]!.in]);
  const once = async () => {
    const y = tf.tidy(() => w.run(x, wt));
    const d = (await y.data()) as Float32Array;
    y.dispose();
    return d;
  };
  const out = await once();
  const t = performance.now();
  for (let r = 0; r < reps; r++) await once();
  const ms = (performance.now() - t) / reps;
  tf.dispose([...wt, x]);
  return { out, ms };
}

function compare(a: Float32Array, ref: Float32Array): { maxRel: number; medRel: number } {
  let maxAbs = 0;
  let maxRef = 0;
  const rel: number[] = [];
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(a[i]! - ref[i]!);
    if (d > maxAbs || Number.isNaN(d)) maxAbs = Number.isNaN(d) ? Infinity : d;
    maxRef = Math.max(maxRef, Math.abs(ref[i]!));
    if (i % 97 === 0) rel.push(d / Math.max(Math.abs(ref[i]!), 1e-6));
  }
  rel.sort((x, y) => x - y);
  return { maxRel: maxAbs / Math.max(maxRef, 1e-30), medRel: rel[Math.floor(rel.length / 2)] ?? 0 };
}

async function main(): Promise<number> {
  const here = new URL('.', import.meta.url);
  setWasmPaths(here.href.replace(/^file:\/\//, ''));
  const dawn = (await import('webgpu')) as unknown as { create(f: string[]): { requestAdapter(o?: object): Promise<unknown> }; globals: object };
  Object.assign(globalThis, dawn.globals);
  const gpu = dawn.create(flags);
  Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true });
  const adapter = (await gpu.requestAdapter({ powerPreference: 'high-performance' })) as { info?: Record<string, string> } | null;
  if (!adapter) {
    console.log(`no WebGPU adapter (Dawn flags: ${flags.join(';') || 'none'}): check the Vulkan loader and the driver's ICD (vulkaninfo --summary)`);
    return 2;
  }
  const i = adapter.info ?? {};
  console.log(`adapter: ${[i['vendor'], i['architecture'], i['device'], i['description']].filter(Boolean).join(' | ')}`);
  await import('@tensorflow/tfjs-backend-webgpu');
  let worst = 0;
  console.log('workload | max rel err | median rel err | wasm ms | webgpu ms | wasm tok/s | webgpu tok/s | webgpu GFLOP/s');
  for (const w of works) {
    const flops = w.mats.reduce((a, m) => a + 2 * m.out * m.in, 0) * (w.tokens / w.copies);
    const cpu = await runOn('wasm', w, quick ? 1 : 2);
    const g = await runOn('webgpu', w, quick ? 3 : 10);
    const c = compare(g.out, cpu.out);
    worst = Math.max(worst, c.maxRel);
    console.log(
      `${w.name} | ${c.maxRel.toExponential(2)} | ${c.medRel.toExponential(2)} | ${cpu.ms.toFixed(1)} | ${g.ms.toFixed(2)} | ${((w.tokens / cpu.ms) * 1000).toFixed(0)} | ${((w.tokens / g.ms) * 1000).toFixed(0)} | ${(flops / g.ms / 1e6).toFixed(1)}`,
    );
  }
  console.log(`max relative error vs wasm: ${worst.toExponential(2)} (${worst <= TOL ? 'PASS' : 'FAIL'} at ${TOL})`);
  return worst <= TOL ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`gpu check failed: ${(e as Error).stack ?? e}`);
    process.exit(3);
  },
);
