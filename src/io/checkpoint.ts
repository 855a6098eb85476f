/**
 * A Hugging Face checkpoint directory: config.json, one or more safetensors shards, tokenizer and generation
 * files. Every shard header is read and validated at open, so each tensor's dtype and shape are known before any
 * data is read; tensor data is read lazily by byte range.
 *
 * Quantized storage is decoded on readF32: FP8 weights with a `<name>_scale_inv` sibling (DeepSeek-style block
 * scales) come back dequantized. readBytes always returns the stored bytes.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { isAbsolute, join, normalize, sep } from 'node:path';
import { fail, type ErrorCode } from '../errors.js';
import { DTYPE_BYTES, type Dtype } from './dtype.js';
import { checkPassthroughFile } from './files.js';
import { checkFiniteInput } from './finite.js';
import { applyBlockScales, decodeMxfp4, FP8_BLOCK } from './quantized.js';
import { quote, SafetensorsFile, type TensorInfo } from './safetensors.js';

/** Files copied unchanged from an input checkpoint to every output. */
export const PASSTHROUGH_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'tokenizer.model',
  'special_tokens_map.json',
  'vocab.json',
  'merges.txt',
  'generation_config.json',
  'added_tokens.json',
  'chat_template.jinja',
  'chat_template.json',
];

export type HFConfig = Record<string, unknown> & { model_type?: string; architectures?: string[] };

/** Real indexes are a few MB (DeepSeek-V3: 91k tensors, ~9 MB); configs are a few KB. */
const MAX_INDEX_BYTES = 50_000_000;
const MAX_CONFIG_BYTES = 10_000_000;
/** DeepSeek-style inverse block scales (`w.weight_scale_inv`) and compressed-tensors scales (`w.weight_scale`). */
export const SCALE_INV_SUFFIX = '_scale_inv';
export const SCALE_SUFFIX = '_scale';

/** A shard name from an index must stay inside the checkpoint directory. */
export function safeShardPath(dir: string, name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.includes('\0')) {
    fail('UnsafePath', `${dir}: shard name ${quote(name)} is not a file name`);
  }
  const norm = normalize(name);
  if (isAbsolute(name) || name.includes('\\') || norm.split(sep).includes('..')) {
    fail('UnsafePath', `${dir}: shard path ${quote(name)} leaves the checkpoint directory`);
  }
  return join(dir, norm);
}

export async function readJsonFile(path: string, maxBytes: number, what: string, code: ErrorCode = 'InvalidConfig'): Promise<unknown> {
  return (await readJsonText(path, maxBytes, what, code)).value;
}

/** readJsonFile with the file's text too (config.json is written back as an edit of its own text, src/model/configjson.ts). */
export async function readJsonText(path: string, maxBytes: number, what: string, code: ErrorCode = 'InvalidConfig'): Promise<{ value: unknown; text: string }> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(path);
  } catch {
    fail('MissingFile', `${what} not found: ${path}`);
  }
  if (!st.isFile()) fail(code, `${path}: ${what} is not a regular file`);
  if (st.size > maxBytes) fail(code, `${path}: ${st.size} bytes is larger than any ${what} (${maxBytes} max)`);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    fail('MissingFile', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    return { value: JSON.parse(text), text };
  } catch (e) {
    fail(code, `${path}: not valid JSON (${(e as Error).message.replace(/\s+/g, ' ').slice(0, 120)})`);
  }
}

// ---- config access: a missing or mistyped key is a one-line InvalidConfig naming the key ----------------------

export function configValue(config: HFConfig, key: string, where = 'config.json'): unknown {
  if (!(key in config) || config[key] === undefined || config[key] === null) fail('InvalidConfig', `${where}: missing required key '${key}'`);
  return config[key];
}

