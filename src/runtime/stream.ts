/**
 * The layer-streamed forward pass (contract in api.ts). The hidden states of all windows, [T, H] float32, live on
 * the host; one decoder layer's weights are loaded at a time, applied to every window, and freed before the next
 * layer is read. Embedding rows are read in vocabulary chunks and only the rows the windows use are kept; the
 * lm_head is streamed the same way (head.ts). Peak memory: one layer's weights plus a few [T, H] buffers.
 *
 * The decoder layer itself is layer.ts; embeddings x embedding_multiplier (granite); logits / logits_scaling
 * (granite) in head.ts. With a worker pool and no hooks the pass runs as window shards instead (shard.ts).
 */
import type { Model } from '../model/open.js';
import { loadLinear } from '../model/load.js';
import { fail } from '../errors.js';
import type { StreamModel, StreamHooks, StreamOptions, StreamResult } from './api.js';
import { scoreHeads } from './head.js';
import type { ExpertRunner } from './moe.js';
import { embedTokens, layerRunner, norm, type LayerCounts } from './layer.js';
import { getPool } from './pool.js';
import { shardable, shardedForward } from './shard.js';
import { TASKS_MODULE, type ExpertResult, type ExpertTask } from './tasks.js';
import { applyNorm, linear } from './ops.js';
import { ropeTables } from './rope.js';
import { activeBackend, initBackend } from './backend.js';

export { embedTokens };

