/**
 * `moe prune`: score experts -> plan a uniform kept set per layer -> write the family's own checkpoint with the
 * other experts removed (router rows, router bias and correction bias sliced in lockstep, expert-count key
 * updated) -> report. Stats-based methods score the unpruned model from one calibration pass (or a saved
 * artifact); `reconstruct` chooses each layer's set inside a forward pass whose earlier layers are already
 * pruned, so layer l is fitted to what it will really receive.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CalibStats } from '../calibrate/types.js';
import type { Progress } from '../cli/progress.js';
import { fail } from '../errors.js';
import { checkOutputTarget } from '../io/output.js';
import { openModel, type Model } from '../model/open.js';
import { writeExpertEdit, type ExpertEditPlan } from '../model/rewrite.js';
import type { ShardSpec } from '../model/shard.js';
import { getMethod, type PruneMethod } from './methods.js';
import { checkKeep, keepFromRatio, keptFromScores, layerPlan, type LayerPlan, type PrunePlan } from './plan.js';
import type { ReconstructOptions } from './reconstruct.js';
import type { BackendChoice } from '../runtime/backend.js';
import { seededRandom } from '../../kernels/random.js';
import { checkpointSizes, predictedSizes, writtenSizes, type SizeSummary } from './sizes.js';
import { loadPlan, savePlan } from '../model/planfile.js';
import { estimatePeak, maxEstimate, streamedPassParts, writerBytes, type MemoryEstimate } from '../runtime/memory.js';
import { DEFAULT_SEQ_LEN } from '../data/windows.js';

export interface PruneRequest {
  model: string;
  out?: string;
  keep?: number;
  ratio?: number;
  method?: string;
  calib?: string;
  calibTokens?: number;
  /** calibration window length (tokens) */
  seqLen?: number;
  stats?: string;
  seed?: number;
  force?: boolean;
  dryRun?: boolean;
  /** tensor backend for data-driven methods (auto | tensorflow | wasm | cpu) */
  backend?: BackendChoice;
  /** reconstruct: tokens sampled per layer, subset-enumeration limit, beam width */
  reconstruct?: ReconstructOptions;
  /** layer-parallel job i of n: write only this shard's layers (join the parts with `moe assemble`) */
  shard?: ShardSpec;
  /** write the kept sets to this plan file (src/model/planfile.ts) */
  savePlan?: string;
  /** apply the kept sets of a saved plan instead of scoring (every --shard job of one run gives the same file) */
  plan?: string;
  progress?: Progress;
}

export interface LayerReport extends LayerPlan {
  /** reconstruct: relative output error of the kept set on the token sample, and how it was found */
  relError?: number;
  search?: 'exact' | 'beam';
  subsetsEvaluated?: number;
}

export interface PruneReport {
  tool: 'moe prune';
  method: string;
  paper?: string;
  model: string;
  out?: string;
  dryRun: boolean;
  family: string;
  numExperts: number;
  keep: number;
  topK: number;
  seed?: number;
  groups?: PrunePlan['groups'];
  calibration: { source: 'calib' | 'stats' | 'plan' | 'none'; path?: string; tokens: number };
  layers: LayerReport[];
  sizes: { before: SizeSummary; after: SizeSummary; predicted: boolean };
  /** estimated peak resident memory of this command (from shapes; bench/memory.ts compares it with measurements) */
  memory: MemoryEstimate;
  seconds: number;
}

export const DEFAULT_METHOD = 'reap';
export const REPORT_FILE = 'moe-prune-report.json';

/** Flag-level checks, before any file is opened. */
export function validateRequest(req: PruneRequest): PruneMethod {
  const method = getMethod(req.method ?? DEFAULT_METHOD);
  if ((req.keep === undefined) === (req.ratio === undefined)) fail('Usage', 'give exactly one of --keep N or --ratio R');
  if (req.calib && req.stats) fail('Usage', 'give --calib FILE or --stats DIR, not both');
  if (req.plan && req.savePlan) fail('Usage', 'give --plan FILE (apply a saved plan) or --save-plan FILE, not both');
  if (req.plan && (req.calib || req.stats)) fail('Usage', '--plan applies saved kept sets: --calib and --stats are not used with it');
  if (req.plan) {
    if (!req.dryRun && !req.out) fail('Usage', '--out DIR is required (or use --dry-run)');
    return method;
  }
  if (method.requiresCalibration && !req.calib && !req.stats) {
    fail('Usage', `method ${method.name} is data-driven: give calibration text (--calib FILE) or saved statistics (--stats DIR)`);
  }
  if (method.kind === 'forward' && !req.calib) {
    fail('Usage', `method ${method.name} re-runs the forward pass on calibration hidden states: give --calib FILE (--stats is not enough)`);
  }
  if (!req.dryRun && !req.out) fail('Usage', '--out DIR is required (or use --dry-run)');
  if (req.seed !== undefined && !Number.isInteger(req.seed)) fail('Usage', `--seed must be an integer, got ${req.seed}`);
  for (const [k, v] of Object.entries(req.reconstruct ?? {})) {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) fail('Usage', `reconstruct option ${k} must be a positive whole number, got ${v}`);
  }
  return method;
}

