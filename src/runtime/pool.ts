/**
 * Worker threads for independent work (the experts of a layer, windows, token ranges of the lm_head, per-expert
 * GPTQ / Cholesky / SVD), each with its own tensor backend instance.
 *
 * A task is a named export of a module (`runTask(moduleUrl, fn, args)`): with one thread it runs inline on the
 * caller's thread; with more, on the first idle worker, which imports the same module and initialises the same
 * backend. Both run the same code on the same backend, so a task's result does not depend on where it ran, and
 * callers combine results in input order (`runTasks`), never in completion order: outputs are byte-identical for
 * any thread count.
 *
 * Why workers and not the wasm backend's own threaded build (XNNPACK's thread pool): that pool splits each kernel,
 * so everything around the kernels (norms, RoPE, routing, gathers, GPTQ's column loop, the eigensolver) stays on
 * one thread, and at small hidden sizes half the time is there. bench/forward.ts measures both.
 */
import { availableParallelism } from 'node:os';
import { Worker, type TransferListItem } from 'node:worker_threads';
import { fail, MoeError, type ErrorCode } from '../errors.js';

/** what a worker needs to start: the backend to initialise (the same as the caller's) */
export interface PoolOptions {
  threads: number;
  backend: string;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

interface Job {
  module: string;
  fn: string;
  args: unknown;
  transfer: TransferListItem[];
  done: Pending;
  onProgress?: (v: unknown) => void;
}

/** every core this process may use (os.availableParallelism: the CPU affinity mask / cgroup quota where Node sees it) */
export function availableThreads(): number {
  return Math.max(1, availableParallelism());
}

/**
 * Thread count used when a command gets no --threads: MOE_THREADS, else every core available. The dry-run memory
 * estimates carry each worker's share (memory.ts workerParts), so the default can use the whole machine.
 */
export function defaultThreads(): number {
  const env = process.env['MOE_THREADS'];
  if (env !== undefined && env !== '') return parseThreads(env, 'MOE_THREADS');
  return availableThreads();
}

/** The thread count a command would use now and where it comes from (for `moe inspect`). */
export function describeThreads(): { threads: number; available: number; reason: string } {
  const available = availableThreads();
  const env = process.env['MOE_THREADS'];
  if (threads !== undefined) return { threads, available, reason: `--threads ${threads}` };
  if (env !== undefined && env !== '') return { threads: defaultThreads(), available, reason: `MOE_THREADS=${env}` };
  return { threads: available, available, reason: `the cores available to this process (os.availableParallelism() = ${available})` };
}

export function parseThreads(v: string, flag = '--threads'): number {
  if (!/^\d+$/.test(v.trim()) || Number(v) < 1) fail('Usage', `${flag} must be a whole number >= 1, got '${v}'`);
  return Number(v);
}

let threads: number | undefined;
let pool: WorkerPool | undefined;
const ranOnWorkers = new Map<string, number>();

/** How many tasks named `fn` this process has run on workers (not inline): the tests check which path work took. */
export function workerTasks(fn: string): number {
  return ranOnWorkers.get(fn) ?? 0;
}

/** Set the thread count for this process (a command's --threads). Closes a pool of another size. */
export async function setThreads(n: number): Promise<void> {
  if (!Number.isInteger(n) || n < 1) fail('Usage', `--threads must be a whole number >= 1, got ${n}`);
  if (pool && pool.size !== n) await closePool();
  threads = n;
}

export function currentThreads(): number {
  return threads ?? defaultThreads();
}

/**
 * Start one worker on pool-worker: the .js file in dist, or under tsx / vitest (this module is a .ts file) the .ts
 * file through tsx's loader, registered inside the worker (Node 20 does not carry a parent's loader hooks over).
 */
function startWorker(workerData: unknown): Worker {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return new Worker(new URL('./pool-worker.js', here), { workerData });
  const api = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./pool-worker.ts', here).href;
  const boot = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(boot, { eval: true, workerData });
}

type WorkerMessage = { ok: boolean; result?: unknown; error?: { message: string; code?: string; moe?: boolean; stack?: string } } | { progress: unknown };

/**
 * Up to `size` workers, each started when work first needs it: a pass that uses fewer workers than
 * threads (the window shards, where the main thread is one of the threads) does not pay for the others' isolates.
 */
export class WorkerPool {
  private workers: Worker[] = [];
  private idle: Worker[] = [];
  private queue: Job[] = [];
  private inflight = new Map<Worker, Job>();
  private failed: Error | undefined;
  private starting: Promise<void>[] = [];
  private closing = false;

