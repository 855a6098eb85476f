/**
 * `--drop auto`'s whole-model choice (src/merge/choose.ts): the written checkpoint is the candidate of lowest NLL on
 * the calibration windows, and it is never worse there than `moe prune --method reap` or the planned merge. Every
 * NLL the report gives is checked by a plain forward pass (no hooks, no edits) of a checkpoint written by a separate
 * command: the merge's output, `moe prune --method reap`'s, `moe merge --drop never`'s.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWindows } from '../../src/data/windows.js';
import { merge } from '../../src/merge/pipeline.js';
import { candidateName, pickCandidate } from '../../src/merge/choose.js';
import { openModel } from '../../src/model/open.js';
import { prune } from '../../src/prune/pipeline.js';
import { initBackend } from '../../src/runtime/backend.js';
import { streamModel } from '../../src/runtime/stream.js';
import { writeWordTokenizer, wordLines } from '../eval/tokenizer.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { rng } from './synthetic.js';

let root: string;
let model: string;
let calib: string;
const CALIB = { calibTokens: 512, seqLen: 64 };

beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-merge-choose-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 8, seed: 5 });
  await writeWordTokenizer(model);
  calib = join(root, 'calib.txt');
  await writeFile(calib, wordLines(60, rng(4)).join('\n') + '\n');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Mean next-token NLL of a checkpoint on the calibration windows, by the plain streamed forward pass. */
async function nllOf(dir: string): Promise<number> {
  const windows = await loadWindows(model, calib, { maxTokens: CALIB.calibTokens, seqLen: CALIB.seqLen });
  const m = await openModel(dir);
  try {
    const r = await streamModel(m, windows, {}, { scoreLogits: true });
    return r.nll / r.scored;
  } finally {
    await m.ckpt.close();
  }
}

describe('merge --drop auto: whole-model choice by NLL on the calibration windows', () => {
  it('writes the candidate of lowest NLL; the REAP candidate is moe prune --method reap and the planned one --drop never, each NLL checked on the written checkpoints', async () => {
    for (const groups of [6, 4]) {
      const out = join(root, `auto-${groups}`);
      const r = await merge({ model, out, groups, calib, ...CALIB });
      const c = r.choice!;
      expect(c.candidates.map(candidateName)).toEqual([
        'merge (msmoe)',
        'planned (msmoe)',
        'merge (hierarchical)',
        'planned (hierarchical)',
        'merge (saliency)',
        'planned (saliency)',
        'prune-reap',
      ]);
      const nll = c.candidates.map((x) => x.nll);
      expect(c.chosen).toBe(pickCandidate(c.candidates));
      // by construction: never above REAP pruning or the planned merge on the objective
      expect(nll[c.chosen]).toBe(Math.min(...nll));

      const reapOut = join(root, `reap-${groups}`);
      await prune({ model, out: reapOut, keep: groups, method: 'reap', calib, ...CALIB });
      const others = [await nllOf(reapOut)];
      expect(others[0]).toBeCloseTo(nll[6]!, 6);
      const neverOut = join(root, `never-${groups}`);
      await merge({ model, out: neverOut, groups, calib, drop: 'never', ...CALIB });
      others.push(await nllOf(neverOut));
      expect(others[1]).toBeCloseTo(nll[1]!, 4);
      // the second grouping's planned merge is `moe merge --grouping saliency --drop never`
      const salOut = join(root, `never-saliency-${groups}`);
      await merge({ model, out: salOut, groups, grouping: 'saliency', calib, drop: 'never', ...CALIB });
      others.push(await nllOf(salOut));
      expect(others[2]).toBeCloseTo(nll[5]!, 4);
      // the written checkpoint has the chosen candidate's NLL (merged experts are stored in the model's dtype)
      const written = await nllOf(out);
      expect(written).toBeCloseTo(nll[c.chosen]!, 4);
      expect(written).toBeLessThanOrEqual(Math.min(...others) + 1e-4);
      // the per-layer decisions are reported where the per-layer decided merge is written
      for (const l of r.layers) expect(l.decision !== undefined).toBe(c.candidates[c.chosen]!.candidate === 'merge');
    }
  }, 300_000);

  it('the candidates follow --grouping and --choose-groupings; --drop never makes no choice', async () => {
    const r = await merge({ model, out: join(root, 'hier'), groups: 6, grouping: 'hierarchical', calib, dryRun: true, ...CALIB });
    expect(r.choice!.candidates.map(candidateName)).toEqual([
      'merge (hierarchical)',
      'planned (hierarchical)',
      'merge (msmoe)',
      'planned (msmoe)',
      'merge (saliency)',
      'planned (saliency)',
      'prune-reap',
    ]);
    // --choose-groupings names them (repeats once): the three candidates of one grouping
    const one = await merge({ model, out: join(root, 'one'), groups: 6, chooseGroupings: ['msmoe', 'msmoe'], calib, dryRun: true, ...CALIB });
    expect(one.choice!.candidates.map(candidateName)).toEqual(['merge (msmoe)', 'planned (msmoe)', 'prune-reap']);
    // the same grouping's candidates have the same NLL whatever else is a candidate
    const two = await merge({ model, out: join(root, 'two'), groups: 6, calib, dryRun: true, ...CALIB });
    expect(one.choice!.candidates[1]!.nll).toBe(two.choice!.candidates[1]!.nll);
    const n = await merge({ model, out: join(root, 'never-only'), groups: 6, calib, drop: 'never', dryRun: true, ...CALIB });
    expect(n.choice).toBeUndefined();
  }, 120_000);

  it('the lowest NLL wins; ties go to the earlier candidate', () => {
    const s = (...nll: number[]) => nll.map((x, i) => ({ candidate: (['merge', 'planned', 'prune-reap'] as const)[i]!, nll: x }));
    expect(pickCandidate(s(2, 2, 2))).toBe(0);
    expect(pickCandidate(s(3, 2, 2))).toBe(1);
    expect(pickCandidate(s(3, 2.5, 2))).toBe(2);
  });
});
