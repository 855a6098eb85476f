/**
 * Calibration throughput (collectStats: forward + every statistic, no lm_head) and peak RSS, on the committed
 * fixture (test/fixtures/tiny-mixtral, with its calibration text) when present and on a larger synthetic
 * Mixtral-shaped model (hidden 512, 4 layers, 8 experts of 1024, random tokens). The baseline is the bare forward
 * on the same windows: the ratio is what statistics cost on top of the forward.
 *
 *   npx tsx bench/calibrate.ts [--windows 8] [--seq-len 256]
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { collectStats } from '../src/calibrate/collect.js';
import { loadWindows } from '../src/data/windows.js';
import { openModel, type Model } from '../src/model/open.js';
import { initBackend } from '../src/runtime/backend.js';
import { streamModel } from '../src/runtime/stream.js';
import { makeSynthetic } from './make-synthetic.js';

const { values } = parseArgs({ options: { windows: { type: 'string', default: '8' }, 'seq-len': { type: 'string', default: '256' } } });
const N = Number(values.windows);
const S = Number(values['seq-len']);

async function measure(label: string, model: Model, windows: Int32Array[]): Promise<void> {
  await streamModel(model, windows.slice(0, 1));
  const T = windows.reduce((a, w) => a + w.length, 0);
  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  };
  let c0 = cpu();
  const t0 = performance.now();
  await streamModel(model, windows);
  // wall time of the pass is not printed: CPU seconds are the figure on a shared machine
  void ((performance.now() - t0) / 1000);
  const fwdCpu = cpu() - c0;
  c0 = cpu();
  const t1 = performance.now();
  await collectStats(model, windows);
  const cal = (performance.now() - t1) / 1000;
  const calCpu = cpu() - c0;
  console.log(
    `${label}: ${T} tokens; calibrate ${(T / calCpu).toFixed(0)} tokens per CPU-second (wall ${(T / cal).toFixed(0)} tokens/s, ${cal.toFixed(2)} s), bare forward ${(T / fwdCpu).toFixed(0)} tokens per CPU-second; statistics cost x${(calCpu / fwdCpu).toFixed(2)} CPU; peak RSS so far ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MB`,
  );
}

await initBackend('auto');
const fixture = 'test/fixtures/tiny-mixtral';
const haveFixture = await stat(join(fixture, 'config.json')).then(
  () => true,
  () => false,
);
if (haveFixture) {
  const m = await openModel(fixture);
  const windows = await loadWindows(fixture, 'test/fixtures/text/calib.txt', { seqLen: S, maxTokens: N * S });
  await measure('fixture tiny-mixtral', m, windows);
  await m.ckpt.close();
} else console.log('fixture test/fixtures/tiny-mixtral not present: skipped');

const dir = await mkdtemp(join(tmpdir(), 'moe-bench-cal-'));
try {
  await makeSynthetic({
    out: join(dir, 'm'),
    hidden: 512,
    intermediate: 1024,
    experts: 8,
    layers: 4,
    heads: 8,
    kvHeads: 2,
    vocab: 8000,
    dtype: 'BF16',
    quiet: true,
  });
  const m = await openModel(join(dir, 'm'));
  let seed = 1;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % 8000;
  const windows = Array.from({ length: N }, () => Int32Array.from({ length: S + 1 }, rnd));
  await measure('synthetic H512 x4 layers, 8x1024 experts', m, windows);
  await m.ckpt.close();
} finally {
  await rm(dir, { recursive: true, force: true });
}
console.log(
  `load average ${loadavg()
    .map((x) => x.toFixed(1))
    .join(' ')} (other jobs share this machine)`,
);
