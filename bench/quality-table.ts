/**
 * Quality at equal size (issue 19): on each fixture, at 3/4 and 1/2 of its experts (6/8 and 4/8, 12/16 and 8/16),
 * held-out perplexity of `moe merge` (its defaults, plus any --variants), REAP pruning, frequency pruning and random
 * pruning (5 seeds: mean, min, max), all through the library entry points the CLI uses, with the same calibration
 * text and token count. Prints markdown tables: the perplexities, the score that picks merge's default (mean of
 * ppl / original ppl over every fixture and count), the default merge's whole-model choice (each candidate's NLL on
 * the calibration windows, the one written) and per layer what it wrote.
 *
 *   npx tsx bench/quality-table.ts [--models test/fixtures/tiny-mixtral,test/fixtures/tiny-mixtral-uneven]
 *       [--calib FILE] [--heldout FILE] [--calib-tokens 8192] [--eval-tokens 8192] [--seeds 5]
 *       [--variants grouping:align:router:drop[:choose],...] [--only merge] [--json FILE]
 *
 * A variant is `grouping:align:router:drop[:choose]` (empty parts: the default), e.g. `saliency:weights:mean:auto`;
 * `choose` is --choose-groupings joined by +, e.g. `::::msmoe` (the previous default) or `::::msmoe+hierarchical+saliency`.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { evaluate } from '../src/eval/perplexity.js';
import { candidateName } from '../src/merge/choose.js';
import type { DropMode } from '../src/merge/decide.js';
import { merge, type MergeReport } from '../src/merge/pipeline.js';
import type { AlignMethod, GroupingMethod, RouterMethod } from '../src/merge/types.js';
import { prune } from '../src/prune/pipeline.js';
import { initBackend } from '../src/runtime/backend.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : dflt;
}
const list = (s: string) => s.split(',').filter(Boolean);

const models = list(arg('models', 'test/fixtures/tiny-mixtral,test/fixtures/tiny-mixtral-uneven'));
const calib = arg('calib', 'test/fixtures/text/calib.txt');
const heldout = arg('heldout', 'test/fixtures/text/heldout.txt');
const calibTokens = Number(arg('calib-tokens', '8192'));
const evalTokens = Number(arg('eval-tokens', '8192'));
const seeds = Number(arg('seeds', '5'));
const only = arg('only', '');
const variants = list(arg('variants', ''));
const jsonOut = arg('json', '');

interface Cell {
  model: string;
  experts: number;
  count: number;
  what: string;
  ppl: number;
  /** random pruning: every seed */
  seeds?: number[];
  seconds: number;
  decisions?: MergeReport['layers'];
  /** --drop auto: the whole-model candidates' NLL on the calibration windows and the one written */
  choice?: MergeReport['choice'];
}

const log = (...a: unknown[]) => console.error(new Date().toISOString().slice(11, 19), ...a);
const ppl = async (dir: string) => (await evaluate({ model: dir, data: heldout, maxTokens: evalTokens })).perplexity;

