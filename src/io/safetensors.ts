/**
 * Safetensors, read by byte range and written as a stream.
 *
 * The reader validates the whole header in the reference implementation's order (safetensors/src/tensor.rs,
 * read_metadata + validate) before it allocates anything sized by the file, so a hostile header costs at most
 * MAX_HEADER_BYTES of memory and never a hang.
 */
import { isUtf8 } from 'node:buffer';
import { open, type FileHandle } from 'node:fs/promises';
import { type ErrorCode, fail } from '../errors.js';
import { checkRegularFile } from './files.js';
import { decodeInto, DTYPE_BYTES, isDtype, type Dtype } from './dtype.js';
import { arrayIndexKeys, HeaderReader, isArrayIndex, jsonSyntaxError, OverBudget, PARSED_BYTES_PER_HEADER_BYTE, tensorEntryCost } from './headerjson.js';

/** The reference implementation's limit: a larger header is refused before it is read. */
export const MAX_HEADER_BYTES = 100_000_000;
/** Dimensions beyond 2^53 cannot be represented exactly in a JS number. */
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
/** fs.read/fs.write refuse more than 2 GiB - 1 per call; large tensors move in chunks of this size. */
export const IO_CHUNK_BYTES = 1 << 30;
/** Raw bytes decoded per step by readF32: large enough to amortize a read call, small enough to stay in cache. */
const DECODE_CHUNK_BYTES = 4 << 20;

export interface TensorInfo {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  /** absolute byte range in the file: [begin, end) */
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Readonly<Record<string, string>>;
  /** byte offset of the data area (8 + header length) */
  readonly dataStart: number;
}

/** A value from a hostile file, quoted for a one-line message: escaped and cut short. */
export function quote(v: unknown, max = 60): string {
  let s: string;
  try {
    s = JSON.stringify(v) ?? String(v);
  } catch {
    s = Array.isArray(v) ? '[...]' : typeof v === 'object' && v !== null ? '{...}' : typeof v;
  }
  return s.length > max ? `${s.slice(0, max)}...` : s;
}

/** Real headers nest 3 deep ({name: {shape: [...]}}); deeper input only costs parse time and stack. */
const MAX_HEADER_DEPTH = 16;

