/**
 * GGUF reader (for tests, `moe inspect` and reading back what we wrote). Validation follows gguf.cpp's order and
 * is strict before anything is allocated from a count in the file: magic, version, counts within named limits,
 * every string and array length within the bytes that remain, known value and tensor types, 1-4 positive
 * dimensions whose row is a whole number of blocks, offsets exactly where the previous padded tensor ends (as
 * gguf.cpp requires), and the data section inside the file.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { fail, isMoeError } from '../errors.js';
import {
  GGML_TYPES,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_SCALAR_BYTES,
  GgufValueType,
  ggmlTensorBytes,
  ggmlTypeById,
  type GgmlType,
  type GgufScalar,
  type GgufValue,
} from './format.js';
import { alignUp, type GgufTensorInfo } from './writer.js';

/** Limits on counts read from the file (a hostile header must not make us allocate from them). */
export const GGUF_LIMITS = {
  /** the header is read into memory: 512 MiB covers the largest vocabularies with merges many times over */
  maxHeaderBytes: 512 * 1024 * 1024,
  maxTensors: 1_000_000,
  maxKv: 1_000_000,
  maxStringBytes: 64 * 1024 * 1024,
  maxArrayLength: 64 * 1024 * 1024,
};

export interface GgufFile {
  path: string;
  version: number;
  alignment: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  /** absolute file offset of the data section */
  dataStart: number;
  fileBytes: number;
}

const dec = new TextDecoder('utf-8', { fatal: true });

class Cursor {
  pos = 0;
  private view: DataView;
  constructor(
    private readonly buf: Uint8Array,
    private readonly path: string,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  private need(n: number, what: string) {
    if (n < 0 || this.pos + n > this.buf.length) fail('MetadataIncompleteBuffer', `${this.path}: GGUF header ends inside ${what} (offset ${this.pos})`);
  }
  u8(what: string) {
    this.need(1, what);
    return this.view.getUint8(this.pos++);
  }
  u32(what: string) {
    this.need(4, what);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }
  /** a u64 count or size that must fit `max` */
  count(what: string, max: number): number {
    const v = this.u64(what);
    if (v > BigInt(max)) fail('InvalidHeader', `${this.path}: GGUF ${what} is ${v}, above the limit of ${max}`);
    return Number(v);
  }
  str(what: string): string {
    const n = this.count(`${what} length`, GGUF_LIMITS.maxStringBytes);
    this.need(n, what);
    try {
      const s = dec.decode(this.buf.subarray(this.pos, this.pos + n));
      this.pos += n;
      return s;
    } catch {
      fail('InvalidHeader', `${this.path}: GGUF ${what} is not valid UTF-8`);
    }
  }
  scalar(type: number, what: string): GgufScalar {
    if (type === GgufValueType.STRING) return this.str(what);
    const n = GGUF_SCALAR_BYTES[type as GgufValueType];
    if (n === undefined) fail('InvalidHeader', `${this.path}: GGUF ${what} has unknown value type ${type}`);
    this.need(n, what);
    const d = this.view;
    const at = this.pos;
    this.pos += n;
    switch (type) {
      case GgufValueType.UINT8:
        return d.getUint8(at);
      case GgufValueType.INT8:
        return d.getInt8(at);
      case GgufValueType.UINT16:
        return d.getUint16(at, true);
      case GgufValueType.INT16:
        return d.getInt16(at, true);
      case GgufValueType.UINT32:
        return d.getUint32(at, true);
      case GgufValueType.INT32:
        return d.getInt32(at, true);
      case GgufValueType.FLOAT32:
        return d.getFloat32(at, true);
      case GgufValueType.BOOL: {
        const b = d.getUint8(at);
        if (b > 1) fail('InvalidHeader', `${this.path}: GGUF ${what} is a bool of value ${b}`);
        return b === 1;
      }
      case GgufValueType.UINT64:
        return d.getBigUint64(at, true);
      case GgufValueType.INT64:
        return d.getBigInt64(at, true);
      default:
        return d.getFloat64(at, true);
    }
  }
}

/** Read the header of a GGUF file (tensor data stays on disk: readGgufTensor reads one tensor). */
export async function readGguf(path: string): Promise<GgufFile> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, 'r');
    const size = (await fh.stat()).size;
    if (size < 24) fail('HeaderTooSmall', `${path}: ${size} bytes is too small for a GGUF header`);
    // the header's size is not stored: read a prefix and grow it while parsing runs out of bytes
    let len = Math.min(size, 1 << 20);
    for (;;) {
      const buf = new Uint8Array(len);
      await fh.read(buf, 0, len, 0);
      try {
        return parseGguf(buf, path, size);
      } catch (e) {
        if (isMoeError(e) && e.code === 'MetadataIncompleteBuffer' && len < size && len < GGUF_LIMITS.maxHeaderBytes) {
          len = Math.min(size, GGUF_LIMITS.maxHeaderBytes, len * 4);
          continue;
        }
        throw e;
      }
    }
  } catch (e) {
    if (isMoeError(e)) throw e;
    return fail('MissingFile', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  } finally {
    await fh?.close();
  }
}

