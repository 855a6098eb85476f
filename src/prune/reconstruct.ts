/**
 * Reconstruction-loss expert selection (Lu et al. 2024, "Not All Experts are Equal", section 3.1): keep the set S
 * of r experts that minimises ‖F(X) − F_S(X)‖_F, where F is the MoE block output on calibration hidden states and
 * F_S the output when the dropped experts' logits are -inf, i.e. every token re-routed among the kept experts by
 * the family's own rule (top-k renormalised or not, groups, correction bias) — exactly what the pruned model does.
 *
 * A token's output is Σ_j w_j f_j(x), so the error of a set is Σ_t d_tᵀ G_t d_t with d_t = w_t − w_t^S (at most
 * 2k non-zeros) and G_t the Gram matrix of the experts' outputs at token t. Every expert runs once on a token
 * sample (routed or not: after pruning a token may reach any kept expert), G_t is formed once per layer, and each
 * candidate subset then costs one routing of the sample plus O(T k²): cheap enough for exact enumeration of
 * C(N, r) subsets when that is small (8 experts: at most 70) and a beam search for 64+ experts.
 */
import * as tf from '@tensorflow/tfjs-core';
import { fail } from '../errors.js';
import type { RoutingRule } from '../model/types.js';
import type { MoeLayerInput, Routing, SwiGLUWeights } from '../runtime/api.js';
import { RECONSTRUCT_DEFAULTS } from './options.js';
import type { GroupPlan } from './plan.js';

/** The runtime functions this search needs (injected: pure code here, the runtime's routing and expert kernels). */
export interface ReconstructDeps {
  route(rule: RoutingRule, logits: Float32Array, T: number, E: number, correctionBias?: Float32Array): { routing: Routing };
  /** one expert's output on T tokens x [T, H] -> [T, H] */
  expert(w: SwiGLUWeights, x: Float32Array, T: number): Float32Array | Promise<Float32Array>;
}

export interface ReconstructOptions {
  /** calibration tokens sampled per layer (evenly spaced) */
  maxTokens?: number;
  /** enumerate every subset when there are at most this many */
  exactLimit?: number;
  /** beam width of the removal search otherwise */
  beam?: number;
  /**
   * tokens the beam search scores each candidate on (an even subset of the sample; the chosen set's error is
   * reported on the whole sample). Routing the sample dominates a candidate's cost, and a search over 64 experts
   * scores thousands of candidates.
   */
  searchTokens?: number;
  /** one-for-one swap rounds after the beam search (each scores keep x (N - keep) candidates) */
  swapRounds?: number;
}

export { RECONSTRUCT_DEFAULTS };

export interface ReconstructResult {
  kept: number[];
  /** ‖F − F_S‖² / ‖F‖² of the kept set on the token sample */
  relError: number;
  /** per expert: relative error when it alone is dropped (higher = more important) */
  scores: Float64Array;
  /** REAP score on the sample, the search's seed */
  reap: Float64Array;
  search: 'exact' | 'beam';
  evaluated: number;
  tokens: number;
}

export function binomial(n: number, r: number): number {
  if (r < 0 || r > n) return 0;
  r = Math.min(r, n - r);
  let c = 1;
  for (let i = 1; i <= r; i++) c = (c * (n - r + i)) / i;
  return Math.round(c);
}

/** Per-layer state of the search: the token sample, Gram matrices of expert outputs, and the original weights. */
export class LayerReconstruction {
  private constructor(
    readonly E: number,
    readonly T: number,
    private readonly logits: Float32Array,
    /** [T, E, E] Gram matrices (float32, as the matmul gives them; sums are accumulated in float64) */
    private readonly gram: Float32Array,
    /** [T, E] original block weights (dense) */
    readonly w0: Float64Array,
    /** [T, k] the same, sparse: experts and weights */
    private readonly idx0: Int32Array,
    private readonly wv0: Float64Array,
    readonly norm0: number,
    readonly reap: Float64Array,
    private readonly rule: RoutingRule,
    private readonly correctionBias: Float32Array | undefined,
    private readonly deps: ReconstructDeps,
  ) {}

