/**
 * The hand-off between a forward pass that produces an output one layer at a time (GPTQ's packed tensors, a
 * decomposition's factors, a GGUF file's quantized blocks) and the writer that streams the output, both running
 * concurrently in one event loop, with backpressure so about one layer of produced data is alive at a time:
 *
 * - the writer says where it is with `reached(layer)` (from its progress callback and its producers; -1 for the
 *   embeddings, Infinity with `finish()`), and waits for a layer's data with `take(layer)` (which reaches it too);
 * - the pass `publish`es each layer's data, and waits with `consumerAt(l)` until the writer has reached layer l (so
 *   every tensor of the layers before l is written, skipped as another shard's, or found written by a killed run),
 *   or with `released(l)` until the writer has moved past l (then the layer's data is forgotten);
 * - the writer announces its open output with `opened(info)` (where it writes, what a killed run already wrote),
 *   which the pass may wait for with `whenOpen()` before it decides where to resume.
 *
 * No hang: the writer asks for layers in increasing order, so a layer asked for once a later one is published, or
 * after `close()`, never will be (an internal error, not a wait); if either side fails, `fail(e)` rejects everything
 * the other side waits on with the same error (the first one is kept in `error`).
 */
import { MoeError } from '../errors.js';

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
  settled: boolean;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // a rejection nobody awaits (the other side already failed) must not surface as an unhandled rejection
  promise.catch(() => undefined);
  const d: Deferred<T> = {
    promise,
    settled: false,
    resolve: (v) => {
      if (d.settled) return;
      d.settled = true;
      resolve(v);
    },
    reject: (e) => {
      if (d.settled) return;
      d.settled = true;
      reject(e);
    },
  };
  return d;
}

/** A writer's open output: where it writes, and which tensors are finished (by a killed earlier run too). */
export interface WriterInfo {
  dir: string;
  isWritten(name: string): boolean;
}

const notProduced = (layer: number) => new MoeError('ComputeError', `internal: the writer asked for layer ${layer}, which the pass did not produce`);

/** `T`: a layer's data (void when the pass keeps it elsewhere); `W`: what the writer tells once its output is open. */
export class LayerHandoff<T = void, W = void> {
  private readonly layers = new Map<number, Deferred<T>>();
  private readonly open = deferred<W>();
  /** the highest layer the writer has reached (Infinity once it is done) */
  private position = -Infinity;
  private waiters: { layer: number; d: Deferred<void> }[] = [];
  private failed: { error: unknown } | undefined;
  private closed = false;
  /** the last layer published: the pass goes in increasing order, so an earlier layer not published never will be */
  private last = -Infinity;
  /** layers published and not yet released, at most (checked by tests) */
  maxAlive = 0;

  /** layers published and not yet released */
  get alive(): number {
    let n = 0;
    for (const d of this.layers.values()) if (d.settled) n++;
    return n;
  }

  /** the first failure of either side */
  get error(): unknown {
    return this.failed?.error;
  }

  private entry(layer: number): Deferred<T> {
    let d = this.layers.get(layer);
    if (!d) {
      this.layers.set(layer, (d = deferred<T>()));
      if (this.failed) d.reject(this.failed.error);
    }
    return d;
  }

  // ---- the writer -----------------------------------------------------------------------------------------

  /** the writer is at a tensor of `layer`: every earlier layer is finished */
  reached(layer: number): void {
    if (layer <= this.position) return;
    this.position = layer;
    this.waiters = this.waiters.filter((w) => {
      if (w.layer > layer) return true;
      w.d.resolve();
      return false;
    });
  }

  /** the writer is done: nothing more will be asked for */
  finish(): void {
    this.reached(Infinity);
  }

  /** the data of `layer`, once the pass has published it (asking reaches the layer) */
  take(layer: number): Promise<T> {
    this.reached(layer);
    const d = this.entry(layer);
    if ((this.closed || layer < this.last) && !d.settled) d.reject(notProduced(layer));
    return d.promise;
  }

  /** the writer's output is open */
  opened(info: W): void {
    this.open.resolve(info);
  }

  // ---- the pass -------------------------------------------------------------------------------------------

  /** `layer`'s data is ready */
  publish(layer: number, value: T): void {
    if (this.failed) return;
    this.last = layer;
    for (const [l, d] of this.layers) if (l < layer && !d.settled) d.reject(notProduced(l));
    this.entry(layer).resolve(value);
    this.maxAlive = Math.max(this.maxAlive, this.alive);
  }

  /** wait until the writer has reached `layer` (finished every layer before it) */
  consumerAt(layer: number): Promise<void> {
    if (this.failed) return Promise.reject(this.failed.error);
    if (this.position >= layer) return Promise.resolve();
    const d = deferred<void>();
    this.waiters.push({ layer, d });
    return d.promise;
  }

  /** wait until the writer no longer needs `layer` (it asked for a later one, or finished), then forget its data */
  async released(layer: number): Promise<void> {
    // layers are integers: past `layer` is at `layer + 1` or later
    await this.consumerAt(layer + 1);
    this.layers.delete(layer);
  }

  /** wait until the writer's output is open */
  whenOpen(): Promise<W> {
    return this.open.promise;
  }

  /** the pass has ended: a layer the writer still waits for, or asks for later, will never come */
  close(): void {
    this.closed = true;
    for (const [layer, d] of this.layers) if (!d.settled) d.reject(notProduced(layer));
  }

  // ---- either side ----------------------------------------------------------------------------------------

  /** one side failed: reject everything the other side waits for with the same error (the first one is kept) */
  fail(error: unknown): void {
    if (this.failed) return;
    this.failed = { error };
    this.open.reject(error);
    for (const d of this.layers.values()) d.reject(error);
    for (const w of this.waiters) w.d.reject(error);
    this.waiters = [];
  }
}
