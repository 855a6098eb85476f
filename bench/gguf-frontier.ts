/**
 * The GGUF frontier (issue 17's "must show"): held-out perplexity measured by llama.cpp itself against size, for
 * `moe quantize --format gguf` at several --bits and for llama.cpp's own quants of the same model.
 *
 *   npm run build    # the bench runs the CLI (bin/moe.js) the way a user does
 *   nice -n 10 npx tsx bench/gguf-frontier.ts --model test/fixtures/tiny-mixtral [--calib test/fixtures/text/calib.txt]
 *     [--heldout test/fixtures/text/heldout.txt] [--bits 2,2.5,3,3.5,4,4.5] [--llama /tmp/llama.cpp/build/bin]
 *     [--types Q2_K,Q3_K_S,...] [--work /tmp/gguf-frontier/NAME] [--seq-len 128] [--eval-tokens 16384]
 *     [--calib-tokens 8192] [--nll /tmp/gguf-nll] [--threads 1] [--json FILE] [--fresh] [--methods gptq,rtn]
 *     [--candidates iq2_xxs,iq2_xs,iq2_s,q2_k,...]
 *
 * - ours: `moe quantize --format gguf --bits B` (GPTQ into the block types, 0/1 allocation in exact bytes), default
 *   candidates (or --candidates, passed through; give each set its own --work) and --dense-bits. A --bits below the smallest size the candidates allow on this model's rows is
 *   recorded as infeasible (the trained fixture's 128-wide gate/up rows take llama.cpp's 32-block fallbacks).
 * - llama.cpp (only with --llama, a directory holding llama-imatrix and llama-quantize built from source; that
 *   build is never part of this repository or of CI): the F16 GGUF is our `--candidates f16` export (llama.cpp's
 *   convert_hf_to_gguf.py refuses the fixtures' byte-level BPE, whose pre-tokenizer it does not know; test/gguf
 *   shows llama.cpp scores our F16 file within 1e-3 of our own forward pass). llama-imatrix runs on the same
 *   calibration text with the same number of tokens (tokenized by llama.cpp: its default pre-tokenizer, since
 *   the fixtures' has no llama.cpp name), then `llama-quantize --imatrix` at each --types mix. Two more rows per
 *   --bits: llama-quantize given our tensor-types.txt and imatrix.gguf (our allocation, llama.cpp's rounding:
 *   isolates what GPTQ adds).
 * - every file is scored by llama.cpp on the same held-out token ids, windows cut the way `moe eval` cuts them
 *   ([BOS] + window, every token scored): by bench/gguf-nll.cpp built against the --llama checkout (--nll; its
 *   header says how), or else by node-llama-cpp 3.21.1's prebuilt CPU build (test/gguf/llama.ts). Both agree on
 *   the fixture's F16 file (ppl 124.74 on 16384 tokens).
 *
 * Sizes: the file's bytes, and the routed experts' true bits per weight (every byte of the *_exps tensors x 8 /
 * their weights), read back from each file. Outputs are kept under --work and reused on a rerun unless --fresh.
 * Prints the markdown tables of docs/gguf.md; --json writes every row.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { loadWindowSet } from '../src/data/windows.js';
import { readGguf } from '../src/gguf/reader.js';
import { llamaNll, loadGguf } from '../test/gguf/llama.js';

const run = promisify(execFile);
const arg = (k: string, d?: string) => {
  const i = process.argv.indexOf(k);
  return i > 0 ? process.argv[i + 1]! : d;
};
const model = resolve(arg('--model', 'test/fixtures/tiny-mixtral')!);
const calib = resolve(arg('--calib', 'test/fixtures/text/calib.txt')!);
const heldout = resolve(arg('--heldout', 'test/fixtures/text/heldout.txt')!);
const bitsList = arg('--bits', '2,2.5,3,3.5,4,4.5')!
  .split(',')
  .filter((b) => b !== '')
  .map(Number);
const llamaBin = arg('--llama');
const types = arg('--types', 'Q2_K_S,Q2_K,Q3_K_S,Q3_K_M,Q3_K_L,Q4_K_S,Q4_K_M,Q5_K_S,IQ2_XXS,IQ2_XS,IQ2_S,IQ3_XXS,IQ3_S,IQ4_XS')!.split(',');
const work = resolve(arg('--work', join('/tmp/gguf-frontier', basename(model)))!);
const seqLen = Number(arg('--seq-len', '128'));
const evalTokens = Number(arg('--eval-tokens', '16384'));
const calibTokens = Number(arg('--calib-tokens', '8192'));
const jsonOut = arg('--json');
/** ours with each quantizer: gptq (the default) and/or rtn (llama.cpp's importance-weighted rounding, kfit.ts) */
const methods = arg('--methods', 'gptq')!.split(',');
const candidates = arg('--candidates');
const fresh = process.argv.includes('--fresh');
/** 1 by default: on a loaded machine ggml's spinning worker threads cost 20x the wall time of one thread */
const threads = arg('--threads', '1')!;
/** bench/gguf-nll.cpp built against the same llama.cpp; without it node-llama-cpp scores the files */
const nllBin = arg('--nll');

