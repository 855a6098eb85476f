/**
 * One decoder layer of the streamed forward pass (stream.ts) and the token embedding before the first: loading a
 * layer's weights, attention (or Gated DeltaNet), the dense MLP or the MoE block with the hooks of api.ts. The
 * window shards of shard.ts run the same layer on their own windows on worker threads.
 *
 * Decoder layer (all supported families, HF modeling_*.py):
 *   h = h + r * attn(norm1(h));  h = h + r * mlp(norm2(h))      r = residual_multiplier (granite), else 1
 */
import type { Model } from '../model/open.js';
import { loadLinear, loadNorm, loadRouter, loadSwiGLU } from '../model/load.js';
import type { LayerView, LinearRef, NormRef } from '../model/types.js';
import { fail } from '../errors.js';
import type { Linear, MoeLayerEdit, MoeLayerInput, Routing, StreamHooks, SwiGLUWeights } from './api.js';
import { attention, type AttentionShape, type AttentionWeights } from './attention.js';
import { deltanet, type DeltaNetWeights } from './deltanet.js';
import { moeBlock, type ExpertRunner } from './moe.js';
import { applyNorm, linear, upload, type NormWeights } from './ops.js';
import type { ropeTables } from './rope.js';
import { route } from './routing.js';
import { swiglu } from './swiglu.js';

const EMBED_CHUNK_ROWS = 8192;

/** Embedding rows of every token, read chunk by chunk over the vocabulary. Result [T, H]. */
export async function embedTokens(model: Model, windows: readonly Int32Array[]): Promise<Float32Array> {
  const { hidden: H, vocab: V } = model.view.dims;
  const T = windows.reduce((a, w) => a + w.length, 0);
  const out = new Float32Array(T * H);
  // token positions grouped by id
  const ids = new Int32Array(T);
  let p = 0;
  for (const w of windows)
    for (const id of w) {
      if (!Number.isInteger(id) || id < 0 || id >= V)
        fail('InvalidData', `token id ${id} is outside the model's vocabulary of ${V} (tokenizer and model do not match)`);
      ids[p++] = id;
    }
  const order = Int32Array.from({ length: T }, (_, i) => i).sort((a, b) => ids[a]! - ids[b]!);
  const name = model.view.embed;
  let i = 0;
  while (i < T) {
    const first = ids[order[i]!]!;
    const v0 = first - (first % EMBED_CHUNK_ROWS);
    const v1 = Math.min(V, v0 + EMBED_CHUNK_ROWS);
    // read only the span of rows this chunk needs
    let j = i;
    let last = first;
    while (j < T && ids[order[j]!]! < v1) last = ids[order[j++]!]!;
    const rows = await model.ckpt.readF32(name, first * H, (last + 1) * H);
    for (let q = i; q < j; q++) {
      const t = order[q]!;
      const r = ids[t]! - first;
      out.set(rows.subarray(r * H, (r + 1) * H), t * H);
    }
    i = j;
    void v0;
  }
  const m = model.view.forward.embeddingMultiplier;
  if (m !== 1) for (let k = 0; k < out.length; k++) out[k]! *= m;
  return out;
}

export async function norm(model: Model, ref: NormRef): Promise<NormWeights> {
  const w = await loadNorm(model.ckpt, ref);
  return { kind: ref.kind, weight: ref.unitOffset ? plusOne(w.weight) : w.weight, ...(w.bias ? { bias: w.bias } : {}), eps: ref.eps };
}

/** a zero-centred norm weight's scale, 1 + w (qwen3_next's RMSNorm) */
function plusOne(w: Float32Array): Float32Array {
  return w.map((x) => 1 + x);
}

function ref(model: Model, tensor: string, outF: number, inF: number): LinearRef {
  // attention biases sit beside their weights (q_proj.bias); the view's roles name them as q_bias etc.
  const bias = tensor.endsWith('.weight') ? tensor.slice(0, -'.weight'.length) + '.bias' : undefined;
  return { tensor, outFeatures: outF, inFeatures: inF, ...(bias && model.ckpt.has(bias) ? { bias } : {}) };
}

/** How a layer's attention linears are read: from the checkpoint, or with some weights replaced (onAttention's rerun). */
type LoadLinear = (ref: LinearRef) => Promise<Linear>;

