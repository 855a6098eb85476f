/**
 * The data-driven half of `moe prune`, which needs the runtime (tfjs): calibration statistics for the scoring
 * methods, and the layer-by-layer forward pass in which `reconstruct` chooses each layer's experts while the
 * layers before it are already pruned. Loaded on demand so `--method random` never starts a tensor backend.
 */
import { calibFormat } from '../pipeline/fields.js';
import { resolveCalibration } from '../calibrate/resolve.js';
import type { CalibStats } from '../calibrate/types.js';
import { loadWindows } from '../data/windows.js';
import type { Model } from '../model/open.js';
import { setThreads } from '../runtime/pool.js';
import { initBackend } from '../runtime/backend.js';
import { route } from '../runtime/routing.js';
import { streamModel } from '../runtime/stream.js';
import { swiglu } from '../runtime/swiglu.js';
import type { LayerReport, PruneRun } from './pipeline.js';
import { maskedEdit } from './mask.js';
import { layerPlan, prunedRule, type PrunePlan } from './plan.js';
import { selectByReconstruction, type ReconstructDeps } from './reconstruct.js';

export async function calibrationStats(model: Model, req: PruneRun): Promise<CalibStats> {
  if (req.calib) await initBackend(req.backend);
  if (req.calib && req.threads !== undefined) await setThreads(req.threads);
  return resolveCalibration({
    model,
    calib: req.calib,
    format: calibFormat(req),
    mtp: !req.dropMtp && !!model.view.mtp?.length,
    calibTokens: req.calibTokens,
    stats: req.stats,
    progress: req.progress,
    ...(req.seqLen !== undefined ? { seqLen: req.seqLen } : {}),
  });
}

export async function planByReconstruction(
  model: Model,
  req: PruneRun,
  keep: number,
  groups: PrunePlan['groups'],
): Promise<{ layers: LayerReport[]; tokens: number }> {
  await initBackend(req.backend);
  if (req.threads !== undefined) await setThreads(req.threads);
  const windows = await loadWindows(model.dir, req.calib!, {
    format: calibFormat(req),
    ...(req.calibTokens !== undefined ? { maxTokens: req.calibTokens } : {}),
    ...(req.seqLen !== undefined ? { seqLen: req.seqLen } : {}),
  });
  const rule = prunedRule(model.view.routing, groups);
  const act = model.view.forward.activation;
  const deps: ReconstructDeps = { route, expert: (w, x, T) => swiglu(w, x, T, act) };
  const g = model.view.routing.groups;
  const groupSize = g ? model.view.dims.numExperts / g.nGroup : undefined;
  const layers: LayerReport[] = [];
  let tokens = 0;
  const phase = req.progress?.phase('reconstruct: choosing experts layer by layer');
  await streamModel(model, windows, {
    async onMoeLayer(input) {
      tokens = input.T;
      const r = await selectByReconstruction(input, keep, rule, deps, groups, req.reconstruct);
      const lp = layerPlan(input.layer.index, r.scores, r.kept);
      layers.push({ ...lp, relError: r.relError, search: r.search, subsetsEvaluated: r.evaluated });
      phase?.tick(layers.length, model.view.moeLayers.length, 'layers');
      return maskedEdit(input, r.kept, groupSize);
    },
  });
  phase?.succeed(`reconstruct: ${layers.length} layers`);
  return { layers, tokens };
}
