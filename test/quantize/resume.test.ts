/**
 * moe quantize (GPTQ, sequential) killed mid-apply (SIGKILL from the writer's fault-injection hook) and restarted
 * with the same command: the apply pass resumes after the last layer whose tensors were all written (no forward
 * pass or GPTQ for the layers before), the plan the killed run scored is reused (no scoring pass), and the output
 * equals an uninterrupted run's byte for byte.
 */
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stagingDirFor } from '../../src/io/output.js';
import { RESUME_FILE } from '../../src/quantize/resume.js';
import { outputFiles } from '../helpers/files.js';
import { spawnMoe } from '../helpers/cli.js';
import { makeQuantizeModel } from './word-model.js';

let root: string;
let model: string;
let calib: string;
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-quantize-resume-'));
  ({ model, calib } = await makeQuantizeModel(root, 3));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** tensor names of a single-file safetensors output */
async function tensorNames(dir: string): Promise<string[]> {
  const buf = await readFile(join(dir, 'model.safetensors'));
  const n = Number(buf.readBigUInt64LE(0));
  return Object.keys(JSON.parse(buf.subarray(8, 8 + n).toString('utf8'))).filter((k) => k !== '__metadata__');
}

describe('moe quantize killed mid-apply, then the same command again', () => {
  it('resumes the GPTQ pass after the last finished layer and writes the same bytes as an uninterrupted run', async () => {
    const args = (out: string) => [
      'quantize',
      '--model',
      model,
      '--bits',
      '3.5',
      '--calib',
      calib,
      '--calib-tokens',
      '512',
      '--seq-len',
      '32',
      '--group-size',
      '32',
      '--min-tokens',
      '8',
      '--backend',
      'wasm',
      '--out',
      out,
      '--json',
      '--quiet',
    ];
    const reference = join(root, 'reference');
    const ref = spawnMoe(args(reference));
    expect(ref.status, ref.stderr).toBe(0);
    expect(JSON.parse(ref.stdout).resumedAfterLayer).toBe(-1);

    // kill a few tensors into layer 2: layers 0 and 1 (and the embeddings) are written by then
    const names = await tensorNames(reference);
    const before2 = names.filter((n) => !/\.layers\.2\./.test(n) && (/\.layers\.[01]\./.test(n) || /embed/.test(n))).length;
    const out = join(root, 'out');
    const killed = spawnMoe(args(out), { MOE_TEST_KILL_AFTER_WRITES: String(before2 + 5) });
    expect(killed.signal).toBe('SIGKILL');
    expect(await exists(out)).toBe(false);
    expect(await exists(join(stagingDirFor(out), RESUME_FILE))).toBe(true);

    const resumed = spawnMoe(args(out));
    expect(resumed.status, resumed.stderr).toBe(0);
    const rep = JSON.parse(resumed.stdout);
    // killed during layer 2's writes: layer 1's hidden states are saved in the background, so on a loaded machine the
    // kill can come before that save lands and the restart (correctly) resumes after layer 0; never from scratch
    expect([0, 1]).toContain(rep.resumedAfterLayer);
    expect(await exists(stagingDirFor(out))).toBe(false);
    expect(await outputFiles(out)).toEqual(await outputFiles(reference));
    // the finished layers' report entries come from the saved state, the plan from the killed run's scoring
    const refRep = JSON.parse(ref.stdout);
    expect(rep.fallbacks).toEqual(refRep.fallbacks);
    expect(rep.resumedPlan).toBe(true);
    expect(rep.units).toEqual(refRep.units);
    expect(refRep.resumedPlan).toBeUndefined();

    // another command (other calibration size) never resumes from a state it did not save
    const other = join(root, 'other');
    const k2 = spawnMoe(args(other), { MOE_TEST_KILL_AFTER_WRITES: String(before2 + 5) });
    expect(k2.signal).toBe('SIGKILL');
    const changed = spawnMoe(args(other).map((a) => (a === '512' ? '480' : a)));
    expect(changed.status, changed.stderr).toBe(0);
    expect(JSON.parse(changed.stdout).resumedAfterLayer).toBe(-1);
    expect(JSON.parse(changed.stdout).resumedPlan).toBeUndefined();
  }, 240_000);
});
