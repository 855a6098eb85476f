/**
 * The golden set: a fixed list of commands on the fixtures (every method of every pipeline, plans, shards and
 * assembly), and the SHA-256 of every file each one writes (reports left out: they hold paths and wall times).
 * A refactor must keep these bytes; a change that alters them on purpose regenerates hashes.json in the same
 * commit (`MOE_UPDATE_GOLDEN=1 npx vitest run test/golden`) and says why in its message.
 *
 * Each case is a list of steps run in order in one scratch directory: `$W` in an argument is that directory,
 * `$S` the calibration statistics of the fixture, and a case's output is the directory named by its last step's
 * --out (or, for calibrate, --out too).
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { seededRandom } from '../../kernels/random.js';
import { wordLines, writeWordTokenizer } from '../eval/tokenizer.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint, type Family, type TinyOptions } from '../helpers/families.js';

export const MODEL = 'test/fixtures/tiny-mixtral';
const CALIB = 'test/fixtures/text/calib.txt';
const T = ['--calib', CALIB, '--calib-tokens', '512', '--seq-len', '128'];
/** decompose takes no --seq-len (its windows are the default length) */
const TD = ['--calib', CALIB, '--calib-tokens', '512'];
const STATS = ['--stats', '$W/stats'];

export interface GoldenCase {
  name: string;
  /** tiny random family checkpoint written to $W/model first (data-free commands only, unless `calib`) */
  family?: Family;
  /** fixture options beyond the default (seed 11, 8 experts), e.g. config keys */
  fixture?: TinyOptions;
  /** the family checkpoint also gets a word tokenizer, and $W/calib.txt random-word calibration text */
  calib?: boolean;
  steps: string[][];
}

const M = ['--model', MODEL];
const FM = ['--model', '$W/model'];
const calibrate = ['calibrate', ...M, '--data', CALIB, '--max-tokens', '512', '--seq-len', '128', '--out', '$W/stats'];

