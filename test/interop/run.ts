/**
 * The interop suite: Hugging Face transformers 5.18 is the reference for every family moe supports.
 *
 * For each family and expert layout, reference.py (transformers' own classes) builds a tiny random model with the
 * family's features on and weights scaled so routing and logits are far from uniform, and saves it with
 * save_original_format true (per-expert tensors) or false (transformers 5's fused experts). Then:
 *   forward   `moe eval` perplexity vs transformers' on the same windows
 *   prune, merge, decompose --materialize, quantize -> dequantize
 *             the output loaded by AutoModelForCausalLM.from_pretrained with no missing, unexpected or mismatched
 *             keys and no load warnings, the expert count right, and its transformers perplexity equal to
 *             `moe eval` on that output; decompose also without --materialize: AutoConfig refuses the factor
 *             checkpoint and `moe eval` reads it with the materialized output's perplexity
 * Every cell must agree within 1e-4 relative perplexity. A cell that cannot pass yet is listed in expected.json
 * with the reason; the run fails on any other failure, and on a listed cell that passes (so the list stays true).
 *
 *   tsx test/interop/run.ts PYTHON [--families a,b] [--json FILE] [--docs docs/families.md] [--record] [--from A.json,B.json]
 *
 * --from renders the table (and --record, --docs) from earlier --json runs instead of running anything.
 *
 * --record rewrites expected.json with this run's failures (for a maintainer after a fix or a new family; review
 * the diff: every entry is a claim that the cell cannot pass yet).
 *
 * `npm run test:interop` makes the Python environment from requirements.txt first.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { main } from '../../src/cli/main.js';
import { Checkpoint } from '../../src/io/checkpoint.js';

const FAMILIES = [
  'mixtral',
  'qwen2_moe',
  'qwen3_moe',
  'olmoe',
  'deepseek_v2',
  'deepseek_v3',
  'granitemoe',
  'gpt_oss',
  'phimoe',
  'glm4_moe',
  'minimax_m2',
  'ernie4_5_moe',
];
const LAYOUTS = ['original', 'fused'] as const;
const CHECKS = ['forward', 'prune', 'merge', 'decompose', 'quantize'] as const;
type Check = (typeof CHECKS)[number];
const TOL = 1e-4;
const SEQ = 64;
const EXPERTS = 8;
const KEEP = 4;

const args = process.argv.slice(2);
const python = args[0] && !args[0].startsWith('--') ? args[0] : 'python3';
const opt = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const families = opt('families')?.split(',') ?? FAMILIES;
const expected: Record<string, string> = JSON.parse(readFileSync(join(import.meta.dirname, 'expected.json'), 'utf8'));

// ---- the Python reference, one process for the whole run ------------------------------------------------------

let py: ReturnType<typeof spawn> | undefined;
let pyErr = '';
const pending: ((s: string) => void)[] = [];
function python3(): ReturnType<typeof spawn> {
  if (py) return py;
  const p = spawn(python, [join(import.meta.dirname, 'reference.py'), 'serve'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PYTHONWARNINGS: 'ignore' },
  });
  p.stderr!.on('data', (d: Buffer) => {
    pyErr = (pyErr + d.toString()).slice(-4000);
  });
  createInterface({ input: p.stdout! }).on('line', (l) => pending.shift()?.(l));
  p.on('exit', (code) => {
    for (const q of pending.splice(0)) q(JSON.stringify({ ok: false, error: `reference.py exited (${code}): ${pyErr.slice(-800)}` }));
  });
  py = p;
  return p;
}

interface Answer {
  ok: boolean;
  error?: string;
  [k: string]: unknown;
}
function ask(req: Record<string, unknown>): Promise<Answer> {
  return new Promise((res) => {
    const p = python3();
    pending.push((l) => res(JSON.parse(l) as Answer));
    p.stdin!.write(JSON.stringify(req) + '\n');
  });
}

// ---- moe, in process -------------------------------------------------------------------------------------------

async function moe(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((s: string | Uint8Array) => {
    stdout += String(s);
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((s: string | Uint8Array) => {
    stderr += String(s);
    return true;
  }) as typeof process.stderr.write;
  try {
    const code = await main(['node', 'moe', ...argv, '--quiet']);
    return { code, stdout, stderr };
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
  }
}

async function moeEval(model: string, data: string): Promise<number> {
  const r = await moe(['eval', '--model', model, '--data', data, '--seq-len', String(SEQ), '--json']);
  if (r.code !== 0) throw new Error(lastLine(r.stderr) || `moe eval exited ${r.code}`);
  const j = JSON.parse(r.stdout) as { perplexity?: number; ppl?: number; model?: { perplexity?: number } };
  const p = j.perplexity ?? j.ppl ?? j.model?.perplexity;
  if (typeof p !== 'number') throw new Error(`moe eval --json: no perplexity in ${r.stdout.slice(0, 200)}`);
  return p;
}

function lastLine(s: string): string {
  return (
    s
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('moe:'))
      .pop() ??
    s.trim().split('\n').pop() ??
    ''
  );
}

// ---- the checks ------------------------------------------------------------------------------------------------

interface Cell {
  family: string;
  layout: string;
  check: Check;
  ok: boolean;
  /** |ppl_a / ppl_b - 1| */
  rel?: number;
  ref?: number;
  moe?: number;
  why?: string;
  expectedFailure?: string;
}

