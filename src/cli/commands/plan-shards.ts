/**
 * `moe plan-shards`: the jobs of a scale-out run as JSON, for any orchestrator (a CI matrix, a Kubernetes Indexed
 * Job, Argo, a shell loop) to consume. The pipeline's own flags are given after `--`, as they would be for one run:
 *
 *   moe plan-shards --shards 4 --data calib.txt --calib-shards 8 -- prune --model M --method reap --keep 6 --out M-pruned
 *
 * The jobs, in dependency order:
 * - calibrate shards (only with --data): `moe calibrate --shard i/K` over the same windows one `--calib` run reads,
 *   then one `calibrate --merge`; the pipeline then reads `--stats` instead of calibration text;
 * - plan (pipelines with --save-plan): one `--dry-run --save-plan` run, so every layer job applies the same plan
 *   (quantize and sequential merges cannot plan per shard at all; for the others it saves re-scoring N times);
 * - layer shards: `--shard i/N --out DIR/part-i`, the pipeline's flags without the data ones when a plan is applied;
 * - assemble: `moe assemble` of the parts into the pipeline's --out.
 *
 * Estimates come from the pipeline's own dry run (the memory estimate every pipeline prints with --dry-run, and its
 * predicted output size); a dry run of a data-driven method reads its calibration data, so planning costs what the
 * dry run costs. Bytes written per layer shard are the tensors outside the layers (unedited, written by shard 0, as
 * src/model/shard.ts does) plus the rest of the predicted output split as the input's bytes per owned layer: exact
 * for a uniform edit of every layer, an estimate where layers get different widths or ranks.
 */
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { z } from 'zod';
import { DECOMPOSE_COMMAND } from '../../decompose/command.js';
import { fail } from '../../errors.js';
import { MERGE_COMMAND } from '../../merge/command.js';
import { openModel } from '../../model/open.js';
import { layerOfTensor } from '../../model/rewrite.js';
import { shardOwner } from '../../model/shard.js';
import type { AnyCommand } from '../../pipeline/descriptor.js';
import { registerCommand } from '../../pipeline/cli.js';
import { command } from '../../pipeline/descriptor.js';
import { DEFAULT_CALIB_TOKENS, DEFAULT_SEQ_LEN, field, int } from '../../pipeline/fields.js';
import { commandOptions, type OptionInfo } from '../../pipeline/schema.js';
import { prepare } from '../../pipeline/validate.js';
import { PRUNE_COMMAND } from '../../prune/command.js';
import { QUANTIZE_COMMAND } from '../../quantize/command.js';
import { COPY_CHUNK_BYTES, estimatePeak, streamedPassParts, type MemoryEstimate } from '../../runtime/memory.js';

const PIPELINES: Record<string, AnyCommand> = {
  prune: PRUNE_COMMAND,
  quantize: QUANTIZE_COMMAND,
  merge: MERGE_COMMAND,
  decompose: DECOMPOSE_COMMAND,
};

const PLAN_SHARDS_OPTIONS = z.object({
  shards: field(int(1), { help: 'layer-parallel jobs (--shard i/N of the pipeline)', arg: 'n', recipe: false }),
  data: field(z.string().min(1).optional(), {
    help: 'calibration text: add data-parallel calibrate jobs and a merge, and give the pipeline --stats',
    arg: 'file',
    recipe: false,
    path: 'data',
  }),
  calibShards: field(int(1).optional(), { help: 'data-parallel calibrate jobs (default: --shards)', arg: 'k', recipe: false }),
  calibTokens: field(int(1).default(DEFAULT_CALIB_TOKENS), {
    help: 'calibration tokens over all calibrate jobs (the windows one pipeline --calib run reads)',
    arg: 'n',
    recipe: false,
  }),
  seqLen: field(int(1).default(DEFAULT_SEQ_LEN), { help: 'calibration window length in tokens', arg: 'n', recipe: false }),
  dir: field(z.string().min(1).default('.'), {
    help: 'shared directory of the intermediate files (stats, plan, parts), as every job sees it (it must exist when the jobs run)',
    arg: 'dir',
    recipe: false,
  }),
});

