/**
 * Peak-memory estimate of `moe decompose` from shapes and the rank plan: its one phase (the apply pass and the
 * writer run together; the score pass's working set is a subset of it) with decompose's own working set; the engine
 * adds the shared terms (runtime, the streamed forward pass, the writer) and composes the peak (src/pipeline/memory.ts).
 *
 * Decompose's own working set, all bounded by one layer:
 *   - the Gram matrices of one layer's experts (float64, E (H^2 + I^2)) when calibrated;
 *   - the factorisation of one unit: its weights and whitened matrix, the Gram (or range-finder) matrices of the
 *     SVD and its singular vectors, and the error measurement's products, all float64 on the host; with threads > 1
 *     one per worker, plus the inputs of the 2 x threads units in flight (unit-task.ts);
 *   - one layer of factors at the planned ranks (float64), handed to the writer;
 *   - the score pass's truncation spectra of every unit (one float64 per rank: small);
 *   - the writer's one new tensor (float64 product for --materialize, its float32 copy, the encoded bytes);
 *   - allocation churn: garbage not yet collected, fitted on measurements (see CHURN_PER_WORKSPACE).
 */
import type { MemoryPhase } from '../pipeline/memory.js';
import { WORKER_BASE_BYTES, type MemoryPart } from '../runtime/memory.js';
import { currentThreads } from '../runtime/pool.js';
import type { DecomposeModeMethod } from './methods.js';
import type { Model } from '../model/open.js';
import { unitParams } from './plan.js';
import type { UnitShape } from './unitshape.js';

const F64 = 8;
const F32 = 4;

export interface DecomposeMemoryOptions {
  /** a calibration forward pass runs (whitened modes, or --calib with svd) */
  calibrated: boolean;
  /** Gram matrices are held per layer (calibrated, or given precollected) */
  grams: boolean;
  tokens: number;
  seqLen: number;
  /** the score pass runs (its spectra are kept for the plan) */
  scoring: boolean;
  /** a checkpoint is written (the apply pass and the writer run); the score pass's working set is a subset of the
   *  apply pass's, so the parts are summed */
  writing: boolean;
  materialize: boolean;
  /** the largest tensor the writer makes: elements and bytes in its output dtype */
  largestNew: { elems: number; bytes: number };
  /** worker threads (default: the process's count); above 1 the units are factorised on the pool */
  threads?: number;
}

interface LayerShapes {
  E: number;
  proj: Map<string, { m: number; n: number }>;
  units: UnitShape[];
  ranks: number[];
}

function byLayer(shapes: readonly UnitShape[], ranks: readonly number[]): LayerShapes[] {
  const layers = new Map<number, LayerShapes>();
  shapes.forEach((u, i) => {
    let e = layers.get(u.layer);
    if (!e) layers.set(u.layer, (e = { E: 0, proj: new Map(), units: [], ranks: [] }));
    e.E = Math.max(e.E, ...u.experts.map((j) => j + 1));
    e.proj.set(u.proj, { m: u.m, n: u.n });
    e.units.push(u);
    e.ranks.push(ranks[i] ?? 0);
  });
  return [...layers.values()];
}

export function decomposeMemoryPhases(
  _model: Model,
  shapes: readonly UnitShape[],
  ranks: readonly number[],
  mode: DecomposeModeMethod,
  o: DecomposeMemoryOptions,
): MemoryPhase[] {
  const layers = byLayer(shapes, ranks);
  const maxOver = (f: (l: LayerShapes) => number) => layers.reduce((a, l) => Math.max(a, f(l)), 0);
  const parts: MemoryPart[] = [];
  if (!o.calibrated) {
    // no forward pass: one layer's experts read as float32
    parts.push({ label: "largest layer's experts in float32", bytes: maxOver((l) => [...l.proj.values()].reduce((a, s) => a + l.E * s.m * s.n * F32, 0)) });
  }
  if (o.grams) {
    // gate/up share the input Gram [H, H]; down has its own [I, I]
    parts.push({
      label: "one layer's Gram matrices (float64)",
      bytes: maxOver((l) => l.E * ((l.proj.get('gate')?.n ?? 0) ** 2 + (l.proj.get('down')?.n ?? 0) ** 2) * F64),
    });
  }
  // the mode's own part (its descriptor): the factorisation workspace of its largest unit and the churn it leaves,
  // once per worker thread when the units run on the pool
  const threads = o.threads ?? currentThreads();
  parts.push(...mode.memory({ units: shapes, threads }));
  if (threads > 1) {
    // up to 2 x threads units run ahead of the in-order consumer: each one's float64 weights (made on the main
    // thread, moved to its worker) and the worker's copy of its Grams; the forward pass counts the workers
    // themselves when there is one
    const input = shapes.reduce((a, u) => Math.max(a, u.experts.length * (u.m * u.n + (o.grams ? u.n * u.n : 0)) * F64), 0);
    parts.push({ label: `units in flight on the workers (${2 * threads} ahead of the in-order consumer)`, bytes: 2 * threads * input });
    if (!o.calibrated) parts.push({ label: `${threads} worker threads (isolate + tensor backend each)`, bytes: threads * WORKER_BASE_BYTES });
  }
  if (o.scoring) parts.push({ label: "every unit's truncation spectrum (score pass)", bytes: shapes.reduce((a, u) => a + (u.maxRank + 1) * F64, 0) });
  if (o.writing) {
    parts.push({
      label: "one layer's factors at the planned ranks (float64)",
      bytes: maxOver((l) => l.units.reduce((a, u, i) => a + unitParams(u, l.ranks[i]!), 0) * F64),
    });
  }
  return [
    {
      ...(o.calibrated ? { pass: { tokens: o.tokens, seqLen: o.seqLen, allExperts: true } } : {}),
      parts,
      // the new tensor's float32 copy (and, materialised, its float64 product) next to its encoded bytes
      ...(o.writing
        ? {
            writer: {
              label: 'the writer (one tensor in flight)',
              largestNewBytes: o.largestNew.bytes,
              extraBytes: o.largestNew.elems * (F32 + (o.materialize ? F64 : 0)),
            },
          }
        : {}),
    },
  ];
}
