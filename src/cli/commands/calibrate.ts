import { z } from 'zod';
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { GRAMS_DIR, loadStats, modelIdentity, saveStats, sumStats } from '../../calibrate/artifact.js';
import { collectStats } from '../../calibrate/collect.js';
import { gramBytes, gramWriter } from '../../calibrate/grams.js';
import type { CalibStats } from '../../calibrate/types.js';
import { loadWindowSet } from '../../data/windows.js';
import { fail } from '../../errors.js';
import { OutputDir } from '../../io/output.js';
import { openModel } from '../../model/open.js';
import type { ShardSpec } from '../../model/shard.js';
import { command } from '../../pipeline/descriptor.js';
import { common, DEFAULT_SEQ_LEN, field, int } from '../../pipeline/fields.js';
import { checkModelOptions, prepare } from '../../pipeline/validate.js';
import { setThreads } from '../../runtime/pool.js';
import { initBackend } from '../../runtime/backend.js';

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

const CALIBRATE_OPTIONS = z.object({
  model: field(z.string().min(1).optional(), { help: 'checkpoint directory', arg: 'dir', recipe: false }),
  data: field(z.string().min(1).optional(), {
    help: 'calibration text, one document or sentence per line (same windowing as moe eval)',
    arg: 'file',
    path: 'data',
  }),
  dataIds: field(z.string().min(1).optional(), {
    help: 'pre-tokenized data in place of --data: one JSON array of token ids per line (a tokenizer moe cannot read)',
    arg: 'file',
    path: 'data',
  }),
  out: field(z.string().min(1), { help: 'artifact directory to write', arg: 'dir', recipe: false }),
  seqLen: field(int(2).default(DEFAULT_SEQ_LEN), { help: 'tokens per window', arg: 'n' }),
  maxTokens: field(int(1).optional(), { help: 'use only the first windows up to this many tokens', arg: 'n', defaultText: 'the whole file' }),
  shard: common.shard("data-parallel calibration: use windows i, i+n, i+2n, ... (sum the shards' artifacts with --merge)"),
  grams: field(z.boolean().default(false), { help: "also write X^T X of every expert's routed inputs (prints the total size first)" }),
  merge: field(z.array(z.string().min(1)).optional(), {
    help: 'sum the statistics of these artifacts (runs over different text) into --out',
    arg: 'dirs',
    parse: 'variadic',
    path: 'stats',
  }),
  backend: common.backend(),
  threads: common.threads(),
  force: common.force(),
});

function checkCalibrate(o: z.output<typeof CALIBRATE_OPTIONS>): void {
  if (o.merge) {
    if (o.model || o.data) fail('Usage', '--merge sums saved artifacts: do not give --model/--data with it');
    if (o.merge.length < 2) fail('Usage', '--merge needs at least two artifact directories');
  } else if (!o.model || !o.data) fail('Usage', 'calibrate needs --model DIR and --data FILE (or --merge A B ... to sum artifacts)');
}

type CalibrateResult = { summary: object; message: string };

