/**
 * Held-out perplexity of `moe decompose` outputs: every mode at every ratio, allocated and uniform ranks, against
 * the original model. Prints the markdown table docs/decompose.md shows.
 *
 *   npx tsx bench/decompose-table.ts [--model test/fixtures/tiny-mixtral] [--calib test/fixtures/text/calib.txt]
 *        [--heldout test/fixtures/text/heldout.txt] [--ratios 0.8,0.6] [--modes svd,whitened,...] [--calib-tokens N]
 *        [--eval-tokens N] [--alloc-seconds S]
 *
 * Equivalent to, per row:
 *   moe decompose --model M --out O --ratio R --mode MODE [--uniform] --calib CALIB
 *   moe eval --model O --data HELDOUT
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MODES, type DecomposeMode } from '../src/decompose/format.js';
import { collectGrams, decompose } from '../src/decompose/pipeline.js';
import { loadWindows } from '../src/data/windows.js';
import { openModel } from '../src/model/open.js';
import { evaluate } from '../src/eval/perplexity.js';
import { initBackend } from '../src/runtime/backend.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
}

const model = arg('model', 'test/fixtures/tiny-mixtral');
const calib = arg('calib', 'test/fixtures/text/calib.txt');
const heldout = arg('heldout', 'test/fixtures/text/heldout.txt');
const ratios = arg('ratios', '0.8,0.6').split(',').map(Number);
const modes = arg('modes', MODES.join(',')).split(',') as DecomposeMode[];
const calibTokens = process.argv.includes('--calib-tokens') ? Number(arg('calib-tokens', '0')) : undefined;
const allocSeconds = Number(arg('alloc-seconds', '10'));
const allocLoss = arg('alloc-loss', 'absolute') as 'absolute' | 'group';
const uniforms = arg('uniform', 'both') === 'both' ? [false, true] : [arg('uniform', 'both') === 'yes'];
const evalTokens = process.argv.includes('--eval-tokens') ? Number(arg('eval-tokens', '0')) : undefined;

await initBackend(arg('backend', 'auto') as 'auto');
const tmp = await mkdtemp(join(tmpdir(), 'moe-decompose-table-'));
try {
  // one calibration pass serves every row (the CLI runs it per call; the Grams are the same)
  const m = await openModel(model);
  const t0 = Date.now();
  const grams = await collectGrams(m, await loadWindows(model, calib, { maxTokens: calibTokens }));
  await m.ckpt.close();
  console.log(`calibration: ${grams.tokens} tokens, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const base = await evaluate({ model, data: heldout, maxTokens: evalTokens });
  console.log(`original: perplexity ${base.perplexity.toFixed(3)} on ${base.tokens} held-out tokens`);
  const rows: string[] = [
    '| mode | ratio | ranks | kept params | held-out ppl | Δ vs original | rms rel. act. error | seconds |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const ratio of ratios) {
    for (const mode of modes) {
      for (const uniform of uniforms) {
        const out = join(tmp, `${mode}-${ratio}-${uniform ? 'u' : 'a'}`);
        const t0 = Date.now();
        const rep = await decompose({ model, out, ratio, mode, uniform, grams, calib, allocSeconds, allocLoss });
        const ev = await evaluate({ model: out, data: heldout, maxTokens: evalTokens });
        const rel = Math.sqrt(rep.units.reduce((a, u) => a + u.relativeError ** 2, 0) / rep.units.length);
        const row = `| ${mode} | ${ratio} | ${uniform ? 'uniform' : `allocated${rep.optimal ? '' : '*'}`} | ${rep.params.achievedRatio.toFixed(3)} | ${ev.perplexity.toFixed(3)} | ${(ev.perplexity - base.perplexity >= 0 ? '+' : '') + (ev.perplexity - base.perplexity).toFixed(3)} | ${rel.toFixed(4)} | ${((Date.now() - t0) / 1000).toFixed(1)} |`;
        console.log(row);
        rows.push(row);
        await rm(out, { recursive: true, force: true });
      }
    }
  }
  console.log(`\noriginal perplexity ${base.perplexity.toFixed(3)}\n`);
  console.log(rows.join('\n'));
} finally {
  await rm(tmp, { recursive: true, force: true });
}