export async function streamModel(model: Model, windows: readonly Int32Array[], hooks: StreamHooks = {}, opts: StreamOptions = {}): Promise<StreamResult> {
  const v = model.view;
  if (!activeBackend()) await initBackend('auto');
  if (windows.length === 0) fail('InvalidData', 'no token windows to run');
  const S = windows[0]!.length;
  if (S < 1 || windows.some((w) => w.length !== S)) fail('InvalidData', 'all token windows must have the same, non-zero length');
  const dense = v.attention.denseKeysUpTo;
  if (dense !== undefined && S > dense)
    fail(
      'Usage',
      `${v.family}'s sparse attention indexer keeps ${dense} keys per query (index_topk): windows of ${S} positions would need the indexer, which moe does not run; use --seq-len ${dense} at most (${dense - 1} where a BOS token is put in front)`,
    );
  // a hook that recomputes experts on the block input (GPTQ, merging, reconstruction, whitening) would see x where
  // llama4's experts see w * x: refused rather than computed on the wrong inputs
  if (v.routing.weightsInput && hooks.onMoeLayer && !hooks.routerOnly && !hooks.weightedInputs)
    fail(
      'UnsupportedArchitecture',
      `${v.family} scales each routed expert's input by its router weight; this command recomputes the experts on their inputs, which moe does not do for it yet (prune with a statistics method, merge --stats and decompose do)`,
    );
  const N = windows.length;
  const T = N * S;
  const H = v.dims.hidden;
  const L = v.layers.length;
  const tables = ropeTables({ ...v.rope }, S, v.dims.maxPositions || S);
  const act = v.forward.activation;

  // with more than one thread: a hook-free pass runs as window shards, each worker running every layer on its share
  // of the windows (shard.ts); otherwise each layer's experts run on the pool (weights are copied: they may be the
  // hook's own arrays)
  const pool = await getPool(activeBackend()!);
  if (pool && shardable(hooks, opts, N)) return shardedForward(pool, model, windows, opts);
  const last = opts.stopAfterLayer !== undefined ? Math.min(opts.stopAfterLayer, L - 1) : L - 1;
  const restored = opts.checkpoint ? await opts.checkpoint.restore() : undefined;
  if (restored && (!Number.isInteger(restored.after) || restored.after < -1 || restored.after >= last || restored.hidden.length !== T * H)) {
    fail(
      'ComputeError',
      `internal: a restored forward-pass state (after layer ${restored.after}, ${restored.hidden.length} values) does not fit this pass (${L} layers, [${T}, ${H}])`,
    );
  }
  const start = restored ? restored.after + 1 : 0;
  const h = restored ? restored.hidden : await embedTokens(model, windows);
  if (restored) for (let l = 0; l < start; l++) opts.onProgress?.(l + 1, L);
  const runner: ExpertRunner | undefined = pool
    ? {
        window: 2 * pool.size,
        // a routed expert's gathered tokens are its own copy and move; the shared expert reads the block input x
        run: (e, w, x, n, down) =>
          pool.run<ExpertResult>(
            TASKS_MODULE,
            'expertForward',
            { w, x, n, activation: act, down } satisfies ExpertTask,
            e >= 0 ? [x.buffer as ArrayBuffer] : [],
          ),
      }
    : undefined;
  const counts: LayerCounts = { expertCalls: 0, expertSlots: 0 };
  // one decoder layer over N windows of S tokens, in place on h [N*S, H] (the MTP layers run it on their own inputs)
  const decoderLayer = layerRunner(model, hooks, runner, counts);
  for (const layer of start ? v.layers.slice(start) : v.layers) {
    const before = hooks.onLayerOutput ? h.slice() : undefined;
    await decoderLayer(layer, h, N, S, tables);
    if (hooks.onLayerOutput) await hooks.onLayerOutput(layer.index, before!, h);
    if (opts.checkpoint && layer.index < last) await opts.checkpoint.save(layer.index, h);
    opts.onProgress?.(layer.index + 1, L);
    if (opts.stopAfterLayer !== undefined && layer.index >= opts.stopAfterLayer) return { nll: 0, scored: 0, ...counts };
  }
  if (opts.mtp && v.mtp?.length) {
    // the MTP layers on their own inputs (transformers' MtpLayer): depth d sees token t+d+1's embedding and the
    // hidden state of position t (the main model's last hidden state, then the previous depth's normed output), so
    // each window is one token shorter per depth. Positions start at 0: RoPE scores depend on offsets only.
    let prev: Float32Array = h.slice();
    let Sd = S;
    for (let d = 0; d < v.mtp.length && Sd > 1; d++) {
      const m = v.mtp[d]!;
      const S1 = Sd - 1;
      const T1 = N * S1;
      const shifted = windows.map((w) => w.subarray(d + 1, d + 1 + S1));
      const e = applyNorm(await embedTokens(model, shifted), H, await norm(model, m.enorm));
      const hn = await norm(model, m.hnorm);
      const cat = new Float32Array(T1 * 2 * H);
      for (let n = 0; n < N; n++)
        for (let t = 0; t < S1; t++) {
          const row = n * S1 + t;
          cat.set(e.subarray(row * H, (row + 1) * H), row * 2 * H);
          // previous depth's row t of window n (its windows are Sd long)
          cat.set(applyNorm(prev.subarray((n * Sd + t) * H, (n * Sd + t + 1) * H), H, hn), row * 2 * H + H);
        }
      const x = linear(cat, T1, await loadLinear(model.ckpt, { tensor: m.ehProj, outFeatures: H, inFeatures: 2 * H }));
      await decoderLayer(m.layer, x, N, S1, ropeTables({ ...v.rope }, S1, v.dims.maxPositions || S1));
      prev = applyNorm(x, H, await norm(model, m.headNorm));
      Sd = S1;
    }
  }
  const fn = await norm(model, v.finalNorm);
  const out = applyNorm(h, H, fn, h);
  const result: StreamResult = { nll: 0, scored: 0, ...counts };
  if (opts.scoreLogits) {
    const s = await scoreHeads([{ model, hidden: out }], windows);
    result.nll = s.nll[0]!;
    result.scored = s.scored;
  }
  if (opts.returnHidden) result.hidden = out;
  return result;
}

// the contract of api.ts
const conforms: StreamModel = streamModel;
void conforms;
