/**
 * What is in a checkpoint: family, layer kinds, experts and routing, parameter counts (total, routed experts,
 * shared experts, active per token), bytes by dtype, shards and on-disk formats. Counts come from the view's
 * logical shapes (out x in per linear) so quantized experts count the parameters they represent, not bytes.
 */
import { basename } from 'node:path';
import { DTYPE_BYTES } from '../io/dtype.js';
import { integerLiteralsFor } from '../model/configjson.js';
import { formatOf, linearTensors } from '../model/load.js';
import { getArchitecture } from '../model/registry.js';
import type { Model } from '../model/open.js';
import { layerOfTensor } from '../model/rewrite.js';
import type { LinearRef, RoutingRule, SwiGLURefs } from '../model/types.js';
import type { BackendReport } from '../runtime/backend.js';

export interface InspectReport {
  model: string;
  family: string;
  /** config.json's model_type when it is an alias read as `family` (kimi_k2 as deepseek_v3) */
  modelType?: string;
  architectures: string[];
  layers: { total: number; moe: number; dense: number; moeLayers: number[]; denseLayers: number[] };
  experts: {
    /** routed experts per MoE layer (a per-layer checkpoint: the largest count) */
    routed: number;
    /** a per-layer checkpoint (src/model/perlayer.ts): each MoE layer's count, in layer order */
    perLayer?: number[];
    topK: number;
    /** shared experts per MoE layer (DeepSeek n_shared_experts; 1 for Qwen2-MoE's single shared expert) */
    shared: number;
    intermediate: number;
    sharedIntermediate: number;
    layout: 'per-expert' | 'fused';
  };
  routing: RoutingRule;
  attention: { kind: string; heads: number; kvHeads: number; headDim: number };
  /** hybrids (qwen3_next, qwen3_5_moe): the Gated DeltaNet layers and their head counts and sizes */
  linearAttention?: { layers: number[]; keyHeads: number; valueHeads: number; keyHeadDim: number; valueHeadDim: number };
  hidden: number;
  vocab: number;
  params: {
    total: number;
    /** all routed experts of all layers */
    routedExperts: number;
    sharedExperts: number;
    /** embeddings, attention, norms, routers, dense MLPs, lm_head */
    nonExpert: number;
    /** tensors of layers beyond num_hidden_layers (DeepSeek/GLM multi-token-prediction heads): in total only */
    extraLayers: number;
    /** non-expert + shared + top-k routed experts per MoE layer */
    activePerToken: number;
  };
  bytes: { total: number; byDtype: Record<string, number> };
  shards: { file: string; bytes: number; tensors: number }[];
  /** linears stored in a non-plain format (mxfp4, fp8-block, gptq ...) -> how many */
  formats: Record<string, number>;
  /** problems a stock loader will have with this checkpoint (empty when none) */
  warnings: string[];
  /** the compute backend that would be used and why the ones above it were skipped (src/runtime/backend.ts) */
  backend?: { chosen: string; reason: string; candidates: { name: string; pkg: string; available: boolean; reason: string }[] };
  /** worker threads a computing command would use here (--threads, else MOE_THREADS, else the cores) and why */
  threads?: { threads: number; available: number; reason: string };
}