/** Score every MoE layer with a statistics-based method (or the random baseline) and keep the best. */
function planFromScores(
  model: Model,
  method: PruneMethod,
  keep: number,
  groups: PrunePlan['groups'],
  stats: CalibStats | undefined,
  seed: number,
): LayerReport[] {
  const byLayer = new Map(stats?.layers.map((s) => [s.layer, s]) ?? []);
  const rng = seededRandom(seed);
  const out: LayerReport[] = [];
  for (const layer of model.view.layers) {
    if (layer.block.kind !== 'moe') continue;
    const E = layer.block.experts.length;
    const ls = byLayer.get(layer.index);
    if (stats && (!ls || ls.numExperts !== E))
      fail(
        'InvalidStats',
        `calibration statistics do not match the model: layer ${layer.index} ${ls ? `has ${ls.numExperts} experts, the model ${E}` : 'is missing'}`,
      );
    const scores = method.score!(ls, { numExperts: E, rng });
    out.push(layerPlan(layer.index, scores, keptFromScores(scores, keep, groups)));
  }
  return out;
}

/** A saved plan, checked against this model: every MoE layer once, `keep` distinct experts in range, groups kept even. */
function checkSavedPlan(view: Model['view'], raw: unknown, keep: number, groups: PrunePlan['groups'], path: string): LayerReport[] {
  const bad = (why: string): never => fail('InvalidData', `${path}: ${why}`);
  if (!Array.isArray(raw)) bad('the plan is not a list of layers');
  const byLayer = new Map<number, LayerReport>();
  for (const l of raw as LayerReport[]) {
    if (!l || !Number.isInteger(l.layer) || !Array.isArray(l.kept)) bad('a layer entry lacks layer or kept');
    if (byLayer.has(l.layer)) bad(`layer ${l.layer} is planned twice`);
    byLayer.set(l.layer, l);
  }
  const out = view.layers
    .filter((layer) => layer.block.kind === 'moe')
    .map((layer) => {
      const l = byLayer.get(layer.index) ?? bad(`MoE layer ${layer.index} has no kept set`);
      byLayer.delete(layer.index);
      const E = layer.block.kind === 'moe' ? layer.block.experts.length : 0;
      const kept = l.kept;
      if (kept.length !== keep || new Set(kept).size !== keep || kept.some((j) => !Number.isInteger(j) || j < 0 || j >= E)) {
        bad(`layer ${layer.index} must keep ${keep} distinct experts of 0..${E - 1}, the plan keeps [${kept.join(' ')}]`);
      }
      if (groups) {
        const per = new Map<number, number>();
        for (const j of kept) per.set(Math.floor(j / groups.groupSize), (per.get(Math.floor(j / groups.groupSize)) ?? 0) + 1);
        if ([...per.values()].some((c) => c !== groups.perGroup)) bad(`layer ${layer.index} does not keep ${groups.perGroup} experts in each expert group`);
      }
      const scores = Array.isArray(l.scores) && l.scores.length === E && l.scores.every((x) => typeof x === 'number') ? l.scores : new Array<number>(E).fill(0);
      return { ...l, ...layerPlan(layer.index, scores, kept) };
    });
  if (byLayer.size) bad(`layer ${[...byLayer.keys()][0]} is not an MoE layer of this model`);
  return out;
}

/**
 * Peak memory: the scoring pass (calibration forward, or reconstruct's whole-layer hook) or the write, whichever is
 * larger. `tokens`: the calibration tokens the scoring pass ran on (the text is not tokenized a second time).
 */
async function estimateMemory(model: Model, req: PruneRequest, method: PruneMethod, tokens: number): Promise<MemoryEstimate> {
  const write = estimatePeak([{ label: 'writer: one tensor copy in flight', bytes: writerBytes(model.ckpt) }], { tensorBackend: !!req.calib && !req.plan });
  if (req.plan || !req.calib || method.kind === 'none') return write;
  const S = req.seqLen ?? DEFAULT_SEQ_LEN;
  const { hidden: H, numExperts: E } = model.view.dims;
  const forward = method.kind === 'forward';
  const parts = streamedPassParts(model.ckpt, model.view, tokens, S, forward);
  // reconstruct evaluates every expert on its token sample; REAP keeps per-slot output norms
  const { RECONSTRUCT_DEFAULTS } = await import('./reconstruct.js');
  if (forward)
    parts.push({
      label: "reconstruct: every expert's output on the token sample",
      bytes: Math.min(tokens, req.reconstruct?.maxTokens ?? RECONSTRUCT_DEFAULTS.maxTokens) * (E + 2) * H * 4,
    });
  return maxEstimate(write, estimatePeak(parts));
}

