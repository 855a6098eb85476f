/**
 * vLLM's loading rules for quantized fused-MoE checkpoints (at a tensor-parallel size, default 1), applied to an output's
 * config.json and tensors. Written from vLLM's model_executor/layers/quantization code (gptq_marlin.py,
 * utils/gptq_utils.py get_dynamic_override, moe_wna16.py, compressed_tensors/compressed_tensors_moe.py
 * get_moe_method, compressed_tensors/utils.py find_matched_target), not from our writer; it returns every
 * violation (empty: vLLM would load it).
 *
 * - a MoE layer's experts are one fused module at prefix P (`model.layers.L.mlp.experts`); its scheme is looked up
 *   for P.0.gate_proj, P.0.up_proj, P.0.down_proj (compressed-tensors; must agree) or by P's `dynamic` override
 *   (GPTQ: re.match on P, first matching key wins, "-:" skips), and every expert is then loaded at that scheme:
 *   a stored expert at another width or group size cannot load.
 * - fused-MoE kernels: int weights, symmetric, 4 or 8 bits, group -1/32/64/128, no activation quantization,
 *   hidden % 128 == 0, intermediate % max(64, group) == 0; desc_act/actorder only group-wise (with g_idx; in
 *   compressed-tensors `actorder: group` needs weight_g_idx [in] on every module of the scheme, and none without it).
 * - compressed-tensors needs format pack-quantized and quantization_status compressed; the router is never
 *   quantized (vLLM builds it unquantized).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ctScheme, type CtScheme, ints, type RawTensor, readSafetensors } from './decode.js';

const WIDTHS = [4, 8];
const GROUPS = [-1, 32, 64, 128];

/** Python's re.match of a GPTQ dynamic key's pattern. */
const reMatch = (pattern: string, name: string) => new RegExp(`^(?:${pattern})`).test(name);

interface ExpertModule {
  prefix: string;
  expert: number;
  proj: string;
  module: string;
}

/** Expert linear modules found in the tensors (`<prefix>.<e>.<proj>.<suffix>`), by fused prefix. */
function expertModules(tensors: Map<string, RawTensor>, suffix: string): Map<string, ExpertModule[]> {
  const by = new Map<string, ExpertModule[]>();
  const re = new RegExp(`^(.*\\.experts)\\.(\\d+)\\.([A-Za-z0-9_]+)\\.${suffix}$`);
  for (const n of tensors.keys()) {
    const m = re.exec(n);
    if (!m) continue;
    const e: ExpertModule = { prefix: m[1]!, expert: Number(m[2]), proj: m[3]!, module: n.slice(0, -(suffix.length + 1)) };
    if (!by.has(e.prefix)) by.set(e.prefix, []);
    by.get(e.prefix)!.push(e);
  }
  return by;
}

/**
 * check_moe_marlin_supports_layer on one rank: FusedMoE shards each expert's intermediate dimension over the
 * tensor-parallel ranks (intermediate_size_per_partition = intermediate / tp), hidden stays whole.
 */
function shapeRules(v: string[], where: string, hidden: number, intermediate: number, group: number, tp: number): void {
  if (hidden % 128 !== 0) v.push(`${where}: hidden ${hidden} % 128 != 0 (Marlin MoE)`);
  const m = Math.max(64, group);
  if (intermediate % tp !== 0) return void v.push(`${where}: intermediate ${intermediate} does not split over ${tp} ranks`);
  if ((intermediate / tp) % m !== 0) v.push(`${where}: intermediate per partition ${intermediate / tp} (tp ${tp}) % ${m} != 0 (Marlin MoE)`);
}

export interface VllmRun {
  /** tensor-parallel size (default 1) */
  tp?: number;
}

export function checkVllm(dir: string, run: VllmRun = {}): string[] {
  return checkVllmParts(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>, readSafetensors(dir), run);
}

