/**
 * The apply pass (a forward-pass hook that GPTQ-quantizes one MoE layer at a time) and the writer run concurrently,
 * handing each layer's packed tensors over with backpressure, so about one layer of packed output is alive instead
 * of the whole output:
 * - the writer, reaching a tensor of layer l that the pass quantizes, waits for `ready(l)`;
 * - the pass, before quantizing layer l, waits until the writer has reached layer l (every tensor of the layers
 *   before it written, skipped as another shard's, or found written by an earlier run), so layer l-1's packed
 *   bytes are released first.
 * The writer reports where it is through `reached(layer)` (called from its progress callback and from producers,
 * so a layer whose first tensor is itself waiting for the pass is still counted as reached). If either side fails,
 * `abort` rejects everything the other side waits on, so neither hangs.
 */
import { MoeError } from '../errors.js';

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
  reject(e: unknown): void;
  settled: boolean;
}

function deferred(): Deferred {
  let res!: () => void;
  let rej!: (e: unknown) => void;
  const promise = new Promise<void>((a, b) => {
    res = a;
    rej = b;
  });
  // a rejection nobody waits for is not an unhandled one: the first error is rethrown by the pipeline
  promise.catch(() => {});
  const d: Deferred = {
    promise,
    settled: false,
    resolve: () => {
      d.settled = true;
      res();
    },
    reject: (e) => {
      d.settled = true;
      rej(e);
    },
  };
  return d;
}

/** The writer once its output is open: where it writes, and which tensors are finished (by an earlier run too). */
export interface WriterInfo {
  dir: string;
  isWritten(name: string): boolean;
}

export class LayerHandoff {
  private readonly layers = new Map<number, Deferred>();
  private readonly opened = deferred();
  private writer: WriterInfo | undefined;
  private position = -Infinity;
  private waiters: { layer: number; d: Deferred }[] = [];
  private failed: { error: unknown } | undefined;
  private closed = false;

  private layer(l: number): Deferred {
    let d = this.layers.get(l);
    if (!d) {
      this.layers.set(l, (d = deferred()));
      if (this.failed) d.reject(this.failed.error);
      else if (this.closed) d.reject(unproduced(l));
    }
    return d;
  }

  /** pass: it has ended; a layer the writer still waits for will never come (a bug, not a hang) */
  closeProduction(): void {
    this.closed = true;
    for (const [l, d] of this.layers) if (!d.settled) d.reject(unproduced(l));
  }

  /** writer: wait until the pass has produced layer l's tensors */
  ready(l: number): Promise<void> {
    return this.layer(l).promise;
  }

  /** pass: layer l's tensors are produced */
  produced(l: number): void {
    this.layer(l).resolve();
  }

  /** writer: it is at a tensor of this layer (-1 embeddings, Infinity after the last layer) */
  reached(layer: number): void {
    if (layer <= this.position) return;
    this.position = layer;
    this.waiters = this.waiters.filter((w) => {
      if (w.layer > layer) return true;
      w.d.resolve();
      return false;
    });
  }

  /** pass: wait until the writer has finished every layer before l */
  writerAt(l: number): Promise<void> {
    if (this.failed) return Promise.reject(this.failed.error);
    if (this.position >= l) return Promise.resolve();
    const d = deferred();
    this.waiters.push({ layer: l, d });
    return d.promise;
  }

  /** writer: its output is open (staging directory created, tensors found finished by a killed run known) */
  writerOpened(info: WriterInfo): void {
    this.writer = info;
    this.opened.resolve();
  }

  /** pass: wait until the writer's output is open */
  async writerOpen(): Promise<WriterInfo> {
    await this.opened.promise;
    return this.writer!;
  }

  /** either side failed: release the other with the same error (the first error is kept) */
  abort(error: unknown): void {
    if (this.failed) return;
    this.failed = { error };
    if (!this.opened.settled) this.opened.reject(error);
    for (const d of this.layers.values()) d.reject(error);
    for (const w of this.waiters) w.d.reject(error);
    this.waiters = [];
  }

  get error(): unknown {
    return this.failed?.error;
  }
}

const unproduced = (l: number) => new MoeError('ComputeError', `internal: the apply pass ended without producing layer ${l}'s tensors`);
