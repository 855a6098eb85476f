/**
 * Hidden-state resume after the last completed layer, for the forward-pass methods (the engine's passResume over
 * the runtime's checkpoint hook): a run killed right after layer k (MOE_TEST_KILL_AFTER_LAYER=k, like kill -9) and
 * restarted with the same command reports that it started after layer k and computed only the later MoE layers,
 * and writes the same bytes as an uninterrupted run. Another command never resumes from that state.
 */
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stagingDirFor } from '../../src/io/output.js';
import { outputFiles } from '../helpers/files.js';
import { spawnMoe } from '../helpers/cli.js';
import { makeQuantizeModel } from '../quantize/word-model.js';

let root: string;
let model: string;
let calib: string;
const LAYERS = 4;
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-pass-resume-'));
  ({ model, calib } = await makeQuantizeModel(root, LAYERS));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const T = () => ['--calib', calib, '--calib-tokens', '256', '--seq-len', '32', '--backend', 'wasm'];

/** kill after layer k, restart, compare with an uninterrupted run; returns the restarted run's report */
async function killAndResume(name: string, args: (out: string) => string[], file: string, k: number, only?: string) {
  const reference = join(root, `${name}-ref`);
  const ref = spawnMoe([...args(reference), '--json', '--quiet']);
  expect(ref.status, ref.stderr).toBe(0);
  const out = join(root, name);
  const killed = spawnMoe([...args(out), '--json', '--quiet'], { MOE_TEST_KILL_AFTER_LAYER: String(k), ...(only ? { MOE_TEST_KILL_FILE: only } : {}) });
  expect(killed.signal, killed.stderr).toBe('SIGKILL');
  expect(await exists(out)).toBe(false);
  expect(await readdir(stagingDirFor(out))).toContain(file);
  const resumed = spawnMoe([...args(out), '--json', '--quiet']);
  expect(resumed.status, resumed.stderr).toBe(0);
  expect(await exists(stagingDirFor(out))).toBe(false);
  expect(await outputFiles(out)).toEqual(await outputFiles(reference));
  return { ref: JSON.parse(ref.stdout), resumed: JSON.parse(resumed.stdout), out };
}

describe('resume after the last completed layer', () => {
  it('prune --method reconstruct', async () => {
    const args = (out: string) => ['prune', '--model', model, '--keep', '3', '--method', 'reconstruct', ...T(), '--out', out];
    const { ref, resumed } = await killAndResume('prune', args, '.moe-resume-prune-reconstruct', 1);
    expect(ref.resumed).toEqual({ afterLayer: -1, computed: [0, 1, 2, 3] });
    expect(resumed.resumed).toEqual({ afterLayer: 1, computed: [2, 3] });
    // the restored layers' plan entries are the killed run's, the same as the reference's
    expect(resumed.layers).toEqual(ref.layers);

    // other options (another kept count): not resumed from the killed run's state
    const other = join(root, 'prune-other');
    expect(spawnMoe([...args(other), '--quiet'], { MOE_TEST_KILL_AFTER_LAYER: '1' }).signal).toBe('SIGKILL');
    const changed = spawnMoe([...args(other).map((a) => (a === '3' ? '2' : a)), '--json', '--quiet']);
    expect(changed.status, changed.stderr).toBe(0);
    expect(JSON.parse(changed.stdout).resumed).toEqual({ afterLayer: -1, computed: [0, 1, 2, 3] });
  }, 240_000);

  it('merge --calib (sequential: activation alignment, fitted router rows)', async () => {
    const args = (out: string) => [
      'merge',
      '--model',
      model,
      '--groups',
      '3',
      '--align',
      'activations',
      '--router',
      'fit',
      '--fit-steps',
      '5',
      ...T(),
      '--out',
      out,
    ];
    const { ref, resumed } = await killAndResume('merge', args, '.moe-resume-merge-sequential', 2);
    expect(ref.resumed).toEqual({ afterLayer: -1, computed: [0, 1, 2, 3] });
    expect(resumed.resumed).toEqual({ afterLayer: 2, computed: [3] });
    expect(resumed.layers).toEqual(ref.layers);
  }, 240_000);

  it('decompose --mode whitened (the score pass)', async () => {
    const args = (out: string) => ['decompose', '--model', model, '--ratio', '0.5', '--mode', 'whitened', ...T(), '--out', out];
    const { ref, resumed } = await killAndResume('decompose', args, '.moe-resume-decompose-score', 1);
    expect(ref.resumed).toEqual({ afterLayer: -1, computed: [0, 1, 2, 3] });
    expect(resumed.resumed).toEqual({ afterLayer: 1, computed: [2, 3] });
    // the same spectra, so the same ranks and predicted errors as the uninterrupted run
    expect(resumed.units.map((u: { id: string; rank: number; predictedError: number }) => [u.id, u.rank, u.predictedError])).toEqual(
      ref.units.map((u: { id: string; rank: number; predictedError: number }) => [u.id, u.rank, u.predictedError]),
    );
  }, 240_000);

  it('decompose --mode whitened (the apply pass, killed after its layer 1 was written)', async () => {
    const args = (out: string) => ['decompose', '--model', model, '--ratio', '0.5', '--mode', 'whitened', ...T(), '--out', out];
    const file = '.moe-resume-decompose-apply';
    const { ref, resumed } = await killAndResume('decompose-apply', args, file, 1, file);
    expect(ref.resumedApply).toEqual({ afterLayer: -1, computed: [0, 1, 2, 3] });
    // the score pass had finished (its state is after its second-to-last layer: only the last is scored again);
    // the apply pass factorises only the layers after 1, the writer keeps the tensors of layers 0 and 1
    expect(resumed.resumed).toEqual({ afterLayer: 2, computed: [3] });
    expect(resumed.resumedApply).toEqual({ afterLayer: 1, computed: [2, 3] });
    // the restored layers' units (ranks, predicted and measured errors) are the killed run's, the same as the reference's
    const units = (r: { units: { id: string; rank: number; predictedError: number; measuredError: number }[] }) =>
      r.units.map((u) => [u.id, u.rank, u.predictedError, u.measuredError]);
    expect(units(resumed)).toEqual(units(ref));
  }, 240_000);
});