export interface ShardJob {
  /** unique within the plan: `calibrate-0`, `calibrate-merge`, `plan`, `shard-0`, `assemble` */
  id: string;
  phase: 'calibrate-shard' | 'calibrate-merge' | 'plan' | 'layer-shard' | 'assemble';
  index?: number;
  /** the command line after `moe` */
  argv: string[];
  /** ids of the jobs whose outputs this one reads */
  needs: string[];
  /** paths written (directories or files) */
  writes: string[];
  estPeakBytes: number | null;
  estBytesWritten: number | null;
}

export interface ShardPlan {
  tool: 'moe plan-shards';
  pipeline: string;
  model: string;
  out: string;
  shards: number;
  calibShards: number;
  jobs: ShardJob[];
}

/** One option of the pipeline as the user typed it: the flag's tokens, kept verbatim. */
interface Given {
  info: OptionInfo;
  tokens: string[];
  value?: string;
}

function splitArgv(d: AnyCommand, argv: string[]): Given[] {
  const infos = commandOptions(d);
  const byFlag = new Map<string, OptionInfo>();
  for (const i of infos) {
    byFlag.set(i.flag, i);
    if (i.flag.startsWith('--no-')) byFlag.set(`--${i.flag.slice(5)}`, i);
  }
  const out: Given[] = [];
  for (let k = 0; k < argv.length; ) {
    const tok = argv[k]!;
    if (tok === '--json' || tok === '--quiet') {
      k++;
      continue;
    }
    const [flag, inline] = tok.includes('=') ? [tok.slice(0, tok.indexOf('=')), tok.slice(tok.indexOf('=') + 1)] : [tok, undefined];
    const info = byFlag.get(flag);
    if (!info) fail('Usage', `plan-shards: '${tok}' is not an option of moe ${d.name}`);
    if (info.kind === 'boolean' || inline !== undefined) {
      out.push({ info, tokens: [tok], value: inline });
      k++;
      continue;
    }
    let end = k + 1;
    if (info.kind === 'variadic') while (end < argv.length && !argv[end]!.startsWith('--')) end++;
    else end = Math.min(k + 2, argv.length);
    if (end === k + 1) fail('Usage', `plan-shards: ${flag} needs a value`);
    out.push({ info, tokens: argv.slice(k, end), value: argv[k + 1] });
    k = end;
  }
  return out;
}

/** The pipeline's options parsed exactly as `moe <pipeline>` parses them (only what was typed). */
async function parseRaw(d: AnyCommand, argv: string[]): Promise<Record<string, unknown>> {
  const program = new Command().exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} });
  const cmd = registerCommand(program, d);
  let raw: Record<string, unknown> = {};
  cmd.action((...params: unknown[]) => {
    const c = params[params.length - 1] as Command;
    const given = c.opts();
    raw = {};
    for (const info of commandOptions(d)) {
      const src = c.getOptionValueSource(info.key);
      if (src !== undefined && src !== 'default' && given[info.key] !== undefined) raw[info.key] = given[info.key];
    }
  });
  try {
    await program.parseAsync(['node', 'moe', d.name, ...argv]);
  } catch (e) {
    if (e instanceof CommanderError) fail('Usage', `plan-shards: moe ${d.name}: ${e.message.replace(/^error: /, '')}`);
    throw e;
  }
  return raw;
}

const DATA_KEYS = new Set(['calib', 'calibIds', 'calibTokens', 'seqLen', 'stats']);
/** Flags that plan-shards sets itself in each job. */
const OWN_KEYS = new Set(['out', 'shard', 'dryRun', 'savePlan', 'force']);

interface DryRunReport {
  memory?: MemoryEstimate;
  sizes?: { after?: { bytes?: number } };
}

