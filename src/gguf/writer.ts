/**
 * GGUF writer. The header (metadata and every tensor's name, shape, type and offset) is fixed before any data is
 * written, from the tensors' types and shapes alone; then each tensor's bytes are produced one at a time and
 * written at its aligned offset, so a model is never in memory at once (one tensor at a time is).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { fail, isMoeError } from '../errors.js';
import {
  GGML_TYPES,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_SCALAR_BYTES,
  GGUF_VERSION,
  GgufValueType,
  ggmlTensorBytes,
  type GgmlType,
  type GgufScalar,
  type GgufValue,
} from './format.js';

export interface GgufTensorSpec {
  name: string;
  type: GgmlType;
  /** ggml order: ne[0] innermost (a W [out, in] is [in, out]) */
  ne: number[];
}

export interface GgufTensorInfo extends GgufTensorSpec {
  /** from the start of the data section */
  offset: number;
  bytes: number;
}

export interface GgufLayout {
  /** the header through the padding before the data section */
  header: Uint8Array;
  dataStart: number;
  tensors: GgufTensorInfo[];
  totalBytes: number;
}

const enc = new TextEncoder();

/** Growable little-endian byte buffer. */
class Bytes {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  len = 0;
  private need(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const b = new Uint8Array(cap);
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
    this.view = new DataView(b.buffer);
  }
  u8(v: number) {
    this.need(1);
    this.view.setUint8(this.len, v);
    this.len += 1;
  }
  u32(v: number) {
    this.need(4);
    this.view.setUint32(this.len, v, true);
    this.len += 4;
  }
  u64(v: number | bigint) {
    this.need(8);
    this.view.setBigUint64(this.len, BigInt(v), true);
    this.len += 8;
  }
  raw(b: Uint8Array) {
    this.need(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  str(s: string) {
    const b = enc.encode(s);
    this.u64(b.length);
    this.raw(b);
  }
  scalar(type: Exclude<GgufValueType, 9>, v: GgufScalar, key: string) {
    const bad = () =>
      fail('InvalidData', `GGUF metadata '${key}': ${JSON.stringify(typeof v === 'bigint' ? String(v) : v)} is not a valid value of type ${type}`);
    if (type === GgufValueType.STRING) {
      if (typeof v !== 'string') bad();
      this.str(v as string);
      return;
    }
    if (type === GgufValueType.BOOL) {
      if (typeof v !== 'boolean') bad();
      this.u8(v ? 1 : 0);
      return;
    }
    const n = GGUF_SCALAR_BYTES[type];
    if (n === undefined) bad();
    this.need(n!);
    const at = this.len;
    const d = this.view;
    if (type === GgufValueType.UINT64 || type === GgufValueType.INT64) {
      if (typeof v !== 'bigint' && !(typeof v === 'number' && Number.isInteger(v))) bad();
      if (type === GgufValueType.UINT64) d.setBigUint64(at, BigInt(v as number), true);
      else d.setBigInt64(at, BigInt(v as number), true);
    } else {
      if (typeof v !== 'number' || Number.isNaN(v)) bad();
      const x = v as number;
      const int = (lo: number, hi: number) => {
        if (!Number.isInteger(x) || x < lo || x > hi) bad();
      };
      switch (type) {
        case GgufValueType.UINT8:
          int(0, 255);
          d.setUint8(at, x);
          break;
        case GgufValueType.INT8:
          int(-128, 127);
          d.setInt8(at, x);
          break;
        case GgufValueType.UINT16:
          int(0, 65535);
          d.setUint16(at, x, true);
          break;
        case GgufValueType.INT16:
          int(-32768, 32767);
          d.setInt16(at, x, true);
          break;
        case GgufValueType.UINT32:
          int(0, 0xffffffff);
          d.setUint32(at, x, true);
          break;
        case GgufValueType.INT32:
          int(-0x80000000, 0x7fffffff);
          d.setInt32(at, x, true);
          break;
        case GgufValueType.FLOAT32:
          d.setFloat32(at, x, true);
          break;
        case GgufValueType.FLOAT64:
          d.setFloat64(at, x, true);
          break;
      }
    }
    this.len += n!;
  }
  bytes(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * The complete header for these metadata and tensors (general.alignment, when given as a u32 entry, sets the
 * alignment). Tensors are laid out in the given order.
 */
export function layoutGguf(metadata: ReadonlyMap<string, GgufValue> | Record<string, GgufValue>, tensors: readonly GgufTensorSpec[]): GgufLayout {
  const entries = metadata instanceof Map ? [...metadata] : Object.entries(metadata);
  const alignEntry = entries.find(([k]) => k === 'general.alignment')?.[1];
  const alignment = alignEntry ? Number(alignEntry.value) : GGUF_DEFAULT_ALIGNMENT;
  if (!Number.isInteger(alignment) || alignment <= 0 || alignment % 8 !== 0)
    fail('InvalidData', `general.alignment must be a positive multiple of 8 (got ${alignment})`);
  const b = new Bytes();
  b.u32(GGUF_MAGIC);
  b.u32(GGUF_VERSION);
  b.u64(tensors.length);
  b.u64(entries.length);
  const seen = new Set<string>();
  for (const [key, v] of entries) {
    if (seen.has(key)) fail('InvalidData', `GGUF metadata key '${key}' given twice`);
    seen.add(key);
    b.str(key);
    b.u32(v.type);
    if (v.type === GgufValueType.ARRAY) {
      b.u32(v.elemType);
      b.u64(v.value.length);
      for (const x of v.value) b.scalar(v.elemType, x, key);
    } else b.scalar(v.type, v.value, key);
  }
  const infos: GgufTensorInfo[] = [];
  let offset = 0;
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) fail('InvalidData', `GGUF tensor '${t.name}' given twice`);
    names.add(t.name);
    if (t.ne.length < 1 || t.ne.length > 4 || t.ne.some((d) => !Number.isInteger(d) || d <= 0))
      fail('InvalidShape', `GGUF tensor '${t.name}': shape [${t.ne.join(', ')}] must have 1-4 positive dimensions`);
    if (!(t.type in GGML_TYPES)) fail('UnknownDtype', `GGUF tensor '${t.name}': unknown ggml type ${t.type}`);
    let bytes: number;
    try {
      bytes = ggmlTensorBytes(t.type, t.ne);
    } catch (e) {
      fail('InvalidShape', `GGUF tensor '${t.name}': ${(e as Error).message}`);
    }
    b.str(t.name);
    b.u32(t.ne.length);
    for (const d of t.ne) b.u64(d);
    b.u32(GGML_TYPES[t.type].id);
    b.u64(offset);
    infos.push({ ...t, offset, bytes });
    offset = alignUp(offset + bytes, alignment);
  }
  const dataStart = alignUp(b.len, alignment);
  while (b.len < dataStart) b.u8(0);
  // every tensor, the last one included, is padded to the alignment: gguf.cpp reads the data section as the sum
  // of the padded sizes, and gguf-py writes the padding after each tensor
  return { header: b.bytes(), dataStart, tensors: infos, totalBytes: dataStart + offset };
}

export interface GgufWriteTensor extends GgufTensorSpec {
  /** the tensor's bytes in ggml layout, called once, in file order */
  produce(): Promise<Uint8Array> | Uint8Array;
}

export interface GgufWriteOptions {
  onTensor?(done: number, total: number, name: string): void;
}

/** Write a GGUF file at `path` (created or truncated). Returns the layout written. */
export async function writeGguf(
  path: string,
  metadata: ReadonlyMap<string, GgufValue> | Record<string, GgufValue>,
  tensors: readonly GgufWriteTensor[],
  opts: GgufWriteOptions = {},
): Promise<GgufLayout> {
  const layout = layoutGguf(metadata, tensors);
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, 'w');
    await fh.write(layout.header, 0, layout.header.length, 0);
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i]!;
      const info = layout.tensors[i]!;
      const data = await t.produce();
      if (data.length !== info.bytes)
        fail('ComputeError', `GGUF tensor '${t.name}': produced ${data.length} bytes, its ${t.type} [${t.ne.join(', ')}] layout has ${info.bytes}`);
      await fh.write(data, 0, data.length, layout.dataStart + info.offset);
      opts.onTensor?.(i + 1, tensors.length, t.name);
    }
    await fh.truncate(layout.totalBytes);
  } catch (e) {
    if (isMoeError(e)) throw e;
    fail('OutputError', `cannot write ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  } finally {
    await fh?.close();
  }
  return layout;
}
