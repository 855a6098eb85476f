/**
 * Calibration statistics on disk: a directory with stats.json (format, version, model identity, per-layer
 * scalars and the list of arrays) and one raw little-endian .bin file per array (float64 sums, float32 logits).
 * Loading validates everything (format, version, shapes, file sizes, finite values) before any pipeline uses it.
 * Statistics of runs over different text sum into one (data-parallel calibration): sumStats.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fail } from '../errors.js';
import { injectedFault, OutputDir } from '../io/output.js';
import { STATS_VERSION, type CalibStats, type LayerStats } from './types.js';

export const STATS_FORMAT = 'moe-calibration-stats';
const F64_FIELDS = ['count', 'probMass', 'gateSum', 'reapSum', 'easyEpSum', 'outputSum'] as const;
type F64Field = (typeof F64_FIELDS)[number];

interface ArrayEntry {
  file: string;
  dtype: 'F64' | 'F32';
  shape: number[];
}
interface LayerJson {
  layer: number;
  numExperts: number;
  hidden: number;
  tokens: number;
  logitSampleRows: number;
  arrays: Record<string, ArrayEntry>;
}
interface StatsJson {
  format: string;
  version: number;
  family: string;
  numLayers: number;
  numExperts: number;
  topK: number;
  hidden: number;
  tokens: number;
  runs: number;
  layers: LayerJson[];
}

function bytesOf(a: Float64Array | Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Write statistics to `out` atomically: into the output's one staging directory (src/io/output.ts: the overlap and
 * --force rules, a lock, no second temporary location), then renamed into place. `out` may be an OutputDir the
 * caller opened before its heavy work (so an unwritable target fails first, and Gram files are written straight
 * into its staging directory as grams/: `gramFiles` lists them).
 */
export async function saveStats(
  stats: CalibStats,
  out: string | OutputDir,
  opts: { force?: boolean; gramFiles?: string[]; inputs?: readonly string[] } = {},
): Promise<void> {
  const dir = typeof out === 'string' ? await OutputDir.create(out, { force: opts.force, fresh: true, inputs: opts.inputs ?? [] }) : out;
  try {
    const layers: LayerJson[] = [];
    for (const l of stats.layers) {
      const arrays: Record<string, ArrayEntry> = {};
      for (const f of F64_FIELDS) {
        const file = `layer-${l.layer}.${f}.bin`;
        await writeOut(dir, file, bytesOf(l[f]));
        arrays[f] = { file, dtype: 'F64', shape: f === 'outputSum' ? [l.numExperts, l.hidden] : [l.numExperts] };
      }
      const file = `layer-${l.layer}.logitSample.bin`;
      await writeOut(dir, file, bytesOf(l.logitSample));
      arrays['logitSample'] = { file, dtype: 'F32', shape: [l.logitSampleRows, l.numExperts] };
      layers.push({ layer: l.layer, numExperts: l.numExperts, hidden: l.hidden, tokens: l.tokens, logitSampleRows: l.logitSampleRows, arrays });
    }
    const json: StatsJson & { grams?: { dir: string; dtype: 'F64'; shape: number[]; files: string[] } } = {
      format: STATS_FORMAT,
      version: STATS_VERSION,
      family: stats.family,
      numLayers: stats.numLayers,
      numExperts: stats.numExperts,
      topK: stats.topK,
      hidden: stats.hidden,
      tokens: stats.tokens,
      runs: stats.runs,
      layers,
    };
    if (opts.gramFiles) json.grams = { dir: GRAMS_DIR, dtype: 'F64', shape: [stats.hidden, stats.hidden], files: opts.gramFiles };
    await writeOut(dir, 'stats.json', JSON.stringify(json, null, 1) + '\n');
    await dir.publish();
  } catch (e) {
    await dir.discard();
    throw e;
  }
}

/** The Gram matrices' directory inside an artifact. */
export const GRAMS_DIR = 'grams';

