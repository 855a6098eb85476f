/**
 * One worker of the pool (pool.ts): initialises the same tensor backend as the main thread, then runs tasks (a
 * module's named export on structured-cloned arguments) one at a time and posts each result back (and, before it,
 * whatever progress the task reports). Typed arrays in a result are transferred, not copied.
 */
import { parentPort, workerData, type TransferListItem } from 'node:worker_threads';
import { isMoeError } from '../errors.js';
import { initBackend, type BackendChoice } from './backend.js';

const port = parentPort!;
const modules = new Map<string, Record<string, (a: unknown) => unknown>>();

function transferables(v: unknown, out: TransferListItem[], seen = new Set<ArrayBufferLike>(), depth = 0): TransferListItem[] {
  if (depth > 4 || v === null || typeof v !== 'object') return out;
  if (ArrayBuffer.isView(v)) {
    const b = v.buffer;
    // only whole, unshared buffers can move; views into a larger one are copied with it
    if (b instanceof ArrayBuffer && !seen.has(b) && v.byteOffset === 0 && v.byteLength === b.byteLength) {
      seen.add(b);
      out.push(b);
    }
    return out;
  }
  for (const x of Array.isArray(v) ? v : Object.values(v)) transferables(x, out, seen, depth + 1);
  return out;
}

try {
  await initBackend((workerData as { backend: BackendChoice }).backend);
  port.postMessage({ ready: true });
} catch (e) {
  port.postMessage({ ready: false, error: (e as Error).message });
}

port.on('message', async (m: { module: string; fn: string; args: unknown }) => {
  try {
    let mod = modules.get(m.module);
    if (!mod) {
      mod = (await import(m.module)) as Record<string, (a: unknown) => unknown>;
      modules.set(m.module, mod);
    }
    const f = mod[m.fn];
    if (typeof f !== 'function') throw new Error(`internal: task ${m.fn} is not exported by ${m.module}`);
    // a task's second argument reports progress to the caller (pool.ts run's onProgress) while it runs
    const result = await (f as (a: unknown, progress: (v: unknown) => void) => unknown)(m.args, (v) => port.postMessage({ progress: v }));
    port.postMessage({ ok: true, result }, transferables(result, []));
  } catch (e) {
    const err = e as Error & { code?: string };
    port.postMessage({
      ok: false,
      error: { message: err.message, moe: isMoeError(e), ...(err.code ? { code: err.code } : {}), ...(err.stack ? { stack: err.stack } : {}) },
    });
  }
});
