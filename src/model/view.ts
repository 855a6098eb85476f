/**
 * Build the canonical ModelView of a checkpoint from its family's data file and config.json, then check that
 * every tensor the view names exists (in some form loadLinear reads), so a pipeline never starts on a
 * checkpoint it would fail on halfway.
 */
import { fail } from '../errors.js';
import type { Checkpoint, HFConfig } from '../io/checkpoint.js';
import { ConfigReader } from './config.js';
import { FAMILY_HOOKS } from './families.js';
import { formatOf, linearPresent } from './load.js';
import { mtpLayerCount, mtpLayerPrefix, mtpView } from './mtp.js';
import { containedArchitecture, containerOf, textConfigOf } from './container.js';
import { stockClasses } from './lowrank.js';
import { perLayerCounts, stripPerLayerClasses } from './perlayer.js';
import { getArchitecture } from './registry.js';
import type { Architecture, TensorTemplate } from './schema.js';
import type { AttentionSpec, DenseBlock, LayerView, LinearRef, ModelDims, ModelView, MoeBlock, NormRef, RopeSpec, RoutingRule, SwiGLURefs } from './types.js';

/**
 * Sanity limits on config counts, far above any released model (DeepSeek-V3: 61 layers, 256 experts), so a
 * corrupt or hostile config.json fails at once instead of building billions of tensor references.
 */
const MAX_LAYERS = 4096;
const MAX_EXPERTS = 65536;

export function fillTemplate(t: string, layer?: number, expert?: number): string {
  let s = t;
  if (layer !== undefined) s = s.replaceAll('${layer}', String(layer));
  if (expert !== undefined) s = s.replaceAll('${expert}', String(expert));
  return s;
}

/** Which layers are MoE under the family's rule. */
function moeLayerIndices(arch: Architecture, cfg: ConfigReader, layers: number): number[] {
  const rule = arch.sparseLayers;
  const out: number[] = [];
  if (rule.kind === 'types') {
    const types = cfg.raw(rule.typesKey);
    if (types === undefined || types === null) {
      for (let l = Math.min(rule.denseFirstDefault, layers); l < layers; l++) out.push(l);
      return out;
    }
    if (!Array.isArray(types) || types.length !== layers || types.some((t) => t !== rule.sparse && t !== rule.dense))
      fail('InvalidConfig', `${cfg.where}: '${rule.typesKey}' must list ${layers} entries, each "${rule.sparse}" or "${rule.dense}"`);
    types.forEach((t, l) => {
      if (t === rule.sparse) out.push(l);
    });
    return out;
  }
  if (rule.kind === 'list') {
    const list = cfg.raw(rule.listKey);
    if (list !== undefined && list !== null) {
      const ids = cfg.intList(rule.listKey);
      if (ids.some((l) => l >= layers)) fail('InvalidConfig', `${cfg.where}: '${rule.listKey}' names a layer beyond num_hidden_layers=${layers}`);
      return [...new Set(ids)].sort((a, b) => a - b);
    }
    const step = cfg.int(rule.stepKey, 1);
    for (let l = step - 1; l < layers; l += step) out.push(l);
    return out;
  }
  for (let l = 0; l < layers; l++) {
    if (rule.kind === 'all') out.push(l);
    else if (rule.kind === 'step') {
      const step = cfg.int(rule.stepKey, 1);
      if (!cfg.intList(rule.denseListKey).includes(l) && (l + 1) % step === 0) out.push(l);
    } else if (rule.kind === 'range') {
      const interval = cfg.int(rule.intervalKey, 1);
      const start = cfg.int(rule.startKey, rule.startDefault, false);
      const endRaw = cfg.num(rule.endKey, -1);
      const end = endRaw === -1 ? layers - 1 : endRaw;
      if ((l + 1) % interval === 0 && l >= start && l <= end) out.push(l);
    } else {
      const firstK = cfg.int(rule.firstKKey, 0, false);
      const freq = cfg.int(rule.freqKey, 1);
      if (l >= firstK && l % freq === 0) out.push(l);
    }
  }
  return out;
}