async function writeOut(dir: OutputDir, name: string, data: Uint8Array | string): Promise<void> {
  try {
    injectedFault(name);
    await writeFile(dir.path(name), data);
  } catch (e) {
    fail('OutputError', `cannot write ${dir.path(name)}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function bad(dir: string, msg: string): never {
  fail('InvalidStats', `${dir}: ${msg}`);
}

function isInt(v: unknown, min = 0): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min;
}

async function readArray(dir: string, e: unknown, dtype: 'F64' | 'F32', shape: number[], what: string): Promise<Float64Array | Float32Array> {
  if (!e || typeof e !== 'object') bad(dir, `${what}: missing array entry`);
  const ent = e as Partial<ArrayEntry>;
  if (typeof ent.file !== 'string' || ent.file.includes('/') || ent.file.includes('\\') || ent.file.startsWith('.'))
    bad(dir, `${what}: bad file name ${JSON.stringify(ent.file)}`);
  if (ent.dtype !== dtype) bad(dir, `${what}: dtype must be ${dtype}`);
  if (!Array.isArray(ent.shape) || ent.shape.length !== shape.length || ent.shape.some((d, i) => d !== shape[i])) {
    bad(dir, `${what}: shape ${JSON.stringify(ent.shape)} where [${shape.join(', ')}] is expected`);
  }
  const n = shape.reduce((a, b) => a * b, 1);
  const width = dtype === 'F64' ? 8 : 4;
  let buf: Buffer;
  try {
    buf = await readFile(join(dir, ent.file));
  } catch {
    bad(dir, `${what}: file ${ent.file} is missing`);
  }
  if (buf.byteLength !== n * width) bad(dir, `${what}: ${ent.file} is ${buf.byteLength} bytes, expected ${n * width} (truncated or wrong shape)`);
  const copy = new Uint8Array(buf.byteLength);
  copy.set(buf);
  const arr = dtype === 'F64' ? new Float64Array(copy.buffer) : new Float32Array(copy.buffer);
  for (let i = 0; i < arr.length; i++) if (!Number.isFinite(arr[i]!)) bad(dir, `${what}: ${ent.file} holds a non-finite value at ${i}`);
  return arr;
}

export async function loadStats(dir: string): Promise<CalibStats> {
  let text: string;
  try {
    text = await readFile(join(dir, 'stats.json'), 'utf8');
  } catch {
    fail('MissingFile', `calibration statistics not found: ${join(dir, 'stats.json')} (make them with moe calibrate --out)`);
  }
  let j: Partial<StatsJson>;
  try {
    j = JSON.parse(text);
  } catch (e) {
    bad(dir, `stats.json is not valid JSON (${(e as Error).message})`);
  }
  if (!j || typeof j !== 'object') bad(dir, 'stats.json must be an object');
  if (j.format !== STATS_FORMAT) bad(dir, `stats.json is not a moe calibration artifact (format ${JSON.stringify(j.format)})`);
  if (j.version !== STATS_VERSION) bad(dir, `artifact version ${j.version} is not supported (this moe reads version ${STATS_VERSION}); recalibrate`);
  for (const k of ['numLayers', 'numExperts', 'topK', 'hidden', 'tokens', 'runs'] as const)
    if (!isInt(j[k], k === 'tokens' ? 0 : 1)) bad(dir, `stats.json: '${k}' must be a positive integer`);
  if (typeof j.family !== 'string') bad(dir, "stats.json: 'family' must be a string");
  if (!Array.isArray(j.layers)) bad(dir, "stats.json: 'layers' must be a list");
  const layers: LayerStats[] = [];
  const seen = new Set<number>();
  for (const l of j.layers) {
    if (!l || typeof l !== 'object') bad(dir, 'a layer entry is not an object');
    if (!isInt(l.layer) || l.layer >= j.numLayers!) bad(dir, `layer index ${l.layer} outside 0..${j.numLayers! - 1}`);
    if (seen.has(l.layer)) bad(dir, `layer ${l.layer} appears twice`);
    seen.add(l.layer);
    if (l.numExperts !== j.numExperts || l.hidden !== j.hidden) bad(dir, `layer ${l.layer}: experts/hidden differ from the artifact's`);
    if (!isInt(l.tokens) || !isInt(l.logitSampleRows)) bad(dir, `layer ${l.layer}: tokens and logitSampleRows must be integers`);
    const E = l.numExperts,
      H = l.hidden;
    const a = l.arrays ?? {};
    const ls: Partial<LayerStats> = { layer: l.layer, numExperts: E, hidden: H, tokens: l.tokens, logitSampleRows: l.logitSampleRows };
    for (const f of F64_FIELDS) {
      (ls as Record<F64Field, Float64Array>)[f] = (await readArray(
        dir,
        a[f],
        'F64',
        f === 'outputSum' ? [E, H] : [E],
        `layer ${l.layer} ${f}`,
      )) as Float64Array;
    }
    ls.logitSample = (await readArray(dir, a['logitSample'], 'F32', [l.logitSampleRows, E], `layer ${l.layer} logitSample`)) as Float32Array;
    layers.push(ls as LayerStats);
  }
  layers.sort((x, y) => x.layer - y.layer);
  return {
    version: STATS_VERSION,
    family: j.family,
    numLayers: j.numLayers!,
    numExperts: j.numExperts!,
    topK: j.topK!,
    hidden: j.hidden!,
    tokens: j.tokens!,
    runs: j.runs!,
    layers,
  };
}

/** Sum statistics of runs over different text on the same model. Logit samples are concatenated. */
export function sumStats(all: readonly CalibStats[]): CalibStats {
  if (all.length === 0) fail('Usage', 'nothing to sum');
  const a = all[0]!;
  for (const b of all.slice(1)) {
    for (const k of ['family', 'numLayers', 'numExperts', 'topK', 'hidden'] as const) {
      if (a[k] !== b[k]) fail('InvalidStats', `cannot sum statistics of different models: ${k} ${a[k]} vs ${b[k]}`);
    }
    const la = a.layers.map((l) => l.layer).join(','),
      lb = b.layers.map((l) => l.layer).join(',');
    if (la !== lb) fail('InvalidStats', `cannot sum statistics over different MoE layers ([${la}] vs [${lb}])`);
  }
  const layers = a.layers.map((l0, i) => {
    const out: LayerStats = {
      ...l0,
      tokens: 0,
      count: new Float64Array(l0.numExperts),
      probMass: new Float64Array(l0.numExperts),
      gateSum: new Float64Array(l0.numExperts),
      reapSum: new Float64Array(l0.numExperts),
      easyEpSum: new Float64Array(l0.numExperts),
      outputSum: new Float64Array(l0.outputSum.length),
      logitSample: new Float32Array(all.reduce((s, st) => s + st.layers[i]!.logitSample.length, 0)),
      logitSampleRows: all.reduce((s, st) => s + st.layers[i]!.logitSampleRows, 0),
    };
    let off = 0;
    for (const st of all) {
      const l = st.layers[i]!;
      out.tokens += l.tokens;
      for (const f of F64_FIELDS) for (let j = 0; j < l[f].length; j++) out[f][j]! += l[f][j]!;
      out.logitSample.set(l.logitSample, off);
      off += l.logitSample.length;
    }
    return out;
  });
  return { ...a, tokens: all.reduce((s, x) => s + x.tokens, 0), runs: all.reduce((s, x) => s + x.runs, 0), layers };
}