async function deltanetWeights(model: Model, layer: LayerView, load: LoadLinear = (r) => loadLinear(model.ckpt, r)): Promise<DeltaNetWeights> {
  const v = model.view;
  const dn = v.attention.deltanet;
  const t = layer.attention.tensors;
  if (!dn) fail('InvalidConfig', `${model.dir}: layer ${layer.index} is a linear-attention layer but ${v.family} has no Gated DeltaNet dimensions`);
  const H = v.dims.hidden;
  const need = (role: string): string => {
    const n = t[role];
    if (!n) fail('InvalidConfig', `${model.dir}: layer ${layer.index} linear attention has no '${role}' tensor`);
    return n;
  };
  const Kd = dn.numKHeads * dn.headK;
  const Vd = dn.numVHeads * dn.headV;
  const C = 2 * Kd + Vd;
  const host = (role: string, o: number) => load(ref(model, need(role), o, H));
  const vec = async (role: string, n: number): Promise<Float32Array> => {
    const x = await model.ckpt.readF32(need(role));
    if (x.length !== n) fail('InvalidShape', `${model.dir}: '${need(role)}' holds ${x.length} values, ${n} expected`);
    return x;
  };
  const qkvz = dn.layout === 'qkvz' ? await host('in_proj_qkvz', C + Vd) : stackRows([await host('in_proj_qkv', C), await host('in_proj_z', Vd)]);
  const ba =
    dn.layout === 'qkvz'
      ? await host('in_proj_ba', 2 * dn.numVHeads)
      : stackRows([await host('in_proj_b', dn.numVHeads), await host('in_proj_a', dn.numVHeads)]);
  return {
    kind: 'deltanet',
    qkvz: upload(qkvz),
    ba: upload(ba),
    conv: await vec('conv1d', C * dn.convKernel),
    dtBias: await vec('dt_bias', dn.numVHeads),
    aLog: await vec('A_log', dn.numVHeads),
    norm: await vec('norm', dn.headV),
    out: upload(await load(ref(model, need('out_proj'), H, Vd))),
  };
}

async function attentionWeights(model: Model, layer: LayerView, load: LoadLinear = (r) => loadLinear(model.ckpt, r)): Promise<AttentionWeights> {
  const v = model.view;
  const t = layer.attention.tensors;
  const { hidden: H, heads, kvHeads, headDim: d } = v.dims;
  const need = (role: string): string => {
    const n = t[role];
    if (!n) fail('InvalidConfig', `${model.dir}: layer ${layer.index} attention has no '${role}' tensor`);
    return n;
  };
  const lin = async (role: string, o: number, i: number) => upload(await load(ref(model, need(role), o, i)));
  const rmsEps = (ref: NormRef) => ref.eps;
  if (layer.attention.kind === 'mla') {
    const m = v.attention.mla!;
    const dq = m.qkNopeHeadDim + m.qkRopeHeadDim;
    // MLA's inner norms are built with the RMSNorm default eps 1e-6 (modeling_deepseek_v3.py), not rms_norm_eps
    const inner = async (role: string): Promise<NormWeights> => ({ kind: 'rms', weight: await model.ckpt.readF32(need(role)), eps: 1e-6 });
    const w: AttentionWeights = {
      kind: 'mla',
      kvA: await lin('kv_a_proj_with_mqa', m.kvLoraRank + m.qkRopeHeadDim, H),
      kvANorm: await inner('kv_a_layernorm'),
      kvB: await lin('kv_b_proj', heads * (m.qkNopeHeadDim + m.vHeadDim), m.kvLoraRank),
      o: await lin('o_proj', H, heads * m.vHeadDim),
    };
    if (m.qLoraRank === null) w.q = await lin('q_proj', heads * dq, H);
    else {
      w.qA = await lin('q_a_proj', m.qLoraRank, H);
      w.qANorm = await inner('q_a_layernorm');
      w.qB = await lin('q_b_proj', heads * dq, m.qLoraRank);
    }
    return w;
  }
  const host = async (role: string, o: number, i: number) => load(ref(model, need(role), o, i));
  const w: AttentionWeights = {
    kind: 'gqa',
    // with an output gate, q_proj holds [query | gate] per head (qwen3_next)
    qkv: upload(
      stackRows([
        await host('q_proj', heads * d * (v.attention.outputGate ? 2 : 1), H),
        await host('k_proj', kvHeads * d, H),
        await host('v_proj', kvHeads * d, H),
      ]),
    ),
    o: await lin('o_proj', H, heads * d),
  };
  if (v.attention.qkNorm) {
    const eps = rmsEps(layer.inputNorm);
    // zero-centred like the layer norms where the family's are (qwen3_next)
    const qk = async (role: string) => {
      const x = await model.ckpt.readF32(need(role));
      return layer.inputNorm.unitOffset ? plusOne(x) : x;
    };
    w.qNorm = { kind: 'rms', weight: await qk('q_norm'), eps };
    w.kNorm = { kind: 'rms', weight: await qk('k_norm'), eps };
  }
  if (v.attention.sinks) w.sinks = await model.ckpt.readF32(need('sinks'));
  return w;
}