interface Row {
  kind: 'f16' | 'ours' | 'llama' | 'llama+ours';
  label: string;
  file: string;
  fileBytes: number;
  expertBpw: number;
  totalBpw: number;
  ppl: number;
  seconds?: number;
}

const log = (...a: unknown[]) => console.error(new Date().toISOString().slice(11, 19), ...a);

async function sh(cmd: string, args: string[], logFile: string): Promise<void> {
  try {
    const { stdout, stderr } = await run(cmd, args, { maxBuffer: 256 * 1024 * 1024 });
    await writeFile(logFile, stdout + stderr);
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; message: string };
    await writeFile(logFile, (x.stdout ?? '') + (x.stderr ?? ''));
    throw new Error(`${cmd} failed (log ${logFile}): ${x.message.split('\n')[0]}`);
  }
}

async function sizes(file: string): Promise<{ fileBytes: number; expertBpw: number; totalBpw: number }> {
  const f = await readGguf(file);
  let eb = 0;
  let ep = 0;
  let b = 0;
  let p = 0;
  for (const t of f.tensors) {
    const n = t.ne.reduce((x, y) => x * y, 1);
    b += t.bytes;
    p += n;
    if (/_exps\.weight$/.test(t.name)) {
      eb += t.bytes;
      ep += n;
    }
  }
  return { fileBytes: (await stat(file)).size, expertBpw: (8 * eb) / ep, totalBpw: (8 * b) / p };
}

const { windows } = await loadWindowSet(model, heldout, { seqLen, maxTokens: evalTokens });
const idsFile = join(work, `heldout-${seqLen}-${windows.length}.i32`);
async function ppl(file: string): Promise<number> {
  if (nllBin) {
    // kept beside the file (newer than it) so a rerun of the bench only scores what changed
    const cache = `${file}.${basename(idsFile)}.nll`;
    const cached = existsSync(cache) && (await stat(cache)).mtimeMs >= (await stat(file)).mtimeMs ? await readFile(cache, 'utf8') : undefined;
    const out = cached ?? (await run(nllBin, [file, idsFile, String(windows[0]!.length), threads])).stdout;
    if (!cached) await writeFile(cache, out);
    const [nll, scored] = out.trim().split(' ').map(Number);
    return Math.exp(nll! / scored!);
  }
  const lm = await loadGguf(file);
  try {
    const r = await llamaNll(lm, windows);
    return Math.exp(r.nll / r.scored);
  } finally {
    await lm.dispose();
  }
}