  static async build(input: MoeLayerInput, rule: RoutingRule, deps: ReconstructDeps, maxTokens: number): Promise<LayerReconstruction> {
    const E = input.experts.length;
    const H = input.hidden;
    const total = input.T;
    const T = Math.min(total, maxTokens);
    if (T === 0) fail('InvalidData', 'reconstruct: no calibration tokens reached this layer');
    // evenly spaced sample: keeps every window represented instead of the first few
    const pick = new Int32Array(T);
    for (let i = 0; i < T; i++) pick[i] = Math.floor((i * total) / T);
    const x = new Float32Array(T * H);
    const logits = new Float32Array(T * E);
    const w0 = new Float64Array(T * E);
    const k = input.routing.k;
    const idx0 = new Int32Array(T * k);
    const wv0 = new Float64Array(T * k);
    for (let i = 0; i < T; i++) {
      const t = pick[i];
      x.set(input.x.subarray(t * H, (t + 1) * H), i * H);
      logits.set(input.logits.subarray(t * E, (t + 1) * E), i * E);
      for (let s = 0; s < k; s++) {
        const j = input.routing.idx[t * k + s];
        w0[i * E + j] += input.routing.w[t * k + s];
        idx0[i * k + s] = j;
        wv0[i * k + s] = input.routing.w[t * k + s];
      }
    }
    const gram = new Float32Array(T * E * E);
    const CHUNK = Math.max(1, Math.floor(2 ** 25 / Math.max(1, E * H)));
    const outs: Float32Array[] = new Array(E);
    for (let c0 = 0; c0 < T; c0 += CHUNK) {
      const n = Math.min(CHUNK, T - c0);
      const xc = x.subarray(c0 * H, (c0 + n) * H);
      for (let j = 0; j < E; j++) outs[j] = await deps.expert(input.experts[j], xc, n);
      // per token t: G_t = F_t F_tᵀ with F_t [E, H] the experts' outputs at t, as one batched matmul
      const stacked = new Float32Array(n * E * H);
      for (let t = 0; t < n; t++) for (let j = 0; j < E; j++) stacked.set(outs[j].subarray(t * H, (t + 1) * H), (t * E + j) * H);
      const g = tf.tidy(() => {
        const f = tf.tensor3d(stacked, [n, E, H]);
        return tf.matMul(f, f, false, true);
      });
      gram.set(g.dataSync() as Float32Array, c0 * E * E);
      g.dispose();
    }
    let norm0 = 0;
    const reap = new Float64Array(E);
    const routed = new Float64Array(E);
    for (let t = 0; t < T; t++) {
      const g = t * E * E;
      for (let a = 0; a < E; a++) {
        const wa = w0[t * E + a];
        if (wa === 0) continue;
        reap[a] += wa * Math.sqrt(Math.max(gram[g + a * E + a], 0));
        routed[a]++;
        for (let b = 0; b < E; b++) norm0 += wa * w0[t * E + b] * gram[g + a * E + b];
      }
    }
    for (let j = 0; j < E; j++) reap[j] = routed[j] > 0 ? reap[j] / routed[j] : 0;
    const corr = input.router.correctionBias;
    return new LayerReconstruction(E, T, logits, gram, w0, idx0, wv0, norm0, reap, rule, corr, deps);
  }

  /**
   * ‖F − F_S‖² / ‖F‖² with every token re-routed among `kept` (ascending original indices); with stride > 1 on
   * every stride-th token of the sample only.
   */
  error(kept: readonly number[], rule: RoutingRule = this.rule, stride = 1): number {
    const { E } = this;
    const T = Math.ceil(this.T / stride);
    const r = kept.length;
    const sub = new Float32Array(T * r);
    for (let i = 0; i < T; i++) for (let c = 0; c < r; c++) sub[i * r + c] = this.logits[i * stride * E + kept[c]];
    const bias = this.correctionBias ? Float32Array.from(kept, (j) => this.correctionBias![j]) : undefined;
    const { routing } = this.deps.route(rule, sub, T, r, bias);
    const k = routing.k;
    const k0 = this.idx0.length / this.T;
    // d = w_t − w_t^S over the (at most k0 + k) experts either routing uses; pos marks membership
    const d = new Float64Array(k0 + k);
    const nz = new Int32Array(k0 + k);
    const pos = new Int32Array(E).fill(-1);
    const gram = this.gram;
    let err = 0;
    let norm = 0;
    for (let i = 0; i < T; i++) {
      const t = i * stride;
      let m = 0;
      for (let s = 0; s < k0; s++) {
        const j = this.idx0[t * k0 + s];
        pos[j] = m;
        nz[m] = j;
        d[m++] = this.wv0[t * k0 + s];
      }
      const g = t * E * E;
      if (stride > 1) {
        for (let p = 0; p < m; p++) for (let q = 0; q < m; q++) norm += d[p] * d[q] * gram[g + nz[p] * E + nz[q]];
      }
      for (let s = 0; s < k; s++) {
        const j = kept[routing.idx[i * k + s]];
        let p = pos[j];
        if (p < 0) {
          p = m++;
          pos[j] = p;
          nz[p] = j;
          d[p] = 0;
        }
        d[p] -= routing.w[i * k + s];
      }
      for (let p = 0; p < m; p++) {
        const dp = d[p];
        if (dp === 0) continue;
        const row = g + nz[p] * E;
        for (let q = 0; q < m; q++) err += dp * d[q] * gram[row + nz[q]];
      }
      for (let p = 0; p < m; p++) pos[nz[p]] = -1;
    }
    if (stride === 1) norm = this.norm0;
    return norm > 0 ? err / norm : err;
  }
}

function* combinations(n: number, r: number): Generator<number[]> {
  const c = Array.from({ length: r }, (_, i) => i);
  for (;;) {
    yield [...c];
    let i = r - 1;
    while (i >= 0 && c[i] === n - r + i) i--;
    if (i < 0) return;
    c[i]++;
    for (let j = i + 1; j < r; j++) c[j] = c[j - 1] + 1;
  }
}