/** The Gated DeltaNet (linear-attention) layers of a hybrid family, from its layer types or their interval. */
function linearAttentionLayers(arch: Architecture, cfg: ConfigReader, layers: number): Set<number> {
  const la = arch.linearAttention;
  const out = new Set<number>();
  if (!la) return out;
  const types = cfg.raw(la.typesKey);
  if (types !== undefined && types !== null) {
    if (!Array.isArray(types) || types.length !== layers || types.some((t) => t !== la.linearType && t !== la.fullType))
      fail('InvalidConfig', `${cfg.where}: '${la.typesKey}' must list ${layers} entries, each "${la.linearType}" or "${la.fullType}"`);
    types.forEach((t, l) => {
      if (t === la.linearType) out.add(l);
    });
    return out;
  }
  // the configuration's default (configuration_qwen3_next.py): full attention every `interval` layers
  const interval = cfg.int(la.intervalKey, la.intervalDefault);
  for (let l = 0; l < layers; l++) if ((l + 1) % interval !== 0) out.add(l);
  return out;
}

/** Attention roles that are linear weights (stored in any linear format): q_proj ... kv_a_proj_with_mqa, DeltaNet in_proj_*. */
export function isAttentionLinearRole(role: string): boolean {
  return /(^|_)proj(_with_mqa)?$/.test(role) || role.startsWith('in_proj_');
}

function routingRule(arch: Architecture, cfg: ConfigReader, numExperts: number, topK: number): RoutingRule {
  const r = arch.routing;
  const rule: RoutingRule = {
    score: r.score,
    afterTopk: r.afterTopk,
    selectionBias: r.selectionBias,
    topK,
    normalize: cfg.test(r.normalize),
    scale: cfg.value(r.scale),
  };
  if (r.normEps !== undefined) rule.normEps = r.normEps;
  if (r.normMinKey) rule.normMin = cfg.num(r.normMinKey, r.normMinDefault);
  if (r.groups) {
    const g = r.groups;
    const nGroup = cfg.int(g.nGroupKey, 1);
    const topkGroup = cfg.int(g.topkGroupKey, 1);
    const method = g.methodKey ? cfg.raw(g.methodKey) : undefined;
    const active = nGroup > 1 && (!g.methodKey || (g.methods ?? []).includes(String(method)));
    if (active) {
      if (numExperts % nGroup !== 0) fail('InvalidConfig', `${cfg.where}: ${numExperts} experts do not split into ${g.nGroupKey}=${nGroup} equal groups`);
      if (topkGroup > nGroup) fail('InvalidConfig', `${cfg.where}: ${g.topkGroupKey}=${topkGroup} exceeds ${g.nGroupKey}=${nGroup}`);
      if (topkGroup * (numExperts / nGroup) < topK)
        fail('InvalidConfig', `${cfg.where}: ${g.topkGroupKey}=${topkGroup} groups of ${numExperts / nGroup} experts cannot supply top-k ${topK}`);
      rule.groups = { nGroup, topkGroup, groupScore: g.groupScore };
    }
  }
  if (r.weightsInput) rule.weightsInput = true;
  if (r.sparsemixer) rule.sparsemixer = { jitterEps: cfg.num(r.sparsemixer.jitterKey, r.sparsemixer.default) };
  return rule;
}

/** A template resolved under its config condition: the name, or undefined when the condition excludes it. */
function resolveTensor(t: TensorTemplate | undefined, cfg: ConfigReader): string | undefined {
  if (t === undefined) return undefined;
  if (typeof t === 'string') return t;
  if (t.when !== undefined && !cfg.test(t.when)) return undefined;
  if (t.whenNot !== undefined && cfg.test(t.whenNot)) return undefined;
  return t.name;
}

