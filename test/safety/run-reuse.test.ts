/**
 * `moe run` reuses a finished stage only when what it read is the same: the stage digest covers the input files'
 * identity (size, modification time, first bytes), not only the recipe and the model's path. A model replaced
 * under the same path after a failed run reruns every stage, and the output is what a clean run on the new model
 * writes; an unchanged model reuses the finished stage.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { runMoe } from '../helpers/cli.js';

let root: string;
const model = () => join(root, 'model');

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-runreuse-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const STAGE1 = 'prune: { keep: 3, method: random }';
/** stage 2 fails at its start (--bits 1 is below what 4-bit experts take), after stage 1 has finished */
function recipe(name: string, out: string, bits: number): string {
  const p = join(root, `${name}.yaml`);
  writeFileSync(p, `model: ./model\nout: ./${out}\nstages:\n  - ${STAGE1}\n  - quantize: { bits: ${bits}, method: rtn, candidates: [4] }\n`);
  return p;
}

async function run(path: string): Promise<{ code: number; resumed: number; stderr: string }> {
  const r = await runMoe(['run', path, '--json', '--quiet']);
  return { code: r.code, resumed: r.code === 0 ? (JSON.parse(r.stdout) as { resumedStages: number }).resumedStages : -1, stderr: r.stderr };
}

describe('moe run: stage reuse is keyed on the input files, not their paths', () => {
  it('an unchanged model reuses the finished stage; one replaced under the same path reruns it', async () => {
    await makeTinyCheckpoint('mixtral', model(), { experts: 4, layers: 2, seed: 3 });
    // the reference outputs: clean runs on each model
    const clean = async (seed: number, out: string) => {
      await makeTinyCheckpoint('mixtral', model(), { experts: 4, layers: 2, seed });
      const r = await run(recipe(`clean-${seed}`, out, 7));
      expect(r.code, r.stderr).toBe(0);
      expect(r.resumed).toBe(0);
      return readFileSync(join(root, out, 'model.safetensors'));
    };
    const ref3 = await clean(3, 'ref3');
    const ref4 = await clean(4, 'ref4');
    expect(ref3.equals(ref4)).toBe(false);

    // unchanged model (seed 3, as written once more): stage 1 is reused
    await makeTinyCheckpoint('mixtral', model(), { experts: 4, layers: 2, seed: 3 });
    expect((await run(recipe('fail-a', 'a', 1))).code).toBe(2);
    const a = await run(recipe('fix-a', 'a', 7));
    expect(a.code, a.stderr).toBe(0);
    expect(a.resumed).toBe(1);
    expect(readFileSync(join(root, 'a', 'model.safetensors')).equals(ref3)).toBe(true);

    // the model replaced under the same path between the failed run and its fix: both stages rerun
    expect((await run(recipe('fail-b', 'b', 1))).code).toBe(2);
    await makeTinyCheckpoint('mixtral', model(), { experts: 4, layers: 2, seed: 4 });
    const b = await run(recipe('fix-b', 'b', 7));
    expect(b.code, b.stderr).toBe(0);
    expect(b.resumed).toBe(0);
    expect(readFileSync(join(root, 'b', 'model.safetensors')).equals(ref4)).toBe(true);
  }, 300_000);
});
