/**
 * Calibration statistics on disk: a directory with stats.json (format, version, model identity, per-layer
 * scalars and the list of arrays) and one raw little-endian .bin file per array (float64 sums, float32 logits).
 * Loading validates everything (format, version, shapes, file sizes, finite values) before any pipeline uses it.
 * Statistics of runs over different text sum into one (data-parallel calibration): sumStats.
 */
import { createHash } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fail } from '../errors.js';
import { DTYPE_BYTES } from '../io/dtype.js';
import { injectedFault, OutputDir } from '../io/output.js';
import type { Model } from '../model/open.js';
import { modelFingerprint } from '../model/planfile.js';
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
  model?: string;
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
      ...(stats.model ? { model: stats.model } : {}),
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

/** Bytes of each sampled tensor that enter modelIdentity. */
const IDENTITY_SAMPLE_BYTES = 4096;

/**
 * What statistics are tied to: the model's structure (planfile's modelFingerprint: config and tensor table) and the
 * first bytes of its embedding, lm_head and every router, so that another model of the same shape (other weights)
 * is told apart. Reads a few KB per layer, not the weights.
 */
export async function modelIdentity(model: Model): Promise<string> {
  const h = createHash('sha256').update(modelFingerprint(model.ckpt));
  const v = model.view;
  const names = [v.embed, ...(v.lmHead ? [v.lmHead] : []), ...v.layers.flatMap((l) => (l.block.kind === 'moe' ? [l.block.router.weight] : []))];
  for (const n of names) {
    if (!model.ckpt.has(n)) continue;
    const info = model.ckpt.info(n);
    const width = DTYPE_BYTES[info.dtype];
    const elems = Math.floor((info.end - info.begin) / width);
    h.update(n).update(await model.ckpt.readBytes(n, 0, Math.min(elems, Math.floor(IDENTITY_SAMPLE_BYTES / width))));
  }
  return h.digest('hex');
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

/** stats.json lists arrays and scalars: a few KB per layer. */
const MAX_STATS_JSON_BYTES = 64 * 2 ** 20;

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
  // the size stat'ed first: a FIFO would block, /dev/zero would grow memory without bound, a file larger than its
  // entry declares is not read at all
  const st = await stat(join(dir, ent.file)).catch(() => undefined);
  if (!st) bad(dir, `${what}: file ${ent.file} is missing`);
  if (!st.isFile()) fail('UnsafePath', `${dir}: ${what}: ${ent.file} is not a regular file; refusing to read it`);
  if (st.size !== n * width) bad(dir, `${what}: ${ent.file} is ${st.size} bytes, expected ${n * width} (truncated or wrong shape)`);
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

/**
 * What every artifact moe writes satisfies: counts are whole numbers in [0, tokens] that sum to tokens x topK (each
 * token picks topK experts), and the probability, gate, REAP and EASY-EP sums are non-negative. A file that breaks
 * this was edited or damaged, and its scores would rank experts by garbage.
 */
function checkLayerSums(dir: string, l: LayerStats, topK: number): void {
  let total = 0;
  for (let e = 0; e < l.numExperts; e++) {
    const c = l.count[e]!;
    if (!Number.isInteger(c) || c < 0 || c > l.tokens) bad(dir, `layer ${l.layer}: count of expert ${e} is ${c}, not a whole number in [0, ${l.tokens}]`);
    total += c;
    for (const f of ['probMass', 'gateSum', 'reapSum', 'easyEpSum'] as const) {
      if (l[f][e]! < 0) bad(dir, `layer ${l.layer}: ${f} of expert ${e} is negative (${l[f][e]})`);
    }
  }
  if (total !== l.tokens * topK) bad(dir, `layer ${l.layer}: counts sum to ${total}, but ${l.tokens} tokens x top-${topK} is ${l.tokens * topK} (wrong topK?)`);
}

export async function loadStats(dir: string): Promise<CalibStats> {
  let text: string;
  const st = await stat(join(dir, 'stats.json')).catch(() => undefined);
  if (st && !st.isFile()) fail('UnsafePath', `${join(dir, 'stats.json')} is not a regular file; refusing to read it`);
  if (st && st.size > MAX_STATS_JSON_BYTES) bad(dir, `stats.json is ${st.size} bytes, larger than any statistics header (${MAX_STATS_JSON_BYTES} max)`);
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
  if (j.model !== undefined && (typeof j.model !== 'string' || !/^[0-9a-f]{64}$/.test(j.model))) bad(dir, "stats.json: 'model' must be a model fingerprint");
  if (j.topK! > j.numExperts!) bad(dir, `stats.json: topK ${j.topK} exceeds numExperts ${j.numExperts}`);
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
    checkLayerSums(dir, ls as LayerStats, j.topK!);
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
    ...(j.model ? { model: j.model } : {}),
    layers,
  };
}

/** Sum statistics of runs over different text on the same model. Logit samples are concatenated. */
export function sumStats(all: readonly CalibStats[]): CalibStats {
  if (all.length === 0) fail('Usage', 'nothing to sum');
  const a = all[0]!;
  for (const b of all.slice(1)) {
    if (a.model && b.model && a.model !== b.model) fail('InvalidStats', 'cannot sum statistics of different models (their model fingerprints differ)');
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
