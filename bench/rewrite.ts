/**
 * Expert surgery throughput and memory: writeExpertEdit (prune 8 -> 6 experts per layer, all copies byte for byte)
 * and a merge-style edit (two experts per layer replaced by new BF16 weights) against a plain copy of the same
 * shard files, each pass in its own child process so its peak RSS is its own.
 *
 *   npx tsx bench/rewrite.ts [--model DIR] [--gb 1]
 *
 * Without --model a Mixtral-shaped BF16 checkpoint of about --gb GB is generated once (bench/make-synthetic.ts)
 * into /tmp/moe-bench-rewrite-<gb>g. The page cache is warm after the first pass, so the ratio is our overhead
 * over the OS copy. Memory should stay near one tensor (plus one layer's new experts for the merge pass), not
 * grow with the checkpoint.
 *
 * A last pass times planning alone (dry run) on a tiny DeepSeek-V3 with 256 experts x 16 layers (11.7k tensors),
 * where per-tensor bookkeeping, not bytes, is the cost.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { loadSwiGLU } from '../src/model/load.js';
import { openModel } from '../src/model/open.js';
import { writeExpertEdit, type ExpertSource } from '../src/model/rewrite.js';
import type { MoeBlock } from '../src/model/types.js';
import { makeSynthetic } from './make-synthetic.js';
import { makeTinyCheckpoint } from '../test/helpers/families.js';

const run = promisify(execFile);

async function child(pass: string, dir: string, out: string): Promise<void> {
  const t0 = performance.now();
  await rm(out, { recursive: true, force: true });
  let bytes = 0;
  if (pass === 'copy') {
    const m = await openModel(dir);
    await mkdir(out);
    for (const f of m.ckpt.shardPaths) {
      await copyFile(f, join(out, f.split('/').pop()!));
      bytes += (await stat(f)).size;
    }
    await m.ckpt.close();
  } else {
    const m = await openModel(dir);
    const E = m.view.dims.numExperts;
    const H = m.view.dims.hidden;
    const layers = m.view.moeLayers.map((layer) => {
      const block = m.view.layers[layer]!.block as MoeBlock;
      if (pass === 'prune') return { layer, experts: Array.from({ length: E - 2 }, (_, j) => ({ from: j })) };
      // merge-style: experts 0 and 1 become new weights (loaded lazily, when the layer is written)
      const experts: ExpertSource[] = [
        { weights: () => loadSwiGLU(m.ckpt, block.experts[0]!) },
        { weights: () => loadSwiGLU(m.ckpt, block.experts[1]!) },
        ...Array.from({ length: E - 4 }, (_, j) => ({ from: j + 2 })),
      ];
      return { layer, experts, router: { w: new Float32Array((E - 2) * H).fill(0.01) } };
    });
    const r = await writeExpertEdit(m, { layers }, out);
    bytes = r.totalBytes;
    await m.ckpt.close();
  }
  const s = (performance.now() - t0) / 1000;
  process.stdout.write(JSON.stringify({ pass, bytes, s, rss: process.resourceUsage().maxRSS * 1024 }) + '\n');
}

async function main(): Promise<void> {
  const a = process.argv.slice(2);
  const get = (f: string) => (a.includes(f) ? a[a.indexOf(f) + 1] : undefined);
  if (get('--child')) return child(get('--child')!, get('--model')!, get('--out')!);
  const gb = Number(get('--gb') ?? 1);
  let dir = get('--model');
  if (!dir) {
    dir = `/tmp/moe-bench-rewrite-${gb}g`;
    if (!existsSync(dir)) {
      console.log(`generating a ${gb} GB synthetic checkpoint in ${dir} ...`);
      await makeSynthetic({ out: dir, hidden: 1024, intermediate: 3584, experts: 8, vocab: 32000, targetBytes: gb * 1e9, maxShardBytes: 500e6, quiet: true });
    }
  }
  const out = `${dir}-out`;
  const self = fileURLToPath(import.meta.url);
  const results: Record<string, { bytes: number; s: number; rss: number }> = {};
  for (const pass of ['copy', 'prune', 'copy', 'prune', 'merge']) {
    const { stdout } = await run('npx', ['tsx', self, '--child', pass, '--model', dir, '--out', out], { maxBuffer: 1 << 20 });
    const r = JSON.parse(stdout.trim().split('\n').pop()!);
    if (!results[pass] || r.s < results[pass]!.s) results[pass] = r;
    console.log(
      `${pass.padEnd(6)} ${(r.bytes / 1e6).toFixed(0).padStart(6)} MB in ${r.s.toFixed(2)} s = ${(r.bytes / 1e6 / r.s).toFixed(0).padStart(5)} MB/s, peak RSS ${(r.rss / 1e6).toFixed(0)} MB`,
    );
  }
  await rm(out, { recursive: true, force: true });
  const mbps = (p: string) => results[p]!.bytes / 1e6 / results[p]!.s;
  console.log(
    `best: prune ${mbps('prune').toFixed(0)} MB/s = ${(mbps('prune') / mbps('copy')).toFixed(2)}x plain copy (${mbps('copy').toFixed(0)} MB/s); merge ${mbps('merge').toFixed(0)} MB/s`,
  );
  const wide = `${dir}-wide`;
  await rm(wide, { recursive: true, force: true });
  await makeTinyCheckpoint('deepseek_v3', wide, { experts: 256, layers: 16 });
  const m = await openModel(wide);
  const kept = Array.from({ length: 128 }, (_, i) => 2 * i);
  const t0 = performance.now();
  const plan = await writeExpertEdit(m, { layers: m.view.moeLayers.map((layer) => ({ layer, experts: kept.map((from) => ({ from })) })) }, `${wide}-out`, {
    dryRun: true,
  });
  console.log(
    `plan only: ${m.ckpt.tensorNames.length} tensors in, ${plan.tensors.length} out, ${((performance.now() - t0) / 1000).toFixed(2)} s (256 -> 128 experts x 15 MoE layers)`,
  );
  await m.ckpt.close();
  await rm(wide, { recursive: true, force: true });
  console.log(
    `peak RSS: copy ${(results.copy!.rss / 1e6).toFixed(0)} MB, prune ${(results.prune!.rss / 1e6).toFixed(0)} MB, merge ${(results.merge!.rss / 1e6).toFixed(0)} MB for a ${(results.copy!.bytes / 1e9).toFixed(2)} GB checkpoint`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