  private constructor(
    readonly size: number,
    private readonly backend: string,
  ) {}

  static async start(opts: PoolOptions): Promise<WorkerPool> {
    return new WorkerPool(opts.threads, opts.backend);
  }

  /** workers running or starting */
  get started(): number {
    return this.workers.length + this.starting.length;
  }

  /** Start workers (without waiting for them) until `n`, at most size, run or are starting. */
  prestart(n: number): void {
    while (!this.failed && !this.closing && this.workers.length + this.starting.length < Math.min(n, this.size)) this.spawn();
  }

  private spawn(): void {
    const w = startWorker({ backend: this.backend });
    const ready = new Promise<void>((resolve, reject) => {
      const onMsg = (m: { ready?: boolean; error?: string }) => {
        w.off('error', reject);
        if (m.ready) resolve();
        else reject(new Error(m.error ?? 'worker failed to start'));
      };
      w.once('message', onMsg);
      w.once('error', reject);
    }).then(
      () => {
        w.on('message', (m: WorkerMessage) => this.finish(w, m));
        w.on('error', (e) => this.crash(w, e));
        w.on('exit', (code) => {
          if (code !== 0 && !this.closing) this.crash(w, new Error(`worker exited with code ${code}`));
        });
        w.unref();
        this.workers.push(w);
        this.idle.push(w);
      },
      (e: Error) => {
        void w.terminate();
        this.crash(undefined, e);
      },
    );
    const tracked = ready.finally(() => {
      this.starting = this.starting.filter((s) => s !== tracked);
      this.pump();
    });
    this.starting.push(tracked);
  }

  /** Run a task on the first idle worker (starting one while fewer than size run). `onProgress` receives what the
   *  task reports through its second argument. */
  run<T>(module: string, fn: string, args: unknown, transfer: TransferListItem[] = [], onProgress?: (v: unknown) => void): Promise<T> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ module, fn, args, transfer, ...(onProgress ? { onProgress } : {}), done: { resolve: resolve as (v: unknown) => void, reject } });
      this.pump();
    });
  }

  private pump(): void {
    while (this.idle.length && this.queue.length) {
      const w = this.idle.shift()!;
      const job = this.queue.shift()!;
      this.inflight.set(w, job);
      // a worker with a task keeps the process alive; an idle one does not
      w.ref();
      w.postMessage({ module: job.module, fn: job.fn, args: job.args }, job.transfer);
    }
    // more work than workers: start another, up to size
    if (!this.failed && !this.closing && this.queue.length > this.starting.length && this.workers.length + this.starting.length < this.size) this.spawn();
  }

  private finish(w: Worker, m: WorkerMessage): void {
    const job = this.inflight.get(w);
    if (!job) return;
    if ('progress' in m) {
      job.onProgress?.(m.progress);
      return;
    }
    this.inflight.delete(w);
    w.unref();
    this.idle.push(w);
    ranOnWorkers.set(job.fn, (ranOnWorkers.get(job.fn) ?? 0) + 1);
    if (m.ok) job.done.resolve(m.result);
    else {
      // a user-caused failure inside a task (a MoeError) stays one, so the CLI reports it the same way
      const msg = m.error?.message ?? 'task failed';
      const e: Error = m.error?.moe ? new MoeError(m.error.code as ErrorCode, msg) : new Error(msg);
      if (m.error?.stack) e.stack = m.error.stack;
      job.done.reject(e);
    }
    this.pump();
  }

  private crash(w: Worker | undefined, e: Error): void {
    this.failed = e;
    const job = w ? this.inflight.get(w) : undefined;
    if (w) this.inflight.delete(w);
    job?.done.reject(e);
    for (const q of this.queue.splice(0)) q.done.reject(e);
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.allSettled(this.starting);
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
    this.idle = [];
  }
}