/** Does a kept set respect the per-group count of the pruned model? */
function fitsGroups(kept: readonly number[], groups?: GroupPlan): boolean {
  if (!groups || groups.nGroup <= 1) return true;
  const counts = new Map<number, number>();
  for (const j of kept) counts.set(Math.floor(j / groups.groupSize), (counts.get(Math.floor(j / groups.groupSize)) ?? 0) + 1);
  for (const c of counts.values()) if (c !== groups.perGroup) return false;
  return counts.size * groups.perGroup === kept.length;
}

const key = (s: readonly number[]) => s.join(',');

/**
 * Choose the kept set of one layer. `rule` is the pruned model's routing rule (groups possibly rewritten).
 */
export async function selectByReconstruction(
  input: MoeLayerInput,
  keep: number,
  rule: RoutingRule,
  deps: ReconstructDeps,
  groups?: GroupPlan,
  opts: ReconstructOptions = {},
): Promise<ReconstructResult> {
  // an option given as undefined (an absent CLI flag) keeps its default
  const o: Required<ReconstructOptions> = { ...RECONSTRUCT_DEFAULTS };
  for (const [k, v] of Object.entries(opts) as [keyof ReconstructOptions, number | undefined][]) {
    if (v === undefined) continue;
    if (!Number.isInteger(v) || v < 1) fail('Usage', `reconstruct option ${k} must be a positive whole number, got ${v}`);
    o[k] = v;
  }
  const lr = await LayerReconstruction.build(input, rule, deps, o.maxTokens);
  const E = lr.E;
  const all = Array.from({ length: E }, (_, j) => j);
  let evaluated = 0;
  let stride = 1;
  const cache = new Map<string, number>();
  const errOf = (s: number[]): number => {
    const kk = key(s);
    let e = cache.get(kk);
    if (e === undefined) {
      e = lr.error(s, rule, stride);
      evaluated++;
      cache.set(kk, e);
    }
    return e;
  };

  // per-expert score for the report: the error of dropping that expert alone (groups ignored: one removal
  // leaves them uneven)
  const looRule: RoutingRule = { ...rule, groups: undefined };
  const scores = new Float64Array(E);
  for (let j = 0; j < E; j++)
    scores[j] = lr.error(
      all.filter((i) => i !== j),
      looRule,
    );

  let best: number[] = [];
  let bestErr = Infinity;
  let search: ReconstructResult['search'];
  const constrained = !!groups && groups.nGroup > 1;
  if (binomial(E, keep) <= o.exactLimit) {
    search = 'exact';
    for (const c of combinations(E, keep)) {
      if (constrained && !fitsGroups(c, groups)) continue;
      const e = errOf(c);
      if (e < bestErr) {
        bestErr = e;
        best = c;
      }
    }
  } else {
    search = 'beam';
    stride = Math.max(1, Math.floor(lr.T / Math.max(1, o.searchTokens)));
    // remove one expert at a time, keeping the `beam` best partial sets
    let beam: number[][] = [all];
    const perGroupMin = constrained ? groups!.perGroup : 0;
    for (let size = E; size > keep; size--) {
      const next = new Map<string, { s: number[]; e: number }>();
      for (const s of beam) {
        for (const j of s) {
          if (constrained) {
            const g = Math.floor(j / groups!.groupSize);
            const left = s.filter((i) => Math.floor(i / groups!.groupSize) === g).length;
            if (left <= perGroupMin) continue;
          }
          const cand = s.filter((i) => i !== j);
          const kk = key(cand);
          if (!next.has(kk)) next.set(kk, { s: cand, e: errOf(cand) });
        }
      }
      beam = [...next.values()]
        .sort((a, b) => a.e - b.e)
        .slice(0, o.beam)
        .map((v) => v.s);
    }
    best = beam[0];
    bestErr = errOf(best);
    // REAP's set as a second seed, then one-for-one swaps while they help
    const seed = [...all].sort((a, b) => lr.reap[b] - lr.reap[a] || a - b);
    const reapSet = constrained ? undefined : seed.slice(0, keep).sort((a, b) => a - b);
    if (reapSet) {
      const e = errOf(reapSet);
      if (e < bestErr) {
        best = reapSet;
        bestErr = e;
      }
    }
    for (let improved = true, rounds = 0; improved && rounds < o.swapRounds; rounds++) {
      improved = false;
      const out = all.filter((j) => !best.includes(j));
      let swap: number[] | undefined;
      for (const a of best) {
        for (const b of out) {
          if (constrained && Math.floor(a / groups!.groupSize) !== Math.floor(b / groups!.groupSize)) continue;
          const cand = best.map((i) => (i === a ? b : i)).sort((p, q) => p - q);
          const e = errOf(cand);
          if (e < bestErr - 1e-12) {
            bestErr = e;
            swap = cand;
          }
        }
      }
      if (swap) {
        best = swap;
        improved = true;
      }
    }
  }
  if (!Number.isFinite(bestErr)) fail('ComputeError', `reconstruct: no kept set of ${keep} experts fits the routing constraints`);
  if (stride > 1) bestErr = lr.error(best, rule);
  return { kept: best, relError: bestErr, scores, reap: lr.reap, search, evaluated, tokens: lr.T };
}