export const PIPELINE_CASES: GoldenCase[] = [
  { name: 'calibrate', steps: [calibrate] },
  { name: 'calibrate-grams', steps: [['calibrate', ...M, '--data', CALIB, '--max-tokens', '256', '--seq-len', '128', '--grams', '--out', '$W/out']] },
  { name: 'prune-reap', steps: [['prune', ...M, '--keep', '6', '--method', 'reap', ...T, '--out', '$W/out']] },
  { name: 'prune-frequency', steps: [calibrate, ['prune', ...M, '--keep', '6', '--method', 'frequency', ...STATS, '--out', '$W/out']] },
  { name: 'prune-gate-mass', steps: [calibrate, ['prune', ...M, '--keep', '4', '--method', 'gate-mass', ...STATS, '--out', '$W/out']] },
  { name: 'prune-easy-ep', steps: [['prune', ...M, '--keep', '6', '--method', 'easy-ep', ...T, '--out', '$W/out']] },
  { name: 'prune-reconstruct', steps: [['prune', ...M, '--keep', '6', '--method', 'reconstruct', ...T, '--sample-tokens', '256', '--out', '$W/out']] },
  { name: 'prune-random', steps: [['prune', ...M, '--ratio', '0.5', '--method', 'random', '--seed', '3', '--out', '$W/out']] },
  {
    name: 'prune-plan-shards',
    steps: [
      ['prune', ...M, '--keep', '5', '--method', 'reap', ...T, '--dry-run', '--save-plan', '$W/plan.json'],
      ['prune', ...M, '--keep', '5', '--method', 'reap', '--plan', '$W/plan.json', '--shard', '0/2', '--out', '$W/p0'],
      ['prune', ...M, '--keep', '5', '--method', 'reap', '--plan', '$W/plan.json', '--shard', '1/2', '--out', '$W/p1'],
      ['assemble', '$W/p0', '$W/p1', '--out', '$W/out'],
    ],
  },
  { name: 'merge-default', steps: [['merge', ...M, '--groups', '6', ...T, '--out', '$W/out']] },
  {
    name: 'merge-saliency-activations-fit',
    steps: [
      [
        'merge',
        ...M,
        '--groups',
        '4',
        '--grouping',
        'saliency',
        '--align',
        'activations',
        '--router',
        'fit',
        '--weighting',
        'saliency',
        '--fit-steps',
        '20',
        ...T,
        '--out',
        '$W/out',
      ],
    ],
  },
  { name: 'merge-stats-hierarchical', steps: [calibrate, ['merge', ...M, '--groups', '5', '--grouping', 'hierarchical', ...STATS, '--out', '$W/out']] },
  {
    name: 'merge-stats-shards',
    steps: [
      calibrate,
      ['merge', ...M, '--groups', '4', '--router', 'anchor', '--weighting', 'uniform', ...STATS, '--shard', '0/2', '--out', '$W/p0'],
      ['merge', ...M, '--groups', '4', '--router', 'anchor', '--weighting', 'uniform', ...STATS, '--shard', '1/2', '--out', '$W/p1'],
      ['assemble', '$W/p0', '$W/p1', '--out', '$W/out'],
    ],
  },
  { name: 'quantize-gptq-2.5', steps: [['quantize', ...M, '--bits', '2.5', ...T, '--out', '$W/out']] },
  {
    name: 'quantize-gptq-projection-3',
    steps: [['quantize', ...M, '--bits', '3', '--granularity', 'projection', '--candidates', '2,3,4', ...T, '--out', '$W/out']],
  },
  {
    name: 'quantize-gptq-sym-actorder-g64',
    steps: [['quantize', ...M, '--bits', '3.6', '--candidates', '3', '--sym', '--act-order', '--group-size', '64', ...T, '--out', '$W/out']],
  },
  { name: 'quantize-rtn-4', steps: [['quantize', ...M, '--bits', '4.4', '--candidates', '4', '--method', 'rtn', '--out', '$W/out']] },
  {
    name: 'dequantize',
    steps: [
      ['quantize', ...M, '--bits', '3.4', '--candidates', '3', ...T, '--out', '$W/q'],
      ['dequantize', '--model', '$W/q', '--out', '$W/out'],
    ],
  },
  {
    name: 'quantize-plan-shards',
    steps: [
      ['quantize', ...M, '--bits', '3', '--granularity', 'projection', ...T, '--dry-run', '--save-plan', '$W/plan.json'],
      ['quantize', ...M, '--bits', '3', '--granularity', 'projection', ...T, '--plan', '$W/plan.json', '--shard', '0/2', '--out', '$W/p0'],
      ['quantize', ...M, '--bits', '3', '--granularity', 'projection', ...T, '--plan', '$W/plan.json', '--shard', '1/2', '--out', '$W/p1'],
      ['assemble', '$W/p0', '$W/p1', '--out', '$W/out'],
    ],
  },
  { name: 'decompose-whitened-allocated', steps: [['decompose', ...M, '--ratio', '0.6', ...TD, '--out', '$W/out']] },
  { name: 'decompose-svd', steps: [['decompose', ...M, '--ratio', '0.6', '--mode', 'svd', '--uniform', '--out', '$W/out']] },
  { name: 'decompose-shared-input', steps: [['decompose', ...M, '--ratio', '0.7', '--mode', 'shared-input', '--uniform', ...TD, '--out', '$W/out']] },
  { name: 'decompose-shared-output', steps: [['decompose', ...M, '--ratio', '0.7', '--mode', 'shared-output', '--uniform', ...TD, '--out', '$W/out']] },
  { name: 'decompose-base-delta', steps: [['decompose', ...M, '--ratio', '0.7', '--mode', 'base-delta', '--uniform', ...TD, '--out', '$W/out']] },
  { name: 'decompose-materialize', steps: [['decompose', ...M, '--ratio', '0.6', '--uniform', '--materialize', ...TD, '--out', '$W/out']] },
  {
    name: 'decompose-plan-shards',
    steps: [
      ['decompose', ...M, '--ratio', '0.6', ...TD, '--dry-run', '--save-plan', '$W/plan.json'],
      ['decompose', ...M, '--ratio', '0.6', ...TD, '--plan', '$W/plan.json', '--shard', '0/2', '--out', '$W/p0'],
      ['decompose', ...M, '--ratio', '0.6', ...TD, '--plan', '$W/plan.json', '--shard', '1/2', '--out', '$W/p1'],
      ['assemble', '$W/p0', '$W/p1', '--out', '$W/out'],
    ],
  },
];