export const CALIBRATE_COMMAND = command({
  name: 'calibrate',
  summary:
    'one forward pass over calibration text -> reusable per-expert statistics (--stats DIR for prune/merge/quantize/decompose); --merge sums artifacts of several runs',
  options: CALIBRATE_OPTIONS,
  check: checkCalibrate,
  examples: [
    'moe calibrate --model ./mixtral --data calib.txt --out ./stats     # then: moe prune --stats ./stats ...',
    'moe calibrate --model ./mixtral --data calib.txt --shard 0/2 --out ./s0   # and --shard 1/2 --out ./s1, then:',
    'moe calibrate --merge ./s0 ./s1 --out ./stats',
  ],
  async run(raw, { progress }): Promise<CalibrateResult> {
    const o = await prepare({ options: CALIBRATE_OPTIONS, check: checkCalibrate }, raw);
    if (o.merge) {
      const all: CalibStats[] = [];
      for (const d of o.merge) all.push(await loadStats(d));
      const sum = sumStats(all);
      const withGrams = [];
      for (const d of o.merge)
        if (
          await stat(join(d, 'grams')).then(
            () => true,
            () => false,
          )
        )
          withGrams.push(d);
      if (withGrams.length)
        progress?.warn(`Gram matrices are not summed by --merge (present in ${withGrams.join(', ')}); the output holds the statistics only`);
      await saveStats(sum, o.out, { force: o.force, inputs: o.merge });
      return { summary: summary(sum, o.out), message: `summed ${all.length} artifacts (${sum.runs} runs, ${sum.tokens} tokens) into ${o.out}` };
    }
    await initBackend(o.backend);
    if (o.threads !== undefined) await setThreads(o.threads);
    const model = await openModel(o.model!);
    let out: OutputDir | undefined;
    try {
      checkModelOptions(o, model.view);
      const set = await loadWindowSet(o.model!, o.data!, {
        seqLen: o.seqLen,
        format: o.dataIds ? 'ids' : 'text',
        ...(o.maxTokens !== undefined ? { maxTokens: o.maxTokens } : {}),
      });
      if (o.shard) {
        // every shard cuts the same windows and keeps its own stride of them, so the shards' sums are the whole's
        const { index, count: n } = o.shard as ShardSpec;
        set.windows = set.windows.filter((_, w) => w % n === index);
        if (set.windows.length === 0) fail('Usage', `--shard ${index}/${n} gets no window: the data has fewer than ${n} windows of ${set.seqLen} tokens`);
      }
      progress?.info(
        `calibration: ${set.windows.length} windows of ${set.seqLen} tokens${set.bos === null ? '' : ' (+BOS)'}, ${model.view.moeLayers.length} MoE layers`,
      );
      let writer: ReturnType<typeof gramWriter> | undefined;
      if (o.grams) {
        const bytes = gramBytes(model);
        // printed before any work: for Mixtral-8x7B this is hundreds of GB
        process.stderr.write(
          `--grams will write ${gib(bytes)} of float64 Gram matrices (attention, router/shared inputs, each expert's gate/up and down_proj inputs, over ${model.view.layers.length} layers)\n`,
        );
      }
      // the output's staging directory exists before the forward pass: an unwritable target fails now, not after
      // it, and the Gram files go straight into it (a killed run's are cleared by the next run: fresh)
      out = await OutputDir.create(o.out, { force: o.force, fresh: true, inputDir: o.model!, inputs: [o.data!] });
      if (o.grams) {
        await mkdir(out.path(GRAMS_DIR));
        writer = gramWriter(model, out.path(GRAMS_DIR));
      }
      const L = model.view.layers.length;
      const ph = progress?.phase('calibrating');
      const started = Date.now();
      const stats = await collectStats(model, set.windows, {
        onProgress: (l) => ph?.tick(l, L, 'layers'),
        ...(writer ? { extraHooks: writer.hooks } : {}),
      });
      // the statistics name the model they describe: --stats on another model (even of the same shape) is refused
      stats.model = await modelIdentity(model);
      const secs = (Date.now() - started) / 1000;
      ph?.succeed(`calibrated ${stats.tokens} tokens in ${secs.toFixed(1)}s (${(stats.tokens / Math.max(secs, 1e-9)).toFixed(0)} tokens/s)`);
      const dir = out;
      out = undefined;
      await saveStats(stats, dir, writer ? { gramFiles: writer.files } : {});
      return { summary: summary(stats, o.out), message: `wrote ${o.out}: ${stats.layers.length} MoE layers, ${stats.tokens} tokens` };
    } finally {
      await model.ckpt.close();
      await out?.discard();
    }
  },
  print: (r, o) => (o.quiet ? undefined : r.message),
  json: (r) => r.summary,
});