/** Depth of JSON nesting, scanning bytes (UTF-8 continuation bytes never equal these ASCII codes). */
function nestingDepth(b: Uint8Array, limit: number): number {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (inString) {
      if (c === 0x5c)
        i++; // skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > limit) return depth;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return depth;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The smallest budget of a parsed header, so that a header of a few entries is never too dense to read. */
const MIN_PARSED_BUDGET = 64 * 1024;

/**
 * Parse and validate a header given its bytes and the file size. Pure, allocates nothing sized by the claimed
 * tensors: used by the reader and by the fuzz tests. Checks, in order: UTF-8, JSON syntax, JSON object, per entry
 * (dtype known, shape of non-negative safe integers, two ordered offsets, shape x dtype size == span), then the
 * sorted entries must tile the data area from 0 without gap or overlap and end exactly at the end of the file.
 * What the parse keeps is bounded (src/io/headerjson.ts): past PARSED_BYTES_PER_HEADER_BYTE times the header's
 * length (or 64 KiB) the header is refused as too dense.
 */
export function parseHeader(headerBytes: Uint8Array, fileSize: number, where = 'file'): SafetensorsHeader {
  const dataStart = 8 + headerBytes.byteLength;
  if (!isUtf8(headerBytes)) fail('InvalidHeader', `${where}: safetensors header is not valid UTF-8`);
  if (nestingDepth(headerBytes, MAX_HEADER_DEPTH) > MAX_HEADER_DEPTH) {
    fail('InvalidHeaderDeserialization', `${where}: safetensors header nests deeper than ${MAX_HEADER_DEPTH} levels`);
  }
  const syntax = jsonSyntaxError(headerBytes);
  if (syntax !== undefined) fail('InvalidHeaderDeserialization', `${where}: safetensors header is not valid JSON (${syntax})`);
  const budget = Math.max(MIN_PARSED_BUDGET, PARSED_BYTES_PER_HEADER_BYTE * headerBytes.byteLength);
  const r = new HeaderReader(headerBytes, budget);
  try {
    return readTable(r, fileSize, dataStart, where);
  } catch (e) {
    if (!(e instanceof OverBudget)) throw e;
    fail(
      'HeaderTooLarge',
      `${where}: safetensors header is too dense: parsing its ${headerBytes.byteLength} bytes would keep more than ${budget} bytes of memory (${PARSED_BYTES_PER_HEADER_BYTE}x)`,
    );
  }
}

/** One top-level entry, checked as it is read: a tensor, the metadata, or the error it gives when its turn comes. */
type Entry = TensorInfo | Metadata | BadEntry;
class Metadata {
  constructor(readonly metadata: Record<string, string>) {}
}
class BadEntry {
  constructor(
    readonly code: ErrorCode,
    readonly message: string,
  ) {}
}

/** A bad entry keeps only its message (its values, quoted short, are dropped), counted like any string. */
function bad(r: HeaderReader, code: ErrorCode, message: string): BadEntry {
  r.keep(64 + 2 * message.length);
  return new BadEntry(code, message);
}

/** The dtype names as constants, so that a table of a million tensors holds each name once. */
const DTYPES = new Map(Object.keys(DTYPE_BYTES).map((d) => [d, d as Dtype]));

function readEntry(r: HeaderReader, name: string, dataStart: number, where: string): Entry {
  if (name === '__metadata__') {
    const raw = r.value();
    if (!isPlainObject(raw)) return bad(r, 'InvalidHeaderDeserialization', `${where}: __metadata__ must be an object of strings`);
    for (const [k, v] of Object.entries(raw)) {
      if (typeof v !== 'string') return bad(r, 'InvalidHeaderDeserialization', `${where}: __metadata__.${quote(k)} must be a string`);
    }
    return new Metadata(raw as Record<string, string>);
  }
  const tn = quote(name);
  if (r.peek() !== 0x7b) {
    r.skip();
    return bad(r, 'InvalidHeaderDeserialization', `${where}: entry ${tn} must be an object`);
  }
  // only the three fields the reader uses are materialised (a later duplicate wins, as in JSON.parse); the dtype
  // and the offsets are not kept, so they count only while they are read
  let dtype: unknown;
  let shape: unknown;
  let offsets: unknown;
  if (r.open()) {
    do {
      const k = r.key();
      if (k === 'dtype') dtype = r.transient(() => r.value());
      else if (k === 'shape') shape = r.value();
      else if (k === 'data_offsets') offsets = r.transient(() => r.value());
      else r.skip();
    } while (r.next());
  }
  const known = typeof dtype === 'string' ? DTYPES.get(dtype) : undefined;
  if (known === undefined || !isDtype(dtype)) return bad(r, 'UnknownDtype', `${where}: tensor ${tn} has unknown dtype ${quote(dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    return bad(r, 'InvalidShape', `${where}: tensor ${tn} has an invalid shape ${quote(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    return bad(r, 'InvalidOffset', `${where}: tensor ${tn} has invalid data_offsets ${quote(offsets)}`);
  }
  const [b, e] = offsets as [number, number];
  if (e < b) return bad(r, 'InvalidOffset', `${where}: tensor ${tn} ends (${e}) before it begins (${b})`);
  // checked multiplication: a product past 2^53 can no longer be compared exactly
  let bytes = DTYPE_BYTES[known];
  for (const d of shape as number[]) {
    bytes *= d;
    if (bytes > MAX_SAFE) return bad(r, 'InvalidShape', `${where}: tensor ${tn} shape ${quote(shape)} overflows`);
  }
  if (bytes !== e - b) {
    const span = e - b;
    return bad(r, 'TensorInvalidInfo', `${where}: tensor ${tn} is ${known}${quote(shape)} = ${bytes} bytes but its offsets span ${span}`);
  }
  r.keep(tensorEntryCost(dataStart + e));
  return { name, dtype: known, shape: shape as number[], begin: dataStart + b, end: dataStart + e };
}

function readTable(r: HeaderReader, fileSize: number, dataStart: number, where: string): SafetensorsHeader {
  if (r.peek() !== 0x7b) fail('InvalidHeaderDeserialization', `${where}: safetensors header must be a JSON object`);
  const entries = new Map<string, Entry>();
  if (r.open()) {
    do {
      const name = r.key();
      entries.set(name, readEntry(r, name, dataStart, where));
    } while (r.next());
  }
  // the first bad entry in JSON.parse's key order (array-index keys first) is the one reported
  const tensors: TensorInfo[] = [];
  let metadata: Record<string, string> = {};
  const take = (en: Entry) => {
    if (en instanceof BadEntry) fail(en.code, en.message);
    if (en instanceof Metadata) metadata = en.metadata;
    else tensors.push(en);
  };
  for (const k of arrayIndexKeys(entries.keys())) take(entries.get(k)!);
  for (const [k, en] of entries) if (!isArrayIndex(k)) take(en);
  tensors.sort((x, y) => x.begin - y.begin || x.end - y.end);
  let cursor = dataStart;
  for (const t of tensors) {
    if (t.begin !== cursor) {
      fail(
        'InvalidOffset',
        `${where}: tensor ${quote(t.name)} starts at data offset ${t.begin - dataStart}, expected ${cursor - dataStart} (tensors overlap or leave a gap)`,
      );
    }
    cursor = t.end;
  }
  if (cursor !== fileSize) {
    fail(
      'MetadataIncompleteBuffer',
      `${where}: data area is ${fileSize - dataStart} bytes but tensors cover ${cursor - dataStart} (file truncated or has trailing bytes)`,
    );
  }
  entries.clear();
  const table = new Map<string, TensorInfo>();
  for (const t of tensors) table.set(t.name, t);
  return { tensors: table, metadata, dataStart };
}

/**
 * Validate the 8-byte length prefix against the file size, in the reference order (HeaderTooSmall,
 * HeaderTooLarge, InvalidHeaderLength). Returns the header length.
 */
export function checkHeaderLength(prefix: Uint8Array, fileSize: number, where = 'file'): number {
  if (fileSize < 8 || prefix.byteLength < 8) fail('HeaderTooSmall', `${where}: ${fileSize} bytes is too small for a safetensors file`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) fail('HeaderTooLarge', `${where}: header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const len = Number(n);
  if (8 + len > fileSize) fail('InvalidHeaderLength', `${where}: header length ${len} runs past the end of the ${fileSize}-byte file`);
  return len;
}

/** One open safetensors file. Reads tensors by byte range; keeps nothing but the header in memory. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private fh: FileHandle,
    readonly header: SafetensorsHeader,
    readonly size: number,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    // stat before open: opening a FIFO blocks until a writer appears
    await checkRegularFile(path, 'shard');
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      fail('MissingFile', `cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) fail('MissingFile', `${path} is not a regular file`);
      const size = st.size;
      const prefix = new Uint8Array(8);
      if (size >= 8) await readFully(fh, prefix, 0, path);
      const len = checkHeaderLength(prefix, size, path);
      const hb = new Uint8Array(len);
      await readFully(fh, hb, 8, path);
      const header = parseHeader(hb, size, path);
      return new SafetensorsFile(path, fh, header, size);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get names(): string[] {
    return [...this.header.tensors.keys()];
  }

  info(name: string): TensorInfo {
    const t = this.header.tensors.get(name);
    if (!t) fail('TensorNotFound', `${this.path}: no tensor named ${quote(name)}`);
    return t;
  }

  /** [from, to) as checked flat element indices of tensor t (whole tensor by default). */
  private elementRange(t: TensorInfo, from?: number, to?: number): [number, number] {
    const n = (t.end - t.begin) / DTYPE_BYTES[t.dtype];
    const f = from ?? 0;
    const e = to ?? n;
    if (!Number.isSafeInteger(f) || !Number.isSafeInteger(e) || f < 0 || e > n || e < f) {
      fail('InvalidOffset', `${this.path}: element range [${from}, ${to}) outside tensor ${quote(t.name)} of ${n} elements`);
    }
    return [f, e];
  }

  /**
   * Raw little-endian bytes of a tensor, or of the element range [from, to) of it (flat element indices).
   * The result owns an exactly sized buffer at offset 0, so typed-array views of it need no copy.
   */
  async readBytes(name: string, from?: number, to?: number): Promise<Uint8Array> {
    const t = this.info(name);
    const w = DTYPE_BYTES[t.dtype];
    const [f, e] = this.elementRange(t, from, to);
    const buf = new Uint8Array((e - f) * w);
    await readFully(this.fh, buf, t.begin + f * w, this.path);
    return buf;
  }

  /**
   * A tensor (or a flat element range of it) as float32. Narrow dtypes are read and decoded in chunks straight
   * into the result, so peak memory is the float32 array plus one chunk, not plus the whole raw tensor.
   */
  async readF32(name: string, from?: number, to?: number): Promise<Float32Array> {
    const t = this.info(name);
    if (t.dtype === 'F32') {
      // the buffer is ours: reinterpret in place instead of copying
      const bytes = await this.readBytes(name, from, to);
      return new Float32Array(bytes.buffer, 0, bytes.byteLength / 4);
    }
    const w = DTYPE_BYTES[t.dtype];
    const [f, e] = this.elementRange(t, from, to);
    const out = new Float32Array(e - f);
    const per = Math.max(1, Math.floor(DECODE_CHUNK_BYTES / w));
    // two buffers: the next chunk is read (on the I/O thread pool) while this one is decoded
    const bufs = [new Uint8Array(Math.min(e - f, per) * w), new Uint8Array(Math.min(Math.max(e - f - per, 0), per) * w)];
    const readChunk = (i: number, k: number) => {
      const chunk = bufs[k]!.subarray(0, Math.min(per, e - i) * w);
      return readFully(this.fh, chunk, t.begin + i * w, this.path).then(() => chunk);
    };
    let pending = f < e ? readChunk(f, 0) : undefined;
    for (let i = f, k = 0; pending; i += per, k ^= 1) {
      const chunk = await pending;
      pending = i + per < e ? readChunk(i + per, k ^ 1) : undefined;
      decodeInto(chunk, t.dtype, out, i - f);
    }
    return out;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

async function readFully(fh: FileHandle, buf: Uint8Array, position: number, path: string): Promise<void> {
  let done = 0;
  while (done < buf.byteLength) {
    const want = Math.min(buf.byteLength - done, IO_CHUNK_BYTES);
    const { bytesRead } = await fh.read(buf, done, want, position + done);
    // the file shrank after its header was validated
    if (bytesRead === 0) fail('MetadataIncompleteBuffer', `${path}: unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
}

// ---- writing -------------------------------------------------------------------------------------------------

export interface PendingTensor {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
  byteLength: number;
}

/** Build the padded header bytes (8-byte length prefix included) for tensors laid out in the given order. */
export function encodeHeader(tensors: readonly PendingTensor[], metadata: Record<string, string> = { format: 'pt' }): Uint8Array {
  // no prototype, so a tensor named "__proto__" is an ordinary key
  const obj: Record<string, unknown> = Object.create(null);
  obj.__metadata__ = metadata;
  let off = 0;
  for (const t of tensors) {
    if (t.name === '__metadata__' || t.name in obj) fail('OutputError', `cannot write tensor ${quote(t.name)}: duplicate or reserved name`);
    obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.byteLength] };
    off += t.byteLength;
  }
  let json = JSON.stringify(obj);
  // pad with spaces so the data area starts 8-byte aligned, as the reference writer does
  const pad = (8 - (Buffer.byteLength(json) % 8)) % 8;
  json += ' '.repeat(pad);
  const body = Buffer.from(json, 'utf8');
  if (body.byteLength > MAX_HEADER_BYTES)
    fail('OutputError', `safetensors header would be ${body.byteLength} bytes, over the ${MAX_HEADER_BYTES}-byte limit readers enforce`);
  const out = new Uint8Array(8 + body.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(body.byteLength), true);
  out.set(body, 8);
  return out;
}
