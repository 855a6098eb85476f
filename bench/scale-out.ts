/**
 * Scale-out on a checkpoint larger than memory: the jobs `moe plan-shards` prints for 1, 2 and 4 layer shards, each
 * run as its own process of the compiled CLI, one after another (as separate machines would run them, without the
 * parallelism), with every job's wall time and peak RSS (getrusage maxrss), next to plan-shards' estimates.
 *
 *   npx tsx bench/make-synthetic.ts --out /tmp/big/synth-28g --target-gb 28     # once: 26.65 GB, Mixtral-8x7B dims
 *   npm run build && nice -n 10 npx tsx bench/scale-out.ts --model /tmp/big/synth-28g --work /tmp/big/scale-out
 *
 * The pipeline is `prune --method random --keep 2`: no calibration, I/O-bound, and a small output, so the input, one
 * configuration's parts and its assembled output fit on the disk together. Parts and output are deleted after each
 * configuration; the output's safetensors are hashed first, and every configuration must give the same hashes.
 * Prints one table per configuration and a summary with ratios to the 1-shard run.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { ShardPlan } from '../src/cli/commands/plan-shards.js';
import { runCli } from './child.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: '/tmp/big/synth-28g' },
    work: { type: 'string', default: '/tmp/big/scale-out' },
    keep: { type: 'string', default: '2' },
    shards: { type: 'string', default: '1,2,4' },
  },
});
const model = resolve(values.model!);
const work = resolve(values.work!);
const MiB = 2 ** 20;
const GB = 1e9;

async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(dir)) n += (await stat(join(dir, f))).size;
  return n;
}

async function safetensorsHashes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).filter((f) => f.endsWith('.safetensors') || f.endsWith('.json')).sort()) {
    if (/report.*\.json$/.test(f)) continue;
    const h = createHash('sha256');
    for await (const chunk of createReadStream(join(dir, f), { highWaterMark: 16 << 20 })) h.update(chunk as Buffer);
    out[f] = h.digest('hex');
  }
  return out;
}

interface JobResult {
  id: string;
  seconds: number;
  rssMiB: number;
  estPeakMiB: number | null;
  writtenGB: number;
  estWrittenGB: number | null;
}
interface ConfigResult {
  shards: number;
  jobs: JobResult[];
}

const results: ConfigResult[] = [];
let reference: Record<string, string> | undefined;
for (const n of values.shards!.split(',').map(Number)) {
  const dir = join(work, `shards-${n}`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const out = join(dir, 'out');
  const pipeline = ['prune', '--model', model, '--method', 'random', '--seed', '0', '--keep', values.keep!, '--out', out];
  const planned = runCli(['plan-shards', '--shards', String(n), '--dir', dir, '--json', '--', ...pipeline]);
  if (planned.status !== 0) throw new Error(`plan-shards: ${planned.stderr}`);
  const plan = JSON.parse(planned.stdout) as ShardPlan;
  const jobs: JobResult[] = [];
  for (const j of plan.jobs) {
    const r = runCli([...j.argv, '--quiet']);
    if (r.status !== 0) throw new Error(`${j.id}: exit ${r.status}: ${r.stderr}`);
    let written = 0;
    for (const w of j.writes) written += await stat(w).then((s) => (s.isDirectory() ? dirBytes(w) : s.size));
    jobs.push({
      id: j.id,
      seconds: r.seconds,
      rssMiB: r.maxRss / MiB,
      estPeakMiB: j.estPeakBytes === null ? null : j.estPeakBytes / MiB,
      writtenGB: written / GB,
      estWrittenGB: j.estBytesWritten === null ? null : j.estBytesWritten / GB,
    });
    console.error(`shards ${n}: ${j.id} ${r.seconds.toFixed(1)} s, peak RSS ${(r.maxRss / MiB).toFixed(0)} MiB`);
  }
  const hashes = await safetensorsHashes(out);
  if (reference === undefined) reference = hashes;
  else if (JSON.stringify(hashes) !== JSON.stringify(reference)) throw new Error(`${n} shards: the assembled output differs from the first configuration's`);
  await rm(dir, { recursive: true, force: true });
  results.push({ shards: n, jobs });
}

const f = (x: number | null, d = 1) => (x === null ? '-' : x.toFixed(d));
console.log(`model ${model}; pipeline prune --method random --keep ${values.keep}; every job its own process, run one after another`);
console.log('assembled outputs: identical sha256 of every safetensors and json file across the configurations\n');
for (const c of results) {
  console.log(`### ${c.shards} layer shard${c.shards > 1 ? 's' : ''}\n`);
  console.log('| job | seconds | peak RSS MiB | estimated peak MiB | written GB | estimated GB |');
  console.log('|---|---|---|---|---|---|');
  for (const j of c.jobs)
    console.log(`| ${j.id} | ${f(j.seconds)} | ${f(j.rssMiB, 0)} | ${f(j.estPeakMiB, 0)} | ${f(j.writtenGB, 2)} | ${f(j.estWrittenGB, 2)} |`);
  console.log('');
}
const layer = (c: ConfigResult) => c.jobs.filter((j) => j.id.startsWith('shard-'));
const summary = results.map((c) => {
  const shards = layer(c);
  const byId = (id: string) => c.jobs.find((j) => j.id === id)!;
  return {
    n: c.shards,
    maxShardS: Math.max(...shards.map((j) => j.seconds)),
    sumShardS: shards.reduce((a, j) => a + j.seconds, 0),
    maxShardRss: Math.max(...shards.map((j) => j.rssMiB)),
    maxShardGB: Math.max(...shards.map((j) => j.writtenGB)),
    // what a run with one machine per shard waits for: plan, the slowest shard, assemble
    critical: byId('plan').seconds + Math.max(...shards.map((j) => j.seconds)) + byId('assemble').seconds,
    assembleS: byId('assemble').seconds,
    assembleRss: byId('assemble').rssMiB,
  };
});
const one = summary[0]!;
console.log('### summary (ratios to the first configuration)\n');
console.log(
  '| layer shards | slowest shard s | ratio | all shards s (sum) | ratio | largest shard peak RSS MiB | ratio | largest part GB | plan + slowest shard + assemble s | ratio | assemble s, peak RSS MiB |',
);
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
for (const s of summary)
  console.log(
    `| ${s.n} | ${f(s.maxShardS)} | ${f(s.maxShardS / one.maxShardS, 2)} | ${f(s.sumShardS)} | ${f(s.sumShardS / one.sumShardS, 2)} | ${f(s.maxShardRss, 0)} | ${f(s.maxShardRss / one.maxShardRss, 2)} | ${f(s.maxShardGB, 2)} | ${f(s.critical)} | ${f(s.critical / one.critical, 2)} | ${f(s.assembleS)}, ${f(s.assembleRss, 0)} |`,
  );
