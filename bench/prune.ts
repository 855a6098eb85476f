/**
 * Pruning quality on the trained fixture: held-out perplexity after removing 25% and 50% of the experts with every
 * method, against the unpruned model and random pruning (mean ± sd over seeds), plus dynamic skipping (Lu et al.).
 * Prints the markdown table of docs/prune.md.
 *
 *   npx tsx bench/prune.ts [--model DIR] [--calib FILE] [--heldout FILE] [--seeds N] [--calib-tokens N]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { evaluate } from '../src/eval/perplexity.js';
import { openModel } from '../src/model/open.js';
import { prune } from '../src/prune/pipeline.js';
import { initBackend } from '../src/runtime/backend.js';

const { values: a } = parseArgs({
  options: {
    model: { type: 'string', default: 'test/fixtures/tiny-mixtral' },
    calib: { type: 'string', default: 'test/fixtures/text/calib.txt' },
    heldout: { type: 'string', default: 'test/fixtures/text/heldout.txt' },
    seeds: { type: 'string', default: '10' },
    'calib-tokens': { type: 'string' },
    backend: { type: 'string', default: 'auto' },
  },
});
const calibTokens = a['calib-tokens'] ? Number(a['calib-tokens']) : undefined;

await initBackend(a.backend as 'auto');

async function perplexity(dir: string): Promise<number> {
  return (await evaluate({ model: dir, data: a.heldout! })).perplexity;
}

const mean = (v: number[]) => v.reduce((x, y) => x + y, 0) / v.length;
const sd = (v: number[]) => Math.sqrt(v.reduce((x, y) => x + (y - mean(v)) ** 2, 0) / Math.max(1, v.length - 1));

const root = await mkdtemp(join(tmpdir(), 'moe-bench-prune-'));
try {
  const probe = await openModel(a.model!);
  const E = probe.view.dims.numExperts;
  await probe.ckpt.close();
  const t0 = Date.now();
  const base = await perplexity(a.model!);
  console.error(`unpruned: ppl ${base.toFixed(3)} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);

  const methods = ['reap', 'frequency', 'gate-mass', 'easy-ep', 'reconstruct'];
  const keeps = [Math.round(E * 0.75), Math.round(E * 0.5)];
  const rows: Record<string, string[]> = {};
  const seeds = Number(a.seeds);
  for (const keep of keeps) {
    for (const method of methods) {
      const out = join(root, `${method}-${keep}`);
      const t = Date.now();
      await prune({ model: a.model!, out, keep, method, calib: a.calib, calibTokens, force: true });
      const r = await perplexity(out);
      console.error(`keep ${keep} ${method}: ppl ${r.toFixed(3)} (${((Date.now() - t) / 1000).toFixed(1)} s)`);
      (rows[method] ??= []).push(r.toFixed(2));
    }
    const rand: number[] = [];
    for (let s = 0; s < seeds; s++) {
      const out = join(root, `random-${keep}-${s}`);
      await prune({ model: a.model!, out, keep, method: 'random', seed: s, force: true });
      rand.push(await perplexity(out));
    }
    console.error(`keep ${keep} random: ${rand.map((v) => v.toFixed(2)).join(' ')}`);
    (rows[`random (${seeds} seeds)`] ??= []).push(
      `${mean(rand).toFixed(2)} ± ${sd(rand).toFixed(2)} (min ${Math.min(...rand).toFixed(2)}, max ${Math.max(...rand).toFixed(2)})`,
    );
  }

  // dynamic skipping (Lu et al.): beta per layer = median w2/w1 on the calibration text, applied on held-out text
  const sk = await evaluate({ model: a.model!, data: a.heldout!, skip: 'auto', calib: a.calib!, ...(calibTokens ? { calibTokens } : {}) });

  const head = `| method | ${keeps.map((k) => `keep ${k}/${E} (${Math.round((1 - k / E) * 100)}% removed)`).join(' | ')} |`;
  console.log(`unpruned held-out perplexity: ${base.toFixed(2)}\n`);
  console.log(head);
  console.log(`|---|${keeps.map(() => '---').join('|')}|`);
  for (const [m, v] of Object.entries(rows)) console.log(`| ${m} | ${v.join(' | ')} |`);
  const betas = sk.skip!.beta as number[];
  console.log(
    `\ndynamic skip: beta per layer ${betas.map((b) => b.toFixed(3)).join(' ')}; expert calls saved ${(100 * sk.skip!.savedFraction).toFixed(1)}%, held-out ppl ${sk.perplexity.toFixed(3)} vs ${base.toFixed(3)} (${(((sk.perplexity - base) / base) * 100).toFixed(2)}%)`,
  );
} finally {
  await rm(root, { recursive: true, force: true });
}
