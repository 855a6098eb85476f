import type { Command } from 'commander';
import { rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { loadStats, saveStats, sumStats } from '../../calibrate/artifact.js';
import { collectStats } from '../../calibrate/collect.js';
import { gramBytes, gramWriter } from '../../calibrate/grams.js';
import type { CalibStats } from '../../calibrate/types.js';
import { loadWindowSet } from '../../data/windows.js';
import { fail } from '../../errors.js';
import { openModel } from '../../model/open.js';
import { checkOutputTarget } from '../../io/output.js';
import { initBackend, parseBackendOption } from '../../runtime/backend.js';
import { createProgress } from '../progress.js';
import { count, shard, type ShardSpec } from '../options.js';

const gib = (b: number) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(2)} MiB`);

function summary(s: CalibStats, out: string): object {
  return {
    out,
    family: s.family,
    tokens: s.tokens,
    runs: s.runs,
    layers: s.layers.length,
    numExperts: s.numExperts,
    topK: s.topK,
    frequency: s.layers.map((l) => ({ layer: l.layer, count: Array.from(l.count) })),
  };
}

export function registerCalibrate(program: Command): void {
  program
    .command('calibrate')
    .description(
      'one forward pass over calibration text -> reusable per-expert statistics (--stats DIR for prune/merge/quantize/decompose); --merge sums artifacts of several runs',
    )
    .option('--model <dir>', 'checkpoint directory')
    .option('--data <file>', 'calibration text, one document or sentence per line (same windowing as moe eval)')
    .requiredOption('--out <dir>', 'artifact directory to write')
    .option('--seq-len <n>', 'tokens per window', count('--seq-len'), 256)
    .option('--max-tokens <n>', 'use only the first windows up to this many tokens', count('--max-tokens'))
    .option('--shard <i/n>', "data-parallel calibration: use windows i, i+n, i+2n, ... (sum the shards' artifacts with --merge)", shard('--shard'))
    .option('--grams', "also write X^T X of every expert's routed inputs (prints the total size first)")
    .option('--merge <dirs...>', 'sum the statistics of these artifacts (runs over different text) into --out')
    .option('--backend <name>', 'tensor backend: auto | tensorflow | wasm | cpu', parseBackendOption, 'auto')
    .option('--force', 'replace an existing --out')
    .option('--json', 'print a JSON summary on stdout')
    .option('--quiet', 'no progress output')
    .action(async (o: Record<string, any>) => {
      const progress = createProgress({ quiet: o.quiet, json: o.json });
      await checkOutputTarget(o.out, { force: !!o.force, ...(o.model ? { inputDir: o.model } : {}) });
      if (o.merge) {
        if (o.model || o.data) fail('Usage', '--merge sums saved artifacts: do not give --model/--data with it');
        if (o.merge.length < 2) fail('Usage', '--merge needs at least two artifact directories');
        const all: CalibStats[] = [];
        for (const d of o.merge as string[]) all.push(await loadStats(d));
        const sum = sumStats(all);
        const withGrams = [];
        for (const d of o.merge as string[])
          if (
            await stat(join(d, 'grams')).then(
              () => true,
              () => false,
            )
          )
            withGrams.push(d);
        if (withGrams.length)
          progress.warn(`Gram matrices are not summed by --merge (present in ${withGrams.join(', ')}); the output holds the statistics only`);
        await saveStats(sum, o.out, { force: !!o.force });
        if (o.json) process.stdout.write(JSON.stringify(summary(sum, o.out), null, 2) + '\n');
        else if (!o.quiet) process.stdout.write(`summed ${all.length} artifacts (${sum.runs} runs, ${sum.tokens} tokens) into ${o.out}\n`);
        return;
      }
      if (!o.model || !o.data) fail('Usage', 'calibrate needs --model DIR and --data FILE (or --merge A B ... to sum artifacts)');
      await initBackend(o.backend);
      const model = await openModel(o.model);
      let gramsTmp: string | undefined;
      try {
        const set = await loadWindowSet(o.model, o.data, { seqLen: o.seqLen, ...(o.maxTokens !== undefined ? { maxTokens: o.maxTokens } : {}) });
        if (o.shard) {
          // every shard cuts the same windows and keeps its own stride of them, so the shards' sums are the whole's
          const { index, count: n } = o.shard as ShardSpec;
          set.windows = set.windows.filter((_, w) => w % n === index);
          if (set.windows.length === 0) fail('Usage', `--shard ${index}/${n} gets no window: the data has fewer than ${n} windows of ${set.seqLen} tokens`);
        }
        progress.info(
          `calibration: ${set.windows.length} windows of ${set.seqLen} tokens${set.bos === null ? '' : ' (+BOS)'}, ${model.view.moeLayers.length} MoE layers`,
        );
        let writer: ReturnType<typeof gramWriter> | undefined;
        if (o.grams) {
          const bytes = gramBytes(model);
          // printed before any work: for Mixtral-8x7B this is hundreds of GB
          process.stderr.write(
            `--grams will write ${gib(bytes)} of float64 Gram matrices (attention, router/shared inputs, each expert's gate/up and down_proj inputs, over ${model.view.layers.length} layers)\n`,
          );
          gramsTmp = join(dirname(resolve(o.out)), `.moe-grams-${basename(resolve(o.out))}-${process.pid}`);
          await rm(gramsTmp, { recursive: true, force: true });
          writer = gramWriter(model, gramsTmp);
        }
        const L = model.view.layers.length;
        const ph = progress.phase('calibrating');
        const started = Date.now();
        const stats = await collectStats(model, set.windows, {
          onProgress: (l) => ph.tick(l, L, 'layers'),
          ...(writer ? { extraHooks: writer.hooks } : {}),
        });
        const secs = (Date.now() - started) / 1000;
        ph.succeed(`calibrated ${stats.tokens} tokens in ${secs.toFixed(1)}s (${(stats.tokens / Math.max(secs, 1e-9)).toFixed(0)} tokens/s)`);
        await saveStats(stats, o.out, { force: !!o.force, ...(writer ? { gramsDir: gramsTmp!, gramFiles: writer.files } : {}) });
        gramsTmp = undefined;
        if (o.json) process.stdout.write(JSON.stringify(summary(stats, o.out), null, 2) + '\n');
        else if (!o.quiet) process.stdout.write(`wrote ${o.out}: ${stats.layers.length} MoE layers, ${stats.tokens} tokens\n`);
      } finally {
        await model.ckpt.close();
        if (gramsTmp) await rm(gramsTmp, { recursive: true, force: true });
      }
    });
}
