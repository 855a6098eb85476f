/**
 * Peak memory of `moe decompose`: the dry run's estimate (report.memory) against the measured peak RSS of the real
 * run (process.resourceUsage().maxRSS of a child running the CLI), on a Mixtral-shaped synthetic model with a
 * word-level tokenizer and random-word calibration text. Linux: the timeline reads /proc.
 *
 *   npx tsc -p tsconfig.json --outDir /tmp/moe-dist        # compiled CLI: tsx's loader adds its own memory
 *   npx tsx bench/decompose-memory.ts --work /tmp/dmem --hidden 512 --intermediate 1408 --experts 8 --layers 8 \
 *     --mode whitened --ratio 0.6 --tokens 1024 --entry /tmp/moe-dist/src/cli/main.js
 *   --entry FILE  the CLI's main module (a compiled main.js, e.g. of an older commit unpacked with git archive and
 *                 built, to measure before/after a change on the same model); default src/cli/main.ts under tsx
 *   --label NAME  output directory suffix (the output is kept under --work, to compare runs byte for byte)
 *   --extra "..." further decompose flags, e.g. "--uniform" or "--alloc-seconds 30"
 *   --dry-run     also time the dry run (the estimate itself is read from the real run's report, which carries the
 *                 same figure a dry run prints; a CLI that predates it has none)
 *
 * The model, tokenizer and calibration text are made once under --work and reused by later runs.
 */
import { spawn } from 'node:child_process';
import { readFile, readdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureWordModel } from './word-model.js';

const { values } = parseArgs({
  options: {
    work: { type: 'string', default: '/tmp/dmem' },
    hidden: { type: 'string', default: '512' },
    intermediate: { type: 'string', default: '1408' },
    experts: { type: 'string', default: '8' },
    layers: { type: 'string', default: '8' },
    mode: { type: 'string', default: 'whitened' },
    ratio: { type: 'string', default: '0.6' },
    tokens: { type: 'string', default: '1024' },
    entry: { type: 'string' },
    label: { type: 'string', default: 'run' },
    extra: { type: 'string', default: '' },
    'dry-run': { type: 'boolean', default: false },
  },
});
const H = Number(values.hidden),
  I = Number(values.intermediate),
  E = Number(values.experts),
  L = Number(values.layers);
const work = resolve(values.work!);
const { model, calib } = await ensureWordModel(work, { hidden: H, intermediate: I, experts: E, layers: L });
const MiB = 2 ** 20;

/**
 * The CLI in a child that reports its own peak RSS (getrusage maxrss) on exit. The parent polls the child's
 * /proc/<pid>/status every 500 ms for a timeline of VmRSS and VmHWM (the child's own timers would stall while it
 * computes synchronously; VmHWM shows when the peak was reached).
 */
async function moe(
  args: string[],
): Promise<{ seconds: number; maxRss: number; trace: [number, number, number][]; status: number | null; stdout: string; stderr: string }> {
  const entry = values.entry ? resolve(values.entry) : resolve('src/cli/main.ts');
  const script = `import(${JSON.stringify(entry)}).then((m) => m.main(process.argv)).then((c) => { process.stderr.write('maxrss_kb ' + process.resourceUsage().maxRSS + '\\n'); process.exit(c); });`;
  const t0 = performance.now();
  const loader = entry.endsWith('.ts') ? ['--import', 'tsx'] : [];
  const child = spawn(process.execPath, [...loader, '--input-type=module', '-e', script, 'moe', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += String(d)));
  child.stderr.on('data', (d) => (stderr += String(d)));
  const trace: [number, number, number][] = [];
  const poll = setInterval(() => {
    readFile(`/proc/${child.pid}/status`, 'utf8').then(
      (st) => {
        const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(st)?.[1] ?? NaN);
        trace.push([Math.round((performance.now() - t0) / 1000), Math.round(kb('VmRSS') / 1024), Math.round(kb('VmHWM') / 1024)]);
      },
      () => undefined,
    );
  }, 500);
  const status = await new Promise<number | null>((res) => child.on('close', (code) => res(code)));
  clearInterval(poll);
  const m = /maxrss_kb (\d+)/.exec(stderr);
  return { seconds: (performance.now() - t0) / 1000, maxRss: m ? Number(m[1]) * 1024 : NaN, trace, status, stdout, stderr };
}