export function withBackend(r: InspectReport, b: BackendReport): InspectReport {
  const chosen = b.candidates.find((c) => c.name === b.chosen);
  // with an explicit --backend, usable candidates above it were passed over by request, not skipped
  const skipped = b.candidates
    .slice(0, chosen ? b.candidates.indexOf(chosen) : b.candidates.length)
    .filter((c) => !c.available)
    .map((c) => `${c.name}: ${c.reason}`);
  // an explicit --backend that is not usable here: its own reason, not the ladder's
  const asked = b.requested && b.requested !== 'auto' ? b.candidates.find((c) => c.name === b.requested) : undefined;
  const reason =
    !chosen && asked
      ? `${asked.name} requested, not usable: ${asked.reason}`
      : (chosen ? chosen.reason : 'no usable backend') + (skipped.length ? `; skipped ${skipped.join('; ')}` : '');
  return { ...r, backend: { chosen: b.chosen, reason, candidates: b.candidates } };
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function inspectModel(model: Model): InspectReport {
  const { ckpt, view } = model;
  const expertTensors = new Set<string>();
  const formats: Record<string, number> = {};
  const linearParams = (ref: LinearRef, into: Set<string>): number => {
    for (const t of linearTensors(ckpt, ref)) into.add(t);
    const fmt = formatOf(ckpt, ref);
    const name = fmt?.name ?? (ckpt.has(ref.tensor) && ckpt.storage(ref.tensor).blockScale ? 'fp8-block' : undefined);
    if (name) formats[name] = (formats[name] ?? 0) + 1;
    if (ref.bias) into.add(ref.bias);
    return ref.outFeatures * ref.inFeatures + (ref.bias ? ref.outFeatures : 0);
  };
  const swiglu = (s: SwiGLURefs, into: Set<string>) => linearParams(s.gate, into) + linearParams(s.up, into) + linearParams(s.down, into);

  let routed = 0;
  let shared = 0;
  for (const l of view.layers) {
    if (l.block.kind !== 'moe') continue;
    for (const e of l.block.experts) routed += swiglu(e, expertTensors);
    if (l.block.shared) {
      shared += swiglu(l.block.shared, expertTensors);
      if (l.block.shared.gateWeight) {
        expertTensors.add(l.block.shared.gateWeight);
        shared += numel(ckpt.shape(l.block.shared.gateWeight));
      }
    }
  }
  let nonExpert = 0;
  let extraLayers = 0;
  const byDtype: Record<string, number> = {};
  const shardStats = new Map<string, { bytes: number; tensors: number }>();
  let totalBytes = 0;
  for (const n of ckpt.tensorNames) {
    const info = ckpt.info(n);
    const bytes = numel(info.shape) * DTYPE_BYTES[info.dtype];
    totalBytes += bytes;
    byDtype[info.dtype] = (byDtype[info.dtype] ?? 0) + bytes;
    const shard = basename(ckpt.shardOf(n));
    const s = shardStats.get(shard) ?? { bytes: 0, tensors: 0 };
    s.bytes += bytes;
    s.tensors++;
    shardStats.set(shard, s);
    if (expertTensors.has(n) || ckpt.isScaleTensor(n)) continue;
    const l = layerOfTensor(view, n);
    if (Number.isFinite(l) && l >= view.dims.layers) extraLayers += numel(info.shape) * (n.endsWith('_blocks') ? 2 : 1);
    else nonExpert += numel(info.shape);
  }
  const nMoe = view.moeLayers.length;
  const E = view.dims.numExperts;
  const slots = view.expertsPerLayer ? view.expertsPerLayer.reduce((a, b) => a + b, 0) : nMoe * E;
  const warnings = configWarnings(model);
  const sharedCount = view.dims.sharedIntermediate === 0 ? 0 : typeof view.config.n_shared_experts === 'number' ? view.config.n_shared_experts : 1;
  return {
    model: model.dir,
    family: view.family,
    // config.json's own names (a container's: llama4 with Llama4ForConditionalGeneration, read as llama4_text)
    ...(model.ckpt.config.model_type !== view.family ? { modelType: String(model.ckpt.config.model_type) } : {}),
    architectures: Array.isArray(model.ckpt.config.architectures) ? model.ckpt.config.architectures.map(String) : [],
    layers: {
      total: view.dims.layers,
      moe: nMoe,
      dense: view.dims.layers - nMoe,
      moeLayers: view.moeLayers,
      denseLayers: view.layers.filter((l) => l.block.kind === 'dense').map((l) => l.index),
    },
    experts: {
      routed: E,
      ...(view.expertsPerLayer ? { perLayer: view.expertsPerLayer } : {}),
      topK: view.dims.topK,
      shared: sharedCount,
      intermediate: view.dims.expertIntermediate,
      sharedIntermediate: view.dims.sharedIntermediate,
      layout: view.expertLayout,
    },
    routing: view.routing,
    attention: { kind: view.attention.kind, heads: view.dims.heads, kvHeads: view.dims.kvHeads, headDim: view.dims.headDim },
    ...(view.attention.deltanet
      ? {
          linearAttention: {
            layers: view.layers.filter((l) => l.attention.kind === 'deltanet').map((l) => l.index),
            keyHeads: view.attention.deltanet.numKHeads,
            valueHeads: view.attention.deltanet.numVHeads,
            keyHeadDim: view.attention.deltanet.headK,
            valueHeadDim: view.attention.deltanet.headV,
          },
        }
      : {}),
    hidden: view.dims.hidden,
    vocab: view.dims.vocab,
    params: {
      total: nonExpert + routed + shared + extraLayers,
      routedExperts: routed,
      sharedExperts: shared,
      nonExpert,
      extraLayers,
      // top-k of each MoE layer's experts (the layers of a per-layer checkpoint hold different counts)
      activePerToken: nonExpert + shared + (slots > 0 ? (routed * view.dims.topK * nMoe) / slots : 0),
    },
    bytes: { total: totalBytes, byDtype },
    shards: [...shardStats].map(([file, s]) => ({ file, ...s })),
    formats,
    warnings,
  };
}

/** An int literal in a field transformers 5 types as float: its strict config validation refuses to load it. */
function configWarnings(model: Model): string[] {
  const text = model.ckpt.configText;
  if (text === undefined) return [];
  const arch = getArchitecture(model.view.family, model.view.family);
  // the family's keys: top-level, or inside a container's text config
  const nested = model.view.container ? `${model.view.container.textConfigKey}.` : undefined;
  const ints = integerLiteralsFor(text, new Set(arch.config.floatKeys)).filter((k) => !k.includes('.') || (nested && k.startsWith(nested)));
  if (!ints.length) return [];
  return [
    `config.json has integer literals in float fields (${ints.join(', ')}): transformers 5 refuses to load it; write them as floats (e.g. 0.0); moe writes them back as read`,
  ];
}

// ---- human-readable table --------------------------------------------------------------------------------------

export function fmtCount(n: number): string {
  const a = Math.abs(n);
  if (a >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (a >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (a >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(Math.round(n));
}

export function fmtBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(2)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

export function describeRouting(r: RoutingRule): string {
  if (r.sparsemixer) return `sparsemixer top-${r.topK} (jitter eps ${r.sparsemixer.jitterEps})`;
  const steps: string[] = [];
  if (r.score !== 'none') steps.push(r.score);
  if (r.selectionBias) steps.push('+correction bias for selection');
  if (r.groups) steps.push(`${r.groups.nGroup} groups by ${r.groups.groupScore === 'max' ? 'max' : 'top-2 sum'}, keep ${r.groups.topkGroup}`);
  steps.push(`top-${r.topK}`);
  if (r.afterTopk !== 'none') steps.push(`${r.afterTopk} over the ${r.topK}`);
  if (r.normalize) steps.push('renormalize');
  if (r.scale !== 1) steps.push(`x${r.scale}`);
  // llama4: the weight scales what the expert reads, not what it writes
  if (r.weightsInput) steps.push('weight x expert input');
  return steps.join(' -> ');
}

function describeShards(shards: InspectReport['shards']): string {
  // released checkpoints have up to ~160 shards: list a few, summarise the rest
  if (shards.length <= 4) return `${shards.length}: ${shards.map((s) => `${s.file} (${fmtBytes(s.bytes)}, ${s.tensors} tensors)`).join(', ')}`;
  const sizes = shards.map((s) => s.bytes);
  return `${shards.length} files, ${fmtBytes(Math.min(...sizes))} to ${fmtBytes(Math.max(...sizes))} each (${shards[0]!.file} ... ${shards[shards.length - 1]!.file})`;
}

export function formatReport(r: InspectReport): string {
  const pct = (x: number) => (r.params.total ? `${((100 * x) / r.params.total).toFixed(1)}%` : '-');
  const rows: [string, string][] = [
    ['model', r.model],
    ['family', `${r.modelType ? `${r.modelType} read as ` : ''}${r.family}${r.architectures.length ? ` (${r.architectures.join(', ')})` : ''}`],
    [
      'layers',
      `${r.layers.total}: ${r.layers.moe} MoE, ${r.layers.dense} dense${r.layers.dense ? ` (layer${r.layers.dense > 1 ? 's' : ''} ${r.layers.denseLayers.join(', ')})` : ''}`,
    ],
    [
      'experts',
      `${r.experts.perLayer ? `${r.experts.perLayer.join(' ')} routed by MoE layer (per-layer format)` : `${r.experts.routed} routed per MoE layer`} (intermediate ${r.experts.intermediate}), top-${r.experts.topK}, ` +
        `${r.experts.shared ? `${r.experts.shared} shared (intermediate ${r.experts.sharedIntermediate})` : 'no shared expert'}; ${r.experts.layout} tensors`,
    ],
    ['routing', describeRouting(r.routing)],
    [
      'attention',
      `${r.attention.kind.toUpperCase()}, ${r.attention.heads} heads / ${r.attention.kvHeads} kv, head dim ${r.attention.headDim}; hidden ${r.hidden}, vocab ${r.vocab}`,
    ],
    ...(r.linearAttention
      ? [
          [
            'linear attention',
            `Gated DeltaNet on layer${r.linearAttention.layers.length > 1 ? 's' : ''} ${r.linearAttention.layers.join(', ')}: ${r.linearAttention.keyHeads} key heads of ${r.linearAttention.keyHeadDim}, ${r.linearAttention.valueHeads} value heads of ${r.linearAttention.valueHeadDim}`,
          ] as [string, string],
        ]
      : []),
    ['parameters', `${fmtCount(r.params.total)} total`],
    ['  routed experts', `${fmtCount(r.params.routedExperts)} (${pct(r.params.routedExperts)})`],
    ['  shared experts', `${fmtCount(r.params.sharedExperts)} (${pct(r.params.sharedExperts)})`],
    ['  other', `${fmtCount(r.params.nonExpert)} (${pct(r.params.nonExpert)})`],
    ...(r.params.extraLayers
      ? [['  beyond last layer', `${fmtCount(r.params.extraLayers)} (${pct(r.params.extraLayers)}; multi-token prediction, not active)`] as [string, string]]
      : []),
    ['  active per token', `${fmtCount(r.params.activePerToken)} (${pct(r.params.activePerToken)})`],
    [
      'bytes',
      `${fmtBytes(r.bytes.total)}: ${Object.entries(r.bytes.byDtype)
        .sort((a, b) => b[1] - a[1])
        .map(([d, b]) => `${d} ${fmtBytes(b)}`)
        .join(', ')}`,
    ],
    ['shards', describeShards(r.shards)],
  ];
  if (Object.keys(r.formats).length) {
    rows.push([
      'stored as',
      `${Object.entries(r.formats)
        .map(([f, n]) => `${f} (${n} linears)`)
        .join(', ')}; parameters count the dense weights these represent, bytes what is stored`,
    ]);
  }
  if (r.backend) rows.push(['backend', `${r.backend.chosen} — ${r.backend.reason}`]);
  if (r.threads)
    rows.push([
      'threads',
      `${r.threads.threads} — ${r.threads.reason}${r.threads.threads > r.threads.available ? ` (more than the ${r.threads.available} cores available)` : ''}`,
    ]);
  for (const w of r.warnings ?? []) rows.push(['warning', w]);
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n') + '\n';
}
