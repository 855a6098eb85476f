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
import type { PassResume } from '../pipeline/resume.js';
import { swiglu } from '../runtime/swiglu.js';
import type { LayerReport, PruneRun } from './types.js';
import { maskedEdit } from '../runtime/mask.js';
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
  resumable?: (windows: readonly Int32Array[]) => PassResume<LayerReport>,
): Promise<{ layers: LayerReport[]; tokens: number; resumed?: ReturnType<PassResume<LayerReport>['report']> }> {
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
  const tokens = windows.reduce((a, w) => a + w.length, 0);
  // a killed run of the same command resumes after its last finished layer (the kept sets before it are saved)
  const resume = resumable?.(windows);
  const phase = req.progress?.phase('reconstruct: choosing experts layer by layer');
  let done = 0;
  await streamModel(
    model,
    windows,
    {
      async onMoeLayer(input) {
        const r = await selectByReconstruction(input, keep, rule, deps, groups, req.reconstruct);
        const lp = layerPlan(input.layer.index, r.scores, r.kept);
        resume?.record(input.layer.index, { ...lp, relError: r.relError, search: r.search, subsetsEvaluated: r.evaluated });
        if (!resume) layers.push({ ...lp, relError: r.relError, search: r.search, subsetsEvaluated: r.evaluated });
        phase?.tick(++done, model.view.moeLayers.length, 'layers');
        return maskedEdit(input, r.kept, groupSize);
      },
    },
    resume ? { checkpoint: resume.checkpoint } : {},
  );
  if (resume) layers.push(...resume.entries());
  const resumed = resume?.report();
  phase?.succeed(
    `reconstruct: ${layers.length} layers${resumed && resumed.afterLayer >= 0 ? ` (resumed after layer ${resumed.afterLayer}: ${resumed.computed.length} computed)` : ''}`,
  );
  return { layers, tokens, ...(resumed ? { resumed } : {}) };
}
