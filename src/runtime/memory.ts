/**
 * Peak-memory estimates for `--dry-run`: what a command will hold at its high-water mark, from shapes alone.
 *
 * Every pipeline streams one decoder layer at a time, so its peak is a sum of a few terms: the runtime itself
 * (Node plus the tfjs wasm module), the hidden states of the calibration tokens, one layer's weights in float32
 * (twice while a kernel runs: the JS copy and the tensor backend's), the writer's one tensor in flight, and the
 * pipeline's own working set (GPTQ Hessians, Gram matrices, ...), which the pipeline adds as named parts.
 *
 * The figures are estimates, compared with measured peak RSS by bench/memory.ts; the report says "estimated".
 */
import type { Checkpoint } from '../io/checkpoint.js';
import { DTYPE_BYTES } from '../io/dtype.js';
import type { LayerView, LinearRef, ModelView, SwiGLURefs } from '../model/types.js';
import { MAX_ROWS, swigluRowsPerChunk } from './chunks.js';
import { currentThreads } from './pool.js';

export interface MemoryPart {
  label: string;
  bytes: number;
}

export interface MemoryEstimate {
  /** estimated peak resident set size, bytes */
  peakBytes: number;
  /** the terms summed, largest first */
  parts: MemoryPart[];
}

/** Node with the CLI loaded, and what the tfjs wasm backend adds once started (process.memoryUsage().rss, measured). */
export const RUNTIME_BASE_BYTES = 100 * 2 ** 20;
export const TENSOR_BACKEND_BYTES = 35 * 2 ** 20;
/** the writer copies kept tensors in pieces of this size (src/model/rewrite.ts) */
export const COPY_CHUNK_BYTES = 64 * 2 ** 20;
/** one pool worker once its tensor backend is started: its V8 isolate plus the wasm module (RSS growth per idle worker,
 *  measured at 28 MiB on Node 20 with 2 and 4 workers) */
export const WORKER_BASE_BYTES = 30 * 2 ** 20;

const F32 = 4;
const linearBytes = (r: LinearRef) => r.outFeatures * r.inFeatures * F32;
const swigluBytes = (s: SwiGLURefs) => linearBytes(s.gate) + linearBytes(s.up) + linearBytes(s.down);

export function attentionBytesF32(ckpt: Checkpoint, layer: LayerView): number {
  let b = 0;
  for (const name of Object.values(layer.attention.tensors)) if (ckpt.has(name)) b += ckpt.shape(name).reduce((x, y) => x * y, 1) * F32;
  return b;
}

/**
 * One decoder layer's weights as float32. `allExperts`: a hook that sees the whole MoE layer (onMoeLayer) loads
 * every expert at once; otherwise the forward pass holds one expert at a time.
 */
export function layerBytesF32(ckpt: Checkpoint, layer: LayerView, allExperts: boolean): number {
  const b = layer.block;
  let bytes = attentionBytesF32(ckpt, layer);
  if (b.kind === 'dense') return bytes + swigluBytes(b.mlp);
  const one = b.experts.length ? swigluBytes(b.experts[0]!) : 0;
  bytes += allExperts ? b.experts.reduce((a, e) => a + swigluBytes(e), 0) : one;
  if (b.shared) bytes += swigluBytes(b.shared);
  return bytes + b.experts.length * (b.experts[0]?.gate.inFeatures ?? 0) * F32;
}

export function maxLayerBytesF32(ckpt: Checkpoint, view: ModelView, allExperts: boolean): number {
  return view.layers.reduce((m, l) => Math.max(m, layerBytesF32(ckpt, l, allExperts)), 0);
}

/**
 * The streamed forward pass over T tokens in windows of S. Host side: the hidden states and the layer's working
 * buffers (h, its normed copies, attention output, MoE output, per-expert gathers and the hooks' copies), measured
 * at about ten [T, H] float32 arrays. Backend side (its heap keeps its high-water mark): one expert chunk's
 * intermediates, about six [rows, I] arrays with rows capped by swigluRowsPerChunk, and a linear's row chunk in and
 * out. Plus one window's attention scores and one vocabulary chunk of the embedding or lm_head.
 */
export function forwardBytes(view: ModelView, tokens: number, seqLen: number): number {
  const { hidden: H, heads, vocab } = view.dims;
  const I = Math.max(view.dims.expertIntermediate, view.dims.denseIntermediate, view.dims.sharedIntermediate, 1);
  const S = Math.min(seqLen, tokens);
  const host = 10 * tokens * H * F32;
  const expertChunk = 6 * Math.min(tokens, swigluRowsPerChunk(I)) * I * F32;
  const linearChunk = 4 * Math.min(tokens, MAX_ROWS) * H * F32;
  const scores = heads * S * S * F32 * 2;
  const vocabChunk = Math.min(vocab, 8192) * H * F32;
  return host + expertChunk + linearChunk + scores + vocabChunk;
}

