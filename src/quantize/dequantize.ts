/**
 * `moe dequantize`: a GPTQ or compressed-tensors checkpoint back to a dense BF16/F16 (or F32) checkpoint of the
 * same family, for tools that cannot read them. Every `<module>.qweight/qzeros/scales/g_idx` quadruple becomes `<module>.weight`; all other
 * tensors are copied byte for byte; quantization_config is removed. Families whose experts are fused 3-D tensors
 * (gpt_oss, granitemoe: quantized as GPTQModel's per-expert modules, see fused.ts) get their fused tensors back,
 * in the family's own layout, with the module biases stacked into the fused bias tensors; a checkpoint quantized
 * from transformers 5's fused layout (recorded in quantization_config.moe_source_expert_layout) gets that layout
 * back, router names included.
 */
import { fail } from '../errors.js';
import { fromF32, type Dtype } from '../io/dtype.js';
import { writeReport } from '../io/output.js';
import { formatOf, linearTensors, loadLinear, transpose } from '../model/load.js';
import { getArchitecture } from '../model/registry.js';
import { openModel, type Model } from '../model/open.js';
import { rewriteCheckpoint, type NewTensor, type TensorFate } from '../model/rewrite.js';
import type { LinearRef } from '../model/types.js';
import { dequantize as dequantizeLinear } from '../../kernels/quant/rtn.js';
import { GPTQ_SUFFIXES, readGptq, registerGptqFormat } from './format.js';
import { CT_SUFFIXES, ctSchemeFor, readCt } from './ct.js';
import type { Checkpoint } from '../io/checkpoint.js';
import {
  FUSED_CT_FORMAT,
  FUSED_GPTQ_FORMAT,
  gptqModuleOfFusedRef,
  registerFusedGptqFormat,
  SOURCE_LAYOUT_FUSED,
  SOURCE_LAYOUT_KEY,
  stackRows,
} from './fused.js';
import type { Progress } from '../progress.js';

export interface DequantizeRequest {
  model: string;
  out?: string;
  /** F32: the exact dequantized values (BF16/F16 round them) */
  dtype?: 'BF16' | 'F16' | 'F32';
  force?: boolean;
  dryRun?: boolean;
  progress?: Progress;
}

export const DEQUANTIZE_REPORT_FILE = 'moe-dequantize-report.json';

export interface DequantizeReport {
  tool: 'moe dequantize';
  model: string;
  out?: string;
  dtype: 'BF16' | 'F16' | 'F32';
  modules: number;
  beforeBytes: number;
  afterBytes: number;
  dryRun: boolean;
}

/** Where one fused expert tensor of a layer goes in the output. */
interface FusedOut {
  name: string;
  transposed: boolean;
  split: 'halves' | 'interleaved';
}

/** A tensor written under another name, its bytes unchanged. */
function renamed(ckpt: Checkpoint, from: string, to: string): TensorFate {
  const info = ckpt.info(from);
  return { kind: 'replace', tensors: [{ spec: { name: to, dtype: info.dtype, shape: info.shape }, produce: () => ckpt.readBytes(from) }] };
}

/**
 * The family's transformers-5 fused layout when quantize recorded that the input was saved in it
 * (quantization_config.moe_source_expert_layout, fused.ts), else undefined.
 */
function recordedFusedLayout(model: Model) {
  const { ckpt, view } = model;
  const qc = ckpt.config['quantization_config'] as Record<string, unknown> | undefined;
  const v = qc?.[SOURCE_LAYOUT_KEY];
  if (v === undefined || v === null) return undefined;
  if (v !== SOURCE_LAYOUT_FUSED)
    fail('InvalidConfig', `${ckpt.dir}/config.json: quantization_config.${SOURCE_LAYOUT_KEY} is ${JSON.stringify(v)}, expected "${SOURCE_LAYOUT_FUSED}"`);
  const alt = getArchitecture(view.family, view.family).tensors.fusedAlternative;
  if (!alt)
    fail(
      'InvalidConfig',
      `${ckpt.dir}/config.json: quantization_config.${SOURCE_LAYOUT_KEY} says fused, but ${view.family} has no transformers-5 fused layout`,
    );
  return alt;
}

/**
 * The fused expert tensors rebuilt, per MoE layer and fused tensor (gate_up, down): every expert's dense rows in
 * the stored order (interleaved or halves, transposed where the family stores in-major), stacked [E, ...], plus
 * the fused bias from the module biases. Done for a GPTQModel-layout checkpoint of a natively fused family (its own
 * fused names), and for any checkpoint whose input was in the transformers-5 fused layout (that layout's names,
 * the router renamed back with it: the per-expert GPTQ output had moved it to the family's per-expert names).
 * Returns the fates of the replaced tensors (the first of each fused tensor's sources replaced by it, the rest
 * dropped).
 */