const cells: Cell[] = [];
const root = mkdtempSync(join(tmpdir(), 'moe-interop-'));
const data = join(root, 'data.txt');

function loadProblems(a: Answer, experts?: number): string[] {
  const p: string[] = [];
  const list = (k: string) => (a[k] as string[] | undefined) ?? [];
  // the only unexpected keys allowed are an MTP layer's (num_hidden_layers and beyond)
  const unexpected = list('unexpected').filter((k) => !/\.layers\.(\d+)\./.test(k) || Number(/\.layers\.(\d+)\./.exec(k)![1]) < 3);
  if (list('missing').length) p.push(`missing keys ${list('missing').slice(0, 3).join(', ')}`);
  if (unexpected.length) p.push(`unexpected keys ${unexpected.slice(0, 3).join(', ')}`);
  if (list('mismatched').length) p.push(`mismatched keys ${list('mismatched').slice(0, 2).join(', ')}`);
  if (list('errors').length) p.push(`load errors ${list('errors').slice(0, 1).join('')}`);
  if (list('warnings').length) p.push(`warnings: ${list('warnings').slice(0, 2).join(' | ')}`);
  if (experts !== undefined) {
    const c = a.counts as Record<string, number | null>;
    const n = c.num_local_experts ?? c.num_experts ?? c.n_routed_experts ?? c.moe_num_experts;
    if (n !== experts) p.push(`config says ${n} experts, expected ${experts}`);
  }
  return p;
}

/** 'fused' when the checkpoint stores experts as transformers 5's fused 3-D tensors, else 'original'. */
async function layoutOf(dir: string): Promise<string> {
  const c = await Checkpoint.open(dir);
  try {
    return c.tensorNames.some((n) => /experts\.(gate_up_proj|down_proj)(_blocks)?$/.test(n)) ? 'fused' : 'original';
  } finally {
    await c.close();
  }
}