export function configInt(config: HFConfig, key: string, opts: { where?: string; min?: number; fallback?: number } = {}): number {
  const where = opts.where ?? 'config.json';
  if (opts.fallback !== undefined && (config[key] === undefined || config[key] === null)) return opts.fallback;
  const v = configValue(config, key, where);
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) fail('InvalidConfig', `${where}: '${key}' must be an integer, got ${quote(v)}`);
  if (opts.min !== undefined && v < opts.min) fail('InvalidConfig', `${where}: '${key}' must be at least ${opts.min}, got ${v}`);
  return v;
}

export function configNumber(config: HFConfig, key: string, opts: { where?: string; fallback?: number } = {}): number {
  const where = opts.where ?? 'config.json';
  if (opts.fallback !== undefined && (config[key] === undefined || config[key] === null)) return opts.fallback;
  const v = configValue(config, key, where);
  if (typeof v !== 'number' || !Number.isFinite(v)) fail('InvalidConfig', `${where}: '${key}' must be a number, got ${quote(v)}`);
  return v;
}

export function configString(config: HFConfig, key: string, where = 'config.json'): string {
  const v = configValue(config, key, where);
  if (typeof v !== 'string') fail('InvalidConfig', `${where}: '${key}' must be a string, got ${quote(v)}`);
  return v;
}

/** How a tensor is stored, so a rewrite can write an edited tensor back in its input's format. */
export interface StorageInfo {
  dtype: Dtype;
  shape: readonly number[];
  /**
   * FP8 weight dequantized by `scaleName` = name + `scaleSuffix`: value = code * scale of its block, with the scale
   * grid [ceil(rows/block[0]), ceil(cols/block[1])] (stored as `scaleShape`: 2-D, or [rows] / [] for
   * per-channel / per-tensor compressed-tensors scales).
   */
  blockScale?: { scaleName: string; scaleSuffix: string; block: [number, number]; scaleShape: readonly number[] };
}

export class Checkpoint {
  private files = new Map<string, Promise<SafetensorsFile>>();
  private constructor(
    readonly dir: string,
    readonly config: HFConfig,
    /** tensor name -> absolute shard path */
    private readonly weightMap: ReadonlyMap<string, string>,
    private readonly infos: ReadonlyMap<string, TensorInfo>,
    /** parsed generation_config.json, when present */
    readonly generationConfig: Record<string, unknown> | undefined,
    /** tokenizer and generation files present in the directory (copied through to outputs) */
    readonly passthroughFiles: readonly string[],
    /** config.json as read, byte for byte: outputs write their config as an edit of it */
    readonly configText?: string,
  ) {}

  /**
   * Refuse NaN/Inf in every tensor read as float32 (exit 5, src/io/finite.ts). Set by openModel for every command;
   * a plain Checkpoint (inspection, byte-level tests) decodes any bit pattern.
   */
  finiteOnly = false;