export function buildView(ckpt: Checkpoint, topConfig: HFConfig = ckpt.config): ModelView {
  const where = `${ckpt.dir}/config.json`;
  // a multimodal container (src/model/container.ts): the language model's family, config and tensor names inside it
  const container = containerOf(topConfig);
  if (container && Array.isArray(topConfig.architectures)) {
    const given = (stripPerLayerClasses(stockClasses(topConfig.architectures)) as unknown[]).map(String);
    if (!given.some((c) => container.architectures.includes(c)))
      fail(
        'UnsupportedArchitecture',
        `${where}: model_type '${container.model_type}' is read only as ${container.architectures.join(' or ')} (this config: ${given.join(', ') || 'none'})`,
      );
  }
  const config = container ? textConfigOf(container, topConfig, where) : topConfig;
  const textArch = getArchitecture(config.model_type, where, container ? undefined : config.architectures);
  const arch = container ? containedArchitecture(textArch, container) : textArch;
  const family = arch.model_type;
  const cfg = new ConfigReader(config, container ? `${where} (${family} in ${container.model_type}.${container.textConfigKey})` : `${where} (${family})`);
  const c = arch.config;
  const t = arch.tensors;

  const hidden = cfg.int('hidden_size');
  const layers = cfg.int('num_hidden_layers');
  if (layers > MAX_LAYERS) fail('InvalidConfig', `${cfg.where}: 'num_hidden_layers' = ${layers} is beyond any real model (limit ${MAX_LAYERS})`);
  const heads = cfg.int('num_attention_heads');
  // the key names of both major versions (transformers 5 saves qwen3_moe's count as num_local_experts, its
  // attribute_map target): the family's own key, else the first alias present; an edit writes back the keys present
  const numExpertsKey = [c.numExperts, ...c.numExpertsAliases].find((k) => cfg.has(k)) ?? c.numExperts;
  const topKKey = [c.topK, ...c.topKAliases].find((k) => cfg.has(k)) ?? c.topK;
  const numExperts = cfg.int(numExpertsKey);
  if (numExperts > MAX_EXPERTS) fail('InvalidConfig', `${cfg.where}: '${numExpertsKey}' = ${numExperts} is beyond any real model (limit ${MAX_EXPERTS})`);
  const topK = cfg.int(topKKey);
  if (topK > numExperts) fail('InvalidConfig', `${cfg.where}: '${topKKey}' = ${topK} exceeds '${numExpertsKey}' = ${numExperts}`);
  const moeLayers = moeLayerIndices(arch, cfg, layers);
  // a per-layer checkpoint (perlayer.ts): each MoE layer's own count; the count key holds the largest
  const perLayer = container ? undefined : perLayerCounts(config, cfg.where, moeLayers.length, numExperts, topK);
  const layerExperts = new Map(perLayer?.map((n, i) => [moeLayers[i]!, n]) ?? []);
  const isMoe = new Set(moeLayers);
  const hasDense = moeLayers.length < layers;
  const sharedIntermediate =
    c.sharedIntermediate && t.shared && cfg.has(c.sharedIntermediate.key)
      ? cfg.int(c.sharedIntermediate.key, undefined, false) * (c.sharedIntermediate.times ? cfg.int(c.sharedIntermediate.times, 0, false) : 1)
      : 0;
  const dims: ModelDims = {
    hidden,
    layers,
    vocab: cfg.int('vocab_size'),
    heads,
    kvHeads: cfg.int('num_key_value_heads', heads),
    headDim: cfg.int('head_dim', Math.floor(hidden / heads)),
    numExperts,
    topK,
    expertIntermediate: cfg.int(c.expertIntermediate),
    sharedIntermediate,
    denseIntermediate: hasDense && c.denseIntermediate ? cfg.int(c.denseIntermediate) : 0,
    tieEmbeddings: cfg.flag('tie_word_embeddings', c.tieEmbeddingsDefault),
    maxPositions: cfg.int('max_position_embeddings', 0, false),
  };
  if (hasDense && !t.dense) fail('InvalidConfig', `${cfg.where}: layers ${firstMissing(moeLayers, layers)} would be dense but ${family} has no dense MLP`);

  // RoPE settings in either convention: transformers 4's top-level rope_theta / partial_rotary_factor + rope_scaling,
  // or transformers 5's rope_parameters (rope_type, rope_theta, partial_rotary_factor and the scaling keys in one
  // dict, no rope_scaling). Outputs keep whichever the input has: config.json is written back as an edit of its text.
  const rp = config.rope_parameters;
  const ropeParams = (rp && typeof rp === 'object' && !Array.isArray(rp) ? rp : {}) as Record<string, unknown>;
  if (Object.values(ropeParams).some((v) => v !== null && typeof v === 'object' && !Array.isArray(v)))
    fail('UnsupportedArchitecture', `${cfg.where}: rope_parameters per layer type is not supported`);
  // rope_parameters first: transformers 5 reads it there and keeps a top-level copy only for backward
  // compatibility (glm4_moe saves partial_rotary_factor in both, and the top-level one does not count)
  const ropeNum = (key: string, def: number): number => {
    const v = ropeParams[key];
    if (v === undefined || v === null) return cfg.has(key) ? cfg.num(key) : def;
    if (typeof v !== 'number' || !Number.isFinite(v))
      fail('InvalidConfig', `${cfg.where}: 'rope_parameters.${key}' must be a number, got ${JSON.stringify(v)}`);
    return v;
  };
  const rope: RopeSpec = {
    style: arch.rope.style,
    theta: ropeNum('rope_theta', c.ropeThetaDefault),
    rotaryDim: Math.round(dims.headDim * ropeNum('partial_rotary_factor', 1)),
  };
  const scaling = config.rope_scaling;
  if (scaling && typeof scaling === 'object' && !Array.isArray(scaling)) rope.scaling = scaling as Record<string, unknown>;
  else if (String(ropeParams.rope_type ?? ropeParams.type ?? 'default') !== 'default') rope.scaling = ropeParams;

  const eps = cfg.num(arch.norm.epsKey, arch.norm.epsDefault);
  const unitOffset = arch.norm.unitOffset === true;
  const norm = (weight: string, bias?: string): NormRef => ({
    weight,
    ...(bias ? { bias } : {}),
    kind: arch.norm.kind,
    eps,
    ...(unitOffset ? { unitOffset } : {}),
  });

  const swiglu = (tpl: { gate: string; up: string; down: string }, prefix: string, inter: number, expert?: number): SwiGLURefs => ({
    gate: { tensor: prefix + fillTemplate(tpl.gate, undefined, expert), outFeatures: inter, inFeatures: hidden },
    up: { tensor: prefix + fillTemplate(tpl.up, undefined, expert), outFeatures: inter, inFeatures: hidden },
    down: { tensor: prefix + fillTemplate(tpl.down, undefined, expert), outFeatures: hidden, inFeatures: inter },
  });

  const I = dims.expertIntermediate;
  // which of the family's expert layouts this checkpoint uses, decided on its first MoE layer
  let ex = t.experts;
  let routerT: { weight: string; bias?: TensorTemplate; correctionBias?: TensorTemplate } = t.router;
  const alt = t.fusedAlternative;
  if (alt && moeLayers.length > 0) {
    const p0 = fillTemplate(t.layerPrefix, moeLayers[0]);
    const primary0 = p0 + (ex.layout === 'per-expert' ? fillTemplate(ex.gate, undefined, 0) : ex.gateUp.tensor);
    const fused = p0 + alt.experts.gateUp.tensor;
    // the fused tensor itself, or a stored form of its expert 0 gate slice (low-rank factors of a fused input)
    const gate0: LinearRef = {
      tensor: fused,
      expert: 0,
      outFeatures: I,
      inFeatures: hidden,
      ...(alt.experts.gateUp.split === 'halves' ? { rows: [0, I] as const } : { interleave: 'even' as const }),
    };
    const primaryPresent =
      ex.layout === 'per-expert'
        ? linearPresent(ckpt, { tensor: primary0 })
        : ckpt.has(primary0) || ckpt.has(`${primary0}_blocks`) || linearPresent(ckpt, { ...gate0, tensor: primary0 });
    if (!primaryPresent && (ckpt.has(fused) || ckpt.has(`${fused}_blocks`) || linearPresent(ckpt, gate0))) {
      ex = alt.experts;
      if (alt.router) routerT = { ...t.router, ...alt.router } as typeof routerT;
    }
  }
  const layerViews: LayerView[] = [];
  const linearLayers = linearAttentionLayers(arch, cfg, layers);
  // multi-token-prediction layers (src/model/mtp.ts) follow the decoder layers and always have the MoE block
  const mtpCount = mtpLayerCount(family, config, ckpt, layers, fillTemplate(t.layerPrefix, layers));
  const mtpViews: LayerView[] = [];
  for (let l = 0; l < layers + mtpCount; l++) {
    const prefix = l < layers ? fillTemplate(t.layerPrefix, l) : mtpLayerPrefix(family, layers, l, (k) => fillTemplate(t.layerPrefix, k));
    const tensors: Record<string, string> = {};
    const deltanet = linearLayers.has(l);
    if (deltanet) for (const [role, tpl] of Object.entries(arch.linearAttention!.tensors)) tensors[role] = prefix + tpl;
    else
      for (const [role, tpl] of Object.entries(t.attention)) {
        const name = resolveTensor(tpl, cfg);
        if (name) tensors[role] = prefix + name;
      }
    let block: MoeBlock | DenseBlock;
    if (isMoe.has(l) || l >= layers) {
      const router: MoeBlock['router'] = { weight: prefix + routerT.weight };
      const rb = resolveTensor(routerT.bias, cfg);
      if (rb) router.bias = prefix + rb;
      const cb = resolveTensor(routerT.correctionBias, cfg);
      if (cb) router.correctionBias = prefix + cb;
      const experts: SwiGLURefs[] = [];
      for (let e = 0; e < (layerExperts.get(l) ?? numExperts); e++) {
        if (ex.layout === 'per-expert') {
          experts.push(swiglu(ex, prefix, I, e));
        } else {
          const gu = ex.gateUp;
          const base = {
            tensor: prefix + gu.tensor,
            expert: e,
            transposed: storedTransposed(ckpt, prefix + gu.tensor, gu.transposed),
            outFeatures: I,
            inFeatures: hidden,
            ...(gu.bias ? { bias: prefix + gu.bias } : {}),
          };
          const gate: LinearRef = gu.split === 'halves' ? { ...base, rows: [0, I] } : { ...base, interleave: 'even' };
          const up: LinearRef = gu.split === 'halves' ? { ...base, rows: [I, 2 * I] } : { ...base, interleave: 'odd' };
          const down: LinearRef = {
            tensor: prefix + ex.down.tensor,
            expert: e,
            transposed: storedTransposed(ckpt, prefix + ex.down.tensor, ex.down.transposed),
            outFeatures: hidden,
            inFeatures: I,
            ...(ex.down.bias ? { bias: prefix + ex.down.bias } : {}),
          };
          experts.push({ gate, up, down });
        }
      }
      block = { kind: 'moe', router, experts };
      if (t.shared && sharedIntermediate > 0) {
        block.shared = swiglu(t.shared, prefix, sharedIntermediate);
        if (t.shared.gateWeight) block.shared.gateWeight = prefix + t.shared.gateWeight;
      }
    } else {
      block = { kind: 'dense', mlp: swiglu(t.dense!, prefix, dims.denseIntermediate) };
    }
    (l < layers ? layerViews : mtpViews).push({
      index: l,
      prefix,
      inputNorm: norm(prefix + t.inputNorm, t.inputNormBias && prefix + t.inputNormBias),
      postAttnNorm: norm(prefix + t.postAttnNorm, t.postAttnNormBias && prefix + t.postAttnNormBias),
      attention: { kind: deltanet ? 'deltanet' : arch.attention.kind, tensors },
      block,
    });
  }

  // the family's own attention (a hybrid's first layers may be linear attention)
  const roles = layerViews.find((l) => l.attention.kind === arch.attention.kind)?.attention.tensors ?? {};
  const attention: AttentionSpec = {
    kind: arch.attention.kind,
    qkvBias: 'q_bias' in roles,
    oBias: 'o_bias' in roles,
    sinks: 'sinks' in roles,
    softmaxScale: arch.attention.softmaxScaleKey ? cfg.num(arch.attention.softmaxScaleKey) : 1 / Math.sqrt(dims.headDim),
  };
  if (arch.attention.qkNorm && 'q_norm' in roles) {
    attention.qkNorm = arch.attention.qkNorm;
    if (arch.attention.qkNormAfterRope) attention.qkNormAfterRope = true;
  }
  if (arch.attention.clipQkvKey && cfg.has(arch.attention.clipQkvKey)) attention.clipQkv = cfg.num(arch.attention.clipQkvKey);
  if (arch.attention.outputGate) attention.outputGate = true;
  if (arch.linearAttention) {
    const dn = {
      layout: arch.linearAttention.layout,
      numKHeads: cfg.int('linear_num_key_heads'),
      numVHeads: cfg.int('linear_num_value_heads'),
      headK: cfg.int('linear_key_head_dim'),
      headV: cfg.int('linear_value_head_dim'),
      convKernel: cfg.int('linear_conv_kernel_dim', 4),
      eps,
    };
    if (dn.numVHeads % dn.numKHeads !== 0)
      fail('InvalidConfig', `${cfg.where}: linear_num_value_heads=${dn.numVHeads} is not a multiple of linear_num_key_heads=${dn.numKHeads}`);
    attention.deltanet = dn;
  }

  const f = arch.forward;
  const view: ModelView = {
    family,
    config,
    dims,
    routing: routingRule(arch, cfg, numExperts, topK),
    rope,
    embed: t.embed,
    finalNorm: norm(t.finalNorm, t.finalNormBias),
    layers: layerViews,
    numExpertsKey,
    topKKey,
    expertLayout: ex.layout,
    moeLayers,
    attention,
    forward: {
      embeddingMultiplier: f.embeddingMultiplierKey ? cfg.num(f.embeddingMultiplierKey, 1) : 1,
      residualMultiplier: f.residualMultiplierKey ? cfg.num(f.residualMultiplierKey, 1) : 1,
      logitsDivisor: f.logitsScalingKey ? cfg.num(f.logitsScalingKey, 1) : 1,
      activation: f.activation === 'silu' ? { kind: 'silu' } : { kind: 'clamped-swiglu', limit: 7, alpha: 1.702 },
    },
  };
  if (container) view.container = container;
  if (!dims.tieEmbeddings) view.lmHead = t.lmHead;
  if (mtpViews.length) view.mtp = mtpViews.map((layer) => mtpView(family, layer, eps, unitOffset));
  if (perLayer) {
    // per-layer counts are written only without expert groups or MTP layers (rewrite.ts); a config with them is not ours
    if (view.routing.groups || mtpViews.length)
      fail('InvalidConfig', `${cfg.where}: moe.experts_per_layer with expert groups or multi-token-prediction layers is not supported`);
    view.expertsPerLayer = perLayer;
  }
  const lmBias = resolveTensor(t.lmHeadBias, cfg);
  if (lmBias) view.forward.lmHeadBias = lmBias;
  FAMILY_HOOKS[family]?.adjust?.(view, cfg);
  return view;
}

