/**
 * Read throughput of our safetensors reader against a plain sequential read of the same files, in one process.
 *
 *   npx tsx bench/read-throughput.ts [--model DIR] [--gb 2] [--rounds 2]
 *
 * Without --model, a ~2 GB Mixtral-shaped BF16 checkpoint is generated once into /tmp/moe-bench-synth-<gb>g
 * (bench/make-synthetic.ts) and reused.
 *
 * Passes, alternated `rounds` times so neither side always runs on a warmer cache:
 *   baseline   fs read of every shard start to end with one 64 MB buffer (the I/O floor)
 *   readBytes  Checkpoint.readBytes of every tensor (header-validated byte-range reads, stored dtype)
 *   readF32    Checkpoint.readF32 of every tensor (plus BF16 -> F32 decoding)
 * The page cache is warm after the warm-up pass (this machine has more RAM than the default checkpoint, and
 * dropping caches needs root), so the ratio measures our overhead over the OS copy, not disk speed. For a cold
 * read, pass a checkpoint larger than free RAM (e.g. `make-synthetic --target-gb 30`) with --rounds 1.
 * Peak RSS (maxRSS) is reported per pass; it is a high-water mark, so each pass's value includes the earlier ones.
 */
import { existsSync } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { Checkpoint } from '../src/io/checkpoint.js';
import { makeSynthetic } from './make-synthetic.js';

const BUF = 64 << 20;

async function baseline(files: string[]): Promise<number> {
  const buf = new Uint8Array(BUF);
  let total = 0;
  for (const f of files) {
    const fh = await open(f, 'r');
    try {
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, BUF, null);
        if (bytesRead === 0) break;
        total += bytesRead;
      }
    } finally {
      await fh.close();
    }
  }
  return total;
}

/** Tensors in file order (shard, then offset), as a layer-streaming reader visits them. */
function fileOrder(ck: Checkpoint): string[] {
  const shards = ck.shardPaths;
  return ck.tensorNames.sort((a, b) => shards.indexOf(ck.shardOf(a)) - shards.indexOf(ck.shardOf(b)) || ck.info(a).begin - ck.info(b).begin);
}

async function ours(ck: Checkpoint, names: string[], f32: boolean): Promise<number> {
  let total = 0;
  for (const n of names) {
    const v = f32 ? await ck.readF32(n) : await ck.readBytes(n);
    total += f32 ? ck.info(n).end - ck.info(n).begin : v.byteLength;
  }
  return total;
}

function args(): { model?: string; gb: number; rounds: number } {
  const a = process.argv.slice(2);
  const get = (f: string) => {
    const i = a.indexOf(f);
    return i >= 0 ? a[i + 1] : undefined;
  };
  return { model: get('--model'), gb: Number(get('--gb') ?? 2), rounds: Number(get('--rounds') ?? 2) };
}

async function main(): Promise<void> {
  const o = args();
  let dir = o.model;
  if (!dir) {
    dir = `/tmp/moe-bench-synth-${o.gb}g`;
    if (!existsSync(dir)) {
      console.log(`generating ${o.gb} GB synthetic checkpoint in ${dir} ...`);
      const r = await makeSynthetic({
        out: dir,
        hidden: 2048,
        intermediate: 5632,
        experts: 8,
        vocab: 32000,
        targetBytes: o.gb * 1e9,
        maxShardBytes: 1e9,
        quiet: true,
      });
      console.log(`  ${r.layers} layers, ${(r.bytes / 1e9).toFixed(2)} GB in ${r.seconds.toFixed(1)} s`);
    }
  }
  const ck = await Checkpoint.open(dir);
  const files = ck.shardPaths;
  let fileBytes = 0;
  for (const f of files) fileBytes += (await stat(f)).size;
  const names = fileOrder(ck);
  const largest = Math.max(...names.map((n) => ck.info(n).end - ck.info(n).begin));
  console.log(`${dir}: ${files.length} shards, ${names.length} tensors, ${(fileBytes / 1e9).toFixed(2)} GB, largest tensor ${(largest / 1e6).toFixed(0)} MB`);
  console.log(`warm-up baseline pass (fills the page cache) ...`);
  await baseline(files);
  const rows: { pass: string; mbps: number; cpuMbps: number; rss: number }[] = [];
  const runs: Record<string, number[]> = { baseline: [], readBytes: [], readF32: [] };
  const cpuRuns: Record<string, number[]> = { baseline: [], readBytes: [], readF32: [] };
  for (let r = 0; r < o.rounds; r++) {
    for (const pass of ['baseline', 'readBytes', 'readF32'] as const) {
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      const bytes = pass === 'baseline' ? await baseline(files) : await ours(ck, names, pass === 'readF32');
      const s = (performance.now() - t0) / 1000;
      const c = process.cpuUsage(c0);
      const mbps = bytes / 1e6 / s;
      runs[pass]!.push(mbps);
      // CPU time (user + system, this process) is less distorted than wall time when other jobs share the cores
      const cpuMbps = bytes / 1e6 / ((c.user + c.system) / 1e6);
      cpuRuns[pass]!.push(cpuMbps);
      rows.push({ pass: `${pass} #${r + 1}`, mbps, cpuMbps, rss: process.resourceUsage().maxRSS / 1024 });
    }
  }
  await ck.close();
  for (const row of rows)
    console.log(
      `${row.pass.padEnd(14)} ${row.mbps.toFixed(0).padStart(6)} MB/s wall  ${row.cpuMbps.toFixed(0).padStart(6)} MB per CPU-second   peak RSS so far ${row.rss.toFixed(0)} MB`,
    );
  for (const [label, table] of [
    ['wall', runs],
    ['cpu', cpuRuns],
  ] as const) {
    const best = (k: string) => Math.max(...table[k]!);
    console.log(
      `best (${label}): baseline ${best('baseline').toFixed(0)} MB/s, readBytes ${best('readBytes').toFixed(0)} MB/s (ratio ${(best('readBytes') / best('baseline')).toFixed(2)}), readF32 ${best('readF32').toFixed(0)} MB/s (ratio ${(best('readF32') / best('baseline')).toFixed(2)})`,
    );
  }
  console.log(
    `load average ${(await import('node:os'))
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')} on ${(await import('node:os')).cpus().length} cores`,
  );
  const rss = process.resourceUsage().maxRSS * 1024;
  console.log(
    `peak RSS ${(rss / 1e6).toFixed(0)} MB = ${((100 * rss) / fileBytes).toFixed(1)}% of the ${(fileBytes / 1e9).toFixed(2)} GB checkpoint (largest tensor as F32: ${((largest * 2) / 1e6).toFixed(0)} MB)`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
