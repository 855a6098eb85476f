/**
 * A model as one llama.cpp GGUF file: plan (every tensor's llama.cpp name, shape and ggml type, fixed before any
 * data is read) -> write (tensor by tensor, each encoded as it is produced) -> report (bytes and bits per weight
 * per tensor class, like llama-quantize's summary).
 *
 * The output is a directory: DIR/model.gguf beside the report (and, for allocated quantizations, the
 * --tensor-type list and the importance matrix), published atomically like every moe output.
 */
import { basename } from 'node:path';
import type { Progress } from '../progress.js';
import { fail } from '../errors.js';
import { fromF32 } from '../io/dtype.js';
import { OutputDir } from '../io/output.js';
import { openModel, type Model } from '../model/open.js';
import { archMetadata, ggufArchOf, ggufTensors, type GgufSourceTensor, type TensorClass } from './arch.js';
import { GGML_QUANTIZATION_VERSION, GGML_TYPES, LLAMA_FTYPE, ggmlTensorBytes, kv, type GgmlType, type GgufValue } from './format.js';
import { BLOCK_TYPES, quantizeGgml } from '../../kernels/ggml/codecs.js';
import { readGgufTokenizer, tokenizerMetadata } from './tokenizer.js';
import { layoutGguf, writeGguf, type GgufWriteTensor } from './writer.js';

export const GGUF_FILE = 'model.gguf';
export const GGUF_REPORT_FILE = 'moe-gguf-report.json';
export type FloatType = 'F32' | 'F16' | 'BF16';

/** Encoders for ggml types: float values in ggml order -> the tensor's bytes (quantizers register here). */
export type GgmlEncoder = (values: Float32Array, ne: readonly number[], t: GgufSourceTensor) => Uint8Array | Promise<Uint8Array>;

const floatEncoders: Partial<Record<GgmlType, GgmlEncoder>> = {
  F32: (v) => new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength)),
  F16: (v) => fromF32(v, 'F16'),
  BF16: (v) => fromF32(v, 'BF16'),
};

/** Round-to-nearest-on-the-grid block quantization (importance-weighted when an importance matrix is given). */
export function blockEncoders(imatrix?: (t: GgufSourceTensor) => Float32Array | undefined): Partial<Record<GgmlType, GgmlEncoder>> {
  const enc: Partial<Record<GgmlType, GgmlEncoder>> = {};
  for (const type of BLOCK_TYPES) {
    enc[type] = (v, ne, t) => {
      const n = ne[0]!;
      const im = imatrix?.(t);
      if (!im || im.length === n) return quantizeGgml(type, v, v.length / n, n, im);
      // one importance vector per expert of a 3-D tensor [n, out, E]
      const per = n * ne[1]!;
      const E = v.length / per;
      if (im.length !== n * E) fail('InvalidStats', `${t.name}: importance matrix of ${im.length} values, expected ${n} or ${n} x ${E}`);
      const out = new Uint8Array(ggmlTensorBytes(type, ne));
      const eb = out.length / E;
      for (let e = 0; e < E; e++) out.set(quantizeGgml(type, v.subarray(e * per, (e + 1) * per), ne[1]!, n, im.subarray(e * n, (e + 1) * n)), e * eb);
      return out;
    };
  }
  return enc;
}

/**
 * The type llama-quantize falls back to when a tensor's rows are not whole blocks of the requested type
 * (llama-quant.cpp tensor_type_fallback): 256-wide k-quants and IQ types go to a 32-wide type, or F16 when even
 * that does not fit.
 */
export function llamaFallback(type: GgmlType, ne0: number): GgmlType {
  if (ne0 % GGML_TYPES[type].block === 0) return type;
  const map: Partial<Record<GgmlType, GgmlType>> = {
    IQ1_S: 'IQ4_NL',
    IQ1_M: 'IQ4_NL',
    IQ2_XXS: 'IQ4_NL',
    IQ2_XS: 'IQ4_NL',
    IQ2_S: 'IQ4_NL',
    IQ3_XXS: 'IQ4_NL',
    IQ3_S: 'IQ4_NL',
    IQ4_XS: 'IQ4_NL',
    Q2_K: 'Q4_0',
    Q3_K: 'Q4_0',
    TQ1_0: 'Q4_0',
    TQ2_0: 'Q4_0',
    Q4_K: 'Q5_0',
    Q5_K: 'Q5_1',
    Q6_K: 'Q8_0',
  };
  const f = map[type] ?? type;
  return ne0 % GGML_TYPES[f].block === 0 ? f : 'F16';
}

/** The types this project encodes. */
export const WRITABLE_TYPES: readonly GgmlType[] = ['F32', 'F16', 'BF16', ...BLOCK_TYPES];

/**
 * A type we can write for a tensor whose rows (ne0 values) the requested type may not fit: llama.cpp's own
 * fallback when we implement it, else Q8_0 for a quantized target (when rows are whole 32-blocks), else F16.
 */