/** MXFP4 blocks are stored out-major even where the family's bf16 form is in-major (gpt_oss). */
function storedTransposed(ckpt: Checkpoint, tensor: string, dataSays: boolean): boolean {
  return !ckpt.has(tensor) && ckpt.has(`${tensor}_blocks`) ? false : dataSays;
}

function firstMissing(moe: number[], layers: number): string {
  const dense = [];
  for (let l = 0; l < layers; l++) if (!moe.includes(l)) dense.push(l);
  return dense.join(',');
}

/** Every tensor the view names, each with whether it is a linear weight (which may be stored quantized). */
export function viewTensors(view: ModelView): { name: string; linear?: LinearRef; biasOf?: LinearRef }[] {
  const out: { name: string; linear?: LinearRef; biasOf?: LinearRef }[] = [];
  const plain = (n: string | undefined) => {
    if (n) out.push({ name: n });
  };
  const sw = (s: SwiGLURefs) => {
    for (const r of [s.gate, s.up, s.down]) {
      out.push({ name: r.tensor, linear: r });
      if (r.bias) out.push({ name: r.bias, biasOf: r });
    }
  };
  plain(view.embed);
  for (const l of [...view.layers, ...(view.mtp ?? []).map((m) => m.layer)]) {
    plain(l.inputNorm.weight);
    plain(l.inputNorm.bias);
    for (const [role, n] of Object.entries(l.attention.tensors)) {
      if (isAttentionLinearRole(role)) out.push({ name: n, linear: { tensor: n, outFeatures: 0, inFeatures: 0 } });
      else plain(n);
    }
    plain(l.postAttnNorm.weight);
    plain(l.postAttnNorm.bias);
    if (l.block.kind === 'dense') sw(l.block.mlp);
    else {
      plain(l.block.router.weight);
      plain(l.block.router.bias);
      plain(l.block.router.correctionBias);
      for (const e of l.block.experts) sw(e);
      if (l.block.shared) {
        sw(l.block.shared);
        plain(l.block.shared.gateWeight);
      }
    }
  }
  for (const m of view.mtp ?? []) {
    out.push({ name: m.ehProj, linear: { tensor: m.ehProj, outFeatures: 0, inFeatures: 0 } });
    plain(m.enorm.weight);
    plain(m.hnorm.weight);
    plain(m.headNorm.weight);
  }
  plain(view.finalNorm.weight);
  plain(view.finalNorm.bias);
  plain(view.lmHead);
  plain(view.forward.lmHeadBias);
  return out;
}