/** Data-free commands on tiny random checkpoints of families with their own features (groups, shared experts, fused experts). */
export const FAMILY_CASES: GoldenCase[] = (['qwen2_moe', 'deepseek_v3', 'gpt_oss', 'granitemoe', 'glm4_moe'] as Family[])
  .flatMap((family) => [
    { name: `${family}-prune-random`, family, steps: [['prune', ...FM, '--keep', '4', '--method', 'random', '--seed', '1', '--out', '$W/out']] },
    {
      name: `${family}-quantize-rtn`,
      family,
      steps: [['quantize', ...FM, '--bits', '7', '--candidates', '4', '--method', 'rtn', '--group-size', '32', '--out', '$W/out']],
    },
    { name: `${family}-decompose-svd`, family, steps: [['decompose', ...FM, '--ratio', '0.5', '--mode', 'svd', '--uniform', '--out', '$W/out']] },
  ])
  .concat([
    // fused 3-D experts: GPTQ as GPTQModel's per-expert modules and back; dense fused tensors from factors
    {
      name: 'gpt_oss-quantize-gptq-dequantize',
      family: 'gpt_oss',
      calib: true,
      steps: [
        ['quantize', ...FM, '--bits', '3.6', '--group-size', '32', '--min-tokens', '4', '--calib', '$W/calib.txt', '--seq-len', '32', '--out', '$W/q'],
        ['dequantize', '--model', '$W/q', '--out', '$W/out'],
      ],
    },
    {
      name: 'granitemoe-decompose-materialize',
      family: 'granitemoe',
      steps: [['decompose', ...FM, '--ratio', '0.5', '--mode', 'svd', '--uniform', '--materialize', '--out', '$W/out']],
    },
    // merge within routing groups (group-limited routing: n_group 2, topk_group 1)
    {
      name: 'deepseek_v3-merge-groups',
      family: 'deepseek_v3',
      calib: true,
      steps: [['merge', ...FM, '--groups', '4', '--calib', '$W/calib.txt', '--seq-len', '32', '--out', '$W/out']],
    },
    {
      name: 'glm4_moe-merge-groups-saliency-fit',
      family: 'glm4_moe',
      fixture: { config: { n_group: 2, topk_group: 1 } },
      calib: true,
      steps: [
        [
          'merge',
          ...FM,
          '--groups',
          '6',
          '--grouping',
          'saliency',
          '--router',
          'fit',
          '--fit-steps',
          '10',
          '--calib',
          '$W/calib.txt',
          '--seq-len',
          '32',
          '--out',
          '$W/out',
        ],
      ],
    },
  ]);

/** Run one case in `work` and return `file -> sha256` of its output (reports left out). */
export async function runCase(c: GoldenCase, work: string): Promise<Record<string, string>> {
  await mkdir(work, { recursive: true });
  if (c.family) await makeTinyCheckpoint(c.family, join(work, 'model'), { seed: 11, experts: 8, ...c.fixture });
  if (c.calib) {
    await writeWordTokenizer(join(work, 'model'));
    await writeFile(join(work, 'calib.txt'), wordLines(48, seededRandom(5)).join('\n') + '\n');
  }
  let out = '';
  for (const step of c.steps) {
    const args = step.map((a) => a.replaceAll('$W', work));
    const r = await runMoe([...args, '--quiet']);
    expect(r.code, `${c.name}: moe ${args.join(' ')}\n${r.stderr}`).toBe(0);
    const i = args.indexOf('--out');
    if (i >= 0) out = args[i + 1]!;
  }
  const hashes: Record<string, string> = {};
  const walk = async (dir: string, prefix: string): Promise<void> => {
    for (const e of (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (e.isDirectory()) await walk(join(dir, e.name), `${prefix}${e.name}/`);
      else if (!/report.*\.json$/.test(e.name))
        hashes[prefix + e.name] = createHash('sha256')
          .update(await readFile(join(dir, e.name)))
          .digest('hex');
    }
  };
  await walk(out, '');
  return hashes;
}
