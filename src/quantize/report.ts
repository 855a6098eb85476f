/**
 * The quantize report: the bit map per layer and expert, true bits per weight (every stored byte x 8 over the
 * weights) for the routed experts, the other linears and everything, sizes before and after, solver figures,
 * RTN fallbacks; and a llama-quantize-style summary table per tensor class.
 */
import type { AllocResult } from '../alloc/knapsack.js';
import { linearTensors } from '../model/load.js';
import { getQuantizer, type Granularity } from './methods.js';
import type { Model } from '../model/open.js';
import { formatEstimate, type MemoryEstimate } from '../runtime/memory.js';
import type { QuantBits } from '../../kernels/quant/types.js';
import type { LinearClass, LinearDecision } from './plan.js';
import { decisionBytesAt, type StoredFormat } from './plan.js';
import type { QuantizeRequest, Unit } from './types.js';

export interface ClassSize {
  cls: LinearClass | 'other';
  tensors: number;
  params: number;
  beforeBytes: number;
  afterBytes: number;
  bpw: number;
}

export interface QuantizeReport {
  tool: 'moe quantize';
  /** multi-token-prediction layers: copied unquantized (a `-:` rule each in quantization_config.dynamic) or dropped (--drop-mtp) */
  mtp?: { unquantized: number[]; dropped: number[] };
  model: string;
  out?: string;
  dryRun: boolean;
  family: string;
  method: string;
  granularity: Granularity;
  /** output format (every stored byte of it counted in bpw) and the serving target it was constrained to */
  format: StoredFormat;
  serve?: string;
  candidates: number[];
  targetBits: number;
  denseBits: number;
  groupSize: number;
  sym: boolean;
  actOrder: boolean;
  calibration: { tokens: number; hessians: string };
  /** [layer][expert] -> bits of gate/up/down ("keep" = unquantized) */
  bitMap: { layer: number; experts: (number | string)[][] }[];
  /** per unit: the chosen width and its loss per candidate */
  units: { id: string; bits: string; losses: Record<string, number> }[];
  /**
   * budgeted: with --allocate, the true bits per weight of what --bits measures (the routed experts and the
   * allocated classes' linears, every stored byte)
   */
  bpw: { experts: number; nonExperts: number; linears: number; model: number; budgeted?: number };
  /** --allocate: the classes allocated as units of their own */
  allocate?: string[];
  sizes: { beforeBytes: number; afterBytes: number; beforeMiB: number; afterMiB: number; classes: ClassSize[] };
  solver: { units: number; solveMs: number; optimal: boolean; gap: number; loss: number };
  fallbacks: { layer: number; expert: number; tokens: number }[];
  decisions: { tensor: string; bits: number | 'keep'; reason: string }[];
  /** applyMs: the GPTQ pass; writeMs: until the last tensor was written (the two run concurrently) */
  timings: { scoreMs: number; applyMs: number; writeMs: number };
  scored: boolean;
  /** GPTQ's Hessians of layer l came from activations through the quantized layers < l */
  sequential: boolean;
  /** plan file read (--plan) or written (--save-plan) */
  plan?: { loaded?: string; saved?: string };
  /** layer-parallel job (--shard i/n): this part holds layers l with l % count == index */
  shard?: { index: number; count: number };
  /** estimated peak memory (from shapes; dry runs and real runs alike) */
  memory: MemoryEstimate;
  /**
   * runs with a GPTQ apply pass: the pass continued after this decoder layer, whose state a killed earlier run of
   * the same command had saved (-1: it ran from the start)
   */
  resumedAfterLayer?: number;
  /** the plan a killed earlier run of the same command had scored was reused from the staging directory (no scoring) */
  resumedPlan?: boolean;
  /** experts stored fused in 3-D tensors (gpt_oss, granitemoe, transformers-5 layouts): what was read, what is written */
  fusedExperts?: { read: string; written: string };
  seconds: number;
}

