/**
 * Peak memory of `moe quantize`: the dry run's estimate (report.memory) against the measured peak RSS of the real
 * run (process.resourceUsage().maxRSS of a child running the CLI), per method, on a Mixtral-shaped synthetic model.
 *
 *   npx tsx bench/quantize-memory.ts --work /tmp/qmem --hidden 1024 --intermediate 2816 --experts 8 --layers 8 \
 *     --method rtn --candidates 4 --bits 4.5 --tokens 1024
 *   --repo DIR   run the CLI of another checkout (e.g. an older commit unpacked with git archive, node_modules
 *                linked) to measure before/after a change on the same model; its dry run may lack an estimate
 *   --entry FILE the CLI's main module to run instead of REPO/src/cli/main.ts under tsx, e.g. a compiled
 *                main.js (`npx tsc -p tsconfig.json --outDir out/dist-new`): tsx's loader adds its own memory
 *   --extra "..." further quantize flags (space-separated), e.g. "--no-sequential"
 *
 * The model, tokenizer and calibration text are made once under --work and reused by later runs.
 */
import { rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { runCli } from './child.js';
import { ensureWordModel } from './word-model.js';

const { values } = parseArgs({
  options: {
    work: { type: 'string', default: '/tmp/qmem' },
    hidden: { type: 'string', default: '1024' },
    intermediate: { type: 'string', default: '2816' },
    experts: { type: 'string', default: '8' },
    layers: { type: 'string', default: '8' },
    method: { type: 'string', default: 'gptq,rtn' },
    candidates: { type: 'string', default: '4' },
    bits: { type: 'string', default: '4.5' },
    tokens: { type: 'string', default: '1024' },
    'seq-len': { type: 'string', default: '256' },
    repo: { type: 'string', default: '.' },
    extra: { type: 'string', default: '' },
    entry: { type: 'string' },
    'no-calib': { type: 'boolean', default: false },
  },
});
const H = Number(values.hidden),
  I = Number(values.intermediate),
  E = Number(values.experts),
  L = Number(values.layers);
const work = resolve(values.work!);
const repo = resolve(values.repo!);
const { model, calib } = await ensureWordModel(work, { hidden: H, intermediate: I, experts: E, layers: L });
const MiB = 2 ** 20;

const moe = (args: string[]) => runCli(args, { entry: values.entry ? resolve(values.entry) : join(repo, 'src/cli/main.ts') });

const modelBytes = (await import('node:fs/promises')).readdir(model).then(async (fs) => {
  let b = 0;
  for (const f of fs) if (f.endsWith('.safetensors')) b += (await stat(join(model, f))).size;
  return b;
});
console.log(
  `model ${model}: hidden ${H}, ${E} experts of ${I}, ${L} layers, ${((await modelBytes) / MiB).toFixed(0)} MiB BF16; CLI ${values.entry ?? join(repo, 'src/cli/main.ts')}`,
);
const rows: string[][] = [['method', 'flags', 'estimated MiB', 'measured peak RSS MiB', 'measured / estimated', 'seconds', 'output MiB']];
for (const method of values.method!.split(',')) {
  const out = join(work, `out-${method}`);
  await rm(out, { recursive: true, force: true });
  const base = [
    'quantize',
    '--model',
    model,
    '--bits',
    values.bits!,
    '--method',
    method,
    '--candidates',
    values.candidates!,
    ...(values['no-calib'] ? [] : ['--calib', calib, '--calib-tokens', values.tokens!, '--seq-len', values['seq-len']!]),
    ...values.extra!.split(' ').filter(Boolean),
  ];
  const dry = moe([...base, '--dry-run', '--json']);
  if (dry.status !== 0) throw new Error(`dry run failed: ${dry.stderr.slice(-2000)}`);
  const est = (JSON.parse(dry.stdout) as { memory?: { peakBytes: number; parts: { label: string; bytes: number }[] } }).memory;
  if (est) for (const p of est.parts) console.log(`  ${method} estimate: ${(p.bytes / MiB).toFixed(1).padStart(8)} MiB  ${p.label}`);
  const r = moe([...base, '--out', out, '--quiet']);
  if (r.status !== 0) throw new Error(`quantize failed: ${r.stderr.slice(-2000)}`);
  let outBytes = 0;
  for (const f of await (await import('node:fs/promises')).readdir(out)) if (f.endsWith('.safetensors')) outBytes += (await stat(join(out, f))).size;
  rows.push([
    method,
    base
      .slice(4)
      .filter((a) => !a.startsWith('/'))
      .join(' '),
    est ? (est.peakBytes / MiB).toFixed(0) : '-',
    (r.maxRss / MiB).toFixed(0),
    est ? (r.maxRss / est.peakBytes).toFixed(2) : '-',
    r.seconds.toFixed(1),
    (outBytes / MiB).toFixed(1),
  ]);
  await rm(out, { recursive: true, force: true });
}
for (const r of rows) console.log(r.join(' | '));
