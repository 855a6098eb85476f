/**
 * Quality on the trained fixture: a merge to half the experts keeps a language model (finite held-out perplexity,
 * well below the untrained model's), and the fitted router's KL is measured against mean rows on real hidden
 * states. Which choices win is measured in bench/merge-table.ts and reported in docs/merge.md, not asserted here.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evaluate } from '../../src/eval/perplexity.js';
import { merge } from '../../src/merge/pipeline.js';
import { initBackend } from '../../src/runtime/backend.js';

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'tiny-mixtral');
const TEXT = join(import.meta.dirname, '..', 'fixtures', 'text');
let root: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-merge-fixture-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('merging the trained fixture', () => {
  it('8 -> 4 experts: finite held-out perplexity below the untrained model; fitted router beats mean rows in KL', async () => {
    const facts = JSON.parse(await readFile(join(FIXTURE, 'TRAINING.json'), 'utf8'));
    const untrained = facts.heldout.untrained['128'].ppl as number;
    const out = join(root, 'merged');
    // every group merged (--drop never): the whole-model choice could write REAP pruning, whose rows are not fitted
    const r = await merge({
      model: FIXTURE,
      out,
      groups: 4,
      calib: join(TEXT, 'calib.txt'),
      calibTokens: 512,
      seqLen: 128,
      router: 'fit',
      fitSteps: 50,
      drop: 'never',
    });
    for (const l of r.layers) expect(l.router.kl!).toBeLessThan(l.router.klMeanRows!);
    const ppl = (await evaluate({ model: out, data: join(TEXT, 'heldout.txt'), maxTokens: 512, seqLen: 128 })).perplexity;
    expect(Number.isFinite(ppl)).toBe(true);
    expect(ppl).toBeLessThan(untrained);
  });
});
