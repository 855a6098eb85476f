/**
 * Peak memory of `moe merge` on a synthetic Mixtral-shaped model: the measured peak RSS of a real run (a child
 * process reporting getrusage maxrss on exit) against the dry run's estimate (report.memory).
 *
 *   npx tsx bench/merge-memory.ts [--model /tmp/merge-synth] [--src .] [--groups 4] [--calib-tokens 1024]
 *                                 [--seq-len 256] [--align weights] [--router mean] [--mode calib|stats|plan]
 *                                 [--skip-dry-run] [--keep]
 *
 * The model (made once if --model does not exist): hidden 1024, 8 experts of 2816, 8 layers, 16 heads (4 KV),
 * BF16, vocabulary 2048 with the fixture's tokenizer, so test/fixtures/text/calib.txt tokenizes for it. One expert
 * is 34.6 MB in float32, a layer's eight 277 MB.
 *
 * --src runs the CLI of another checkout (e.g. an unpacked older commit with node_modules linked) for before/after
 * comparisons; the estimate is only printed when that CLI reports one.
 */
import { copyFile, mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { makeSynthetic } from './make-synthetic.js';
import { runCli } from './child.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: '/tmp/merge-synth' },
    src: { type: 'string', default: '.' },
    groups: { type: 'string', default: '4' },
    'calib-tokens': { type: 'string', default: '1024' },
    'seq-len': { type: 'string', default: '256' },
    align: { type: 'string', default: 'weights' },
    router: { type: 'string', default: 'mean' },
    calib: { type: 'string', default: 'test/fixtures/text/calib.txt' },
    mode: { type: 'string', default: 'calib' },
    keep: { type: 'boolean', default: false },
    'skip-dry-run': { type: 'boolean', default: false },
  },
});

const MB = 2 ** 20;
const model = resolve(values.model!);
const src = resolve(values.src!);
const calib = resolve(values.calib!);
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

if (!(await exists(join(model, 'config.json')))) {
  console.log(`making ${model} (hidden 1024, 8 experts of 2816, 8 layers, BF16)`);
  await makeSynthetic({ out: model, hidden: 1024, intermediate: 2816, experts: 8, layers: 8, heads: 16, kvHeads: 4, vocab: 2048, dtype: 'BF16', quiet: true });
  await mkdir(model, { recursive: true });
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) await copyFile(join('test/fixtures/tiny-mixtral', f), join(model, f));
}

const moe = (args: string[]) => {
  const r = runCli(args, { entry: join(src, 'src/cli/main.ts'), cwd: src, trace: true });
  return { ...r, maxRssMB: r.maxRss / 2 ** 20 };
};

const work = await mkdtemp(join(tmpdir(), 'moe-merge-memory-'));
try {
  const common = ['merge', '--model', model, '--groups', values.groups!, '--align', values.align!, '--router', values.router!, '--quiet'];
  let data: string[];
  if (values.mode === 'calib') data = ['--calib', calib, '--calib-tokens', values['calib-tokens']!, '--seq-len', values['seq-len']!];
  else {
    const stats = join(work, 'stats');
    const c = moe([
      'calibrate',
      '--model',
      model,
      '--data',
      calib,
      '--max-tokens',
      values['calib-tokens']!,
      '--seq-len',
      values['seq-len']!,
      '--out',
      stats,
      '--quiet',
    ]);
    if (c.status !== 0) throw new Error(`calibrate failed: ${c.stderr}`);
    data = ['--stats', stats];
    if (values.mode === 'plan') {
      const plan = join(work, 'plan.json');
      const p = moe([...common, ...data, '--dry-run', '--save-plan', plan]);
      if (p.status !== 0) throw new Error(`plan failed: ${p.stderr}`);
      data = ['--plan', plan];
    }
  }
  let estimate: { peakBytes: number; parts: { label: string; bytes: number }[] } | undefined;
  if (!values['skip-dry-run']) {
    const dry = moe([...common, ...data, '--dry-run', '--json']);
    if (dry.status !== 0) throw new Error(`dry run failed: ${dry.stderr}`);
    estimate = (JSON.parse(dry.stdout) as { memory?: typeof estimate }).memory;
    console.log(`dry run: ${dry.seconds.toFixed(1)} s, peak RSS ${dry.maxRssMB.toFixed(0)} MiB`);
  }
  const out = join(work, 'out');
  const run = moe([...common, ...data, '--out', out]);
  if (run.status !== 0) throw new Error(`merge failed: ${run.stderr}`);
  console.log(`merge (${values.mode}): ${run.seconds.toFixed(1)} s, measured peak RSS ${run.maxRssMB.toFixed(0)} MiB`);
  // the RSS profile in tenths of the run: the highest sample in each
  const tenths = Array.from({ length: 10 }, (_, i) =>
    Math.max(0, ...run.trace.filter(([t]) => Math.floor((10 * t) / Math.max(1, run.seconds)) === i).map(([, r]) => r)),
  );
  console.log(`RSS profile, highest MiB in each tenth of the run: ${tenths.join(' ')}`);
  if (estimate) {
    console.log(`estimated peak ${(estimate.peakBytes / MB).toFixed(0)} MiB; measured / estimated = ${(run.maxRssMB / (estimate.peakBytes / MB)).toFixed(2)}`);
    for (const p of estimate.parts) console.log(`  ${(p.bytes / MB).toFixed(0).padStart(6)} MiB  ${p.label}`);
  }
  if (values.keep) console.log(`output kept in ${out}`);
} finally {
  if (!values.keep) await rm(work, { recursive: true, force: true });
}