  static async open(dir: string): Promise<Checkpoint> {
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      st = await stat(dir);
    } catch {
      fail('MissingFile', `model directory not found: ${dir}`);
    }
    if (!st.isDirectory()) fail('MissingFile', `--model must be a checkpoint directory: ${dir}`);
    const { value: config, text: configText } = await readJsonText(join(dir, 'config.json'), MAX_CONFIG_BYTES, 'config.json');
    if (config === null || typeof config !== 'object' || Array.isArray(config)) fail('InvalidConfig', `${join(dir, 'config.json')} must be a JSON object`);
    let present: Set<string>;
    try {
      present = new Set(await readdir(dir));
    } catch (e) {
      fail('MissingFile', `cannot list ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    // files copied verbatim into outputs: regular, of plausible size, resolving inside the model directory (exit 3
    // before anything is read: a FIFO would hang the run, a link to a secret would leak it into the output)
    for (const f of PASSTHROUGH_FILES) if (present.has(f)) await checkPassthroughFile(dir, f);
    let generationConfig: Record<string, unknown> | undefined;
    if (present.has('generation_config.json')) {
      const g = await readJsonFile(join(dir, 'generation_config.json'), MAX_CONFIG_BYTES, 'generation_config.json');
      if (g === null || typeof g !== 'object' || Array.isArray(g)) fail('InvalidConfig', `${join(dir, 'generation_config.json')} must be a JSON object`);
      generationConfig = g as Record<string, unknown>;
    }

    const weightMap = new Map<string, string>();
    const indexPath = join(dir, 'model.safetensors.index.json');
    const hasIndex = present.has('model.safetensors.index.json');
    const shardPaths: string[] = [];
    if (hasIndex) {
      const idx = await readJsonFile(indexPath, MAX_INDEX_BYTES, 'safetensors index', 'InvalidIndex');
      const wm = idx !== null && typeof idx === 'object' && !Array.isArray(idx) ? (idx as { weight_map?: unknown }).weight_map : undefined;
      if (wm === null || typeof wm !== 'object' || Array.isArray(wm)) fail('InvalidIndex', `${indexPath}: missing weight_map object`);
      const seenShards = new Set<string>();
      for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
        const p = safeShardPath(dir, file);
        weightMap.set(name, p);
        if (!seenShards.has(p)) {
          seenShards.add(p);
          shardPaths.push(p);
        }
      }
      if (weightMap.size === 0) fail('InvalidIndex', `${indexPath}: weight_map is empty`);
    } else if (present.has('model.safetensors')) {
      shardPaths.push(join(dir, 'model.safetensors'));
    } else {
      fail('MissingFile', `${dir}: no model.safetensors or model.safetensors.index.json`);
    }
    const ckpt = new Checkpoint(
      dir,
      config as HFConfig,
      weightMap,
      new Map(),
      generationConfig,
      PASSTHROUGH_FILES.filter((f) => present.has(f)),
      configText,
    );
    const infos = ckpt.infos as Map<string, TensorInfo>;
    try {
      for (const p of shardPaths) {
        const f = await ckpt.file(p);
        for (const [name, info] of f.header.tensors) {
          if (hasIndex) {
            // a tensor present in a shard but mapped elsewhere (or not at all) is ignored, as transformers does
            if (weightMap.get(name) !== p) continue;
          } else {
            weightMap.set(name, p);
          }
          infos.set(name, info);
        }
      }
      for (const [name, p] of weightMap) {
        if (!infos.has(name)) fail('InvalidIndex', `${indexPath}: tensor ${quote(name)} is mapped to ${p} but that shard does not contain it`);
      }
    } catch (e) {
      await ckpt.close();
      throw e;
    }
    return ckpt;
  }

  private file(path: string): Promise<SafetensorsFile> {
    let f = this.files.get(path);
    if (!f) {
      f = SafetensorsFile.open(path);
      this.files.set(path, f);
    }
    return f;
  }

  get tensorNames(): string[] {
    return [...this.infos.keys()];
  }

  has(name: string): boolean {
    return this.infos.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.infos.get(name);
    if (!t) fail('TensorNotFound', `${this.dir}: checkpoint has no tensor ${quote(name)}`);
    return t;
  }

  shape(name: string): readonly number[] {
    return this.info(name).shape;
  }

  /** The stored dtype (F8_E4M3 for a block-scaled FP8 weight even though readF32 dequantizes it). */
  dtype(name: string): Dtype {
    return this.info(name).dtype;
  }

  /** Absolute shard paths in index order. */
  get shardPaths(): string[] {
    return [...new Set(this.weightMap.values())];
  }

  /** The shard file (absolute path) holding a tensor. */
  shardOf(name: string): string {
    this.info(name);
    return this.weightMap.get(name)!;
  }

  /** Bytes of tensor data over all tensors (what a stock loader reads). */
  get totalBytes(): number {
    let n = 0;
    for (const t of this.infos.values()) n += t.end - t.begin;
    return n;
  }

  /** True for the scale companions of FP8 weights (a rewrite handles them with their weight). */
  isScaleTensor(name: string): boolean {
    for (const suffix of [SCALE_INV_SUFFIX, SCALE_SUFFIX]) {
      if (!name.endsWith(suffix)) continue;
      const base = name.slice(0, -suffix.length);
      // the same preference as storage(): _scale_inv wins when both exist
      if (this.has(base) && isFp8(this.dtype(base)) && (suffix === SCALE_INV_SUFFIX || !this.has(base + SCALE_INV_SUFFIX))) return true;
    }
    return false;
  }

  /** Storage dtype, shape and block scales of a tensor, so an edited tensor can be written in the input's format. */
  storage(name: string): StorageInfo {
    const t = this.info(name);
    if (!isFp8(t.dtype)) return { dtype: t.dtype, shape: t.shape };
    const suffix = this.has(name + SCALE_INV_SUFFIX) ? SCALE_INV_SUFFIX : this.has(name + SCALE_SUFFIX) ? SCALE_SUFFIX : undefined;
    if (!suffix) return { dtype: t.dtype, shape: t.shape };
    const scaleName = name + suffix;
    if (t.shape.length !== 2) fail('InvalidData', `${this.dir}: FP8 tensor ${quote(name)} with scales must be 2-D, has shape ${quote(t.shape)}`);
    const [rows, cols] = t.shape as [number, number];
    const s = this.info(scaleName);
    const ss = s.shape;
    let block: [number, number];
    if (suffix === SCALE_INV_SUFFIX) {
      block = this.blockSize();
    } else if (ss.length === 0 || (ss.length === 1 && ss[0] === 1)) {
      block = [Math.max(rows, 1), Math.max(cols, 1)]; // per tensor
    } else if ((ss.length === 1 && ss[0] === rows) || (ss.length === 2 && ss[0] === rows && ss[1] === 1)) {
      block = [1, Math.max(cols, 1)]; // per output channel
    } else if (ss.length === 2 && ss[0]! > 0 && ss[1]! > 0) {
      block = [Math.ceil(rows / ss[0]!), Math.ceil(cols / ss[1]!)];
    } else {
      fail('InvalidData', `${this.dir}: ${quote(scaleName)} has shape ${quote(ss)}, not a per-tensor, per-channel or block scale for a ${rows}x${cols} weight`);
    }
    const want = [Math.ceil(rows / block[0]), Math.ceil(cols / block[1])];
    const count = ss.reduce((a, d) => a * d, 1);
    const okShape = ss.length === 2 ? ss[0] === want[0] && ss[1] === want[1] : count === want[0]! * want[1]!;
    if (!okShape) {
      fail(
        'InvalidData',
        `${this.dir}: ${quote(scaleName)} has shape ${quote(ss)}, expected ${quote(want)} for a ${rows}x${cols} weight in ${block[0]}x${block[1]} blocks`,
      );
    }
    return { dtype: t.dtype, shape: t.shape, blockScale: { scaleName, scaleSuffix: suffix, block, scaleShape: ss } };
  }

  /** quantization_config.weight_block_size (DeepSeek-V3 says [128, 128]); 128x128 when absent. */
  private blockSize(): [number, number] {
    const q = this.config.quantization_config as { weight_block_size?: unknown } | undefined;
    const b = q?.weight_block_size;
    if (b === undefined || b === null) return [FP8_BLOCK, FP8_BLOCK];
    if (!Array.isArray(b) || b.length !== 2 || !b.every((x) => Number.isSafeInteger(x) && x > 0)) {
      fail('InvalidConfig', `${this.dir}/config.json: quantization_config.weight_block_size must be two positive integers, got ${quote(b)}`);
    }
    return [b[0], b[1]];
  }

  /** Stored bytes of a tensor or of its flat element range [from, to). */
  async readBytes(name: string, from?: number, to?: number): Promise<Uint8Array> {
    this.info(name);
    const f = await this.file(this.weightMap.get(name)!);
    return f.readBytes(name, from, to);
  }

  /**
   * A tensor (or its flat element range [from, to)) as float32. Block-scaled FP8 weights are dequantized; any
   * range works for them (only the scale rows the range touches are read).
   */
  async readF32(name: string, from?: number, to?: number): Promise<Float32Array> {
    const st = this.storage(name);
    const f = await this.file(this.weightMap.get(name)!);
    if (!st.blockScale) {
      // every tensor read for compute is checked as it is decoded (src/io/finite.ts): NaN/Inf exits 5 naming it
      const v = await f.readF32(name, from, to);
      if (this.finiteOnly) checkFiniteInput(name, v, from ?? 0);
      return v;
    }
    const [rows, cols] = st.shape as [number, number];
    const start = from ?? 0;
    const end = to ?? rows * cols;
    // FP8 codes decoded to float32, then scaled by their blocks
    const values = await f.readF32(name, from, to);
    if (values.length === 0) return values;
    const { scaleName, block } = st.blockScale;
    const sCols = Math.ceil(cols / block[1]);
    const sRow0 = Math.floor(Math.floor(start / cols) / block[0]);
    const sRow1 = Math.floor(Math.floor((end - 1) / cols) / block[0]);
    const scales = await this.readF32(scaleName, sRow0 * sCols, (sRow1 + 1) * sCols);
    const scaled = applyBlockScales(values, start, cols, scales, sRow0, block);
    if (this.finiteOnly) checkFiniteInput(name, scaled, start);
    return scaled;
  }

  /**
   * MXFP4 weights (GPT-OSS): `${base}_blocks` [..., G, 16] u8 and `${base}_scales` [..., G] u8, decoded to
   * float32 [..., G * 32] (rows = flattened leading axes). With fromRow/toRow only those rows are read, e.g. one
   * expert of `mlp.experts.gate_up_proj` is rows [e * 2I, (e + 1) * 2I).
   */
  async readMxfp4(base: string, fromRow?: number, toRow?: number): Promise<Float32Array> {
    const bName = `${base}_blocks`;
    const sName = `${base}_scales`;
    const b = this.info(bName);
    const s = this.info(sName);
    const okDtypes = b.dtype === 'U8' && (s.dtype === 'U8' || s.dtype === 'I8');
    const bs = b.shape;
    const ss = s.shape;
    if (!okDtypes || bs.length < 2 || bs[bs.length - 1] !== 16 || ss.length !== bs.length - 1 || !ss.every((d, i) => d === bs[i])) {
      fail(
        'InvalidData',
        `${this.dir}: MXFP4 ${quote(base)} needs U8 blocks [..., G, 16] and scales [..., G]; got ${b.dtype}${quote(bs)} and ${s.dtype}${quote(ss)}`,
      );
    }
    const G = ss[ss.length - 1]!;
    const rows = ss.slice(0, -1).reduce((a, d) => a * d, 1);
    const r0 = fromRow ?? 0;
    const r1 = toRow ?? rows;
    if (!Number.isSafeInteger(r0) || !Number.isSafeInteger(r1) || r0 < 0 || r1 > rows || r1 < r0) {
      fail('InvalidOffset', `${this.dir}: rows [${fromRow}, ${toRow}) outside MXFP4 ${quote(base)} of ${rows} rows`);
    }
    const blocks = await this.readBytes(bName, r0 * G * 16, r1 * G * 16);
    const scales = await this.readBytes(sName, r0 * G, r1 * G);
    const values = decodeMxfp4(blocks, scales);
    if (this.finiteOnly) checkFiniteInput(bName, values);
    return values;
  }

  async close(): Promise<void> {
    const all = [...this.files.values()];
    this.files.clear();
    for (const f of await Promise.allSettled(all)) if (f.status === 'fulfilled') await f.value.close();
  }
}

function isFp8(d: Dtype): boolean {
  return d === 'F8_E4M3' || d === 'F8_E5M2';
}

/** Element count of a shape (for callers sizing reads). */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, d) => a * d, 1);
}

/** Byte size of a stored tensor. */
export function storedBytes(info: { dtype: Dtype; shape: readonly number[] }): number {
  return numel(info.shape) * DTYPE_BYTES[info.dtype];
}