function fusedFates(model: Model, dtype: Dtype): Map<string, TensorFate> {
  const { ckpt, view } = model;
  const fates = new Map<string, TensorFate>();
  const alt = recordedFusedLayout(model);
  for (const layer of view.layers) {
    if (layer.block.kind !== 'moe') continue;
    const experts = layer.block.experts;
    const router = layer.block.router;
    if (alt?.router?.weight && layer.prefix + alt.router.weight !== router.weight)
      fates.set(router.weight, renamed(ckpt, router.weight, layer.prefix + alt.router.weight));
    const cbTpl = alt?.router?.correctionBias;
    if (cbTpl && router.correctionBias) {
      const to = layer.prefix + (typeof cbTpl === 'string' ? cbTpl : cbTpl.name);
      if (to !== router.correctionBias) fates.set(router.correctionBias, renamed(ckpt, router.correctionBias, to));
    }
    for (const which of ['gateUp', 'down'] as const) {
      const refsOf = (e: number): LinearRef[] => (which === 'down' ? [experts[e]!.down] : [experts[e]!.gate, experts[e]!.up]);
      const r0 = refsOf(0)[0]!;
      const native = formatOf(ckpt, r0) === FUSED_GPTQ_FORMAT || formatOf(ckpt, r0) === FUSED_CT_FORMAT;
      if (!native && !alt) continue;
      const target: FusedOut = alt
        ? which === 'down'
          ? { name: layer.prefix + alt.experts.down.tensor, transposed: alt.experts.down.transposed, split: 'halves' }
          : { name: layer.prefix + alt.experts.gateUp.tensor, transposed: alt.experts.gateUp.transposed, split: alt.experts.gateUp.split }
        : { name: r0.tensor, transposed: !!r0.transposed, split: r0.interleave ? 'interleaved' : 'halves' };
      // a layer quantize kept unquantized is still stored fused as it was read
      if (alt && ckpt.has(target.name)) continue;
      const sources = [...new Set(experts.flatMap((_, e) => refsOf(e).flatMap((r) => linearTensors(ckpt, r))))].filter((n) => ckpt.has(n));
      const E = experts.length;
      const rows = r0.outFeatures * refsOf(0).length;
      const inF = r0.inFeatures;
      const shape = target.transposed ? [E, inF, rows] : [E, rows, inF];
      const made: NewTensor[] = [
        {
          spec: { name: target.name, dtype, shape },
          produce: async () => {
            const out = new Float32Array(E * rows * inF);
            for (let e = 0; e < E; e++) {
              const ws = await Promise.all(refsOf(e).map(async (r) => (await loadLinear(ckpt, r)).w));
              const m = stackRows(ws, r0.outFeatures, inF, target.split);
              out.set(target.transposed ? transpose(m, rows, inF) : m, e * rows * inF);
            }
            return fromF32(out, dtype);
          },
        },
      ];
      // GPTQModel modules carry the fused bias's expert slices as <module>.bias (gpt_oss)
      if (native && r0.bias) {
        const mods = experts.map((_, e) => gptqModuleOfFusedRef(ckpt, refsOf(e)[0]!)!);
        const bdt = ckpt.dtype(`${mods[0]}.bias`);
        made.push({
          spec: { name: r0.bias, dtype: bdt, shape: [E, rows] },
          produce: async () => {
            const parts = await Promise.all(mods.map((m) => ckpt.readBytes(`${m}.bias`)));
            const out = new Uint8Array(parts.reduce((a, p) => a + p.byteLength, 0));
            let o = 0;
            for (const p of parts) {
              out.set(p, o);
              o += p.byteLength;
            }
            return out;
          },
        });
      }
      fates.set(sources[0]!, { kind: 'replace', tensors: made });
      for (const n of sources.slice(1)) fates.set(n, { kind: 'drop' });
    }
  }
  return fates;
}