/** The process's pool for the current thread count (started on first use), or undefined with one thread. */
export async function getPool(backend: string): Promise<WorkerPool | undefined> {
  const n = currentThreads();
  if (n <= 1) return undefined;
  if (pool && pool.size === n) return pool;
  if (pool) await closePool();
  pool = await WorkerPool.start({ threads: n, backend });
  return pool;
}

/**
 * Start the workers a window-shared pass will use (threads - 1: the main thread runs a share) without waiting, so
 * their start (about 0.2 CPU-s each: module loading and backend) overlaps the caller's own preparation
 * (tokenizing, opening the model) instead of delaying the pass.
 */
export async function prestartWorkers(backend: string): Promise<void> {
  const p = await getPool(backend);
  p?.prestart(p.size - 1);
}

export async function closePool(): Promise<void> {
  const p = pool;
  pool = undefined;
  await p?.close();
}

const inline = new Map<string, Record<string, (a: unknown) => unknown>>();

async function runInline<T>(module: string, fn: string, args: unknown): Promise<T> {
  let m = inline.get(module);
  if (!m) {
    m = (await import(module)) as Record<string, (a: unknown) => unknown>;
    inline.set(module, m);
  }
  const f = m[fn];
  if (typeof f !== 'function') throw new Error(`internal: task ${fn} is not exported by ${module}`);
  return (await f(args)) as T;
}

/**
 * Run `fn` of `module` on each of `argsList`, on the pool when there is one, and return the results in input
 * order. `transfer(args)` names buffers to move instead of copy (the caller must not use them afterwards).
 */
export async function runTasks<A, T>(
  backend: string,
  module: string,
  fn: string,
  argsList: readonly A[],
  transfer?: (a: A) => TransferListItem[],
): Promise<T[]> {
  const p = await getPool(backend);
  if (!p) {
    const out: T[] = [];
    for (const a of argsList) out.push(await runInline<T>(module, fn, a));
    return out;
  }
  return Promise.all(argsList.map((a) => p.run<T>(module, fn, a, transfer ? transfer(a) : [])));
}

/**
 * Run `fn` of `module` on each item of `items`, pulled lazily, and yield the results in input order. On the pool, up
 * to 2 x threads tasks are started ahead of the one being consumed (as the forward pass runs experts ahead of its
 * combine): enough to keep every worker busy while the caller consumes in order, and a bound on the inputs and
 * results alive at once. With one thread each item runs inline when the consumer reaches it, one at a time.
 */
export async function* runOrdered<A, T>(
  backend: string,
  module: string,
  fn: string,
  items: Iterable<A>,
  transfer?: (a: A) => TransferListItem[],
): AsyncGenerator<T> {
  const p = await getPool(backend);
  const it = items[Symbol.iterator]();
  if (!p) {
    for (let r = it.next(); !r.done; r = it.next()) yield await runInline<T>(module, fn, r.value);
    return;
  }
  const window = 2 * p.size;
  const pending: Promise<T>[] = [];
  let exhausted = false;
  const fill = () => {
    while (!exhausted && pending.length < window) {
      const r = it.next();
      if (r.done) {
        exhausted = true;
        break;
      }
      const task = p.run<T>(module, fn, r.value, transfer ? transfer(r.value) : []);
      // awaited in order below; a failure must not surface as unhandled while earlier results are consumed
      task.catch(() => undefined);
      pending.push(task);
    }
  };
  fill();
  while (pending.length) {
    const r = await pending.shift()!;
    fill();
    yield r;
  }
}
