/**
 * New-family conformance against transformers 5.18 (issue 15), part of `npm run test:families-py` (run.ts):
 * for each family, transformers builds a tiny checkpoint (families.py make); moe's perplexity on fixed windows must
 * equal transformers' within 2e-3 (relative) on it and on every output moe writes for it (prune, merge, decompose
 * --materialize, quantize -> dequantize), and every output must load in transformers without missing weights.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Checkpoint } from '../../src/io/checkpoint.js';

/**
 * FAMILY@fused: the same tiny model saved in transformers 5's fused expert layout (families.py make); `llama4` is the
 * multimodal container (Llama4ForConditionalGeneration) around llama4_text, built as transformers saves it
 */
export const NEW_FAMILIES = [
  'glm4_moe_lite',
  'dots1',
  'hunyuan_v1_moe',
  'mistral4',
  'deepseek_v32',
  'glm_moe_dsa',
  'qwen3_next',
  'qwen3_next@fused',
  'qwen3_5_moe_text',
  'qwen3_5_moe_text@fused',
  'llama4_text',
  'llama4',
  'qwen3_5_moe',
  'qwen3_5_moe@fused',
] as const;

/**
 * Families whose router weight scales the expert input (llama4): passes that recompute experts on the block input
 * are refused for them, so merge plans from saved statistics (`moe calibrate`, then `merge --stats`); decompose
 * whitens by the Grams of the scaled inputs; quantize is refused (no GPTQ layout for the fused experts).
 */
const INPUT_WEIGHTED = new Set(['llama4_text', 'llama4']);
/** containers: every tensor outside the language model must come out byte for byte */
const CONTAINER_TEXT_PREFIX: Record<string, string> = { llama4: 'language_model.', qwen3_5_moe: 'model.language_model.' };
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
  /** a yes/no check (bytes kept, a refusal) rather than a perplexity: rel 0 when it holds */
  check?: true;
}

/** Every command's output of one family, with moe's and transformers' perplexity on the same windows. */
export async function checkFamily(python: string, family: string, root: string): Promise<FamilyRow[]> {
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
  if (INPUT_WEIGHTED.has(family)) {
    moe(['calibrate', '--model', dir, '--out', out('stats'), '--data-ids', ids, '--seq-len', String(SEQ), '--quiet', '--force']);
    moe(['merge', '--model', dir, '--out', out('merge'), '--groups', '4', '--stats', out('stats'), '--quiet', '--force']);
    outs.push(['merge 8->4 (--stats)', out('merge')]);
    // decompose whitens by the Grams of the rows w * x each expert reads (src/decompose/grams.ts)
    moe(['decompose', '--model', dir, '--out', out('decompose'), '--ratio', '0.5', '--materialize', ...calib]);
    outs.push(['decompose 0.5 --materialize', out('decompose')]);
  } else {
    moe(['merge', '--model', dir, '--out', out('merge'), '--groups', '4', ...calib]);
    outs.push(['merge 8->4', out('merge')]);
    moe(['decompose', '--model', dir, '--out', out('decompose'), '--ratio', '0.5', '--materialize', ...calib]);
    outs.push(['decompose 0.5 --materialize', out('decompose')]);
  }
  const quantize = [
    'quantize',
    '--model',
    dir,
    '--out',
    out('gptq'),
    '--bits',
    '11',
    '--candidates',
    '8',
    '--method',
    'rtn',
    '--group-size',
    '32',
    '--quiet',
    '--force',
  ];
  const rows: FamilyRow[] = [];
  if (INPUT_WEIGHTED.has(family)) {
    // GPTQ has no module layout for llama4's fused experts (transformers, GPTQModel and vLLM read none): refused
    // in one line with exit 3 and nothing written
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', ...quantize], { encoding: 'utf8' });
    const refused =
      r.status === 3 && /^moe: cannot quantize: .*fused in 3-D tensors/.test(r.stderr) && r.stderr.trim().split('\n').length === 1 && !existsSync(out('gptq'));
    rows.push({
      family,
      command: 'quantize: refused (exit 3, one line, no output)',
      moe: refused ? 1 : Number.NaN,
      transformers: 1,
      rel: refused ? 0 : Infinity,
      check: true,
    });
  } else {
    moe(quantize);
    moe(['dequantize', '--model', out('gptq'), '--out', out('dequant'), '--quiet', '--force']);
    outs.push(['quantize rtn 8 -> dequantize', out('dequant')]);
  }
  const spec = join(root, `${family}-spec.json`);
  writeFileSync(spec, JSON.stringify(outs.map(([, d]) => ({ dir: d, windows }))));
  const ref = JSON.parse(py(python, ['ppl', spec])) as Record<string, { ppl: number }>;
  const textPrefix = CONTAINER_TEXT_PREFIX[family.split('@')[0]!];
  if (textPrefix) {
    // the vision tower and projector of every output: the input's bytes (rel 0 when all equal, else Infinity)
    const input = await Checkpoint.open(dir);
    try {
      const others = input.tensorNames.filter((n) => !n.startsWith(textPrefix));
      for (const [command, d] of outs.slice(1)) {
        const o = await Checkpoint.open(d);
        let same = others.length > 0;
        try {
          for (const n of others) if (!o.has(n) || Buffer.compare(Buffer.from(await o.readBytes(n)), Buffer.from(await input.readBytes(n))) !== 0) same = false;
        } finally {
          await o.close();
        }
        rows.push({
          family,
          command: `${command}: ${others.length} non-language tensors byte-identical`,
          moe: same ? 1 : Number.NaN,
          transformers: 1,
          rel: same ? 0 : Infinity,
          check: true,
        });
      }
    } finally {
      await input.close();
    }
  }
  return [
    ...outs.map(([command, d]) => {
      const m = JSON.parse(moe(['eval', '--model', d, '--data-ids', ids, '--seq-len', String(SEQ), '--json'])).perplexity as number;
      const t = ref[d]!.ppl;
      return { family, command, moe: m, transformers: t, rel: Math.abs(m - t) / t };
    }),
    ...rows,
  ];
}