export interface ReportInput {
  req: QuantizeRequest;
  model: Model;
  decisions: LinearDecision[];
  units: Unit[];
  alloc: AllocResult;
  finalBits: (d: LinearDecision) => QuantBits | 'keep';
  groupSize: number;
  outBytes: number;
  fallbacks: { layer: number; expert: number; tokens: number }[];
  calibTokens: number;
  expertParams: number;
  scoreMs: number;
  applyMs: number;
  writeMs: number;
  seconds: number;
  method: string;
  granularity: Granularity;
  format: StoredFormat;
  serve?: string;
  sym: boolean;
  candidates: number[];
  denseBits: number;
  allocate: readonly string[];
  scored: boolean;
  sequential: boolean;
  memory: MemoryEstimate;
  planLoaded?: string;
  planSaved?: string;
  resumedAfterLayer?: number;
  resumedPlan?: boolean;
  fusedExperts?: { read: string; written: string };
}

const MiB = 2 ** 20;

function budgetedBpw(classes: ReadonlyMap<string, ClassSize>, which: readonly string[]): number {
  const cs = which.map((c) => classes.get(c)).filter((c) => c !== undefined);
  const params = cs.reduce((a, c) => a + c.params, 0);
  return params ? (cs.reduce((a, c) => a + c.afterBytes, 0) * 8) / params : 0;
}