export async function dequantizeCheckpoint(req: DequantizeRequest): Promise<DequantizeReport> {
  if (!req.dryRun && !req.out) fail('Usage', 'give --out DIR (or --dry-run)');
  registerGptqFormat();
  registerFusedGptqFormat();
  const model = await openModel(req.model);
  try {
    const { ckpt } = model;
    const dtype = req.dtype ?? (ckpt.config['torch_dtype'] === 'float16' ? 'F16' : 'BF16');
    const all = ckpt.tensorNames.filter((n) => n.endsWith('.qweight')).map((n) => n.slice(0, -'.qweight'.length));
    // compressed-tensors pack-quantized modules (ct.ts): weight_packed + weight_scale + weight_shape [+ zero point, g_idx]
    const ctModules = ckpt.tensorNames.filter((n) => n.endsWith('.weight_packed')).map((n) => n.slice(0, -'.weight_packed'.length));
    if (all.length === 0 && ctModules.length === 0) {
      fail('InvalidData', `${req.model} has no GPTQ (*.qweight) or compressed-tensors (*.weight_packed) tensors: nothing to dequantize`);
    }
    const fates = fusedFates(model, dtype);
    // modules already folded into a fused tensor
    const modules = all.filter((m) => !fates.has(`${m}.qweight`));
    for (const m of modules) {
      for (const s of GPTQ_SUFFIXES) if (!ckpt.has(`${m}.${s}`)) fail('InvalidData', `${req.model}: GPTQ module '${m}' has no ${s}`);
      const out = ckpt.shape(`${m}.qweight`)[1]!;
      const inF = ckpt.shape(`${m}.g_idx`)[0]!;
      fates.set(`${m}.qweight`, {
        kind: 'replace',
        tensors: [
          {
            spec: { name: `${m}.weight`, dtype, shape: [out, inF] },
            produce: async () => fromF32(dequantizeLinear(await readGptq(ckpt, m, out, inF)), dtype),
          },
        ],
      });
      for (const s of ['qzeros', 'scales', 'g_idx']) fates.set(`${m}.${s}`, { kind: 'drop' });
    }
    for (const m of ctModules.filter((c) => !fates.has(`${c}.weight_packed`))) {
      if (!ckpt.has(`${m}.weight_scale`)) fail('InvalidData', `${req.model}: compressed-tensors module '${m}' has no weight_scale`);
      const out = ckpt.shape(`${m}.weight_packed`)[0]!;
      const inF = await ctInFeatures(ckpt, m);
      fates.set(`${m}.weight_packed`, {
        kind: 'replace',
        tensors: [{ spec: { name: `${m}.weight`, dtype, shape: [out, inF] }, produce: async () => fromF32(await readCt(ckpt, m, out, inF), dtype) }],
      });
      for (const s of CT_SUFFIXES.slice(1)) if (ckpt.has(`${m}.${s}`)) fates.set(`${m}.${s}`, { kind: 'drop' });
    }
    const ph = req.dryRun ? undefined : req.progress?.phase(`writing ${req.out}`);
    const res = await rewriteCheckpoint(model, { fates, config: { quantization_config: null } }, req.out ?? '(dry run)', {
      dryRun: !!req.dryRun,
      force: !!req.force,
      onProgress: (d, t) => ph?.tick(d, t, 'tensors'),
    });
    ph?.succeed(`wrote ${req.out}`);
    const beforeBytes = ckpt.tensorNames.reduce((a, n) => {
      const i = ckpt.info(n);
      return a + (i.end - i.begin);
    }, 0);
    const report: DequantizeReport = {
      tool: 'moe dequantize',
      model: req.model,
      ...(req.out ? { out: req.out } : {}),
      dtype,
      modules: all.length + ctModules.length,
      beforeBytes,
      afterBytes: res.totalBytes,
      dryRun: !!req.dryRun,
    };
    // every output holds its report: it is what marks a directory as moe's (what --force may replace)
    if (!req.dryRun && req.out) await writeReport(req.out, DEQUANTIZE_REPORT_FILE, report);
    return report;
  } finally {
    await model.ckpt.close();
  }
}

/** Input features of a compressed-tensors module: its weight_shape, else the packed width x values per word. */
async function ctInFeatures(ckpt: Checkpoint, m: string): Promise<number> {
  const t = `${m}.weight_shape`;
  if (ckpt.has(t)) {
    const b = (await ckpt.readBytes(t)).slice().buffer;
    const v = ckpt.dtype(t) === 'I64' ? Number(new BigInt64Array(b)[1]) : new Int32Array(b)[1]!;
    if (Number.isInteger(v) && v > 0) return v;
  }
  const qc = (ckpt.config['quantization_config'] ?? {}) as Record<string, unknown>;
  const bits = ctSchemeFor(qc, m)?.num_bits;
  if (!bits) fail('InvalidData', `${ckpt.dir}: compressed-tensors module '${m}' has no weight_shape and matches no config group`);
  return ckpt.shape(`${m}.weight_packed`)[1]! * (32 / bits!);
}