/** The same rules on a config and tensors held in memory (a test can break one of them). */
export function checkVllmParts(config: Record<string, unknown>, tensors: Map<string, RawTensor>, run: VllmRun = {}): string[] {
  const qc = config['quantization_config'] as Record<string, unknown> | undefined;
  if (!qc) return ['config.json has no quantization_config'];
  const hidden = config['hidden_size'] as number;
  const tp = run.tp ?? 1;
  if (qc['quant_method'] === 'compressed-tensors') return checkCt(qc, tensors, hidden, tp);
  if (qc['quant_method'] === 'gptq') return checkGptq(qc, tensors, hidden, tp);
  return [`quant_method ${String(qc['quant_method'])} is not gptq or compressed-tensors`];
}

function checkCt(qc: Record<string, unknown>, tensors: Map<string, RawTensor>, hidden: number, tp: number): string[] {
  const v: string[] = [];
  if (qc['quantization_status'] !== 'compressed') v.push(`quantization_status ${String(qc['quantization_status'])} is not compressed`);
  const experts = expertModules(tensors, 'weight_packed');
  if (experts.size === 0) v.push('no packed expert modules');
  const schemeOk = (where: string, s: CtScheme) => {
    const w = s.weights;
    const fmt = s.format ?? (qc['format'] as string | undefined);
    if (fmt !== 'pack-quantized') v.push(`${where}: format ${String(fmt)} is not pack-quantized (WNA16 MoE)`);
    if (!w) return v.push(`${where}: no weight scheme`);
    if (s.input_activations) v.push(`${where}: activation quantization is not WNA16`);
    if (w.type !== 'int') v.push(`${where}: weight type ${w.type} is not int`);
    if (!WIDTHS.includes(w.num_bits)) v.push(`${where}: ${w.num_bits} bits (fused MoE runs ${WIDTHS.join(', ')})`);
    if (!w.symmetric) v.push(`${where}: asymmetric weights (fused MoE runs symmetric)`);
    if (w.dynamic) v.push(`${where}: dynamic weight quantization`);
    const g = w.strategy === 'channel' ? -1 : w.strategy === 'group' ? (w.group_size ?? NaN) : NaN;
    if (!GROUPS.includes(g))
      v.push(`${where}: strategy ${w.strategy} group ${String(w.group_size)} (fused MoE: channel or group ${GROUPS.slice(1).join('/')})`);
    if (w.actorder && w.actorder !== 'group') v.push(`${where}: actorder ${w.actorder} (only group-wise)`);
    return g;
  };
  for (const [prefix, mods] of experts) {
    // vLLM's lookup: expert 0's gate/up/down by vLLM's own projection names
    const looked = ['gate_proj', 'up_proj', 'down_proj'].map((p) => ctScheme(qc, `${prefix}.0.${p}`));
    if (looked.some((s) => JSON.stringify(s) !== JSON.stringify(looked[0]))) {
      v.push(`${prefix}: All MoE projections need to have same quantization scheme but found multiple`);
      continue;
    }
    const s = looked[0];
    if (!s) {
      v.push(`${prefix}: stored packed but vLLM finds no scheme for ${prefix}.0.gate_proj (would load it unquantized)`);
      continue;
    }
    const g = schemeOk(prefix, s);
    const bits = s.weights?.num_bits ?? 0;
    const pf = 32 / bits;
    // every expert is created at the layer's scheme: each stored module must have exactly those shapes
    for (const m of mods) {
      const shape = ints(tensors.get(`${m.module}.weight_shape`) ?? { dtype: 'I32', shape: [0], bytes: new Uint8Array() });
      const pk = tensors.get(`${m.module}.weight_packed`)!;
      const sc = tensors.get(`${m.module}.weight_scale`);
      if (shape.length !== 2) {
        v.push(`${m.module}: no weight_shape`);
        continue;
      }
      const [out, inF] = shape as [number, number];
      if (pk.dtype !== 'I32' || pk.shape[0] !== out || pk.shape[1] !== Math.ceil(inF / pf)) {
        v.push(`${m.module}: weight_packed ${pk.dtype} [${pk.shape}] is not ${bits}-bit [${out}, ${Math.ceil(inF / pf)}] (per-expert width?)`);
      }
      const G = typeof g === 'number' && g > 0 ? Math.ceil(inF / g) : 1;
      if (!sc || sc.shape[0] !== out || sc.shape[1] !== G) v.push(`${m.module}: weight_scale [${sc?.shape}] is not [${out}, ${G}]`);
      if (s.weights?.symmetric && tensors.has(`${m.module}.weight_zero_point`)) v.push(`${m.module}: weight_zero_point in a symmetric scheme`);
      gIdxRule(v, m.module, tensors, s, inF, G);
      if (m.expert === 0 && m.proj.match(/down|w2/)) shapeRules(v, prefix, hidden, inF, typeof g === 'number' ? g : 128, tp);
    }
  }
  // the other packed linears (attention, shared experts, dense MLPs) load through vLLM's WNA16 linear scheme at the
  // scheme their name matches; the shards vLLM fuses into one module (q/k/v -> qkv_proj, gate/up -> gate_up_proj)
  // must match one scheme ("vLLM requires all to use the same scheme")
  const fusedShards = new Map<string, { module: string; scheme: string }[]>();
  const inExperts = new Set([...experts.values()].flat().map((m) => m.module));
  for (const n of tensors.keys()) {
    if (!n.endsWith('.weight_packed')) continue;
    const module = n.slice(0, -'.weight_packed'.length);
    if (inExperts.has(module)) continue;
    const s = ctScheme(qc, module);
    if (!s?.weights) {
      v.push(`${module}: stored packed but matches no config group (vLLM would load it unquantized)`);
      continue;
    }
    const bits = s.weights.num_bits;
    if (!WIDTHS.includes(bits)) v.push(`${module}: ${bits} bits (WNA16 runs ${WIDTHS.join(', ')})`);
    const shape = ints(tensors.get(`${module}.weight_shape`) ?? { dtype: 'I32', shape: [0], bytes: new Uint8Array() });
    const pk = tensors.get(n)!;
    if (shape.length === 2 && pk.shape[1] !== Math.ceil(shape[1]! / (32 / bits))) v.push(`${module}: weight_packed [${pk.shape}] is not ${bits}-bit`);
    if (shape.length === 2) {
      const g = s.weights.strategy === 'group' && s.weights.group_size ? Math.ceil(shape[1]! / s.weights.group_size) : 1;
      gIdxRule(v, module, tensors, s, shape[1]!, g);
    }
    const fused = module.replace(/\.(q|k|v)_proj$/, '.qkv_proj').replace(/\.(gate|up)_proj$/, '.gate_up_proj');
    if (fused !== module) fusedShards.set(fused, [...(fusedShards.get(fused) ?? []), { module, scheme: JSON.stringify(s.weights) }]);
  }
  for (const [fused, shards] of fusedShards) {
    if (new Set(shards.map((x) => x.scheme)).size > 1)
      v.push(`${fused}: its shards (${shards.map((x) => x.module.split('.').pop()).join(', ')}) have different schemes`);
  }
  // routers: vLLM builds them unquantized, so none may be stored packed
  for (const n of tensors.keys()) if (/\.(gate|router)\.weight_packed$/.test(n)) v.push(`${n}: the router is stored quantized`);
  return v;
}