export function buildReport(r: ReportInput): QuantizeReport {
  const { model, decisions, finalBits, groupSize: gs } = r;
  const after = (d: LinearDecision) => {
    const b = finalBits(d);
    return decisionBytesAt(d, b, gs, r.format, !!r.req.actOrder);
  };
  const beforeBytes = model.ckpt.tensorNames.reduce((a, n) => {
    const i = model.ckpt.info(n);
    return a + (i.end - i.begin);
  }, 0);
  const classes = new Map<LinearClass | 'other', ClassSize>();
  const add = (cls: LinearClass | 'other', params: number, b: number, a: number) => {
    const c = classes.get(cls) ?? { cls, tensors: 0, params: 0, beforeBytes: 0, afterBytes: 0, bpw: 0 };
    c.tensors++;
    c.params += params;
    c.beforeBytes += b;
    c.afterBytes += a;
    classes.set(cls, c);
  };
  let linBefore = 0;
  for (const d of decisions) {
    add(d.cls, d.params, d.inputBytes, after(d));
    linBefore += d.inputBytes;
  }
  // fused expert tensors hold many decisions' linears (and MXFP4 ones count bytes, not weights): counted through them
  const fused = decisions.filter((d) => d.fused);
  const fusedSources = new Set(fused.flatMap((d) => linearTensors(model.ckpt, d.ref)).filter((t) => model.ckpt.has(t)));
  const allParams =
    model.ckpt.tensorNames.filter((n) => !fusedSources.has(n)).reduce((a, n) => a + model.ckpt.shape(n).reduce((x, y) => x * y, 1), 0) +
    fused.reduce((a, d) => a + d.params, 0);
  const linParams = decisions.reduce((a, d) => a + d.params, 0);
  classes.set('other', {
    cls: 'other',
    tensors: model.ckpt.tensorNames.length - (decisions.length - fused.length) - fusedSources.size,
    params: allParams - linParams,
    beforeBytes: beforeBytes - linBefore,
    afterBytes: r.outBytes - [...classes.values()].reduce((a, c) => a + c.afterBytes, 0),
    bpw: 0,
  });
  for (const c of classes.values()) c.bpw = c.params ? (c.afterBytes * 8) / c.params : 0;
  const expert = classes.get('expert');
  const nonExp = [...classes.values()].filter((c) => c.cls !== 'expert' && c.cls !== 'other');
  const nonExpParams = nonExp.reduce((a, c) => a + c.params, 0);
  const bitMap = model.view.layers
    .filter((l) => l.block.kind === 'moe')
    .map((l) => {
      const n = l.block.kind === 'moe' ? l.block.experts.length : 0;
      const experts = Array.from({ length: n }, (_, e) =>
        (['gate', 'up', 'down'] as const).map((p) => {
          const d = decisions.find((x) => x.cls === 'expert' && x.layer === l.index && x.expert === e && x.proj === p);
          return d ? finalBits(d) : 'keep';
        }),
      );
      return { layer: l.index, experts };
    });
  return {
    tool: 'moe quantize',
    model: r.req.model,
    ...(r.req.out ? { out: r.req.out } : {}),
    dryRun: !!r.req.dryRun,
    family: model.view.family,
    method: r.method,
    granularity: r.granularity,
    format: r.format,
    ...(r.serve ? { serve: r.serve } : {}),
    candidates: r.candidates,
    targetBits: r.req.bits!,
    denseBits: r.denseBits,
    groupSize: gs,
    sym: r.sym,
    actOrder: !!r.req.actOrder,
    calibration: {
      tokens: r.calibTokens,
      hessians: getQuantizer(r.method).calibrationNote(r.sequential),
    },
    bitMap,
    units: r.units.map((u, i) => ({
      id: u.id,
      bits: u.options[r.alloc.choice[i]!]!.label,
      losses: Object.fromEntries(u.options.map((b, oi) => [b.label, lossOf(r, i, oi)])),
    })),
    bpw: {
      experts: expert ? (expert.afterBytes * 8) / expert.params : 0,
      nonExperts: nonExpParams ? (nonExp.reduce((a, c) => a + c.afterBytes, 0) * 8) / nonExpParams : 0,
      linears: linParams ? ([...classes.values()].filter((c) => c.cls !== 'other').reduce((a, c) => a + c.afterBytes, 0) * 8) / linParams : 0,
      model: (r.outBytes * 8) / allParams,
      ...(r.allocate.length ? { budgeted: budgetedBpw(classes, ['expert', ...r.allocate]) } : {}),
    },
    ...(r.allocate.length ? { allocate: [...r.allocate] } : {}),
    sizes: { beforeBytes, afterBytes: r.outBytes, beforeMiB: beforeBytes / MiB, afterMiB: r.outBytes / MiB, classes: [...classes.values()] },
    solver: { units: r.units.length, solveMs: r.alloc.solveMs, optimal: r.alloc.optimal, gap: r.alloc.gap, loss: r.alloc.loss },
    fallbacks: r.fallbacks,
    decisions: decisions.map((d) => ({ tensor: d.tensor, bits: finalBits(d), reason: d.reason })),
    timings: { scoreMs: r.scoreMs, applyMs: r.applyMs, writeMs: r.writeMs },
    scored: r.scored,
    sequential: r.sequential,
    ...(r.planLoaded || r.planSaved ? { plan: { ...(r.planLoaded ? { loaded: r.planLoaded } : {}), ...(r.planSaved ? { saved: r.planSaved } : {}) } } : {}),
    ...(r.req.shard ? { shard: { index: r.req.shard.index, count: r.req.shard.count } } : {}),
    memory: r.memory,
    ...(r.resumedAfterLayer !== undefined ? { resumedAfterLayer: r.resumedAfterLayer } : {}),
    ...(r.resumedPlan ? { resumedPlan: true } : {}),
    ...(r.fusedExperts ? { fusedExperts: r.fusedExperts } : {}),
    seconds: r.seconds,
  };
}

// losses are kept on the units by the pipeline through this side table (set before buildReport)
const unitLosses = new WeakMap<Unit[], number[][]>();
export function attachLosses(units: Unit[], losses: number[][]): void {
  unitLosses.set(units, losses);
}
function lossOf(r: ReportInput, i: number, oi: number): number {
  return unitLosses.get(r.units)?.[i]?.[oi] ?? 0;
}

const mib = (b: number) => `${(b / MiB).toFixed(2)} MiB`;