async function main(): Promise<void> {
  const backend = await initBackend();
  const tmp = await mkdtemp(join(tmpdir(), 'moe-quality-'));
  const cells: Cell[] = [];
  const base = new Map<string, number>();
  const expertsOf = new Map<string, number>();
  let runs = 0;
  try {
    for (const model of models) {
      const cfg = JSON.parse(await readFile(join(model, 'config.json'), 'utf8'));
      const E = cfg.num_local_experts as number;
      expertsOf.set(model, E);
      base.set(model, await ppl(model));
      log(`${model}: backend ${backend}, ${E} experts, original ppl ${base.get(model)!.toFixed(3)}`);
      for (const n of [(3 * E) / 4, E / 2]) {
        const run = async (what: string, f: (out: string) => Promise<MergeReport | unknown>) => {
          // every run its own directory: the runtime's workers keep a model open per directory for the process's
          // life, so a checkpoint rewritten at a path already scored would be read from the first one's files
          const out = join(tmp, `out-${runs++}`);
          const t0 = Date.now();
          const rep = await f(out);
          const seconds = (Date.now() - t0) / 1000;
          const p = await ppl(out);
          await rm(out, { recursive: true, force: true });
          const cell: Cell = { model, experts: E, count: n, what, ppl: p, seconds };
          if (rep && typeof rep === 'object' && (rep as MergeReport).tool === 'moe merge') {
            cell.decisions = (rep as MergeReport).layers;
            const ch = (rep as MergeReport).choice;
            if (ch) cell.choice = ch;
          }
          cells.push(cell);
          log(`${basename(model)} ${n}/${E}: ${what} ${p.toFixed(3)} (${seconds.toFixed(0)} s)`);
          return cell;
        };
        await run('merge default', (out) => merge({ model, out, groups: n, calib, calibTokens }));
        for (const v of variants) {
          const [grouping, align, router, drop, choose] = v.split(':');
          await run(`merge ${v}`, (out) =>
            merge({
              model,
              out,
              groups: n,
              calib,
              calibTokens,
              ...(grouping ? { grouping: grouping as GroupingMethod } : {}),
              ...(align ? { align: align as AlignMethod } : {}),
              ...(router ? { router: router as RouterMethod } : {}),
              ...(drop ? { drop: drop as DropMode } : {}),
              ...(choose ? { chooseGroupings: choose.split('+') as GroupingMethod[] } : {}),
            }),
          );
        }
        if (only === 'merge') continue;
        await run('prune reap', (out) => prune({ model, out, keep: n, method: 'reap', calib, calibTokens }));
        await run('prune frequency', (out) => prune({ model, out, keep: n, method: 'frequency', calib, calibTokens }));
        const rs: number[] = [];
        let secs = 0;
        for (let s = 1; s <= seeds; s++) {
          const c = await run(`random seed ${s}`, (out) => prune({ model, out, keep: n, method: 'random', seed: s }));
          cells.pop();
          rs.push(c.ppl);
          secs += c.seconds;
        }
        if (rs.length)
          cells.push({ model, experts: E, count: n, what: 'prune random', ppl: rs.reduce((a, b) => a + b, 0) / rs.length, seeds: rs, seconds: secs });
      }
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  if (jsonOut) await writeFile(jsonOut, JSON.stringify({ calib, heldout, calibTokens, evalTokens, base: Object.fromEntries(base), cells }, null, 2) + '\n');

  // ---- tables ------------------------------------------------------------------------------------------------
  const whats = [...new Set(cells.map((c) => c.what))];
  const cols = models.flatMap((m) => [(3 * expertsOf.get(m)!) / 4, expertsOf.get(m)! / 2].map((n) => ({ m, n })));
  console.log(`| method | ${cols.map((c) => `${basename(c.m)} ${c.n}/${expertsOf.get(c.m)}`).join(' | ')} | mean ppl / original |`);
  console.log(`|---|${cols.map(() => '---:').join('|')}|---:|`);
  console.log(`| original | ${cols.map((c) => base.get(c.m)!.toFixed(2)).join(' | ')} | 1.000 |`);
  for (const w of whats) {
    const row = cols.map((c) => cells.find((x) => x.model === c.m && x.count === c.n && x.what === w));
    const fmt = (x?: Cell) =>
      !x ? '—' : x.seeds ? `${x.ppl.toFixed(2)} (${Math.min(...x.seeds).toFixed(1)}–${Math.max(...x.seeds).toFixed(1)})` : x.ppl.toFixed(2);
    const ratios = row.map((x, i) => (x ? x.ppl / base.get(cols[i]!.m)! : NaN));
    const score = ratios.every(Number.isFinite) ? (ratios.reduce((a, b) => a + b, 0) / ratios.length).toFixed(3) : '—';
    console.log(`| ${w} | ${row.map(fmt).join(' | ')} | ${score} |`);
  }
  const chosen = cells.filter((x) => x.what === 'merge default' && x.choice);
  if (chosen.length) {
    console.log('\nWhole-model choice of the merge default (mean NLL on the calibration windows; lowest written):\n');
    const names = chosen[0]!.choice!.candidates.map(candidateName);
    console.log(`| model | count | ${names.join(' | ')} | written |`);
    console.log(`|---|---:|${names.map(() => '---:').join('|')}|---|`);
    for (const c of chosen) {
      const ch = c.choice!;
      const cols = ch.candidates.map((x, i) => (i === ch.chosen ? `**${x.nll.toFixed(4)}**` : x.nll.toFixed(4)));
      console.log(`| ${basename(c.model)} | ${c.count}/${c.experts} | ${cols.join(' | ')} | ${candidateName(ch.candidates[ch.chosen]!)} |`);
    }
  }
  for (const c of cells.filter((x) => x.what === 'merge default' && x.decisions)) {
    console.log(
      `\n${basename(c.model)}, merge default to ${c.count}/${c.experts} (${c.choice ? candidateName(c.choice.candidates[c.choice.chosen]!) : 'merge'} written), per layer:\n`,
    );
    console.log('| layer | choice | dropped experts | merged groups | error (chosen) | merge | merge-drop | REAP | frequency |');
    console.log('|---:|---|---|---|---:|---:|---:|---:|---:|');
    for (const l of c.decisions!) {
      const d = l.decision;
      // the written layer's weight-0 members (the decision's list where there is one)
      const dropped = d?.dropped ?? l.groups.flatMap((g) => g.members.filter((_, k) => g.weights[k] === 0)).sort((a, b) => a - b);
      const merged = l.groups
        .filter((g) => g.weights.filter((w) => w > 0).length > 1)
        .map((g) => `{${g.members.filter((_, k) => g.weights[k]! > 0).join(' ')}}`);
      const f = (v?: number) => (v === undefined ? '—' : v.toFixed(4));
      console.log(
        `| ${l.layer} | ${d?.choice ?? (c.choice ? candidateName(c.choice.candidates[c.choice.chosen]!) : '—')} | ${dropped.join(' ') || '—'} | ${merged.join(' ') || '—'} | ${f(d?.error)} | ${f(d?.errors.merge)} | ${f(d?.errors.mergeDrop)} | ${f(d?.errors.reap)} | ${f(d?.errors.frequency)} |`,
      );
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