/** linears over the same input stacked into one [sum out, in] (biases stacked, zeros where one has none) */
function stackRows(ls: Linear[]): Linear {
  const inF = ls[0]!.in;
  const out = ls.reduce((a, l) => a + l.out, 0);
  const w = new Float32Array(out * inF);
  const anyBias = ls.some((l) => l.b);
  const b = anyBias ? new Float32Array(out) : undefined;
  let r = 0;
  for (const l of ls) {
    w.set(l.w, r * inF);
    if (b && l.b) b.set(l.b, r);
    r += l.out;
  }
  return { out, in: inF, w, ...(b ? { b } : {}) };
}

function disposeAttention(w: AttentionWeights | DeltaNetWeights): void {
  for (const x of Object.values(w)) if (x && typeof x === 'object' && 'dispose' in x) (x as { dispose(): void }).dispose();
}

function addScaled(h: Float32Array, y: Float32Array, r: number): void {
  if (r === 1) for (let i = 0; i < h.length; i++) h[i]! += y[i]!;
  else for (let i = 0; i < h.length; i++) h[i]! += r * y[i]!;
}

function ropeStyle(model: Model): 'half' | 'interleaved' {
  // deepseek_v3 with rope_interleave=false rotates NeoX halves (modeling_deepseek_v3.py apply_rotary_pos_emb)
  if (model.view.family === 'deepseek_v3' && model.view.config['rope_interleave'] === false) return 'half';
  return model.view.rope.style;
}

/** One decoder layer over N windows of S tokens, in place on h [N*S, H]. */
export type DecoderLayer = (layer: LayerView, h: Float32Array, N: number, S: number, tables: ReturnType<typeof ropeTables>) => Promise<void>;

export interface LayerCounts {
  expertCalls: number;
  expertSlots: number;
}

/**
 * The decoder layer of streamModel for one model, its hooks and expert runner (undefined: experts inline); the
 * expert calls it computes are added to `counts`. A window shard (shard.ts) runs it without hooks on its windows.
 */
