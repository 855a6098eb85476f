/**
 * Dry-run peak-memory estimates against measured peak RSS, command by command, on one synthetic Mixtral-shaped
 * model with a word-level tokenizer and random-word calibration text.
 *
 *   npm run build && npx tsx bench/memory.ts [--hidden 1024] [--intermediate 2816] [--experts 8] [--layers 4] [--tokens 4096]
 *
 * For each command: `--dry-run --json` gives the report's `memory.peakBytes`; the same command without --dry-run
 * runs in a child process of the compiled CLI that prints its own getrusage maxrss on exit. The ratio
 * measured / estimated is the figure to watch (1.0 = exact; above 1, the estimate is short).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { makeSynthetic } from './make-synthetic.js';
import { writeWordTokenizer, WORDS, wordLines } from '../test/eval/tokenizer.js';
import { runCli } from './child.js';

const { values } = parseArgs({
  options: {
    hidden: { type: 'string', default: '1024' },
    intermediate: { type: 'string', default: '2816' },
    experts: { type: 'string', default: '8' },
    layers: { type: 'string', default: '4' },
    tokens: { type: 'string', default: '4096' },
    only: { type: 'string' },
  },
});
const tokens = Number(values.tokens);
const MiB = 2 ** 20;

const moe = (args: string[]) => runCli(args);

const root = await mkdtemp(join(tmpdir(), 'moe-mem-'));
try {
  const model = join(root, 'model');
  await makeSynthetic({
    out: model,
    hidden: Number(values.hidden),
    intermediate: Number(values.intermediate),
    experts: Number(values.experts),
    layers: Number(values.layers),
    heads: 16,
    kvHeads: 4,
    vocab: WORDS.length + 3,
    dtype: 'BF16',
    force: true,
    quiet: true,
  });
  await writeWordTokenizer(model);
  let s = 12345;
  const rnd = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
  const lines = wordLines(Math.ceil(tokens / 10) + 50, rnd);
  const calib = join(root, 'calib.txt');
  await writeFile(calib, lines.join('\n') + '\n');
  const E = Number(values.experts);
  const keep = String(Math.max(2, E - 2));
  const data = ['--calib', calib, '--calib-tokens', String(tokens), '--seq-len', '256'];
  const commands: [string, string[]][] = [
    ['prune random', ['prune', '--model', model, '--keep', keep, '--method', 'random']],
    ['prune reap', ['prune', '--model', model, '--keep', keep, '--method', 'reap', ...data]],
    ['prune reconstruct', ['prune', '--model', model, '--keep', keep, '--method', 'reconstruct', ...data]],
    ['quantize rtn 4-bit', ['quantize', '--model', model, '--bits', '4.5', '--method', 'rtn', '--candidates', '4']],
    ['quantize gptq 2.5', ['quantize', '--model', model, '--bits', '2.5', ...data]],
    ['merge', ['merge', '--model', model, '--groups', keep, ...data]],
    ['decompose', ['decompose', '--model', model, '--ratio', '0.5', '--calib', calib, '--calib-tokens', String(tokens)]],
  ];
  console.log(`model: hidden ${values.hidden}, ${values.layers} layers, ${E} experts x ${values.intermediate}; calibration ${tokens} tokens`);
  console.log('| command | estimated MiB | measured peak RSS MiB | measured / estimated | seconds |');
  console.log('|---|---|---|---|---|');
  for (const [label, args] of commands) {
    if (values.only && !label.includes(values.only)) continue;
    const dry = moe([...args, '--dry-run', '--json']);
    let est = NaN;
    try {
      est = JSON.parse(dry.stdout).memory?.peakBytes ?? NaN;
    } catch {
      /* the command failed: reported below */
    }
    const out = join(root, 'out');
    const run = moe([...args, '--out', out, '--force', '--quiet']);
    await rm(out, { recursive: true, force: true });
    if (run.status !== 0) {
      console.log(`| ${label} | ${(est / MiB).toFixed(0)} | failed (exit ${run.status}): ${run.stderr.split('\n')[0]} | | |`);
      continue;
    }
    console.log(
      `| ${label} | ${Number.isFinite(est) ? (est / MiB).toFixed(0) : 'n/a'} | ${(run.maxRss / MiB).toFixed(0)} | ${Number.isFinite(est) ? (run.maxRss / est).toFixed(2) : 'n/a'} | ${run.seconds.toFixed(1)} |`,
    );
  }
} finally {
  await rm(root, { recursive: true, force: true });
}
