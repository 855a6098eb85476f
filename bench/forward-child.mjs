// One whole-process moe evaluation for bench/forward.ts (the compiled dist/, as `moe eval` runs): open the
// checkpoint, run the streamed forward with the lm_head over every window of a token file, print NLL and the
// process's CPU seconds (worker threads included).
//   node bench/forward-child.mjs MODEL_DIR WINDOWS.bin SEQ THREADS
import { readFileSync } from 'node:fs';
import { openModel } from '../dist/src/model/open.js';
import { initBackend } from '../dist/src/runtime/backend.js';
import { closePool, prestartWorkers, setThreads } from '../dist/src/runtime/pool.js';
import { streamModel } from '../dist/src/runtime/stream.js';

const [dir, file, seqArg, threadsArg] = process.argv.slice(2);
const S = Number(seqArg);
const ids = new Int32Array(readFileSync(file).buffer.slice(0));
await setThreads(Number(threadsArg));
await initBackend('wasm');
// as moe eval does: the workers start while the model opens
await prestartWorkers('wasm');
const model = await openModel(dir);
const windows = [];
for (let w = 0; w + S <= ids.length; w += S) windows.push(ids.subarray(w, w + S));
const t0 = performance.now();
const r = await streamModel(model, windows, {}, { scoreLogits: true });
const evalS = (performance.now() - t0) / 1000;
await closePool();
const u = process.cpuUsage();
process.stdout.write(`${JSON.stringify({ cpu: (u.user + u.system) / 1e6, evalS, windows: windows.length, meanNll: r.nll / r.scored })}\n`);