export function fittingType(type: GgmlType, ne0: number): { type: GgmlType; reason: string } {
  if (ne0 % GGML_TYPES[type].block === 0) return { type, reason: 'requested type' };
  const ll = llamaFallback(type, ne0);
  if (WRITABLE_TYPES.includes(ll)) return { type: ll, reason: `rows of ${ne0} are not whole ${type} blocks: llama.cpp's fallback ${ll}` };
  const ours: GgmlType = ne0 % 32 === 0 ? 'Q8_0' : 'F16';
  return { type: ours, reason: `rows of ${ne0} are not whole ${type} blocks: llama.cpp's fallback is ${ll} (not implemented here), written as ${ours}` };
}

export interface GgufPlanEntry {
  tensor: GgufSourceTensor;
  type: GgmlType;
  bytes: number;
  /** why this type (the file type, F32 by rule, a fallback for the row width, an allocation choice) */
  reason: string;
}

export interface ClassSize {
  tensors: number;
  params: number;
  bytes: number;
  bpw: number;
}

export interface GgufSummary {
  file: string;
  fileBytes: number;
  params: number;
  /** bits per weight over all tensors (tensor data only) */
  bpw: number;
  byClass: Partial<Record<TensorClass, ClassSize>>;
  byType: Record<string, ClassSize>;
}

export function summarize(plan: readonly GgufPlanEntry[], file: string, fileBytes: number): GgufSummary {
  const byClass: Partial<Record<TensorClass, ClassSize>> = {};
  const byType: Record<string, ClassSize> = {};
  let params = 0;
  let bytes = 0;
  const add = (m: Record<string, ClassSize>, k: string, n: number, b: number) => {
    const c = (m[k] ??= { tensors: 0, params: 0, bytes: 0, bpw: 0 });
    c.tensors++;
    c.params += n;
    c.bytes += b;
    c.bpw = (8 * c.bytes) / c.params;
  };
  for (const e of plan) {
    const n = e.tensor.ne.reduce((a, b) => a * b, 1);
    params += n;
    bytes += e.bytes;
    add(byClass as Record<string, ClassSize>, e.tensor.cls, n, e.bytes);
    add(byType, e.type, n, e.bytes);
  }
  return { file, fileBytes, params, bpw: (8 * bytes) / params, byClass, byType };
}

/** llama-quantize-like lines: per tensor class, MiB and bits per weight. */
export function formatSummary(s: GgufSummary): string {
  const mib = (b: number) => (b / 1024 / 1024).toFixed(2);
  const lines = [`${s.file}: ${mib(s.fileBytes)} MiB, ${s.params} weights, ${s.bpw.toFixed(3)} bpw`];
  for (const [k, c] of Object.entries(s.byClass))
    lines.push(`  ${k.padEnd(7)} ${String(c!.tensors).padStart(5)} tensors ${mib(c!.bytes).padStart(10)} MiB ${c!.bpw.toFixed(3).padStart(7)} bpw`);
  return lines.join('\n');
}

export interface WriteModelOptions {
  /** the ggml type of each tensor that is not F32 by rule (default: the file type) */
  typeOf?(t: GgufSourceTensor): { type: GgmlType; reason: string };
  /** the file's "mostly" type, for general.file_type */
  fileType: GgmlType;
  encoders?: Partial<Record<GgmlType, GgmlEncoder>>;
  /** bytes of a tensor produced elsewhere (error-compensated quantization), instead of encoding its values */
  produce?(t: GgufSourceTensor, type: GgmlType): Promise<Uint8Array | undefined> | Uint8Array | undefined;
  name?: string;
  extraMetadata?: [string, GgufValue][];
  onTensor?(done: number, total: number, name: string): void;
}

export async function ggufMetadata(model: Model, fileType: GgmlType, name?: string): Promise<{ metadata: Map<string, GgufValue>; tokenizerNote: string }> {
  const { view } = model;
  const a = ggufArchOf(view);
  const ftype = LLAMA_FTYPE[fileType];
  if (ftype === undefined) fail('Usage', `${fileType} is not a llama.cpp file type`);
  const meta = new Map<string, GgufValue>();
  meta.set('general.architecture', kv.str(a.arch));
  meta.set('general.type', kv.str('model'));
  meta.set('general.name', kv.str(name ?? basename(model.dir)));
  for (const [k, v] of archMetadata(view)) meta.set(k, v);
  meta.set('general.file_type', kv.u32(ftype));
  meta.set('general.quantization_version', kv.u32(GGML_QUANTIZATION_VERSION));
  const tok = await readGgufTokenizer(model.dir, view.config, view.dims.vocab);
  for (const [k, v] of tokenizerMetadata(tok)) meta.set(k, v);
  return { metadata: meta, tokenizerNote: tok.preNote };
}

