/** The report of `moe quantize --format gguf` and its printed summary (kept apart from the pipeline: the CLI loads it at start). */
import type { TensorClass } from './arch.js';
import { formatSummary, type GgufExportReport } from './export.js';
import type { GgmlType } from './format.js';
import { getQuantizer, type Method } from '../quantize/methods.js';

export interface GgufOption {
  type: GgmlType;
  /** the candidates that become this type on this tensor's rows */
  requested: GgmlType[];
  bytes: number;
  loss: number;
}

export interface GgufUnitReport {
  tensor: string;
  cls: TensorClass;
  program: 'experts' | 'dense';
  choice: GgmlType;
  options: GgufOption[];
  /** --method auto: the expert slices the held-back tokens gave to GPTQ and to the rounding (the bytes written) */
  encodings?: { gptq: number; rounding: number };
}

export interface GgufProgramReport {
  units: number;
  limitBytes: number;
  usedBytes: number;
  loss: number;
  optimal: boolean;
  gap: number;
  solveMs: number;
}

export interface GgufQuantizeReport extends Omit<GgufExportReport, 'seconds'> {
  dryRun: boolean;
  method: Method;
  targetBits: number;
  /** true bits per weight of the routed experts: every byte of their tensors x 8 / their weights */
  expertBpw: number;
  candidates: GgmlType[];
  denseType: GgmlType;
  scored: boolean;
  sequential: boolean;
  calibTokens: number;
  programs: { experts: GgufProgramReport; dense?: GgufProgramReport };
  units: GgufUnitReport[];
  /** experts GPTQ had too few tokens for (importance-weighted rounding instead) */
  fallbacks: { layer: number; expert: number; tokens: number }[];
  /** --method auto: the sum of the units' encodings (expert slices written by each; routed and shared experts) */
  encodings?: { gptq: number; rounding: number };
  files: string[];
  scoreMs: number;
  applyMs: number;
  seconds: number;
}

const mib = (b: number) => (b / 1024 / 1024).toFixed(2);

/** The printed summary: llama-quantize-like sizes per class and type, the allocation, the files. */
export function formatGgufReport(r: GgufQuantizeReport): string {
  const lines = [
    `${r.dryRun ? 'plan' : 'quantized'}: ${r.architecture} GGUF, ${r.method}, --bits ${r.targetBits}: routed experts ${r.expertBpw.toFixed(4)} bpw (candidates ${r.candidates.join('/')}, others within ${r.denseType}'s bytes)`,
  ];
  const layers = new Map<number, string[]>();
  for (const u of r.units) {
    const m = /^blk\.(\d+)\.ffn_(gate|up|down)_exps/.exec(u.tensor);
    // --method auto: how many of the tensor's experts GPTQ wrote, and how many the rounding
    const enc = u.encodings ? ` (gptq ${u.encodings.gptq}/rounding ${u.encodings.rounding})` : '';
    if (m) layers.set(Number(m[1]), [...(layers.get(Number(m[1])) ?? []), `${m[2]} ${u.choice}${enc}`]);
  }
  for (const [l, s] of layers) lines.push(`  layer ${String(l).padStart(2)}: ${s.join(', ')}`);
  if (r.encodings) {
    const n = r.encodings.gptq + r.encodings.rounding;
    lines.push(
      `  GPTQ or rounding by held-back output error: ${r.encodings.gptq} of ${n} expert projections GPTQ, ${r.encodings.rounding} rounding (per tensor: units[].encodings in the report)`,
    );
  }
  lines.push(formatSummary(r.summary).replace(/^/gm, '  '));
  const byType = Object.entries(r.summary.byType)
    .map(([t, c]) => `${t} ${c.tensors}`)
    .join(', ');
  lines.push(`  types: ${byType}`);
  const p = r.programs;
  const solver = (n: string, g: GgufProgramReport) =>
    `  ${n}: ${g.units} tensors, ${mib(g.usedBytes)} of ${mib(g.limitBytes)} MiB, ${g.optimal ? 'optimal' : `gap <= ${g.gap.toExponential(2)}`}, ${g.solveMs.toFixed(0)} ms`;
  lines.push(solver('allocation (routed experts)', p.experts));
  if (p.dense) lines.push(solver('allocation (attention, shared, dense)', p.dense));
  if (getQuantizer(r.method).hessians)
    lines.push(`  GPTQ into the block types: ${r.sequential ? 'sequential (through the quantized earlier layers)' : 'not sequential'}`);
  if (r.fallbacks.length)
    lines.push(
      `  warning: ${r.fallbacks.length} experts had fewer tokens than --min-tokens and used importance-weighted rounding: ${r.fallbacks.map((f) => `L${f.layer}.E${f.expert}(${f.tokens})`).join(' ')}`,
    );
  if (r.files.length) lines.push(`  files: ${r.files.map((f) => `${r.out}/${f}`).join(', ')}`);
  return lines.join('\n');
}
