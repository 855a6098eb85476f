/**
 * New-family conformance against transformers 5.18 (issue 15), part of `npm run test:families-py` (run.ts):
 * for each family, transformers builds a tiny checkpoint (families.py make); moe's perplexity on fixed windows must
 * equal transformers' within 2e-3 (relative) on it and on every output moe writes for it (prune, merge, decompose
 * --materialize, quantize -> dequantize), and every output must load in transformers without missing weights.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const NEW_FAMILIES = ['glm4_moe_lite', 'dots1', 'hunyuan_v1_moe', 'mistral4', 'deepseek_v32', 'glm_moe_dsa'] as const;
export const TOLERANCE = 2e-3;

const SEQ = 63;

function moe(args: string[]): string {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`moe ${args.join(' ')}: exit ${r.status}\n${r.stderr}`);
  return r.stdout;
}

function py(python: string, args: string[]): string {
  const r = spawnSync(python, ['test/interop-families/families.py', ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`families.py ${args.join(' ')}: exit ${r.status}\n${r.stderr}`);
  return r.stdout;
}

export interface FamilyRow {
  family: string;
  command: string;
  moe: number;
  transformers: number;
  rel: number;
}

/** Every command's output of one family, with moe's and transformers' perplexity on the same windows. */
export function checkFamily(python: string, family: string, root: string): FamilyRow[] {
  const dir = join(root, family);
  py(python, ['make', family, dir]);
  // pre-tokenized windows (the tiny models have no tokenizer): BOS = config bos_token_id 0, then 63 ids
  const ids = join(root, `${family}.jsonl`);
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
  const lines = Array.from({ length: 20 }, () => JSON.stringify(Array.from({ length: 40 }, () => 2 + (next() % 126))));
  writeFileSync(ids, lines.join('\n') + '\n');
  const stream = lines.flatMap((l) => JSON.parse(l) as number[]);
  const windows = Array.from({ length: Math.floor(stream.length / SEQ) }, (_, k) => [0, ...stream.slice(k * SEQ, (k + 1) * SEQ)]);
  const calib = ['--calib-ids', ids, '--seq-len', String(SEQ), '--quiet', '--force'];
  const outs: [string, string][] = [['forward', dir]];
  const out = (c: string) => join(root, `${family}-${c}`);
  moe(['prune', '--model', dir, '--out', out('prune'), '--keep', '4', '--method', 'reap', ...calib]);
  outs.push(['prune reap 8->4', out('prune')]);
  moe(['merge', '--model', dir, '--out', out('merge'), '--groups', '4', ...calib]);
  outs.push(['merge 8->4', out('merge')]);
  moe(['decompose', '--model', dir, '--out', out('decompose'), '--ratio', '0.5', '--materialize', ...calib]);
  outs.push(['decompose 0.5 --materialize', out('decompose')]);
  moe(['quantize', '--model', dir, '--out', out('gptq'), '--bits', '11', '--candidates', '8', '--method', 'rtn', '--group-size', '32', '--quiet', '--force']);
  moe(['dequantize', '--model', out('gptq'), '--out', out('dequant'), '--quiet', '--force']);
  outs.push(['quantize rtn 8 -> dequantize', out('dequant')]);
  const spec = join(root, `${family}-spec.json`);
  writeFileSync(spec, JSON.stringify(outs.map(([, d]) => ({ dir: d, windows }))));
  const ref = JSON.parse(py(python, ['ppl', spec])) as Record<string, { ppl: number }>;
  return outs.map(([command, d]) => {
    const m = JSON.parse(moe(['eval', '--model', d, '--data-ids', ids, '--seq-len', String(SEQ), '--json'])).perplexity as number;
    const t = ref[d]!.ppl;
    return { family, command, moe: m, transformers: t, rel: Math.abs(m - t) / t };
  });
}