/** The writer: one kept tensor's copy piece or one produced tensor in its output dtype, whichever is larger, read
 *  buffer and write buffer both alive (x2). */
export function writerBytes(ckpt: Checkpoint, largestNewTensorBytes = 0): number {
  let largestCopy = 0;
  for (const n of ckpt.tensorNames) {
    const i = ckpt.info(n);
    largestCopy = Math.max(largestCopy, Math.min(COPY_CHUNK_BYTES, i.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[i.dtype]));
  }
  return 2 * Math.max(largestCopy, largestNewTensorBytes);
}

/** `tensorBackend: false` for commands that never start tfjs (a data-free prune, a plan applied by copying). */
export function estimatePeak(parts: MemoryPart[], opts: { tensorBackend?: boolean } = {}): MemoryEstimate {
  const base =
    opts.tensorBackend === false
      ? { label: 'runtime (node)', bytes: RUNTIME_BASE_BYTES }
      : { label: 'runtime (node + tfjs)', bytes: RUNTIME_BASE_BYTES + TENSOR_BACKEND_BYTES };
  const all = [base, ...parts.filter((p) => p.bytes > 0)];
  all.sort((a, b) => b.bytes - a.bytes);
  return { peakBytes: all.reduce((a, p) => a + p.bytes, 0), parts: all.map((p) => ({ label: p.label, bytes: Math.round(p.bytes) })) };
}

/** Phases that do not overlap in time (a scoring pass, then the write): the peak is the larger one's. */
export function maxEstimate(...phases: MemoryEstimate[]): MemoryEstimate {
  return phases.reduce((a, b) => (b.peakBytes > a.peakBytes ? b : a));
}

/**
 * Each worker's share when the forward pass runs its experts on the pool (threads > 1): the workers themselves, and
 * the experts in flight. Up to 2 x threads experts run ahead of the in-order combine; each is held three times (the
 * caller's loaded copy until its result is combined, the worker's structured clone, the worker backend's tensors),
 * with its gathered tokens in and its output back ([n, H] each; n taken as twice the balanced share T k / E, since
 * routing is rarely balanced), and each worker's backend keeps one expert chunk's intermediates at its high-water mark.
 */
export function workerParts(view: ModelView, tokens: number, threads = currentThreads()): MemoryPart[] {
  if (threads <= 1) return [];
  const moe = view.layers.map((l) => l.block).find((b) => b.kind === 'moe');
  const parts: MemoryPart[] = [{ label: `${threads} worker threads (isolate + tensor backend each)`, bytes: threads * WORKER_BASE_BYTES }];
  if (moe && moe.kind === 'moe' && moe.experts.length) {
    const { hidden: H, topK } = view.dims;
    const E = moe.experts.length;
    const I = moe.experts[0]!.gate.outFeatures;
    const n = Math.min(tokens, Math.ceil((2 * tokens * Math.max(topK, 1)) / E));
    const perExpert = 3 * swigluBytes(moe.experts[0]!) + 2 * n * H * F32;
    const chunk = 6 * Math.min(n, swigluRowsPerChunk(I)) * I * F32;
    parts.push({ label: `experts in flight on the workers (${2 * threads} ahead of the combine)`, bytes: 2 * threads * perExpert + threads * chunk });
  }
  return parts;
}

/** The usual parts of a pipeline that runs a calibration forward pass with a whole-layer hook. */
export function streamedPassParts(ckpt: Checkpoint, view: ModelView, tokens: number, seqLen: number, allExperts: boolean): MemoryPart[] {
  const layer = maxLayerBytesF32(ckpt, view, allExperts);
  return [
    { label: `largest layer's weights in float32${allExperts ? ' (all experts at once)' : ''}`, bytes: layer },
    { label: 'the same weights in the tensor backend while a kernel runs', bytes: layer },
    {
      label: `forward pass over ${tokens} calibration tokens (hidden states, attention scores, expert activations)`,
      bytes: forwardBytes(view, tokens, seqLen),
    },
    ...workerParts(view, tokens),
  ];
}

export function formatEstimate(e: MemoryEstimate): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  return `estimated peak memory ${mib(e.peakBytes)}: ${e.parts.map((p) => `${p.label} ${mib(p.bytes)}`).join('; ')}`;
}