await mkdir(work, { recursive: true });
const ids = new Int32Array(windows.length * windows[0]!.length);
windows.forEach((w, i) => ids.set(w, i * w.length));
await writeFile(idsFile, new Uint8Array(ids.buffer));
const rows: Row[] = [];
async function score(kind: Row['kind'], label: string, file: string, seconds?: number): Promise<void> {
  const t0 = performance.now();
  const row: Row = { kind, label, file, ...(await sizes(file)), ppl: await ppl(file), ...(seconds !== undefined ? { seconds } : {}) };
  rows.push(row);
  log(
    `${label}: ${(row.fileBytes / 2 ** 20).toFixed(3)} MiB, experts ${row.expertBpw.toFixed(3)} bpw, ppl ${row.ppl.toFixed(3)} (scored in ${((performance.now() - t0) / 1000).toFixed(0)} s)`,
  );
}

const moe = resolve(import.meta.dirname, '../bin/moe.js');
const moeArgs = (out: string, extra: string[]) => [moe, 'quantize', '--format', 'gguf', '--model', model, '--out', out, '--force', ...extra];
const f16Dir = join(work, 'f16');
const f16 = join(f16Dir, 'model.gguf');
if (fresh || !existsSync(f16)) await sh('node', moeArgs(f16Dir, ['--candidates', 'f16']), join(work, 'f16.log'));
await score('f16', 'F16 (moe --candidates f16)', f16);

// ours
const oursDirs = new Map<number, string>();
for (const method of methods)
  for (const b of bitsList) {
    const tag = method === 'gptq' ? `${b}` : `${b}-${method}`;
    const dir = join(work, `ours-${tag}`);
    const file = join(dir, 'model.gguf');
    const logFile = join(work, `ours-${tag}.log`);
    let seconds: number | undefined;
    if (fresh || !existsSync(file)) {
      const t0 = performance.now();
      try {
        const cands = candidates ? ['--candidates', candidates] : [];
        await sh('node', moeArgs(dir, ['--calib', calib, '--calib-tokens', String(calibTokens), '--bits', String(b), '--method', method, ...cands]), logFile);
      } catch {
        const why =
          (await readFile(logFile, 'utf8'))
            .trim()
            .split('\n')
            .find((l) => l.startsWith('moe:')) ?? 'failed';
        log(`ours --bits ${b} --method ${method}: ${why}`);
        continue;
      }
      seconds = (performance.now() - t0) / 1000;
    }
    if (method === methods[0]) oursDirs.set(b, dir);
    await score('ours', `moe --bits ${b}${method === 'gptq' ? '' : ` --method ${method}`}`, file, seconds);
  }

// llama.cpp's own quants, with its importance matrix on the same calibration text
if (llamaBin) {
  const imatrix = join(work, 'llama-imatrix.gguf');
  if (fresh || !existsSync(imatrix)) {
    const chunks = Math.floor(calibTokens / seqLen);
    log(`llama-imatrix: ${chunks} chunks of ${seqLen}`);
    await sh(
      join(llamaBin, 'llama-imatrix'),
      ['-m', f16, '-f', calib, '-o', imatrix, '-c', String(seqLen), '--chunks', String(chunks), '-t', threads, '--no-ppl'],
      join(work, 'llama-imatrix.log'),
    );
  }
  const quant = async (label: string, kind: Row['kind'], out: string, args: string[]) => {
    const t0 = performance.now();
    if (fresh || !existsSync(out))
      await sh(join(llamaBin, 'llama-quantize'), [...args, f16, out, ...(kind === 'llama' ? [label] : ['Q4_K_M']), threads], `${out}.log`);
    await score(kind, kind === 'llama' ? `llama.cpp ${label} (imatrix)` : label, out, (performance.now() - t0) / 1000);
  };
  for (const t of types) {
    try {
      await quant(t, 'llama', join(work, `llama-${t}.gguf`), ['--imatrix', imatrix]);
    } catch (e) {
      log(`llama-quantize ${t}: ${(e as Error).message}`);
    }
  }
  for (const [b, dir] of oursDirs) {
    try {
      await quant(`our types + our imatrix, llama-quantize (--bits ${b})`, 'llama+ours', join(work, `llama-ours-${b}.gguf`), [
        '--imatrix',
        join(dir, 'imatrix.gguf'),
        '--tensor-type-file',
        join(dir, 'tensor-types.txt'),
      ]);
    } catch (e) {
      log(`llama-quantize with our types (--bits ${b}): ${(e as Error).message}`);
    }
  }
}

