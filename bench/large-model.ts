/**
 * A checkpoint larger than this machine's memory, pruned and then quantized (round-to-nearest) end to end by the
 * real CLI, each stage measured against a plain sequential read of the same files in the same script.
 *
 *   npx tsx bench/make-synthetic.ts --out /tmp/big/synth-28g --target-gb 28     # once: 26.65 GB, Mixtral-8x7B dims
 *   npm run build && npx tsx bench/large-model.ts --model /tmp/big/synth-28g --work /tmp/big
 *
 * Prints, per step: wall seconds, MB/s of input bytes, the ratio to the plain read, and the child's peak RSS
 * (getrusage maxrss) as a fraction of the input size. The page cache cannot hold a model larger than RAM, so every
 * pass reads from disk; the plain read runs first, and again last, to bracket drift in disk speed.
 */
import { open, readdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { runCli } from './child.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: '/tmp/big/synth-28g' },
    work: { type: 'string', default: '/tmp/big' },
    keep: { type: 'string', default: '6' },
    bits: { type: 'string', default: '4.25' },
    'keep-outputs': { type: 'boolean', default: false },
    /** skip the prune step and quantize the pruned checkpoint a previous run kept (--keep-outputs) */
    'reuse-pruned': { type: 'boolean', default: false },
  },
});
const model = resolve(values.model!);
const work = resolve(values.work!);
const GB = 1e9;

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const f of await readdir(dir)) if (f.endsWith('.safetensors')) total += (await stat(join(dir, f))).size;
  return total;
}

async function plainRead(dir: string): Promise<number> {
  const buf = Buffer.alloc(64 << 20);
  const t0 = performance.now();
  let bytes = 0;
  for (const f of (await readdir(dir)).filter((f) => f.endsWith('.safetensors')).sort()) {
    const fh = await open(join(dir, f), 'r');
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      bytes += bytesRead;
    }
    await fh.close();
  }
  return bytes / 1e6 / ((performance.now() - t0) / 1000);
}

const moe = (args: string[]) => {
  const r = runCli(args);
  return { ...r, maxRssMB: r.maxRss / 2 ** 20 };
};

const inputBytes = await dirBytes(model);
console.log(`model ${model}: ${(inputBytes / GB).toFixed(2)} GB of safetensors`);
const pruned = join(work, 'bench-pruned');
const quant = join(work, 'bench-quantized');
if (!values['reuse-pruned']) await rm(pruned, { recursive: true, force: true });
await rm(quant, { recursive: true, force: true });

const read1 = await plainRead(model);
console.log(`plain sequential read: ${read1.toFixed(0)} MB/s`);

const p = values['reuse-pruned']
  ? { seconds: NaN, maxRssMB: NaN, status: 0, stderr: '' }
  : moe(['prune', '--model', model, '--out', pruned, '--keep', values.keep!, '--method', 'random', '--quiet']);
if (p.status !== 0) throw new Error(`prune failed: ${p.stderr}`);
const prunedBytes = await dirBytes(pruned);
const pruneRate = inputBytes / 1e6 / p.seconds;

const q = moe(['quantize', '--model', pruned, '--out', quant, '--bits', values.bits!, '--method', 'rtn', '--candidates', '4', '--quiet']);
if (q.status !== 0) throw new Error(`quantize failed: ${q.stderr}`);
const quantBytes = await dirBytes(quant);
const quantRate = prunedBytes / 1e6 / q.seconds;

const read2 = await plainRead(pruned);
console.log(`plain sequential read (pruned copy, after): ${read2.toFixed(0)} MB/s`);
const base = (read1 + read2) / 2;

const rows = [
  ['step', 'input GB', 'output GB', 'seconds', 'MB/s', 'vs plain read', 'peak RSS MB', 'RSS / input'],
  [
    'prune (random, keep ' + values.keep + ')',
    (inputBytes / GB).toFixed(2),
    (prunedBytes / GB).toFixed(2),
    p.seconds.toFixed(1),
    pruneRate.toFixed(0),
    (pruneRate / base).toFixed(2),
    p.maxRssMB.toFixed(0),
    (((p.maxRssMB * 1e6) / inputBytes) * 100).toFixed(2) + '%',
  ],
  [
    'quantize (rtn, ' + values.bits + ' bpw)',
    (prunedBytes / GB).toFixed(2),
    (quantBytes / GB).toFixed(2),
    q.seconds.toFixed(1),
    quantRate.toFixed(0),
    (quantRate / base).toFixed(2),
    q.maxRssMB.toFixed(0),
    (((q.maxRssMB * 1e6) / prunedBytes) * 100).toFixed(2) + '%',
  ],
];
for (const r of rows) console.log(r.map((c, i) => (i === 0 ? c.padEnd(26) : c.padStart(12))).join(' '));
console.log(`plain read baseline: mean of ${read1.toFixed(0)} and ${read2.toFixed(0)} MB/s`);
if (!values['keep-outputs']) {
  if (!values['reuse-pruned']) await rm(pruned, { recursive: true, force: true });
  await rm(quant, { recursive: true, force: true });
}
