/** Every data-driven method end to end on a tiny model with calibration text, and the --stats path. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveStats } from '../../src/calibrate/artifact.js';
import { resolveCalibration } from '../../src/calibrate/resolve.js';
import { openModel } from '../../src/model/open.js';
import { keptFromScores } from '../../src/prune/plan.js';
import { prune, type PruneReport } from '../../src/prune/pipeline.js';
import { seededRandom } from '../../kernels/random.js';
import { initBackend } from '../../src/runtime/backend.js';
import { writeWordTokenizer, wordLines } from '../eval/tokenizer.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let root: string;
let model: string;
let calib: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-prune-methods-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 8, seed: 2 });
  await writeWordTokenizer(model);
  const r = seededRandom(4);
  const lines = wordLines(40, r);
  calib = join(root, 'calib.txt');
  await writeFile(calib, lines.join('\n') + '\n');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const run = (method: string, extra: Record<string, unknown> = {}) =>
  prune({ model, out: join(root, `${method}-${Object.keys(extra).join('-')}`), keep: 4, method, calib, calibTokens: 256, seqLen: 32, ...extra });

describe('data-driven pruning methods', () => {
  const reports = new Map<string, PruneReport>();
  beforeAll(async () => {
    for (const m of ['reap', 'frequency', 'gate-mass', 'easy-ep', 'reconstruct']) reports.set(m, await run(m));
  });

  it('stats methods keep the top-scoring experts of each layer, from the calibration tokens', () => {
    for (const m of ['reap', 'frequency', 'gate-mass', 'easy-ep']) {
      const r = reports.get(m)!;
      expect(r.calibration.source).toBe('calib');
      expect(r.calibration.tokens).toBeGreaterThan(100);
      expect(r.layers).toHaveLength(3);
      for (const l of r.layers) {
        expect(l.kept).toHaveLength(4);
        expect(l.kept).toEqual(keptFromScores(l.scores, 4));
        expect(l.scores.every((s) => Number.isFinite(s) && s >= 0)).toBe(true);
      }
    }
  });

  it('frequency scores count top-k slots: they sum to tokens x k in every layer', () => {
    const r = reports.get('frequency')!;
    for (const l of r.layers) expect(l.scores.reduce((a, b) => a + b, 0)).toBe(r.calibration.tokens * 2);
  });

  it('gate-mass scores are mean probabilities: they sum to 1 in every layer', () => {
    for (const l of reports.get('gate-mass')!.layers) expect(l.scores.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
  });

  it('methods disagree somewhere (they measure different things)', () => {
    const sets = ['reap', 'frequency', 'gate-mass', 'easy-ep', 'reconstruct'].map((m) => JSON.stringify(reports.get(m)!.layers.map((l) => l.kept)));
    expect(new Set(sets).size).toBeGreaterThan(1);
  });

  it('reconstruct enumerates all C(8,4) = 70 subsets per layer and reports the output error it reached', () => {
    const r = reports.get('reconstruct')!;
    for (const l of r.layers) {
      expect(l.search).toBe('exact');
      expect(l.subsetsEvaluated).toBe(70);
      expect(l.relError).toBeGreaterThan(0);
      expect(l.relError).toBeLessThan(1);
      // per-expert score = relative error of dropping that expert alone: a squared-norm ratio, never negative
      expect(l.scores.every((s) => Number.isFinite(s) && s >= 0)).toBe(true);
    }
  });

  it('--stats DIR gives the same plan as --calib FILE on the same text', async () => {
    const m = await openModel(model);
    const dir = join(root, 'stats');
    try {
      const stats = await resolveCalibration({ model: m, calib, calibTokens: 256, seqLen: 32 });
      await saveStats(stats, dir);
    } finally {
      await m.ckpt.close();
    }
    const viaStats = await prune({ model, keep: 4, method: 'reap', stats: dir, dryRun: true });
    expect(viaStats.calibration.source).toBe('stats');
    expect(viaStats.layers.map((l) => l.kept)).toEqual(reports.get('reap')!.layers.map((l) => l.kept));
  });
});