/** Parse a GGUF header from the first bytes of a file of `fileBytes` bytes. */
export function parseGguf(buf: Uint8Array, path: string, fileBytes: number): GgufFile {
  const c = new Cursor(buf, path);
  const magic = c.u32('the magic');
  if (magic !== GGUF_MAGIC) fail('InvalidHeader', `${path}: not a GGUF file (magic 0x${magic.toString(16)})`);
  const version = c.u32('the version');
  if (version !== 2 && version !== 3) fail('InvalidHeader', `${path}: GGUF version ${version} is not supported (2 or 3)`);
  const nTensors = c.count('tensor count', GGUF_LIMITS.maxTensors);
  const nKv = c.count('metadata count', GGUF_LIMITS.maxKv);
  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < nKv; i++) {
    const key = c.str(`key ${i}`);
    if (metadata.has(key)) fail('InvalidHeader', `${path}: GGUF metadata key '${key}' appears twice`);
    const type = c.u32(`type of '${key}'`);
    if (type === GgufValueType.ARRAY) {
      const elemType = c.u32(`element type of '${key}'`);
      if (elemType === GgufValueType.ARRAY || !(elemType in GGUF_SCALAR_BYTES || elemType === GgufValueType.STRING))
        fail('InvalidHeader', `${path}: GGUF array '${key}' has unsupported element type ${elemType}`);
      const n = c.count(`length of '${key}'`, GGUF_LIMITS.maxArrayLength);
      const minBytes = elemType === GgufValueType.STRING ? 8 : GGUF_SCALAR_BYTES[elemType as GgufValueType]!;
      if (n * minBytes > buf.length - c.pos) fail('MetadataIncompleteBuffer', `${path}: GGUF array '${key}' of ${n} elements runs past the end of the file`);
      const vals: GgufScalar[] = new Array(n);
      for (let k = 0; k < n; k++) vals[k] = c.scalar(elemType, `'${key}'[${k}]`);
      metadata.set(key, { type: 9, elemType: elemType as Exclude<GgufValueType, 9>, value: vals });
    } else {
      metadata.set(key, { type: type as Exclude<GgufValueType, 9>, value: c.scalar(type, `'${key}'`) });
    }
  }
  const al = metadata.get('general.alignment');
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  if (al) {
    if (al.type !== GgufValueType.UINT32) fail('InvalidHeader', `${path}: general.alignment must be a u32`);
    alignment = al.value as number;
    if (alignment === 0 || (alignment & (alignment - 1)) !== 0) fail('InvalidHeader', `${path}: general.alignment ${alignment} is not a power of two`);
  }
  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  let expect = 0;
  for (let i = 0; i < nTensors; i++) {
    const name = c.str(`tensor ${i} name`);
    if (names.has(name)) fail('InvalidHeader', `${path}: GGUF tensor '${name}' appears twice`);
    names.add(name);
    const nd = c.u32(`dimensions of '${name}'`);
    if (nd < 1 || nd > 4) fail('InvalidShape', `${path}: GGUF tensor '${name}' has ${nd} dimensions (1-4)`);
    const ne: number[] = [];
    for (let d = 0; d < nd; d++) {
      const v = c.u64(`shape of '${name}'`);
      if (v === 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) fail('InvalidShape', `${path}: GGUF tensor '${name}' has dimension ${v}`);
      ne.push(Number(v));
    }
    const tid = c.u32(`type of '${name}'`);
    const type: GgmlType | undefined = ggmlTypeById(tid);
    if (!type) fail('UnknownDtype', `${path}: GGUF tensor '${name}' has unknown ggml type ${tid}`);
    const offset = c.u64(`offset of '${name}'`);
    let bytes: number;
    try {
      bytes = ggmlTensorBytes(type, ne);
    } catch (e) {
      fail('InvalidShape', `${path}: GGUF tensor '${name}': ${(e as Error).message}`);
    }
    if (!Number.isSafeInteger(bytes)) fail('InvalidShape', `${path}: GGUF tensor '${name}' is too large`);
    if (offset !== BigInt(expect))
      fail(
        'InvalidOffset',
        `${path}: GGUF tensor '${name}' is at offset ${offset}, expected ${expect} (tensors must follow each other, padded to ${alignment})`,
      );
    tensors.push({ name, type, ne, offset: expect, bytes });
    expect = alignUp(expect + bytes, alignment);
  }
  const dataStart = alignUp(c.pos, alignment);
  const last = tensors[tensors.length - 1];
  const dataEnd = dataStart + (last ? last.offset + last.bytes : 0);
  if (dataEnd > fileBytes) fail('MetadataIncompleteBuffer', `${path}: GGUF data ends at byte ${dataEnd}, the file has ${fileBytes}`);
  return { path, version, alignment, metadata, tensors, dataStart, fileBytes };
}

/** One tensor's raw bytes. */
export async function readGgufTensor(file: GgufFile, name: string): Promise<Uint8Array> {
  const t = file.tensors.find((x) => x.name === name);
  if (!t) fail('TensorNotFound', `${file.path}: no GGUF tensor '${name}'`);
  const fh = await open(file.path, 'r');
  try {
    const buf = new Uint8Array(t.bytes);
    const { bytesRead } = await fh.read(buf, 0, t.bytes, file.dataStart + t.offset);
    if (bytesRead !== t.bytes) fail('MetadataIncompleteBuffer', `${file.path}: GGUF tensor '${name}' is cut short`);
    return buf;
  } finally {
    await fh.close();
  }
}

/** A metadata value as a plain JS value (arrays as arrays), or undefined. */
export function ggufValue(file: Pick<GgufFile, 'metadata'>, key: string): GgufScalar | readonly GgufScalar[] | undefined {
  return file.metadata.get(key)?.value;
}

export { GGML_TYPES };