/** Decide every tensor's type (no data read). */
export function planTensors(model: Model, opts: Pick<WriteModelOptions, 'typeOf' | 'fileType'>): GgufPlanEntry[] {
  return ggufTensors(model).map((t) => {
    const { type, reason } = t.f32
      ? { type: 'F32' as GgmlType, reason: 'F32 by rule (1-D, norm, router or bias)' }
      : (opts.typeOf?.(t) ?? { type: opts.fileType, reason: 'file type' });
    let bytes: number;
    try {
      bytes = ggmlTensorBytes(type, t.ne);
    } catch (e) {
      fail('InvalidShape', `${t.name}: ${(e as Error).message}`);
    }
    return { tensor: t, type, bytes, reason };
  });
}

/** Write the model as a GGUF file at `path`. */
export async function writeModelGguf(
  model: Model,
  path: string,
  plan: readonly GgufPlanEntry[],
  opts: WriteModelOptions,
): Promise<{ fileBytes: number; tokenizerNote: string }> {
  const { metadata, tokenizerNote } = await ggufMetadata(model, opts.fileType, opts.name);
  for (const [k, v] of opts.extraMetadata ?? []) metadata.set(k, v);
  const enc = { ...floatEncoders, ...opts.encoders };
  const tensors: GgufWriteTensor[] = plan.map((e) => ({
    name: e.tensor.name,
    type: e.type,
    ne: e.tensor.ne,
    produce: async () => {
      const given = await opts.produce?.(e.tensor, e.type);
      if (given) return given;
      const f = enc[e.type];
      if (!f) fail('Usage', `no encoder for ggml type ${e.type}`);
      const v = await e.tensor.load();
      for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i]!)) fail('NonFinite', `${model.dir}: ${e.tensor.name} has a non-finite value at ${i}`);
      return f(v, e.tensor.ne, e.tensor);
    },
  }));
  const layout = await writeGguf(path, metadata, tensors, opts.onTensor ? { onTensor: opts.onTensor } : {});
  return { fileBytes: layout.totalBytes, tokenizerNote };
}

export interface GgufExportRequest {
  model: string;
  out: string;
  /** F32/F16/BF16, or one block type for every matrix (llama-quantize --pure); rows that do not fit take a fallback */
  type?: GgmlType;
  /** importance per input column, by GGUF tensor name (for experts: one vector shared by the experts, or E of them) */
  imatrix?: ReadonlyMap<string, Float32Array>;
  force?: boolean;
  /** plan only: the report with the exact file size, nothing written */
  dryRun?: boolean;
  progress?: Progress;
  name?: string;
}

export interface GgufExportReport {
  format: 'gguf';
  model: string;
  out: string;
  architecture: string;
  fileType: GgmlType;
  tokenizer: string;
  summary: GgufSummary;
  tensors: { name: string; ne: number[]; type: GgmlType; bytes: number; reason: string }[];
  seconds: number;
}

/** Export with one type for every matrix: F16, BF16 or F32 (no quantization), or a block type (round to grid). */
export async function exportGguf(req: GgufExportRequest): Promise<GgufExportReport> {
  const t0 = performance.now();
  const type = req.type ?? 'F16';
  if (!WRITABLE_TYPES.includes(type)) fail('Usage', `GGUF export type must be one of ${WRITABLE_TYPES.join(', ')} (got ${type})`);
  const model = await openModel(req.model);
  try {
    const plan = planTensors(model, { fileType: type, typeOf: (t) => fittingType(type, t.ne[0]!) });
    const reportOf = (fileBytes: number, tokenizerNote: string): GgufExportReport => ({
      format: 'gguf',
      model: req.model,
      out: req.out,
      architecture: ggufArchOf(model.view).arch,
      fileType: type,
      tokenizer: tokenizerNote,
      summary: summarize(plan, GGUF_FILE, fileBytes),
      tensors: plan.map((e) => ({ name: e.tensor.name, ne: e.tensor.ne, type: e.type, bytes: e.bytes, reason: e.reason })),
      seconds: (performance.now() - t0) / 1000,
    });
    if (req.dryRun) {
      const { metadata, tokenizerNote } = await ggufMetadata(model, type, req.name);
      return reportOf(
        layoutGguf(
          metadata,
          plan.map((e) => ({ name: e.tensor.name, type: e.type, ne: e.tensor.ne })),
        ).totalBytes,
        tokenizerNote,
      );
    }
    const dir = await OutputDir.create(req.out, { force: !!req.force, inputDir: req.model });
    try {
      const ph = req.progress?.phase(`writing ${req.out}/${GGUF_FILE}`);
      const { fileBytes, tokenizerNote } = await writeModelGguf(model, dir.path(GGUF_FILE), plan, {
        fileType: type,
        encoders: blockEncoders((t) => req.imatrix?.get(t.name)),
        ...(req.name ? { name: req.name } : {}),
        onTensor: (d, n) => ph?.tick(d, n, 'tensors'),
      });
      ph?.succeed(`wrote ${req.out}/${GGUF_FILE}`);
      const report = reportOf(fileBytes, tokenizerNote);
      await dir.writeJson(GGUF_REPORT_FILE, report);
      await dir.publish();
      return report;
    } catch (e) {
      await dir.discard();
      throw e;
    }
  } finally {
    await model.ckpt.close();
  }
}
