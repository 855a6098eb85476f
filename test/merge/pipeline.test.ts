/** `moe merge` end to end on a tiny Mixtral with calibration text, the --stats path, dry runs and bad requests. */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveStats } from '../../src/calibrate/artifact.js';
import { resolveCalibration } from '../../src/calibrate/resolve.js';
import { evaluate } from '../../src/eval/perplexity.js';
import { merge, REPORT_FILE, type MergeReport } from '../../src/merge/pipeline.js';
import { loadRouter } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import { initBackend } from '../../src/runtime/backend.js';
import { writeWordTokenizer, wordLines } from '../eval/tokenizer.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { rng } from './synthetic.js';

let root: string;
let model: string;
let calib: string;
let stats: string;
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-merge-pipeline-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 8, seed: 3 });
  await writeWordTokenizer(model);
  const r = rng(9);
  const lines = wordLines(40, r);
  calib = join(root, 'calib.txt');
  await writeFile(calib, lines.join('\n') + '\n');
  const m = await openModel(model);
  try {
    stats = join(root, 'stats');
    await saveStats(await resolveCalibration({ model: m, calib, calibTokens: 256, seqLen: 32 }), stats);
  } finally {
    await m.ckpt.close();
  }
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function checkPartitions(r: MergeReport, E: number, N: number): void {
  for (const l of r.layers) {
    expect(l.groups.length).toBe(N);
    expect(l.groups.flatMap((g) => g.members).sort((a, b) => a - b)).toEqual(Array.from({ length: E }, (_, i) => i));
    for (const g of l.groups) {
      expect(g.members[0]).toBe(g.anchor);
      expect(g.weights.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
    }
  }
}

async function outputShape(dir: string): Promise<{ experts: number; routerRows: number[] }> {
  const m = await openModel(dir);
  try {
    const rows: number[] = [];
    for (const l of m.view.layers) if (l.block.kind === 'moe') rows.push((await loadRouter(m.ckpt, l.block.router)).w.length / m.view.dims.hidden);
    return { experts: m.view.dims.numExperts, routerRows: rows };
  } finally {
    await m.ckpt.close();
  }
}

describe('moe merge pipeline', () => {
  it('sequential (--calib): activation alignment + fitted router write a loadable 4-expert checkpoint with a full report', async () => {
    const out = join(root, 'seq');
    const r = await merge({ model, out, groups: 4, grouping: 'msmoe', align: 'activations', router: 'fit', calib, calibTokens: 256, seqLen: 32, fitSteps: 60 });
    expect(r.mode).toBe('sequential');
    // all positions the MoE layers saw (BOS included)
    expect(r.calibration.tokens).toBeGreaterThanOrEqual(256);
    checkPartitions(r, 8, 4);
    for (const l of r.layers) {
      // the fit starts from the better of anchor and mean rows and keeps its best iterate
      expect(l.router.kl!).toBeLessThanOrEqual(l.router.klMeanRows! + 1e-12);
      // every averaged member was aligned; a member dropped by the merge-or-drop decision (weight 0) was not
      for (const g of l.groups)
        g.alignment.forEach((a, k) => {
          if (k === 0 || g.weights[k] === 0) expect(a).toBeNull();
          else expect(a!.after).toBeGreaterThanOrEqual(a!.before - 1e-9);
        });
      // the per-layer decisions are those of the merge candidate, reported where it is the one written
      if (r.choice!.candidates[r.choice!.chosen]!.candidate === 'merge')
        expect(l.decision!.error).toBeLessThanOrEqual(Math.min(l.decision!.errors.reap, l.decision!.errors.frequency, l.decision!.errors.merge));
      else expect(l.decision).toBeUndefined();
    }
    const nll = r.choice!.candidates.map((c) => c.nll);
    expect(nll[r.choice!.chosen]).toBe(Math.min(...nll));
    expect(await outputShape(out)).toEqual({ experts: 4, routerRows: r.layers.map(() => 4) });
    expect(r.sizes.predicted).toBe(false);
    expect(r.sizes.after.expertParams).toBe(r.sizes.before.expertParams / 2);
    const saved = JSON.parse(await readFile(join(out, REPORT_FILE), 'utf8')) as MergeReport;
    expect(saved.layers.length).toBe(r.layers.length);
    const ppl = (await evaluate({ model: out, data: calib, maxTokens: 128, seqLen: 32 })).perplexity;
    expect(Number.isFinite(ppl)).toBe(true);
  });

  it('from --stats: weight alignment and mean router, groups produced while writing', async () => {
    const out = join(root, 'stats-out');
    const r = await merge({ model, out, groups: 6, grouping: 'hierarchical', align: 'weights', router: 'mean', stats });
    expect(r.mode).toBe('stats');
    checkPartitions(r, 8, 6);
    const merged = r.layers.flatMap((l) => l.groups.filter((g) => g.members.length > 1));
    expect(merged.length).toBeGreaterThan(0);
    // alignment quality is filled in by the lazy producers during the write
    for (const g of merged) for (const a of g.alignment.slice(1)) expect(a!.after).toBeGreaterThanOrEqual(a!.before - 1e-9);
    expect(await outputShape(out)).toEqual({ experts: 6, routerRows: r.layers.map(() => 6) });
  });

  it('--dry-run prints the plan and writes nothing', async () => {
    const out = join(root, 'dry');
    const r = await merge({ model, out, groups: 4, grouping: 'saliency', stats, dryRun: true });
    checkPartitions(r, 8, 4);
    expect(r.sizes.predicted).toBe(true);
    expect(r.sizes.after.expertParams).toBe(r.sizes.before.expertParams / 2);
    expect(await exists(out)).toBe(false);
  });

  it('refuses impossible or underspecified requests with one-line errors', async () => {
    const out = join(root, 'bad');
    const base = { model, out, calib, calibTokens: 64, seqLen: 32 };
    await expect(merge({ ...base, groups: 9 })).rejects.toThrow(/--groups 9 is more than the 8 experts/);
    await expect(merge({ ...base, groups: 1 })).rejects.toThrow(/fewer than the 2 experts each token is routed to/);
    await expect(merge({ model, out, groups: 4 })).rejects.toThrow(/give calibration text \(--calib FILE\), saved statistics/);
    await expect(merge({ model, out, groups: 4, stats, router: 'fit' })).rejects.toThrow(/--router fit needs calibration hidden states/);
    await expect(merge({ model, out, groups: 4, stats, align: 'activations' })).rejects.toThrow(/--align activations needs/);
    await expect(merge({ ...base, stats, groups: 4 })).rejects.toThrow(/not both/);
    await expect(merge({ ...base, groups: 4, grouping: 'kmeans' })).rejects.toThrow(/--grouping must be one of msmoe, hierarchical, saliency/);
    await expect(merge({ model, groups: 4, calib })).rejects.toThrow(/--out DIR is required/);
    await expect(merge({ model, out: model, groups: 4, stats })).rejects.toThrow(/must differ from --model/);
    expect(await exists(out)).toBe(false);
  });
});