async function checkOutput(family: string, layout: string, check: Check, out: string, experts: number, inputLayout: string): Promise<void> {
  const cell: Cell = { family, layout, check, ok: false };
  cells.push(cell);
  const outLayout = await layoutOf(out);
  const a = await ask({ op: 'ppl', model: out, data, seq_len: SEQ });
  if (!a.ok) {
    cell.why = `transformers refuses it: ${a.error}`;
    return;
  }
  const problems = loadProblems(a, experts);
  // outputs are written in the input's expert layout
  if (outLayout !== inputLayout) problems.push(`written in the ${outLayout} layout, the input is ${inputLayout}`);
  cell.ref = a.ppl as number;
  try {
    cell.moe = await moeEval(out, data);
  } catch (e) {
    problems.push(`moe eval: ${(e as Error).message}`);
  }
  if (cell.moe !== undefined) {
    cell.rel = Math.abs(cell.moe / cell.ref - 1);
    if (!(cell.rel <= TOL)) problems.push(`ppl ${cell.moe} (moe) vs ${cell.ref} (transformers)`);
  }
  cell.ok = problems.length === 0;
  if (!cell.ok) cell.why = problems.join('; ');
}

/**
 * Group-limited routing (n_group > 1) after an edit of the expert count: the output keeps the input's n_group and
 * topk_group, and its expert count divides into n_group equal groups (merge works within groups, prune keeps the
 * same count per group), so the routing rule stays the one the input was trained with. A failure is added to the cell.
 */
function checkRoutingGroups(cell: Cell, model: string, out: string): void {
  const cfg = (d: string) => JSON.parse(readFileSync(join(d, 'config.json'), 'utf8')) as Record<string, unknown>;
  const a = cfg(model);
  const b = cfg(out);
  const nGroup = a['n_group'];
  if (typeof nGroup !== 'number' || nGroup <= 1) return;
  const problems: string[] = [];
  for (const key of ['n_group', 'topk_group']) if (b[key] !== a[key]) problems.push(`${key} ${String(b[key])}, the input has ${String(a[key])}`);
  const experts = b['n_routed_experts'];
  if (typeof experts !== 'number' || experts % nGroup !== 0) problems.push(`${String(experts)} routed experts do not split into ${nGroup} equal groups`);
  if (!problems.length) return;
  cell.ok = false;
  cell.why = [cell.why, ...problems].filter(Boolean).join('; ');
}

/**
 * The same decomposition without --materialize (factor tensors): transformers' AutoConfig must refuse it (its own
 * model_type, src/model/lowrank.ts) rather than load it with the experts missing, and `moe eval` must read it with
 * the materialized output's perplexity. A failure is added to the decompose cell.
 */
async function checkLowRank(cell: Cell, model: string, out: string): Promise<void> {
  const problems: string[] = [];
  const r = await moe(['decompose', '--model', model, '--out', out, '--ratio', '0.6', '--mode', 'svd']);
  if (r.code !== 0) problems.push(`moe decompose (factors): ${lastLine(r.stderr)}`);
  else {
    const a = await ask({ op: 'config', model: out });
    if (!a.ok) problems.push(`reference config: ${a.error}`);
    else if (a.accepted) problems.push(`transformers' AutoConfig accepts the low-rank output (model_type ${String(a.model_type)})`);
    try {
      const p = await moeEval(out, data);
      if (cell.moe !== undefined && !(Math.abs(p / cell.moe - 1) <= TOL)) problems.push(`low-rank ppl ${p} (moe) vs ${cell.moe} materialized`);
    } catch (e) {
      problems.push(`moe eval of the low-rank output: ${(e as Error).message}`);
    }
  }
  if (!problems.length) return;
  cell.ok = false;
  cell.why = [cell.why, ...problems].filter(Boolean).join('; ');
}

