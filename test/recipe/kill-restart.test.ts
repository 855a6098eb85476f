/**
 * A run killed mid-write (SIGKILL, no chance to clean up) and restarted with the same command finishes with output
 * byte-identical to an uninterrupted run, and never leaves anything under the output name in between.
 * The kill comes from the writer's fault-injection hook (MOE_TEST_KILL_AFTER_WRITES), so it lands mid-checkpoint
 * deterministically instead of racing a timer.
 */
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JOURNAL_FILE } from '../../src/io/writer.js';
import { stagingDirFor } from '../../src/io/output.js';
import { prune } from '../../src/prune/pipeline.js';
import { runDirFor, runRecipe } from '../../src/recipe/run.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { outputFiles } from '../helpers/files.js';
import { spawnMoe } from '../helpers/cli.js';

let root: string;
let model: string;
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-kill-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 8, layers: 3 });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('kill -9 mid-write, then the same command again', () => {
  it('moe prune resumes from the tensors already written and matches an uninterrupted run', async () => {
    const out = join(root, 'pruned');
    const args = ['prune', '--model', model, '--out', out, '--keep', '5', '--method', 'random', '--seed', '7', '--quiet'];
    const killed = spawnMoe(args, { MOE_TEST_KILL_AFTER_WRITES: '6' });
    expect(killed.signal).toBe('SIGKILL');
    expect(await exists(out)).toBe(false);
    const journal = await readFile(join(stagingDirFor(out), JOURNAL_FILE), 'utf8');
    expect(journal.trim().split('\n')).toHaveLength(6);

    const resumed = spawnMoe(args);
    expect(resumed.status).toBe(0);
    expect(await exists(stagingDirFor(out))).toBe(false);

    const reference = join(root, 'pruned-reference');
    await prune({ model, out: reference, keep: 5, method: 'random', seed: 7 });
    expect(await outputFiles(out)).toEqual(await outputFiles(reference));
  });

  it('moe run resumes a recipe: finished stages are reused, the killed stage continues', async () => {
    const recipe = join(root, 'chain.yaml');
    const out = join(root, 'chain-out');
    await writeFile(
      recipe,
      `model: ./mixtral\nout: ./chain-out\nseed: 5\nstages:\n  - prune: { keep: 6, method: random }\n  - decompose: { ratio: 0.5, mode: svd, uniform: true }\n`,
    );
    // stage 1 writes every input tensor but the 3 layers x 2 removed experts x 3 projections; 4 writes later is inside stage 2
    const stage1Tensors = (await tensorCount(model)) - 3 * 2 * 3;
    const killed = spawnMoe(['run', recipe, '--quiet'], { MOE_TEST_KILL_AFTER_WRITES: String(stage1Tensors + 4) });
    expect(killed.signal).toBe('SIGKILL');
    expect(await exists(out)).toBe(false);
    expect(await readdir(runDirFor(out))).toContain('stage-1-prune');

    const resumed = spawnMoe(['run', recipe, '--json', '--quiet']);
    expect(resumed.status).toBe(0);
    const report = JSON.parse(resumed.stdout);
    expect(report.resumedStages).toBe(1);

    const refRecipe = join(root, 'chain-ref.yaml');
    await writeFile(refRecipe, (await readFile(recipe, 'utf8')).replace('./chain-out', './chain-ref'));
    await runRecipe({ recipe: refRecipe });
    expect(await outputFiles(out)).toEqual(await outputFiles(join(root, 'chain-ref')));
  });
});

async function tensorCount(dir: string): Promise<number> {
  const { Checkpoint } = await import('../../src/io/checkpoint.js');
  const c = await Checkpoint.open(dir);
  const n = c.tensorNames.length;
  await c.close();
  return n;
}