/** llama-quantize-style summary: per tensor class `a MiB -> b MiB` and BPW, then totals and warnings. */
export function summaryTable(rep: QuantizeReport): string {
  const lines: string[] = [];
  lines.push(
    `${rep.dryRun ? 'plan' : 'quantized'}: ${rep.family}, ${rep.method}, --bits ${rep.targetBits} (${rep.granularity} units, candidates ${rep.candidates.join('/')}), dense ${rep.denseBits} bits, group ${rep.groupSize}${rep.format !== 'gptq' ? `, ${rep.format}` : ''}${rep.serve ? `, --serve ${rep.serve}` : ''}`,
  );
  for (const l of rep.bitMap) {
    lines.push(`  layer ${String(l.layer).padStart(2)}: ${l.experts.map((e) => (new Set(e).size === 1 ? String(e[0]) : e.join('/'))).join(' ')}`);
  }
  lines.push('  class        tensors        params                 size              BPW');
  for (const c of rep.sizes.classes) {
    if (c.tensors === 0) continue;
    lines.push(
      `  ${c.cls.padEnd(10)} ${String(c.tensors).padStart(8)} ${String(c.params).padStart(13)}  ${mib(c.beforeBytes).padStart(12)} -> ${mib(c.afterBytes).padStart(12)}  ${c.bpw.toFixed(4)}`,
    );
  }
  lines.push(`  model size = ${mib(rep.sizes.beforeBytes)}, quant size = ${mib(rep.sizes.afterBytes)}${rep.dryRun ? ' (planned)' : ''}`);
  lines.push(
    `  true bpw: routed experts ${rep.bpw.experts.toFixed(4)}${rep.bpw.budgeted !== undefined ? `, routed experts + ${rep.allocate!.join(' + ')} ${rep.bpw.budgeted.toFixed(4)}` : ''} (target ${rep.targetBits}), other linears ${rep.bpw.nonExperts.toFixed(4)}, all linears ${rep.bpw.linears.toFixed(4)}, whole model ${rep.bpw.model.toFixed(4)}`,
  );
  lines.push(
    `  allocation: ${rep.solver.units} units, ${rep.solver.solveMs.toFixed(0)} ms, ${rep.solver.optimal ? 'optimal' : `not proven optimal (gap <= ${rep.solver.gap.toExponential(2)})`}${rep.scored || rep.solver.units === 0 ? '' : rep.units.every((u) => Object.keys(u.losses).length === 1) ? ' (one width per unit: nothing to score)' : ' (no calibration: losses unknown, cheapest widths shown)'}`,
  );
  if (rep.plan?.loaded) lines.push(`  plan: ${rep.plan.loaded} (no scoring pass, no allocation)`);
  if (rep.plan?.saved) lines.push(`  plan saved to ${rep.plan.saved}`);
  if (rep.shard)
    lines.push(
      `  shard ${rep.shard.index}/${rep.shard.count}: layers l with l % ${rep.shard.count} = ${rep.shard.index}${rep.shard.index === 0 ? ', embeddings and head' : ''} (join the parts with moe assemble)`,
    );
  if (rep.resumedPlan) lines.push('  resumed: the plan a killed run of this command had scored (no scoring pass)');
  if (rep.resumedAfterLayer !== undefined && rep.resumedAfterLayer >= 0)
    lines.push(
      `  resumed: a killed run had finished layers 0-${rep.resumedAfterLayer}; GPTQ and the forward pass continued from layer ${rep.resumedAfterLayer + 1}`,
    );
  if (rep.fusedExperts) lines.push(`  fused experts: read as ${rep.fusedExperts.read}; written as ${rep.fusedExperts.written}`);
  lines.push(...(getQuantizer(rep.method).reportLines?.(rep.sequential) ?? []));
  lines.push(`  ${formatEstimate(rep.memory)}`);
  if (rep.fallbacks.length)
    lines.push(
      `  warning: ${rep.fallbacks.length} experts had fewer tokens than --min-tokens and used round-to-nearest: ${rep.fallbacks.map((f) => `L${f.layer}.E${f.expert}(${f.tokens})`).join(' ')}`,
    );
  return lines.join('\n');
}