async function runPipeline(check: Exclude<Check, 'forward'>, model: string, out: string): Promise<string | undefined> {
  // data-free methods where there is one (the check is the output's format, not the method's quality); merge
  // needs calibration for its frequencies, --drop never so that it really merges every group
  const steps: string[][] =
    check === 'prune'
      ? [['prune', '--model', model, '--out', out, '--keep', String(KEEP), '--method', 'random', '--seed', '1']]
      : check === 'merge'
        ? [
            [
              'merge',
              '--model',
              model,
              '--out',
              out,
              '--groups',
              String(KEEP),
              '--drop',
              'never',
              '--calib',
              data,
              '--calib-tokens',
              '256',
              '--seq-len',
              String(SEQ),
            ],
          ]
        : check === 'decompose'
          ? [['decompose', '--model', model, '--out', out, '--ratio', '0.6', '--mode', 'svd', '--materialize']]
          : [
              // 6.5 true bits per weight = every routed expert at 4 bits on these tiny matrices (scales and zeros included)
              ['quantize', '--model', model, '--out', `${out}-gptq`, '--bits', '6.5', '--candidates', '4', '--method', 'rtn'],
              ['dequantize', '--model', `${out}-gptq`, '--out', out],
            ];
  for (const s of steps) {
    const r = await moe(s);
    if (r.code !== 0) return `moe ${s[0]}: ${lastLine(r.stderr)}`;
  }
  return undefined;
}

async function family(f: string): Promise<void> {
  for (const layout of LAYOUTS) {
    const dir = join(root, `${f}-${layout}`);
    const b = await ask({ op: 'build', family: f, out: dir, fused: layout === 'fused', data, seq_len: SEQ });
    if (!b.ok) {
      for (const check of CHECKS) cells.push({ family: f, layout, check, ok: false, why: `reference build failed: ${b.error}` });
      continue;
    }
    // "far from uniform": each expert's selection varies between tokens for at least half of the experts, and no
    // expert takes over 60% of a layer's slots
    const stats = b.stats as { maxShare: number; varies: number }[];
    const skewed = stats.filter((s) => s.maxShare > 0.6 || s.varies < EXPERTS / 2);
    if (skewed.length) throw new Error(`${f}: the reference model's routing is degenerate: ${JSON.stringify(stats)}`);

    // natively fused families save fused either way
    const inLayout = await layoutOf(dir);
    const fwd: Cell = { family: f, layout, check: 'forward', ok: false };
    cells.push(fwd);
    const a = await ask({ op: 'ppl', model: dir, data, seq_len: SEQ });
    if (!a.ok) fwd.why = `transformers cannot load its own save: ${a.error}`;
    else {
      fwd.ref = a.ppl as number;
      try {
        fwd.moe = await moeEval(dir, data);
        fwd.rel = Math.abs(fwd.moe / fwd.ref - 1);
        fwd.ok = fwd.rel <= TOL;
        if (!fwd.ok) fwd.why = `ppl ${fwd.moe} (moe) vs ${fwd.ref} (transformers)`;
      } catch (e) {
        fwd.why = `moe eval: ${(e as Error).message}`;
      }
    }
    for (const check of CHECKS.slice(1) as Exclude<Check, 'forward'>[]) {
      const out = join(root, `${f}-${layout}-${check}`);
      const err = fwd.moe === undefined ? `moe cannot read the input (${fwd.why})` : await runPipeline(check, dir, out);
      if (err) {
        cells.push({ family: f, layout, check, ok: false, why: err });
        continue;
      }
      await checkOutput(f, layout, check, out, check === 'prune' || check === 'merge' ? KEEP : EXPERTS, inLayout);
      if (check === 'decompose') await checkLowRank(cells[cells.length - 1]!, dir, `${out}-lowrank`);
      if (check === 'prune' || check === 'merge') checkRoutingGroups(cells[cells.length - 1]!, dir, out);
    }
    process.stderr.write(
      `${f} ${layout}: ${cells
        .filter((c) => c.family === f && c.layout === layout)
        .map((c) => `${c.check} ${c.ok ? 'ok' : 'FAIL'}${c.rel !== undefined ? ` ${c.rel.toExponential(1)}` : ''}`)
        .join(', ')}\n`,
    );
  }
}

