// Experiment, kept for the record (docs/runtime.md "Threads"): tfjs-backend-wasm's threaded SIMD build (XNNPACK's
// pthreadpool) started under Node, and its matmul / softmax timed at 0 (plain SIMD build), 1 and N pool threads.
// Why it does not start as shipped: the backend turns off threads under Node, its Emscripten glue starts each
// pthread worker from a blob: URL (Node's Worker cannot load one) and hands it the factory's source as a Blob that
// the worker then reads with fs; the factory's source uses the bundle's rollup names (require$$0, ...); and the
// pool is capped at emscripten_num_logical_cores() / 2. This file patches each of those.
//   T=2 node bench/wasm-threads.mjs
import wt from 'node:worker_threads';
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const distDir = require('node:path').dirname(require.resolve('@tensorflow/tfjs-backend-wasm'));
const blobs = new Map();
const origCreate = URL.createObjectURL.bind(URL);
URL.createObjectURL = (b) => {
  const u = origCreate(b);
  blobs.set(u, b);
  return u;
};
const BOOT = `
const { parentPort } = require('worker_threads');
const queue = [];
const onMsg = async (m) => {
  if (m && m.__moeBoot !== undefined) {
    parentPort.off('message', onMsg);
    Object.assign(globalThis, { require, __filename: ${JSON.stringify(distDir + '/tf-backend-wasm.node.js')}, __dirname: ${JSON.stringify(distDir)},
      require$$0: require('fs'), require$$1: require('path'), require$$3: require('perf_hooks'), require$$4: require('os'), commonjsGlobal: globalThis });
    const listeners = [];
    const on = parentPort.on;
    parentPort.on = (ev, fn) => { if (ev === 'message') listeners.push(fn); else on.call(parentPort, ev, fn); return parentPort; };
    (0, eval)(m.__moeBoot);
    parentPort.on = on;
    const orig = globalThis.importScripts;
    let chain = Promise.resolve();
    const deliver = (q) => { chain = chain.then(async () => {
      if (q && q.cmd === 'load' && q.urlOrBlob && typeof q.urlOrBlob !== 'string') {
        const text = await q.urlOrBlob.text();
        globalThis.importScripts = (f) => (f === '__moe_main__' ? (0, eval)(text) : orig(f));
        q.urlOrBlob = '__moe_main__';
      }
      for (const l of listeners) l(q);
    }); };
    parentPort.on('message', deliver);
    for (const q of queue) deliver(q);
  } else queue.push(m);
};
parentPort.on('message', onMsg);
`;
const Orig = wt.Worker;
class PatchedWorker extends Orig {
  constructor(file, opts) {
    if (typeof file === 'string' && file.startsWith('blob:')) {
      super(BOOT, { ...opts, eval: true });
      blobs
        .get(file)
        .text()
        .then((t) => this.postMessage({ __moeBoot: t }));
    } else super(file, opts);
  }
}
wt.Worker = PatchedWorker;
import * as tf from '@tensorflow/tfjs-core';
import * as wasm from '@tensorflow/tfjs-backend-wasm';
const n = Number(process.env.T ?? 2);
if (n > 0) {
  tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
  wasm.setThreadsCount(n);
}
import os from 'node:os';
const realCpus = os.cpus;
// the backend caps its pool at emscripten_num_logical_cores()/2 (it assumes 2 hyperthreads per core)
if (n > 0) os.cpus = () => Array.from({ length: 2 * n }, () => realCpus()[0]);
await tf.setBackend('wasm');
await tf.ready();
os.cpus = realCpus;
console.log('threads', wasm.getThreadsCount());
const rnd = (k) => Float32Array.from({ length: k }, () => Math.random() - 0.5);
function bench(name, f, flops, it = 10) {
  for (let i = 0; i < 2; i++) f();
  const t0 = performance.now();
  for (let i = 0; i < it; i++) f();
  const ms = (performance.now() - t0) / it;
  console.log(name.padEnd(30), ms.toFixed(2), 'ms', flops ? (flops / ms / 1e6).toFixed(1) + ' GFLOP/s' : '');
}
const A = tf.tensor2d(rnd(2048 * 256), [2048, 256]);
const B = tf.tensor2d(rnd(256 * 1024), [256, 1024]);
bench(
  'mm 2048x256x1024',
  () =>
    tf.tidy(() => {
      tf.matMul(A, B).dataSync();
    }),
  2 * 2048 * 256 * 1024,
);
const A2 = tf.tensor2d(rnd(512 * 2048), [512, 2048]);
const B2 = tf.tensor2d(rnd(2048 * 1536), [2048, 1536]);
bench(
  'mm 512x2048x1536',
  () =>
    tf.tidy(() => {
      tf.matMul(A2, B2).dataSync();
    }),
  2 * 512 * 2048 * 1536,
  4,
);
const S = tf.tensor3d(rnd(4 * 256 * 256), [4, 256, 256]);
bench('softmax [4,256,256]', () =>
  tf.tidy(() => {
    tf.softmax(S).dataSync();
  }),
);
const r = tf.matMul(A, B).dataSync();
let h = 0;
for (let i = 0; i < r.length; i++) h = (h * 31 + Math.round(r[i] * 1e6)) | 0;
console.log('checksum', h, r[12345]);
process.exit(0);