export function layerRunner(model: Model, hooks: StreamHooks, runner: ExpertRunner | undefined, counts: LayerCounts): DecoderLayer {
  const v = model.view;
  const H = v.dims.hidden;
  const style = ropeStyle(model);
  const r = v.forward.residualMultiplier;
  const act = v.forward.activation;
  return async (layer, h, N, S, tables) => {
    const T = N * S;
    // ---- attention
    const n1 = await norm(model, layer.inputNorm);
    const xa = applyNorm(h, H, n1);
    const aw = layer.attention.kind === 'deltanet' ? await deltanetWeights(model, layer) : await attentionWeights(model, layer);
    const li = hooks.onLinearInput;
    if (li) li({ layer: layer.index, role: 'attention.in', x: xa, rows: T, cols: H, r0: 0 });
    const shape: AttentionShape = {
      heads: v.dims.heads,
      kvHeads: v.dims.kvHeads,
      headDim: v.dims.headDim,
      rope: tables,
      ropeStyle: style,
      spec: v.attention,
      ...(layer.slidingWindow !== undefined ? { window: layer.slidingWindow } : {}),
      ...(layer.attentionChunk !== undefined ? { chunk: layer.attentionChunk } : {}),
      ...(layer.nope ? { nope: true } : {}),
      ...(li
        ? {
            onOInput: (a: Float32Array, rows: number, r0: number) =>
              li({ layer: layer.index, role: 'attention.o_proj.in', x: a, rows, cols: a.length / rows, r0 }),
          }
        : {}),
    };
    const run = (w: typeof aw, sh: AttentionShape) =>
      w.kind === 'deltanet' ? deltanet(xa, N, S, H, w, v.attention.deltanet!, sh.onOInput) : attention(xa, N, S, H, w, sh);
    let a: Float32Array;
    try {
      a = run(aw, shape);
    } finally {
      disposeAttention(aw);
    }
    if (hooks.onAttention) {
      // the same attention on the same input with some linears' weights replaced (no input hooks on the reruns)
      const { onOInput: _, ...quiet } = shape;
      const rerun = async (weights: ReadonlyMap<string, Float32Array>): Promise<Float32Array> => {
        const load: LoadLinear = async (rf) => {
          const l = await loadLinear(model.ckpt, rf);
          const w = weights.get(rf.tensor);
          return w ? { ...l, w } : l;
        };
        const w2 = layer.attention.kind === 'deltanet' ? await deltanetWeights(model, layer, load) : await attentionWeights(model, layer, load);
        try {
          return run(w2, quiet);
        } finally {
          disposeAttention(w2);
        }
      };
      await hooks.onAttention({ layer, T, output: a, residualScale: r, rerun });
    }
    addScaled(h, a, r);
    // ---- MLP / MoE
    const n2 = await norm(model, layer.postAttnNorm);
    const x = applyNorm(h, H, n2, xa);
    const block = layer.block;
    if (block.kind === 'dense') {
      if (li) li({ layer: layer.index, role: 'mlp.in', x, rows: T, cols: H, r0: 0 });
      const y = swiglu(
        await loadSwiGLU(model.ckpt, block.mlp),
        x,
        T,
        act,
        li ? (a, rows, r0) => li({ layer: layer.index, role: 'mlp.down.in', x: a, rows, cols: a.length / rows, r0 }) : undefined,
      );
      addScaled(h, y, r);
    } else {
      const E = block.experts.length;
      let router = await loadRouter(model.ckpt, block.router);
      let shared: (SwiGLUWeights & { gateWeight?: Float32Array }) | undefined;
      if (block.shared) {
        shared = await loadSwiGLU(model.ckpt, block.shared);
        if (block.shared.gateWeight) shared.gateWeight = await model.ckpt.readF32(block.shared.gateWeight);
      }
      const routerLogits = (rt: typeof router): Float32Array => linear(x, T, { out: E, in: H, w: rt.w, ...(rt.bias ? { b: rt.bias } : {}) });
      let logits = routerLogits(router);
      let routed = route(v.routing, logits, T, E, router.correctionBias);
      let experts: SwiGLUWeights[] | undefined;
      if (hooks.onMoeLayer) {
        experts = [];
        for (const e of block.experts) experts.push(await loadSwiGLU(model.ckpt, e));
        const input: MoeLayerInput = {
          layer,
          T,
          hidden: H,
          x,
          logits,
          probs: routed.probs,
          routing: routed.routing,
          experts,
          ...(shared ? { shared } : {}),
          router,
        };
        const edit: MoeLayerEdit | void = await hooks.onMoeLayer(input);
        if (edit) {
          if (edit.experts) {
            if (edit.experts.length !== E) fail('ComputeError', `layer ${layer.index}: an edit must keep ${E} experts (got ${edit.experts.length})`);
            experts = edit.experts;
          }
          if (edit.shared) shared = { ...edit.shared, ...(shared?.gateWeight ? { gateWeight: shared.gateWeight } : {}) };
          if (edit.router) {
            router = edit.router;
            logits = routerLogits(router);
            routed = route(v.routing, logits, T, E, router.correctionBias);
          }
        }
      }
      let routing: Routing = routed.routing;
      routing = hooks.onRouting?.(layer.index, routing, logits, routed.probs) ?? routing;
      const loaded = experts;
      const res = await moeBlock(
        x,
        T,
        H,
        routing,
        (e) => (loaded ? loaded[e]! : loadSwiGLU(model.ckpt, block.experts[e]!)),
        E,
        act,
        shared ? { w: shared, ...(shared.gateWeight ? { gate: shared.gateWeight } : {}) } : undefined,
        hooks.onExpertOutput ? (o) => hooks.onExpertOutput!(layer.index, o.expert, o.tokens, o.slots, o.out) : undefined,
        li
          ? (e, a, rows, tokens, r0) =>
              li({
                layer: layer.index,
                role: e < 0 ? 'shared.down.in' : 'experts.down.in',
                x: a,
                rows,
                cols: a.length / rows,
                r0,
                ...(e >= 0 ? { expert: e, tokens: tokens! } : {}),
              })
          : undefined,
        runner,
        v.routing.weightsInput,
      );
      counts.expertCalls += res.calls;
      counts.expertSlots += T * routing.k;
      const residualIn = hooks.onMoeLayerDone ? h.slice() : undefined;
      addScaled(h, res.y, r);
      if (hooks.onMoeLayerDone) {
        await hooks.onMoeLayerDone({ layer, T, hidden: H, routing, x, slotNorm: res.slotNorm, residualIn: residualIn!, residualOut: h });
      }
    }
  };
}