export async function planShards(o: z.output<typeof PLAN_SHARDS_OPTIONS>, pipelineArgv: string[]): Promise<ShardPlan> {
  const [name, ...flags] = pipelineArgv;
  const d = name === undefined ? undefined : PIPELINES[name];
  if (!d) fail('Usage', `plan-shards: give the pipeline after --: one of ${Object.keys(PIPELINES).join(', ')} and its flags`);
  const given = splitArgv(d, flags);
  const has = (key: string) => given.some((g) => g.info.key === key);
  const givenValue = (key: string) => given.find((g) => g.info.key === key)?.value;
  const model = givenValue('model');
  const out = givenValue('out');
  if (!model) fail('Usage', `plan-shards: the pipeline needs --model DIR`);
  if (!out) fail('Usage', `plan-shards: the pipeline needs --out DIR (where the assembled checkpoint goes)`);
  if (has('shard') || has('savePlan') || has('dryRun'))
    fail('Usage', 'plan-shards: give the flags of one whole run: plan-shards adds --shard, --save-plan and --dry-run itself');
  if (o.data && (has('calib') || has('calibIds') || has('stats')))
    fail('Usage', 'plan-shards: --data makes the statistics: give the pipeline no --calib, --calib-ids or --stats');
  const usesPlan = commandOptions(d).some((i) => i.key === 'plan') && !has('plan');
  const canStats = commandOptions(d).some((i) => i.key === 'stats');
  if (o.data && !canStats) fail('Usage', `plan-shards: moe ${d.name} reads no --stats: give it --calib instead of --data`);

  const N = o.shards;
  const K = o.calibShards ?? N;
  const dir = o.dir;
  const jobs: ShardJob[] = [];
  const kept = given.filter((g) => !OWN_KEYS.has(g.info.key)).flatMap((g) => g.tokens);
  const statsDir = join(dir, 'stats');
  const base = o.data ? [...kept, '--stats', statsDir] : kept;

  // the estimates: one dry run of the whole plan (in-process, nothing written) and the input's bytes per layer
  const m = await openModel(model);
  const layerBytes = new Map<number, number>();
  let outsideBytes = 0;
  let largestTensor = 0;
  let calibEstimate: MemoryEstimate | undefined;
  try {
    for (const n of m.ckpt.tensorNames) {
      const info = m.ckpt.info(n);
      largestTensor = Math.max(largestTensor, info.end - info.begin);
      const layer = layerOfTensor(m.view, n);
      if (!Number.isFinite(layer) || layer < 0) outsideBytes += info.end - info.begin;
      else {
        const owner = shardOwner(layer, N);
        layerBytes.set(owner, (layerBytes.get(owner) ?? 0) + (info.end - info.begin));
      }
    }
    if (o.data) calibEstimate = estimatePeak(streamedPassParts(m.ckpt, m.view, Math.ceil(o.calibTokens / K), o.seqLen, true));
  } finally {
    await m.ckpt.close();
  }
  const dryRaw = await parseRaw(
    d,
    given.filter((g) => !OWN_KEYS.has(g.info.key)).flatMap((g) => g.tokens),
  );
  if (o.data) {
    // the dry run cannot read statistics that do not exist yet: it reads the same windows as text instead
    Object.assign(dryRaw, { calib: o.data, calibTokens: o.calibTokens, seqLen: o.seqLen });
  }
  const dry = (await d.run({ ...dryRaw, dryRun: true }, { args: [] })) as DryRunReport;
  const peak = dry.memory?.peakBytes ?? null;
  const after = dry.sizes?.after?.bytes ?? null;
  // the tensors outside the layers (embeddings, final norm, lm_head) are what no pipeline edits: shard 0 copies them;
  // the rest of the predicted output splits over the shards as their layers' input bytes do
  const inputLayers = [...layerBytes.values()].reduce((a, b) => a + b, 0);
  const layerOut = after === null ? null : Math.max(0, after - outsideBytes);
  const shareOf = (i: number) =>
    layerOut === null || inputLayers === 0
      ? null
      : Math.round((layerOut * (layerBytes.get(i) ?? 0)) / inputLayers) + (i === 0 ? Math.min(outsideBytes, after!) : 0);

  // calibrate --merge holds no model: the runtime alone. assemble copies each tensor in chunks of at most
  // COPY_CHUNK_BYTES: one chunk read from a part and the same chunk in the writer (measured on the 26.65 GB synthetic
  // checkpoint, docs/production.md: 188-207 MiB against the bare runtime's 100)
  const bareRuntime = estimatePeak([], { tensorBackend: false }).peakBytes;
  const assemblePeak = estimatePeak([{ label: 'copy chunks in flight (read, then written)', bytes: 2 * Math.min(largestTensor, COPY_CHUNK_BYTES) }], {
    tensorBackend: false,
  }).peakBytes;
  const calibNeeds: string[] = [];
  if (o.data) {
    const parts: string[] = [];
    for (let i = 0; i < K; i++) {
      const w = join(dir, `stats-${i}`);
      parts.push(w);
      jobs.push({
        id: `calibrate-${i}`,
        phase: 'calibrate-shard',
        index: i,
        argv: [
          'calibrate',
          '--model',
          model,
          '--data',
          o.data,
          '--seq-len',
          String(o.seqLen),
          '--max-tokens',
          String(o.calibTokens),
          '--shard',
          `${i}/${K}`,
          '--out',
          w,
        ],
        needs: [],
        writes: [w],
        estPeakBytes: calibEstimate?.peakBytes ?? null,
        estBytesWritten: null,
      });
    }
    jobs.push({
      id: 'calibrate-merge',
      phase: 'calibrate-merge',
      argv: ['calibrate', '--merge', ...parts, '--out', statsDir],
      needs: parts.map((_, i) => `calibrate-${i}`),
      writes: [statsDir],
      estPeakBytes: bareRuntime,
      estBytesWritten: null,
    });
    calibNeeds.push('calibrate-merge');
  }

  let shardArgs = base;
  let shardNeeds = calibNeeds;
  if (usesPlan) {
    const planFile = join(dir, 'plan.json');
    jobs.push({
      id: 'plan',
      phase: 'plan',
      argv: [d.name, ...base, '--dry-run', '--save-plan', planFile],
      needs: calibNeeds,
      writes: [planFile],
      estPeakBytes: peak,
      estBytesWritten: null,
    });
    // a saved plan replaces scoring: the data flags are refused (or unused) next to --plan
    shardArgs = [...given.filter((g) => !OWN_KEYS.has(g.info.key) && !DATA_KEYS.has(g.info.key)).flatMap((g) => g.tokens), '--plan', planFile];
    shardNeeds = ['plan'];
  }
  const partDirs: string[] = [];
  for (let i = 0; i < N; i++) {
    const w = join(dir, `part-${i}`);
    partDirs.push(w);
    jobs.push({
      id: `shard-${i}`,
      phase: 'layer-shard',
      index: i,
      argv: [d.name, ...shardArgs, '--shard', `${i}/${N}`, '--out', w],
      needs: shardNeeds,
      writes: [w],
      estPeakBytes: peak,
      estBytesWritten: shareOf(i),
    });
  }
  jobs.push({
    id: 'assemble',
    phase: 'assemble',
    argv: ['assemble', ...partDirs, '--out', out],
    needs: partDirs.map((_, i) => `shard-${i}`),
    writes: [out],
    estPeakBytes: assemblePeak,
    estBytesWritten: after,
  });
  return { tool: 'moe plan-shards', pipeline: d.name, model, out, shards: N, calibShards: o.data ? K : 0, jobs };
}

export const PLAN_SHARDS_COMMAND = command({
  name: 'plan-shards',
  summary: 'print the jobs of a scale-out run (calibrate shards, plan, layer shards, assemble) as JSON, with estimates',
  args: [{ name: 'pipeline', help: 'after --: the pipeline and its flags for one whole run', variadic: true }],
  options: PLAN_SHARDS_OPTIONS,
  examples: [
    'moe plan-shards --shards 4 -- prune --model M --method random --keep 6 --out M-pruned',
    'moe plan-shards --shards 8 --data calib.txt -- quantize --model M --bits 3 --out M-q3 --json',
  ],
  notes:
    "Each job has id, phase, argv (after `moe`), needs (job ids), writes, estPeakBytes (the dry run's memory estimate) and estBytesWritten; jobs are listed in an order that respects needs.",
  async run(raw, { args }) {
    const o = await prepare({ options: PLAN_SHARDS_OPTIONS }, raw, { output: false });
    return planShards(o, args);
  },
  print: (r) => JSON.stringify(r, null, 2),
});
