/**
 * The merge quality table of docs/merge.md: held-out perplexity of every grouping x alignment x router choice at
 * each expert count, against `moe prune --method reap` at the same count and the unmerged model, all through the
 * library entry points the CLI uses. Prints a markdown table (and JSON with --json).
 *
 *   npx tsx bench/merge-table.ts [--model DIR] [--calib FILE] [--heldout FILE] [--counts 6,4]
 *                                [--calib-tokens N] [--eval-tokens N] [--grouping a,b] [--align a,b] [--router a,b]
 *                                [--grid full|reduced] [--json]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { evaluate } from '../src/eval/perplexity.js';
import { merge } from '../src/merge/pipeline.js';
import { ALIGN_METHODS, GROUPING_METHODS, ROUTER_METHODS } from '../src/merge/types.js';
import { prune } from '../src/prune/pipeline.js';
import { initBackend } from '../src/runtime/backend.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : dflt;
}
const list = (name: string, dflt: readonly string[]) => arg(name, dflt.join(',')).split(',').filter(Boolean);

const model = arg('model', 'test/fixtures/tiny-mixtral');
const calib = arg('calib', 'test/fixtures/text/calib.txt');
const heldout = arg('heldout', 'test/fixtures/text/heldout.txt');
const counts = list('counts', ['6', '4']).map(Number);
const calibTokens = Number(arg('calib-tokens', '0')) || undefined;
const evalTokens = Number(arg('eval-tokens', '0')) || undefined;
const groupings = list('grouping', GROUPING_METHODS);
const aligns = list('align', ALIGN_METHODS);
const routers = list('router', ROUTER_METHODS);
/** full: every grouping x align x router; reduced: every grouping x align with router mean, plus routers anchor and
 *  fit for every grouping with align weights (the first measures alignment, the second the router, each against
 *  its absence, at a third of the cost) */
const grid = arg('grid', 'full');
const inGrid = (align: string, router: string) => grid === 'full' || router === 'mean' || align === 'weights';

interface Row {
  count: number;
  what: string;
  grouping?: string;
  align?: string;
  router?: string;
  ppl: number;
  seconds: number;
}

async function ppl(dir: string): Promise<number> {
  return (await evaluate({ model: dir, data: heldout, maxTokens: evalTokens })).perplexity;
}

async function main(): Promise<void> {
  const backend = await initBackend();
  const tmp = await mkdtemp(join(tmpdir(), 'moe-merge-table-'));
  const rows: Row[] = [];
  try {
    const base = await ppl(model);
    console.error(`backend ${backend}; unmerged held-out perplexity ${base.toFixed(3)}`);
    for (const n of counts) {
      let t0 = Date.now();
      const pruned = join(tmp, `prune-${n}`);
      await prune({ model, out: pruned, keep: n, method: 'reap', calib, calibTokens });
      const prunedSeconds = (Date.now() - t0) / 1000;
      rows.push({ count: n, what: 'prune reap', ppl: await ppl(pruned), seconds: prunedSeconds });
      console.error(`${n}: prune reap ${rows.at(-1)!.ppl.toFixed(3)}`);
      await rm(pruned, { recursive: true, force: true });
      for (const grouping of groupings) {
        for (const align of aligns) {
          for (const router of routers) {
            if (!inGrid(align, router)) continue;
            const out = join(tmp, `merge-${n}-${grouping}-${align}-${router}`);
            t0 = Date.now();
            // every group merged: the table of docs/merge.md measures the groupings themselves (--drop auto is measured by bench/quality-table.ts)
            await merge({ model, out, groups: n, grouping, align, router, calib, calibTokens, drop: 'never' });
            const seconds = (Date.now() - t0) / 1000;
            rows.push({ count: n, what: 'merge', grouping, align, router, ppl: await ppl(out), seconds });
            console.error(`${n}: merge ${grouping} ${align} ${router} ${rows.at(-1)!.ppl.toFixed(3)} (${seconds.toFixed(1)} s)`);
            await rm(out, { recursive: true, force: true });
          }
        }
      }
    }
    if (process.argv.includes('--json')) {
      console.log(JSON.stringify({ model, calib, heldout, base, rows }, null, 2));
      return;
    }
    console.log(`unmerged (8 experts): ${base.toFixed(2)}\n`);
    for (const n of counts) {
      const reap = rows.find((r) => r.count === n && r.what === 'prune reap')!;
      console.log(`### ${n} experts per layer — prune reap: ${reap.ppl.toFixed(2)}\n`);
      console.log(`| grouping | align | ${routers.map((r) => `router ${r}`).join(' | ')} |`);
      console.log(`|---|---|${routers.map(() => '---:').join('|')}|`);
      for (const g of groupings) {
        for (const a of aligns) {
          const cells = routers.map((r) => rows.find((x) => x.count === n && x.grouping === g && x.align === a && x.router === r)?.ppl.toFixed(2) ?? '—');
          console.log(`| ${g} | ${a} | ${cells.join(' | ')} |`);
        }
      }
      console.log('');
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