/** Fail with the first tensor the view names that the checkpoint lacks. */
export function checkTensorsPresent(ckpt: Checkpoint, view: ModelView): void {
  const missing: string[] = [];
  const seen = new Set<string>();
  for (const { name, linear, biasOf } of viewTensors(view)) {
    if (seen.has(name)) continue;
    seen.add(name);
    // a bias may live inside the linear's stored form (formats with storesBias)
    const ok = linear ? linearPresent(ckpt, linear) : ckpt.has(name) || (biasOf !== undefined && !!formatOf(ckpt, biasOf)?.storesBias);
    if (!ok) missing.push(name);
  }
  if (missing.length) {
    fail(
      'TensorNotFound',
      `${ckpt.dir}: ${view.family} checkpoint is missing tensor '${missing[0]}'${missing.length > 1 ? ` (and ${missing.length - 1} more)` : ''}`,
    );
  }
  // the router's rows are the experts: a config that disagrees with them would route to experts that do not exist
  for (const l of view.layers) {
    if (l.block.kind !== 'moe') continue;
    // the layer's own count (a per-layer checkpoint's differ)
    const E = l.block.experts.length;
    const s = ckpt.shape(l.block.router.weight);
    if (s.length !== 2 || s[0] !== E || s[1] !== view.dims.hidden) {
      fail(
        'InvalidConfig',
        `${ckpt.dir}: config says ${view.expertsPerLayer ? `layer ${l.index} has ${E} experts` : `${view.numExpertsKey}=${E}`}, hidden_size=${view.dims.hidden} but router '${l.block.router.weight}' is [${s.join(', ')}]`,
      );
    }
  }
}
