/**
 * `moe inspect` on a GGUF file (or a directory holding model.gguf without a config.json): architecture and the
 * metadata llama.cpp reads, and sizes per tensor class and per ggml type (MiB and bits per weight, like
 * llama-quantize's summary), from the header alone.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { TensorClass } from './arch.js';
import { formatSummary, GGUF_FILE, summarize, type GgufSummary } from './export.js';
import { GgufValueType, type GgmlType } from './format.js';
import { readGguf } from './reader.js';

export interface GgufInspectReport {
  format: 'gguf';
  file: string;
  version: number;
  architecture: string;
  name?: string;
  fileType?: number;
  tensors: number;
  /** scalar metadata as read; arrays as "[n x type]" (the vocabulary is not printed) */
  metadata: Record<string, string | number | boolean>;
  summary: GgufSummary;
}

/** The GGUF file `path` names, if it is one (a .gguf file, or a directory with model.gguf and no config.json). */
export async function ggufPathOf(path: string): Promise<string | undefined> {
  const st = await stat(path).catch(() => undefined);
  if (!st) return undefined;
  if (st.isFile()) return path.endsWith('.gguf') ? path : undefined;
  if (await stat(join(path, 'config.json')).catch(() => undefined)) return undefined;
  return (await stat(join(path, GGUF_FILE)).catch(() => undefined))?.isFile() ? join(path, GGUF_FILE) : undefined;
}

/** What a tensor is, from its llama.cpp name. */
export function tensorClassOf(name: string): TensorClass {
  if (name.startsWith('token_embd.')) return 'embed';
  if (name === 'output.weight') return 'output';
  if (name.endsWith('.bias')) return 'bias';
  if (/_norm\.weight$|attn_sinks/.test(name)) return 'norm';
  if (/ffn_gate_inp/.test(name)) return 'router';
  if (/_exps\./.test(name)) return 'expert';
  if (/_shexp\./.test(name)) return 'shared';
  if (/\.attn_/.test(name)) return 'attn';
  return 'dense';
}

export async function inspectGguf(path: string): Promise<GgufInspectReport> {
  const f = await readGguf(path);
  const metadata: Record<string, string | number | boolean> = {};
  for (const [k, v] of f.metadata) {
    if (v.type === GgufValueType.ARRAY)
      metadata[k] = `[${v.value.length} x ${Object.keys(GgufValueType).find((n) => GgufValueType[n as keyof typeof GgufValueType] === v.elemType)}]`;
    else metadata[k] = typeof v.value === 'bigint' ? Number(v.value) : v.value;
  }
  const plan = f.tensors.map((t) => ({
    tensor: { name: t.name, ne: t.ne, cls: tensorClassOf(t.name), f32: false, load: async () => new Float32Array(0) },
    type: t.type as GgmlType,
    bytes: t.bytes,
    reason: '',
  }));
  const arch = String(metadata['general.architecture'] ?? '');
  const name = metadata['general.name'];
  const ft = metadata['general.file_type'];
  return {
    format: 'gguf',
    file: path,
    version: f.version,
    architecture: arch,
    ...(typeof name === 'string' ? { name } : {}),
    ...(typeof ft === 'number' ? { fileType: ft } : {}),
    tensors: f.tensors.length,
    metadata,
    summary: summarize(plan, path, f.fileBytes),
  };
}

export function formatGgufInspect(r: GgufInspectReport): string {
  const keys = Object.keys(r.metadata).filter((k) => k.startsWith(`${r.architecture}.`));
  const lines = [
    `GGUF v${r.version}: ${r.architecture}${r.name ? ` '${r.name}'` : ''}, ${r.tensors} tensors${r.fileType !== undefined ? `, file type ${r.fileType}` : ''}`,
    ...keys.map((k) => `  ${k} = ${r.metadata[k]}`),
    `  tokenizer: ${r.metadata['tokenizer.ggml.model'] ?? 'none'}${r.metadata['tokenizer.ggml.pre'] ? ` (pre ${r.metadata['tokenizer.ggml.pre']})` : ''}`,
    formatSummary(r.summary),
    `  types: ${Object.entries(r.summary.byType)
      .map(([t, c]) => `${t} ${c.tensors} (${c.bpw.toFixed(3)} bpw)`)
      .join(', ')}`,
  ];
  return lines.join('\n');
}
