// One whole-process moe evaluation for bench/forward.ts (the compiled dist/, as `moe eval` runs): open the
// checkpoint, run the streamed forward with the lm_head over every window of a token file, print NLL, the
// process's CPU seconds (worker threads included) and the busiest thread's.
//   node bench/forward-child.mjs MODEL_DIR WINDOWS.bin SEQ THREADS
import { readdirSync, readFileSync } from 'node:fs';
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
// CPU seconds of the busiest OS thread (Linux /proc, read before the workers exit): the pass's critical path when
// every thread has a core of its own, which a loaded machine (or one whose scheduler shares CPU per session) does
// not give in wall time
let busiest;
try {
  busiest = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    const st = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    busiest = Math.max(busiest, (Number(f[11]) + Number(f[12])) / 100);
  }
} catch {
  busiest = undefined;
}
await closePool();
const u = process.cpuUsage();
process.stdout.write(`${JSON.stringify({ cpu: (u.user + u.system) / 1e6, evalS, windows: windows.length, meanNll: r.nll / r.scored, busiest })}\n`);