/**
 * act order in compressed-tensors: with `actorder: group` vLLM registers and loads `weight_g_idx` [in] (the group of
 * each input column, < the scale groups); without it no g_idx parameter exists, so a stored one cannot load.
 */
function gIdxRule(v: string[], module: string, tensors: Map<string, RawTensor>, s: CtScheme, inF: number, groups: number): void {
  const t = tensors.get(`${module}.weight_g_idx`);
  if (s.weights?.actorder !== 'group') {
    if (t) v.push(`${module}: weight_g_idx stored but the scheme has no group act order`);
    return;
  }
  if (!t) return void v.push(`${module}: actorder group without weight_g_idx`);
  if (t.dtype !== 'I32' || t.shape.length !== 1 || t.shape[0] !== inF)
    return void v.push(`${module}: weight_g_idx ${t.dtype} [${t.shape}] is not I32 [${inF}]`);
  const g = ints(t);
  if (g.some((x) => x < 0 || x >= groups)) v.push(`${module}: weight_g_idx has groups outside 0..${groups - 1}`);
}

function checkGptq(qc: Record<string, unknown>, tensors: Map<string, RawTensor>, hidden: number, tp: number): string[] {
  const v: string[] = [];
  const dyn = (qc['dynamic'] ?? {}) as Record<string, Record<string, number>>;
  const group = qc['group_size'] as number;
  if (!qc['sym']) v.push('sym false: fused MoE (Marlin, MoeWNA16) runs symmetric GPTQ');
  if (qc['desc_act'] && group === -1) v.push('desc_act with channel-wise groups');
  const experts = expertModules(tensors, 'qweight');
  if (experts.size === 0) v.push('no GPTQ expert modules');
  /** vLLM's get_dynamic_override for the fused module: first matching key; "-:" means not quantized */
  const effective = (prefix: string): { bits: number; group: number } | 'skip' => {
    for (const [k, o] of Object.entries(dyn)) {
      if (k.startsWith('-:')) {
        if (reMatch(k.slice(2), prefix)) return 'skip';
      } else if (reMatch(k.replace(/^\+:/, ''), prefix)) return { bits: o['bits'] ?? (qc['bits'] as number), group: o['group_size'] ?? group };
    }
    return { bits: qc['bits'] as number, group };
  };
  for (const [prefix, mods] of experts) {
    const eff = effective(prefix);
    if (eff === 'skip') {
      v.push(`${prefix}: excluded by a '-:' dynamic key but stored quantized`);
      continue;
    }
    if (!WIDTHS.includes(eff.bits)) {
      v.push(`${prefix}: ${eff.bits} bits (fused MoE runs ${WIDTHS.join(', ')})`);
      continue;
    }
    if (!GROUPS.includes(eff.group)) v.push(`${prefix}: group size ${eff.group}`);
    const pf = 32 / eff.bits;
    for (const m of mods) {
      const qw = tensors.get(`${m.module}.qweight`)!;
      const inF = tensors.get(`${m.module}.g_idx`)?.shape[0] ?? 0;
      const out = qw.shape[1]!;
      if (qw.shape[0] !== (inF * eff.bits) / 32) {
        v.push(`${m.module}: stored at ${(qw.shape[0]! * 32) / inF} bits, vLLM loads the layer at ${eff.bits} (per-expert width)`);
        continue;
      }
      const G = eff.group === -1 ? 1 : Math.ceil(inF / eff.group);
      const sc = tensors.get(`${m.module}.scales`);
      if (!sc || sc.shape[0] !== G || sc.shape[1] !== out) v.push(`${m.module}: scales [${sc?.shape}] are not [${G}, ${out}]`);
      // symmetric: every zero point is 2^(bits-1) (stored as zero-1 in v1); Marlin ignores qzeros, so others would be silently wrong
      if (qc['sym']) {
        const z = new Int32Array(tensors.get(`${m.module}.qzeros`)!.bytes.slice().buffer);
        const mask = (1 << eff.bits) - 1;
        const want = (1 << (eff.bits - 1)) - 1;
        let bad = 0;
        for (const w of z) for (let k = 0; k < pf; k++) if (((w >>> (eff.bits * k)) & mask) !== want) bad++;
        if (bad) v.push(`${m.module}: ${bad} zero points differ from 2^(bits-1) under sym: true`);
      }
      if (m.expert === 0 && m.proj.match(/down|w2/)) shapeRules(v, prefix, hidden, inF, eff.group, tp);
    }
  }
  for (const n of tensors.keys()) if (/\.(gate|router)\.qweight$/.test(n)) v.push(`${n}: the router is stored quantized`);
  return v;
}