function table(): string {
  const rows = [`| family | layout | ${CHECKS.join(' | ')} |`, `|---|---|${CHECKS.map(() => '---').join('|')}|`];
  const notes: string[] = [];
  for (const f of families) {
    for (const layout of LAYOUTS) {
      const row = CHECKS.map((check) => {
        const c = cells.find((x) => x.family === f && x.layout === layout && x.check === check);
        if (!c) return '';
        if (c.ok) return c.rel!.toExponential(1);
        notes.push(`- ${f} ${layout} ${check}: ${c.expectedFailure ?? c.why}`);
        // a cell that fails on something other than perplexity (layout, a refusal) still shows its difference
        return `${c.rel !== undefined && c.rel <= TOL ? `${c.rel.toExponential(1)} ` : ''}fails [${notes.length}]`;
      });
      rows.push(`| ${f} | ${layout} | ${row.join(' | ')} |`);
    }
  }
  return `${rows.join('\n')}\n${notes.length ? `\n${notes.map((n, i) => n.replace('- ', `${i + 1}. `)).join('\n')}\n` : ''}`;
}

let failed = 0;
try {
  const from = opt('from');
  if (from) {
    // render the table / expected.json from saved --json runs (no Python, nothing run)
    // a later file's cells replace an earlier one's for the families it has (a rerun of a few families after a fix)
    const byFamily = new Map<string, Cell[]>();
    for (const f of from.split(',')) {
      const got = (JSON.parse(readFileSync(f, 'utf8')) as Cell[]).filter((c) => families.includes(c.family));
      for (const fam of new Set(got.map((c) => c.family)))
        byFamily.set(
          fam,
          got.filter((c) => c.family === fam),
        );
    }
    for (const fam of families) cells.push(...(byFamily.get(fam) ?? []));
  } else {
    const t = await ask({ op: 'text', out: data, lines: 48, seed: 3 });
    if (!t.ok) throw new Error(`reference.py: ${t.error}`);
    for (const f of families) await family(f);
  }
  for (const c of cells) {
    const key = `${c.family}/${c.layout}/${c.check}`;
    if (expected[key] !== undefined) {
      c.expectedFailure = expected[key];
      if (c.ok) {
        console.log(`UNEXPECTED PASS ${key} (remove it from expected.json)`);
        failed++;
      }
    } else if (!c.ok) {
      console.log(`FAIL ${key}: ${c.why}`);
      failed++;
    }
  }
  if (args.includes('--record')) {
    const rec: Record<string, string> = {};
    for (const c of cells) if (!c.ok) rec[`${c.family}/${c.layout}/${c.check}`] = c.why ?? 'failed';
    // families not run keep their entries
    for (const [k, v] of Object.entries(expected)) if (!families.includes(k.split('/')[0]!)) rec[k] = v;
    writeFileSync(join(import.meta.dirname, 'expected.json'), JSON.stringify(Object.fromEntries(Object.entries(rec).sort()), null, 2) + '\n');
    failed = 0;
  }
  const md = table();
  console.log(md);
  const json = opt('json');
  if (json) writeFileSync(json, JSON.stringify(cells, null, 2) + '\n');
  const docs = opt('docs');
  if (docs) {
    const text = readFileSync(docs, 'utf8');
    const begin = '<!-- conformance table: npm run test:interop -- --docs docs/families.md -->';
    const end = '<!-- end of conformance table -->';
    const a = text.indexOf(begin);
    const b = text.indexOf(end);
    if (a < 0 || b < a) throw new Error(`${docs}: no conformance table markers`);
    writeFileSync(docs, `${text.slice(0, a + begin.length)}\n\n${md}\n${text.slice(b)}`);
  }
  const passed = cells.filter((c) => c.ok).length;
  const known = cells.filter((c) => !c.ok && c.expectedFailure !== undefined).length;
  console.log(`interop: ${passed} of ${cells.length} checks passed, ${known} known failures (expected.json), ${failed} failed`);
} catch (e) {
  console.log(`interop: ${(e as Error).message}`);
  failed++;
} finally {
  py?.stdin?.end();
  rmSync(root, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : 0;
