/**
 * The sparse MoE block: y = sum_k w_k * expert_{idx_k}(x) (+ shared expert, gated by sigmoid(x . g) where the
 * family has a gate: qwen2_moe's shared_expert_gate; deepseek adds its shared experts ungated).
 * Tokens are grouped per expert and each expert runs once over all its tokens (one matmul per projection),
 * which is what makes the forward pass fast: the per-token loop of HF's eager code would be op-bound here.
 * Slots with weight exactly 0 are not computed (dynamic expert skipping marks skipped slots that way).
 */
import type { ActivationSpec } from '../model/types.js';
import type { Routing, SwiGLUWeights } from './api.js';
import { swiglu } from './swiglu.js';
import type { ExpertResult } from './tasks.js';

/**
 * Runs expert MLPs somewhere else (the worker pool): `run(e, w, x, n)` for expert e (-1: the shared expert) with
 * its tokens x [n, in]. Experts run concurrently; their outputs are combined in expert order, as without a runner.
 */
export interface ExpertRunner {
  run(e: number, w: SwiGLUWeights, x: Float32Array, n: number, wantDown: boolean): Promise<ExpertResult>;
  /** experts started ahead of the one being combined */
  window: number;
}

export interface ExpertOutput {
  expert: number;
  /** token indices (rows of x) routed to this expert, ascending */
  tokens: Int32Array;
  /** slot of each token's routing row that chose this expert */
  slots: Int32Array;
  /** [n, H] unweighted expert output f_j(x) */
  out: Float32Array;
}

export interface MoeBlockResult {
  /** [T, H] block output (routed + shared) */
  y: Float32Array;
  /** [T, k] ||f_j(x)||_2 of each slot's expert output (0 for skipped slots) */
  slotNorm: Float32Array;
  /** expert calls computed (token-expert pairs) */
  calls: number;
}

/** Tokens routed to each expert (non-zero weight), in token order. */
export function tokensPerExpert(r: Routing, E: number): { tokens: Int32Array; slots: Int32Array }[] {
  const counts = new Int32Array(E);
  for (let i = 0; i < r.T * r.k; i++) if (r.w[i] !== 0) counts[r.idx[i]!]!++;
  const res = Array.from({ length: E }, (_, e) => ({ tokens: new Int32Array(counts[e]!), slots: new Int32Array(counts[e]!) }));
  const fill = new Int32Array(E);
  for (let t = 0; t < r.T; t++) {
    for (let s = 0; s < r.k; s++) {
      const i = t * r.k + s;
      if (r.w[i] === 0) continue;
      const e = r.idx[i]!;
      const p = fill[e]!++;
      res[e]!.tokens[p] = t;
      res[e]!.slots[p] = s;
    }
  }
  return res;
}

export async function moeBlock(
  x: Float32Array,
  T: number,
  H: number,
  routing: Routing,
  expert: (e: number) => Promise<SwiGLUWeights> | SwiGLUWeights,
  E: number,
  activation: ActivationSpec,
  shared?: { w: SwiGLUWeights; gate?: Float32Array },
  onExpertOutput?: (o: ExpertOutput) => void,
  /** down-projection inputs: expert index (-1 = shared expert), rows (token indices for routed experts) */
  onDownInput?: (expert: number, a: Float32Array, rows: number, tokens: Int32Array | null, r0: number) => void,
  runner?: ExpertRunner,
  /**
   * llama4: the slot weight scales the expert's input and its output is added unweighted (y += f_j(w x)); the
   * expert output reported (onExpertOutput, slotNorm) is then f_j(w x), the expert's whole contribution
   */
  weightsInput = false,
): Promise<MoeBlockResult> {
  const y = new Float32Array(T * H);
  const slotNorm = new Float32Array(T * routing.k);
  const groups = tokensPerExpert(routing, E);
  let calls = 0;
  const gather = (e: number): Float32Array => {
    const { tokens, slots } = groups[e]!;
    const n = tokens.length;
    const xe = new Float32Array(n * H);
    for (let i = 0; i < n; i++) {
      const row = x.subarray(tokens[i]! * H, (tokens[i]! + 1) * H);
      if (!weightsInput) xe.set(row, i * H);
      else {
        // float32 products, as torch's routed_in = hidden_states * router_scores
        const wt = routing.w[tokens[i]! * routing.k + slots[i]!]!;
        for (let j = 0; j < H; j++) xe[i * H + j] = Math.fround(row[j]! * wt);
      }
    }
    return xe;
  };
  // with a runner, experts run ahead of the in-order combine by up to runner.window (bounding the weights and
  // outputs alive at once); without one, one at a time
  const pending: (Promise<ExpertResult> | undefined)[] = [];
  let next = 0;
  const startNext = () => {
    while (runner && next < E && next < pendingLimit) {
      const e = next++;
      const n = groups[e]!.tokens.length;
      const p = n ? (async () => runner.run(e, await expert(e), gather(e), n, !!onDownInput))() : undefined;
      p?.catch(() => undefined); // awaited in order below; a failure must not surface as unhandled first
      pending[e] = p;
    }
  };
  let pendingLimit = runner ? runner.window : 0;
  const sharedRun = runner && shared ? runner.run(-1, shared.w, x, T, !!onDownInput) : undefined;
  sharedRun?.catch(() => undefined);
  startNext();
  for (let e = 0; e < E; e++) {
    const { tokens, slots } = groups[e]!;
    const n = tokens.length;
    if (n === 0) continue;
    let out: Float32Array;
    if (runner) {
      pendingLimit = e + 1 + runner.window;
      startNext();
      const r = (await pending[e])!;
      pending[e] = undefined;
      if (onDownInput) for (const c of r.down!) onDownInput(e, c.a, c.rows, tokens, c.r0);
      out = r.out;
    } else {
      out = swiglu(await expert(e), gather(e), n, activation, onDownInput ? (a, rows, r0) => onDownInput(e, a, rows, tokens, r0) : undefined);
    }
    calls += n;
    for (let i = 0; i < n; i++) {
      const t = tokens[i]!;
      const wt = weightsInput ? 1 : routing.w[t * routing.k + slots[i]!]!;
      let ss = 0;
      const o = i * H;
      const yo = t * H;
      for (let j = 0; j < H; j++) {
        const v = out[o + j]!;
        ss += v * v;
        y[yo + j]! += wt * v;
      }
      slotNorm[t * routing.k + slots[i]!] = Math.sqrt(ss);
    }
    onExpertOutput?.({ expert: e, tokens, slots, out });
  }
  if (shared) {
    let s: Float32Array;
    if (sharedRun) {
      const r = await sharedRun;
      if (onDownInput) for (const c of r.down!) onDownInput(-1, c.a, c.rows, null, c.r0);
      s = r.out;
    } else s = swiglu(shared.w, x, T, activation, onDownInput ? (a, rows, r0) => onDownInput(-1, a, rows, null, r0) : undefined);
    for (let t = 0; t < T; t++) {
      let g = 1;
      if (shared.gate) {
        let z = 0;
        for (let j = 0; j < H; j++) z += x[t * H + j]! * shared.gate[j]!;
        g = 1 / (1 + Math.exp(-z));
      }
      for (let j = 0; j < H; j++) y[t * H + j]! += g * s[t * H + j]!;
    }
  }
  return { y, slotNorm, calls };
}
