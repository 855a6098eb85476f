// One whole-process llama.cpp evaluation for bench/forward.ts: load the GGUF, then decode each window of a token
// file in one batch with logits at every position (what llama-perplexity computes), and print the process's own
// CPU seconds. node-llama-cpp's public evaluate() asks for the last position's logits only, so the context's
// batch calls (initBatch / addToBatch with every index / decodeBatch) are used directly (pinned at 3.21.1).
//   node bench/llama/run.mjs MODEL.gguf WINDOWS.bin SEQ THREADS
import { readFileSync } from 'node:fs';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';

const [gguf, file, seqArg, threadsArg] = process.argv.slice(2);
const S = Number(seqArg);
const threads = Number(threadsArg);
const ids = new Int32Array(readFileSync(file).buffer.slice(0));
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
const ctx = await model.createContext({ contextSize: S, batchSize: S, threads, sequences: 1 });
const c = ctx._ctx;
const every = Uint32Array.from({ length: S }, (_, i) => i);
const t0 = performance.now();
for (let w = 0; w + S <= ids.length; w += S) {
  c.removeTokenCellsFromSequence(0, 0, S);
  c.initBatch(S);
  c.addToBatch(0, 0, Uint32Array.from(ids.subarray(w, w + S)), every);
  await c.decodeBatch();
}
const evalS = (performance.now() - t0) / 1000;
const u = process.cpuUsage();
process.stdout.write(`${JSON.stringify({ cpu: (u.user + u.system) / 1e6, evalS, windows: ids.length / S })}\n`);
process.exit(0);