async function dirBytes(dir: string): Promise<number> {
  let b = 0;
  for (const f of await readdir(dir)) if (f.endsWith('.safetensors')) b += (await stat(join(dir, f))).size;
  return b;
}

console.log(
  `model ${model}: hidden ${H}, ${E} experts of ${I}, ${L} layers, ${((await dirBytes(model)) / MiB).toFixed(0)} MiB BF16; CLI ${values.entry ?? 'src/cli/main.ts (tsx)'}`,
);
const base = [
  'decompose',
  '--model',
  model,
  '--ratio',
  values.ratio!,
  '--mode',
  values.mode!,
  '--backend',
  'wasm',
  ...(values.mode === 'svd' ? [] : ['--calib', calib, '--calib-tokens', values.tokens!]),
  ...values.extra!.split(' ').filter(Boolean),
];
type Estimate = { peakBytes: number; parts: { label: string; bytes: number }[] };
if (values['dry-run']) {
  const dry = await moe([...base, '--dry-run', '--json']);
  if (dry.status !== 0) throw new Error(`dry run failed: ${dry.stderr.slice(-2000)}`);
  console.log(`  dry run: ${dry.seconds.toFixed(1)} s, peak RSS ${(dry.maxRss / MiB).toFixed(0)} MiB`);
}
const out = join(work, `out-h${H}-i${I}-e${E}-l${L}-${values.mode}-${values.label}`);
await rm(out, { recursive: true, force: true });
const r = await moe([...base, '--out', out, '--quiet']);
if (r.status !== 0) throw new Error(`decompose failed: ${r.stderr.slice(-2000)}`);
const report = JSON.parse(await readFile(join(out, 'moe-decompose-report.json'), 'utf8')) as { memory?: Estimate; optimal: boolean; allocation: string };
const est = report.memory;
if (est) for (const p of est.parts) console.log(`  estimate: ${(p.bytes / MiB).toFixed(1).padStart(8)} MiB  ${p.label}`);
console.log(`  allocation ${report.allocation}${report.allocation === 'knapsack' ? ` (${report.optimal ? 'optimal' : 'time limit'})` : ''}`);
const rows = [
  ['label', 'mode', 'flags', 'estimated MiB', 'measured peak RSS MiB', 'measured / estimated', 'seconds', 'output MiB'],
  [
    values.label!,
    values.mode!,
    `--ratio ${values.ratio} ${values.extra}`.trim(),
    est ? (est.peakBytes / MiB).toFixed(0) : '-',
    (r.maxRss / MiB).toFixed(0),
    est ? (r.maxRss / est.peakBytes).toFixed(2) : '-',
    r.seconds.toFixed(1),
    ((await dirBytes(out)) / MiB).toFixed(1),
  ],
];
for (const row of rows) console.log(row.join(' | '));
// the timeline, thinned to about 30 points: seconds -> RSS / high-water mark, MiB
const step = Math.max(1, Math.ceil(r.trace.length / 30));
console.log(
  `RSS timeline (s: RSS/HWM MiB): ${r.trace
    .filter((_, i) => i % step === 0 || i === r.trace.length - 1)
    .map(([t, m, h]) => `${t}: ${m}/${h}`)
    .join(', ')}`,
);
const peakAt = r.trace.find(([, , h]) => h >= Math.max(...r.trace.map((x) => x[2])));
if (peakAt) console.log(`high-water mark ${peakAt[2]} MiB reached by ${peakAt[0]} s of ${r.seconds.toFixed(0)} s`);
console.log(`output kept in ${out}`);