export async function prune(req: PruneRequest): Promise<PruneReport> {
  const started = Date.now();
  const method = validateRequest(req);
  if (req.out) await checkOutputTarget(req.out, { force: req.force, inputDir: req.model });
  const model = await openModel(req.model);
  try {
    const view = model.view;
    const E = view.dims.numExperts;
    const keep = req.keep ?? keepFromRatio(req.ratio!, E);
    const { groups } = checkKeep(view, keep);
    const seed = req.seed ?? 0;

    let layers: LayerReport[];
    let calibration: PruneReport['calibration'] = { source: 'none', tokens: 0 };
    // the plan depends on the method and the kept count; the text it was scored on is the plan's own business
    const settings = { method: method.name, keep, ...(method.kind === 'none' ? { seed } : {}) };
    if (req.plan) {
      layers = checkSavedPlan(view, await loadPlan<LayerReport[]>(req.plan, 'prune', model.ckpt, settings), keep, groups, req.plan);
      calibration = { source: 'plan', path: req.plan, tokens: 0 };
    } else if (method.kind === 'forward') {
      // the runtime (tfjs) is loaded only for data-driven methods
      const { planByReconstruction } = await import('./calibrated.js');
      const r = await planByReconstruction(model, req, keep, groups);
      layers = r.layers;
      calibration = { source: 'calib', path: req.calib, tokens: r.tokens };
    } else {
      let stats: CalibStats | undefined;
      if (method.kind === 'stats') {
        const { calibrationStats } = await import('./calibrated.js');
        stats = await calibrationStats(model, req);
        calibration = { source: req.stats ? 'stats' : 'calib', path: req.stats ?? req.calib, tokens: stats.tokens };
      }
      layers = planFromScores(model, method, keep, groups, stats, seed);
    }
    if (req.savePlan) await savePlan(req.savePlan, 'prune', model.ckpt, settings, layers);

    const edit: ExpertEditPlan = {
      layers: layers.map((l) => ({ layer: l.layer, experts: l.kept.map((j) => ({ from: j })) })),
      groups: groups && { nGroup: groups.nGroup, topkGroup: groups.topkGroup },
    };
    const before = checkpointSizes(model.ckpt, view);
    let after: SizeSummary;
    let predicted = true;
    if (req.dryRun) {
      // the writer's own plan: validates the edit (groups, top-k) and gives the exact output bytes
      const planned = await writeExpertEdit(model, edit, req.out ?? `${model.dir}.pruned`, { dryRun: true });
      const removed = new Map(layers.map((l) => [l.layer, l.removed]));
      after = {
        ...predictedSizes(model.ckpt, view, before, removed),
        bytes: planned.totalBytes,
        params: planned.tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0),
      };
    } else {
      const phase = req.progress?.phase(`writing ${req.out}`);
      await writeExpertEdit(model, edit, req.out!, {
        force: req.force,
        shard: req.shard && { ...req.shard, plan: layers.map((l) => [l.layer, l.kept]) },
        onProgress: (d, t) => phase?.tick(d, t, 'tensors'),
      });
      phase?.succeed(`wrote ${req.out}${req.shard ? ` (shard ${req.shard.index}/${req.shard.count})` : ''}`);
      // a shard holds part of the checkpoint: its sizes stay the plan's prediction
      if (req.shard) after = predictedSizes(model.ckpt, view, before, new Map(layers.map((l) => [l.layer, l.removed])));
      else {
        after = await writtenSizes(req.out!);
        predicted = false;
      }
    }
    const report: PruneReport = {
      tool: 'moe prune',
      method: method.name,
      paper: method.paper,
      model: req.model,
      out: req.out,
      dryRun: !!req.dryRun,
      family: view.family,
      numExperts: E,
      keep,
      topK: view.routing.topK,
      seed: method.kind === 'none' ? seed : undefined,
      groups,
      calibration,
      layers,
      sizes: { before, after, predicted },
      memory: await estimateMemory(model, req, method, calibration.tokens),
      seconds: (Date.now() - started) / 1000,
    };
    if (!req.dryRun) await writeFile(join(req.out!, REPORT_FILE), JSON.stringify(report, null, 2) + '\n');
    return report;
  } finally {
    await model.ckpt.close();
  }
}
