/**
 * The forward pass split by windows: with a worker pool and no hooks (eval's perplexity, bench/forward.ts), the
 * windows are cut into one contiguous share per thread, and each share runs the whole pass on one thread: the
 * embedding, every decoder layer (attention, norms, routing, experts), the final norm and the lm_head. The main
 * thread runs the first share itself and the pool's workers the others, each reading the weights from the
 * checkpoint once per layer. Hidden states never cross threads; what comes back is each scored position's
 * log-sum-exp and target logit (or the final hidden states when the caller wants them), so the only copies are the
 * token ids in and those results out.
 *
 * Why the bytes are those of one thread: a window's computation does not involve any other window (attention is
 * within a window; norms, routing and the expert combine are per token), and every product is a row-wise one whose
 * row results do not depend on the other rows in the call (the lm_head's ranges on the pool rely on the same
 * property). The NLL is summed on the main thread over all positions in window order, as scoreHeads sums it.
 * test/runtime/shard.test.ts and pool.test.ts check hidden states and NLL at 1 and 2 threads, byte for byte.
 *
 * Hooks stay on the per-layer path of stream.ts (experts on the pool): they see a whole layer's tokens at once
 * (calibration statistics are per expert over all tokens, summed in token order; GPTQ's Hessians likewise), which
 * a share of the windows does not have, and splitting those sums by share would change their bytes with the
 * thread count.
 */
import type { Model } from '../model/open.js';
import { openCached } from './opened.js';
import type { StreamOptions, StreamResult } from './api.js';
import { scoredPositions, scoreRange } from './head.js';
import { embedTokens, layerRunner, norm, type LayerCounts } from './layer.js';
import { applyNorm } from './ops.js';
import type { WorkerPool } from './pool.js';
import { ropeTables } from './rope.js';

export interface ShardTask {
  dir: string;
  /** this share's windows, concatenated, S tokens each */
  ids: Int32Array;
  S: number;
  score: boolean;
  hidden: boolean;
}

export interface ShardResult {
  /** per scored position of this share (window order): log-sum-exp of the logits and the target's logit */
  lse?: Float64Array;
  tgt?: Float64Array;
  /** final-norm hidden states [windows * S, H] */
  hidden?: Float32Array;
  expertCalls: number;
  expertSlots: number;
}

/** The whole hook-free pass over some windows on this thread; `progress(l)` after decoder layer l. */
async function runShard(
  model: Model,
  windows: readonly Int32Array[],
  score: boolean,
  hidden: boolean,
  progress?: (layer: number) => void,
): Promise<ShardResult> {
  const v = model.view;
  const S = windows[0]!.length;
  const H = v.dims.hidden;
  const counts: LayerCounts = { expertCalls: 0, expertSlots: 0 };
  // no hooks and experts inline: this thread is one of the pass's threads
  const layer = layerRunner(model, {}, undefined, counts);
  const tables = ropeTables({ ...v.rope }, S, v.dims.maxPositions || S);
  const h = await embedTokens(model, windows);
  for (const l of v.layers) {
    await layer(l, h, windows.length, S, tables);
    progress?.(l.index);
  }
  const out = applyNorm(h, H, await norm(model, v.finalNorm), h);
  const res: ShardResult = { ...counts };
  if (score) {
    const { rows, targets } = scoredPositions(windows);
    const hs = new Float32Array(rows.length * H);
    for (let p = 0; p < rows.length; p++) hs.set(out.subarray(rows[p]! * H, (rows[p]! + 1) * H), p * H);
    const r = await scoreRange([model], [hs], targets);
    res.lse = r.lse[0]!;
    res.tgt = r.tgt[0]!;
  }
  if (hidden) res.hidden = out;
  return res;
}

/** One share on a worker: the model is opened there (once per worker while its files stay the same, opened.ts). */
export async function shardPass(t: ShardTask, progress?: (layer: unknown) => void): Promise<ShardResult> {
  const windows: Int32Array[] = [];
  for (let w = 0; w + t.S <= t.ids.length; w += t.S) windows.push(t.ids.subarray(w, w + t.S));
  return runShard(await openCached(t.dir), windows, t.score, t.hidden, progress);
}

export const SHARD_MODULE = import.meta.url;

let passes = 0;

/** How many passes this process has run as window shares (the tests check which path a pass took). */
export function shardPasses(): number {
  return passes;
}

/**
 * Whether a pass can run as window shares (given a pool): no hooks, nothing that needs the whole hidden state
 * between layers (a checkpoint, MTP layers, an early stop), and at least two windows.
 */
export function shardable(hooks: object, opts: StreamOptions, windows: number): boolean {
  return windows >= 2 && Object.values(hooks).every((x) => x === undefined) && !opts.checkpoint && !opts.mtp && opts.stopAfterLayer === undefined;
}

/**
 * The pass on min(windows, threads) contiguous shares of the windows: the main thread runs the first, a worker
 * each of the others. The progress callback sees a layer once every share has run it.
 */
export async function shardedForward(pool: WorkerPool, model: Model, windows: readonly Int32Array[], opts: StreamOptions): Promise<StreamResult> {
  const N = windows.length;
  const S = windows[0]!.length;
  const L = model.view.layers.length;
  const n = Math.min(pool.size, N);
  passes++;
  const bounds = Array.from({ length: n + 1 }, (_, i) => Math.floor((i * N) / n));
  const done = new Int32Array(L);
  const tick = (l: number) => {
    if (++done[l]! === n) opts.onProgress?.(l + 1, L);
  };
  const score = !!opts.scoreLogits;
  const hidden = !!opts.returnHidden;
  // the workers start (if not running yet) while the main thread begins its own share: a worker's task is posted
  // when its ready message is read, at the main thread's next await (each weight read is one), instead of the main
  // thread waiting the ~0.15 s a worker takes to start
  const parts: Promise<ShardResult>[] = [];
  for (let i = 1; i < n; i++) {
    const ids = new Int32Array((bounds[i + 1]! - bounds[i]!) * S);
    for (let w = bounds[i]!; w < bounds[i + 1]!; w++) ids.set(windows[w]!, (w - bounds[i]!) * S);
    parts.push(
      pool.run<ShardResult>(SHARD_MODULE, 'shardPass', { dir: model.dir, ids, S, score, hidden } satisfies ShardTask, [ids.buffer], (l) => tick(l as number)),
    );
  }
  const mine = runShard(model, windows.slice(0, bounds[1]), score, hidden, tick);
  // every share settles before this returns or throws: no worker is left running a pass nobody waits for
  const settled = await Promise.allSettled([mine, ...parts]);
  const failed = settled.find((x): x is PromiseRejectedResult => x.status === 'rejected');
  if (failed) throw failed.reason;
  const shares = settled.map((x) => (x as PromiseFulfilledResult<ShardResult>).value);
  const res: StreamResult = { nll: 0, scored: 0, expertCalls: 0, expertSlots: 0 };
  for (const p of shares) {
    res.expertCalls += p.expertCalls;
    res.expertSlots += p.expertSlots;
  }
  if (score) {
    // position order over all shares, as scoreHeads sums one model's NLL
    let s = 0;
    for (const p of shares) {
      for (let q = 0; q < p.lse!.length; q++) s += p.lse![q]! - p.tgt![q]!;
      res.scored += p.lse!.length;
    }
    res.nll = s;
  }
  if (hidden) {
    const H = model.view.dims.hidden;
    const out = new Float32Array(N * S * H);
    shares.forEach((p, i) => out.set(p.hidden!, bounds[i]! * S * H));
    res.hidden = out;
  }
  return res;
}