// ---- tables ----------------------------------------------------------------------------------------------------
const base = rows.find((r) => r.kind === 'f16')!;
const mib = (b: number) => (b / 2 ** 20).toFixed(3);
const table = ['| file | MiB | expert bpw | all bpw | ppl | ppl / F16 |', '|---|---:|---:|---:|---:|---:|'];
for (const r of [...rows].sort((a, b) => a.expertBpw - b.expertBpw || a.fileBytes - b.fileBytes))
  table.push(
    `| ${r.label} | ${mib(r.fileBytes)} | ${r.expertBpw.toFixed(3)} | ${r.totalBpw.toFixed(3)} | ${r.ppl.toFixed(3)} | ${(r.ppl / base.ppl).toFixed(4)} |`,
  );

/** The lower envelope of a set of (x, ppl) points (Pareto front), linearly interpolated; undefined outside it. */
function frontAt(points: { x: number; ppl: number }[], x: number): number | undefined {
  const s = [...points].sort((a, b) => a.x - b.x);
  const front: { x: number; ppl: number }[] = [];
  for (const p of s) {
    const last = front[front.length - 1];
    if (last && p.x === last.x) {
      if (p.ppl < last.ppl) front[front.length - 1] = p;
    } else if (!last || p.ppl < last.ppl) front.push(p);
  }
  for (let i = 0; i + 1 < front.length; i++) {
    const a = front[i]!;
    const b = front[i + 1]!;
    if (x >= a.x && x <= b.x) return a.ppl + ((b.ppl - a.ppl) * (x - a.x)) / (b.x - a.x);
  }
  // beyond the last front point, the best at or below x still bounds llama.cpp's achievable ppl
  const at = front.filter((p) => p.x <= x);
  return at.length ? at[at.length - 1]!.ppl : undefined;
}
const theirs = rows.filter((r) => r.kind === 'llama');
const cmp = ['| moe --bits | expert bpw | ppl | llama.cpp at that expert bpw | MiB | llama.cpp at that file size |', '|---|---:|---:|---:|---:|---:|'];
for (const r of rows.filter((x) => x.kind === 'ours')) {
  const byBpw = frontAt(
    theirs.map((t) => ({ x: t.expertBpw, ppl: t.ppl })),
    r.expertBpw,
  );
  const bySize = frontAt(
    theirs.map((t) => ({ x: t.fileBytes, ppl: t.ppl })),
    r.fileBytes,
  );
  const f = (v: number | undefined) => (v === undefined ? 'none at or below' : `${v.toFixed(3)} (${r.ppl < v ? 'ours lower' : 'ours higher'})`);
  cmp.push(`| ${r.label.replace('moe --bits ', '')} | ${r.expertBpw.toFixed(3)} | ${r.ppl.toFixed(3)} | ${f(byBpw)} | ${mib(r.fileBytes)} | ${f(bySize)} |`);
}
console.log(`## ${basename(model)}: ${windows.length} held-out windows of ${seqLen} (llama.cpp, token ids)\n`);
console.log(table.join('\n'));
if (theirs.length && cmp.length > 2) console.log(`\n${cmp.join('\n')}`);
if (jsonOut) await writeFile(jsonOut, JSON.stringify({ model, seqLen, windows: windows.length, calibTokens, rows }, null, 2) + '\n');
if (process.argv.includes('--clean')) await rm(work, { recursive: true, force: true });
