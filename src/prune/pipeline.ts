/**
 * `moe prune`: score experts -> plan a uniform kept set per layer -> write the family's own checkpoint with the
 * other experts removed (router rows, router bias and correction bias sliced in lockstep, expert-count key
 * updated) -> report. Stats-based methods score the unpruned model from one calibration pass (or a saved
 * artifact); `reconstruct` chooses each layer's set inside a forward pass whose earlier layers are already
 * pruned, so layer l is fitted to what it will really receive.
 */
import type { CalibStats } from '../calibrate/types.js';
import { fail } from '../errors.js';
import type { Model } from '../model/open.js';
import { editedLayers, mtpStatsMissing } from '../model/mtp.js';
import { checkPerLayerInput } from '../model/perlayer.js';
import { writeExpertEdit, type ExpertEditPlan } from '../model/rewrite.js';
import { getMethod, type PruneMethod } from './methods.js';
import { checkKeep, keepFromRatio, keptFromScores, layerPlan, type PrunePlan } from './plan.js';
import type { LayerReport, PruneRequest, PruneRun } from './types.js';
import type { RouterRows } from './refit.js';
import type { AllocationReport } from '../merge/allocate.js';
import { seededRandom } from '../../kernels/random.js';
import { checkpointSizes, predictedSizes, writtenSizes, type SizeSummary } from '../model/sizes.js';
import type { MemoryEstimate } from '../runtime/memory.js';
import { parseOptions } from '../pipeline/validate.js';
import { runPipeline } from '../pipeline/engine.js';
import type { MemoryPhase } from '../pipeline/memory.js';
import { DEFAULT_METHOD, PRUNE_SPEC, RECONSTRUCT_DEFAULTS } from './options.js';

export type { LayerReport, PruneRequest, PruneRun } from './types.js';

/** The allocation's report, and whether the checkpoint keeps its counts (--write-per-layer). */
export type PerLayerReport = Omit<AllocationReport, 'written'> & { written: boolean };

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
  /** multi-token-prediction layers: kept (pruned like the others, planned in `layers` on their own inputs) or dropped (--drop-mtp) */
  mtp?: { kept: number[]; dropped: number[] };
  /**
   * --keep-per-layer auto: the per-layer counts the same total would allow, and the error they would save; written
   * (--write-per-layer) when `layers` keep those counts
   */
  keepPerLayer?: PerLayerReport;
  sizes: { before: SizeSummary; after: SizeSummary; predicted: boolean };
  /** estimated peak resident memory of this command (from shapes; bench/memory.ts compares it with measurements) */
  memory: MemoryEstimate;
  /** reconstruct writing an output: the pass resumed after this layer (-1: from the start), and the MoE layers it computed */
  resumed?: { afterLayer: number; computed: number[] };
  seconds: number;
}

export { DEFAULT_METHOD };
export const REPORT_FILE = 'moe-prune-report.json';

/** Flag-level checks, before any file is opened (the options' schema and checkPrune); returns the method. */
export function validateRequest(req: PruneRequest): PruneMethod {
  const o = parseOptions(PRUNE_SPEC, req);
  for (const [k, v] of Object.entries(req.reconstruct ?? {})) {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) fail('Usage', `reconstruct option ${k} must be a positive whole number, got ${v}`);
  }
  return getMethod(o.method);
}

