/**
 * Hand-over of factors from the apply pass to the writer, one layer at a time.
 *
 * The apply pass (a streamed forward pass, or a walk over the weights) factorises layer l at the planned ranks,
 * `publish`es the layer's factors and waits in `released(l)` until the writer has moved past layer l (it asked for a
 * later layer's factors, or finished). The writer's producers `take(l)` when a tensor of layer l is due. Both sides
 * run concurrently in one event loop, and at most one layer of factors is alive: the next layer is computed only
 * after the writer has left this one.
 *
 * No deadlock: the writer asks for layers in increasing order and never for a layer the apply pass skips (another
 * shard's), so a layer waited on by the writer is always published; a layer whose tensors a resumed run already
 * wrote is never asked for, and the apply pass is released by the next request or by `finish()`. If either side
 * fails, `fail(e)` rejects everything pending on the other side.
 */
import { MoeError } from '../errors.js';
import type { LayerFactors } from './write.js';

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
      d.settled = true;
      resolve(v);
    },
    reject: (e) => {
      d.settled = true;
      reject(e);
    },
  };
  return d;
}

function notComputed(layer: number): MoeError {
  return new MoeError('ComputeError', `internal: the writer asked for the factors of layer ${layer}, which the apply pass did not compute`);
}

export class LayerHandoff {
  /** the highest layer the writer has asked for (Infinity once it is done) */
  private demand = -Infinity;
  private layers = new Map<number, Deferred<LayerFactors>>();
  private waiters: { layer: number; d: Deferred<void> }[] = [];
  private error: unknown;
  private failed = false;
  private closed = false;
  /** the last layer published: the pass goes in increasing order, so an earlier layer not published never will be */
  private last = -Infinity;
  /** layers published and not yet released: at most one at any time (checked by tests through `alive`) */
  maxAlive = 0;

  get alive(): number {
    let n = 0;
    for (const d of this.layers.values()) if (d.settled) n++;
    return n;
  }

  private entry(layer: number): Deferred<LayerFactors> {
    let d = this.layers.get(layer);
    if (!d) this.layers.set(layer, (d = deferred<LayerFactors>()));
    return d;
  }

  private wake(): void {
    this.waiters = this.waiters.filter((w) => {
      if (this.demand <= w.layer) return true;
      w.d.resolve();
      return false;
    });
  }

  /** writer: the factors of `layer` (asking for it releases every earlier layer) */
  take(layer: number): Promise<LayerFactors> {
    if (this.failed) return Promise.reject(this.error);
    if (layer > this.demand) {
      this.demand = layer;
      this.wake();
    }
    const d = this.entry(layer);
    if ((this.closed || layer < this.last) && !d.settled) d.reject(notComputed(layer));
    return d.promise;
  }

  /** writer: done, nothing more will be asked for */
  finish(): void {
    this.demand = Infinity;
    this.wake();
  }

  /** apply pass: `layer`'s factors are ready */
  publish(layer: number, factors: LayerFactors): void {
    if (this.failed) return;
    this.last = layer;
    for (const [l, d] of this.layers) if (l < layer && !d.settled) d.reject(notComputed(l));
    this.entry(layer).resolve(factors);
    this.maxAlive = Math.max(this.maxAlive, this.alive);
  }

  /** apply pass: wait until the writer no longer needs `layer`, then forget it */
  async released(layer: number): Promise<void> {
    if (this.failed) throw this.error;
    if (this.demand <= layer) {
      const d = deferred<void>();
      this.waiters.push({ layer, d });
      await d.promise;
    }
    this.layers.delete(layer);
  }

  /** apply pass done: a layer asked for but never published is an internal error, not a hang */
  close(): void {
    this.closed = true;
    for (const [layer, d] of this.layers) if (!d.settled) d.reject(notComputed(layer));
  }

  /** either side failed: reject everything the other side waits for */
  fail(e: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.error = e;
    for (const d of this.layers.values()) if (!d.settled) d.reject(e);
    for (const w of this.waiters) w.d.reject(e);
    this.waiters = [];
  }
}
