/**
 * The one entry point pipelines use for calibration: saved statistics (--stats DIR) or calibration text
 * (--calib FILE [--calib-tokens N]) run through the model now. With text the windows are returned as well, for
 * pipelines that run their own layer loop (GPTQ, reconstruction pruning, merging with activations).
 */
import type { Progress } from '../progress.js';
import { loadWindowSet } from '../data/windows.js';
import { fail } from '../errors.js';
import type { Model } from '../model/open.js';
import { loadStats, modelIdentity } from './artifact.js';
import { collectStats } from './collect.js';
import type { CalibStats } from './types.js';

export interface CalibrationRequest {
  model: Model;
  stats?: string;
  calib?: string;
  /** 'ids': --calib is pre-tokenized (--calib-ids) */
  format?: 'text' | 'ids';
  /** also score the multi-token-prediction layers, on their own inputs (statistics of layer L + i) */
  mtp?: boolean;
  calibTokens?: number;
  seqLen?: number;
  progress?: Progress;
}

export type ResolvedCalibration = CalibStats & {
  /** the calibration windows, when the statistics were computed from --calib text in this run */
  windows?: Int32Array[];
};

/** Saved statistics must describe this model: family, layers, experts, hidden size. */
export function checkStatsMatch(stats: CalibStats, model: Model, where: string, identity?: string): void {
  const v = model.view;
  const diffs: string[] = [];
  if (stats.family !== v.family) diffs.push(`family ${stats.family} vs ${v.family}`);
  if (stats.numLayers !== v.layers.length) diffs.push(`${stats.numLayers} layers vs ${v.layers.length}`);
  if (stats.numExperts !== v.dims.numExperts) diffs.push(`${stats.numExperts} experts vs ${v.dims.numExperts}`);
  if (stats.hidden !== v.dims.hidden) diffs.push(`hidden ${stats.hidden} vs ${v.dims.hidden}`);
  if (stats.topK !== v.routing.topK) diffs.push(`top-${stats.topK} vs top-${v.routing.topK}`);
  // same shape is not the same model: the identity (config, tensor table, first bytes of embedding/routers) tells them apart
  if (!diffs.length && stats.model && identity !== undefined && stats.model !== identity)
    diffs.push('same shape, but other weights or config (model fingerprint differs)');
  const moe = v.moeLayers.join(',');
  const have = stats.layers.map((l) => l.layer).join(',');
  if (moe !== have) diffs.push(`MoE layers [${have}] vs [${moe}]`);
  if (diffs.length) fail('InvalidStats', `${where} was computed on another model (${diffs.join('; ')})`);
}

export async function resolveCalibration(req: CalibrationRequest): Promise<ResolvedCalibration> {
  if (req.stats && req.calib) fail('Usage', 'give either --stats DIR or --calib FILE, not both');
  if (req.stats) {
    const stats = await loadStats(req.stats);
    checkStatsMatch(stats, req.model, `--stats ${req.stats}`, stats.model ? await modelIdentity(req.model) : undefined);
    return stats;
  }
  if (!req.calib) fail('Usage', 'this needs calibration: give --stats DIR (from moe calibrate) or --calib FILE (text)');
  const set = await loadWindowSet(req.model.dir, req.calib, {
    ...(req.format ? { format: req.format } : {}),
    ...(req.seqLen !== undefined ? { seqLen: req.seqLen } : {}),
    ...(req.calibTokens !== undefined ? { maxTokens: req.calibTokens } : {}),
  });
  const L = req.model.view.layers.length;
  const ph = req.progress?.phase(`calibrating on ${set.windows.length} windows of ${set.seqLen} tokens`);
  const stats = await collectStats(req.model, set.windows, { onProgress: (l) => ph?.tick(l, L, 'layers'), ...(req.mtp ? { mtp: true } : {}) });
  ph?.succeed(`calibrated: ${stats.tokens} tokens through ${L} layers`);
  return Object.assign(stats, { windows: set.windows });
}