/** Score every MoE layer with a statistics-based method (or the random baseline) and keep the best. */
function planFromScores(
  model: Model,
  method: PruneMethod,
  keep: number,
  groups: PrunePlan['groups'],
  stats: CalibStats | undefined,
  seed: number,
  dropMtp: boolean,
): LayerReport[] {
  const byLayer = new Map(stats?.layers.map((s) => [s.layer, s]) ?? []);
  const rng = seededRandom(seed);
  const out: LayerReport[] = [];
  for (const layer of editedLayers(model.view, dropMtp)) {
    if (layer.block.kind !== 'moe') continue;
    const E = layer.block.experts.length;
    const ls = byLayer.get(layer.index);
    if (stats && !ls && layer.index >= model.view.dims.layers) fail('InvalidStats', mtpStatsMissing(layer.index));
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
function checkSavedPlan(view: Model['view'], raw: unknown, keep: number, groups: PrunePlan['groups'], path: string, dropMtp: boolean): LayerReport[] {
  const bad = (why: string): never => fail('InvalidData', `${path}: ${why}`);
  if (!Array.isArray(raw)) bad('the plan is not a list of layers');
  const byLayer = new Map<number, LayerReport>();
  for (const l of raw as LayerReport[]) {
    if (!l || !Number.isInteger(l.layer) || !Array.isArray(l.kept)) bad('a layer entry lacks layer or kept');
    if (byLayer.has(l.layer)) bad(`layer ${l.layer} is planned twice`);
    byLayer.set(l.layer, l);
  }
  const out = editedLayers(view, dropMtp)
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
function memoryPhases(model: Model, req: PruneRun, method: PruneMethod, tokens: number): MemoryPhase[] {
  const write: MemoryPhase = { parts: [], writer: { label: 'writer: one tensor copy in flight' }, tensorBackend: !!req.calib && !req.plan };
  if (req.plan || !req.calib || method.needs === 'none') return [write];
  const { hidden, numExperts: experts } = model.view.dims;
  // the method's own working set (reconstruct: every expert's output on its token sample) from its descriptor
  const own = method.memory?.({ tokens, hidden, experts, sampleTokens: req.reconstruct?.maxTokens ?? RECONSTRUCT_DEFAULTS.maxTokens }) ?? [];
  // a sequential method's hook sees the whole layer; statistics are gathered expert by expert
  return [write, { pass: { tokens, seqLen: req.seqLen, allExperts: method.needs === 'sequential' }, parts: own }];
}

const PRUNE_PIPELINE = { tool: 'prune', spec: PRUNE_SPEC, reportFile: REPORT_FILE } as const;

export async function prune(request: PruneRequest): Promise<PruneReport> {
  return runPipeline(
    PRUNE_PIPELINE,
    request,
    async ({ o, model, savePlan: save, loadPlan: load, shard, seconds, passResume, memory }) => {
      const method = getMethod(o.method);
      // --sample-tokens / --beam are the command line's spelling of the search's options (a library caller may give
      // the whole ReconstructOptions instead; the flags win when given)
      const req: PruneRun = {
        ...o,
        reconstruct: {
          ...request.reconstruct,
          ...(request.sampleTokens !== undefined ? { maxTokens: o.sampleTokens } : {}),
          ...(request.beam !== undefined ? { beam: o.beam } : {}),
        },
      };
      const view = model.view;
      // before any calibration: the output's `moe` section must be free for the per-layer counts
      if (req.writePerLayer) checkPerLayerInput(model.ckpt.config);
      const E = view.dims.numExperts;
      const keep = req.keep ?? keepFromRatio(req.ratio!, E);
      const { groups } = checkKeep(view, keep);
      const seed = req.seed;

      let layers: LayerReport[];
      let calibration: PruneReport['calibration'] = { source: 'none', tokens: 0 };
      let resumed: PruneReport['resumed'];
      // the plan depends on the method and the kept count; the text it was scored on is the plan's own business
      const settings = { method: method.name, keep, ...(method.needs === 'none' ? { seed } : {}) };
      if (req.plan) {
        layers = checkSavedPlan(view, await load<LayerReport[]>(settings), keep, groups, req.plan, req.dropMtp);
        calibration = { source: 'plan', path: req.plan, tokens: 0 };
      } else if (method.needs === 'sequential') {
        // the runtime (tfjs) is loaded only for data-driven methods
        const { planByReconstruction } = await import('./calibrated.js');
        const r = await planByReconstruction(model, req, keep, groups, (windows) =>
          passResume<LayerReport>('reconstruct', { method: method.name, keep, groups: groups ?? null, reconstruct: req.reconstruct }, windows),
        );
        resumed = r.resumed;
        layers = r.layers;
        calibration = { source: 'calib', path: req.calib, tokens: r.tokens };
      } else {
        let stats: CalibStats | undefined;
        if (method.needs === 'stats') {
          const { calibrationStats } = await import('./calibrated.js');
          stats = await calibrationStats(model, req);
          calibration = { source: req.stats ? 'stats' : 'calib', path: req.stats ?? req.calib, tokens: stats.tokens };
        }
        layers = planFromScores(model, method, keep, groups, stats, seed, req.dropMtp);
      }
      await save(settings, layers);

      let refitted = new Map<number, RouterRows>();
      if (req.refitRouter) {
        const g = view.routing.groups;
        if (g && g.nGroup > 1) fail('Usage', `--refit-router: ${view.family} routes within ${g.nGroup} expert groups, which the refit does not handle`);
        const { refitRouters } = await import('./refit.js');
        // the decoder layers' forward pass: an MTP layer's rows stay sliced
        refitted = (
          await refitRouters(
            model,
            req,
            layers.filter((l) => l.layer < view.dims.layers),
          )
        ).rows;
      }
      let keepPerLayer: PerLayerReport | undefined;
      if (req.keepPerLayer === 'auto') {
        const g = view.routing.groups;
        if (g && g.nGroup > 1)
          fail('Usage', `--keep-per-layer auto: ${view.family} routes within expert groups; per-layer counts would have to keep them even`);
        const { perLayerReport } = await import('./refit.js');
        // the decoder layers only: the MTP layers keep the count of the others
        keepPerLayer = await perLayerReport(
          model,
          req,
          layers.filter((l) => l.layer < view.dims.layers),
          keep,
        );
        if (req.writePerLayer) {
          // layer l keeps its n_l best experts by the same scores the curves were measured on
          const counts = new Map(keepPerLayer.layers.map((l, i) => [l, keepPerLayer!.counts[i]!]));
          layers = layers.map((l) => (counts.has(l.layer) ? { ...l, ...layerPlan(l.layer, l.scores, keptFromScores(l.scores, counts.get(l.layer)!)) } : l));
          keepPerLayer = {
            ...keepPerLayer,
            written: true,
            note: "written: each MoE layer keeps its count, in moe's own per-layer format (model_type moe_perlayer_<family>; stock loaders refuse it)",
          };
        }
      }
      const edit: ExpertEditPlan = {
        layers: layers.map((l) => ({
          layer: l.layer,
          experts: l.kept.map((j) => ({ from: j })),
          ...(refitted.has(l.layer) ? { router: refitted.get(l.layer)! } : {}),
        })),
        groups: groups && { nGroup: groups.nGroup, topkGroup: groups.topkGroup },
        ...(req.writePerLayer ? { perLayer: true } : {}),
      };
      const before = checkpointSizes(model.ckpt, view);
      let after: SizeSummary;
      let predicted = true;
      let mtp: PruneReport['mtp'];
      if (req.dryRun) {
        // the writer's own plan: validates the edit (groups, top-k) and gives the exact output bytes
        const planned = await writeExpertEdit(model, edit, req.out ?? `${model.dir}.pruned`, { dryRun: true, dropMtp: req.dropMtp });
        mtp = planned.mtp;
        const removed = new Map(layers.map((l) => [l.layer, l.removed]));
        after = {
          ...predictedSizes(model.ckpt, view, before, removed),
          bytes: planned.totalBytes,
          params: planned.tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0),
        };
      } else {
        const phase = req.progress?.phase(`writing ${req.out}`);
        mtp = (
          await writeExpertEdit(model, edit, req.out!, {
            force: req.force,
            dropMtp: req.dropMtp,
            shard: shard(layers.map((l) => [l.layer, l.kept])),
            onProgress: (d, t) => phase?.tick(d, t, 'tensors'),
          })
        ).mtp;
        phase?.succeed(`wrote ${req.out}${req.shard ? ` (shard ${req.shard.index}/${req.shard.count})` : ''}`);
        // a shard holds part of the checkpoint: its sizes stay the plan's prediction
        if (req.shard) after = predictedSizes(model.ckpt, view, before, new Map(layers.map((l) => [l.layer, l.removed])));
        else {
          after = await writtenSizes(req.out!);
          predicted = false;
        }
      }
      return {
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
        seed: method.needs === 'none' ? seed : undefined,
        groups,
        calibration,
        layers,
        ...(mtp ? { mtp } : {}),
        ...(keepPerLayer ? { keepPerLayer } : {}),
        sizes: { before, after, predicted },
        memory: memory(memoryPhases(model, req, method, calibration.tokens)),
        ...(resumed ? { resumed } : {}),
        seconds: seconds(),
      };
    },
    { before: () => validateRequest(request) },
  );
}
