/**
 * Fuzz the checkpoint parsers with seeded mutations of valid headers and index files: every input must either
 * parse into a self-consistent result or fail with a MoeError, quickly. Anything else (TypeError, RangeError, a
 * hang, an allocation failure) is a bug.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isMoeError } from '../../src/errors.js';
import { Checkpoint } from '../../src/io/checkpoint.js';
import { DTYPE_BYTES, DTYPES } from '../../src/io/dtype.js';
import { parseHeader, SafetensorsFile, type SafetensorsHeader } from '../../src/io/safetensors.js';
import { rawSafetensors, rng, tempDir } from '../io/helpers.js';

const tmp = tempDir('moe-fuzz-');
afterAll(() => tmp.cleanup());

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rand, n: number) => Math.floor(r() * n);

/** A valid header object and its data size, with random tensors. */
function validHeader(r: Rand): { header: Record<string, unknown>; dataBytes: number } {
  const header: Record<string, unknown> = {};
  if (r() < 0.7) header.__metadata__ = { format: 'pt' };
  let off = 0;
  const n = 1 + int(r, 5);
  for (let i = 0; i < n; i++) {
    const dtype = pick(r, DTYPES);
    const shape = Array.from({ length: int(r, 4) }, () => int(r, 5));
    const bytes = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    header[`model.layers.${i}.w${int(r, 100)}`] = { dtype, shape, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  return { header, dataBytes: off };
}

const NUMBER_POOL = [
  '-1',
  '0',
  '1',
  '3',
  '4294967296',
  '9007199254740991',
  '9007199254740993',
  '1e15',
  '1e308',
  '1.5',
  '-0',
  'null',
  '"7"',
  '[]',
  '{}',
  'true',
  '18446744073709551615',
  '2e-300',
];
const TOKENS = ['{', '}', '[', ']', '"', ':', ',', '\\', '\\u0000', '\u00ff', 'dtype', '__metadata__', 'data_offsets', '\n'];

/** One mutation of header text, chosen among text-level and JSON-level edits. */
function mutateText(r: Rand, text: string, header: Record<string, unknown>): string {
  switch (int(r, 8)) {
    case 0: {
      // numeric edit
      const nums = [...text.matchAll(/-?\d+(\.\d+)?(e-?\d+)?/g)];
      if (!nums.length) return text + '1';
      const m = pick(r, nums);
      return text.slice(0, m.index) + pick(r, NUMBER_POOL) + text.slice(m.index! + m[0].length);
    }
    case 1: {
      // delete a span
      const a = int(r, text.length);
      return text.slice(0, a) + text.slice(a + 1 + int(r, 8));
    }
    case 2: {
      // insert a structural token
      const a = int(r, text.length + 1);
      return text.slice(0, a) + pick(r, TOKENS) + text.slice(a);
    }
    case 3: {
      // duplicate a span
      const a = int(r, text.length);
      const b = Math.min(text.length, a + 1 + int(r, 40));
      return text.slice(0, b) + text.slice(a, b) + text.slice(b);
    }
    case 4: {
      // truncate
      return text.slice(0, int(r, text.length));
    }
    default: {
      // JSON-level: valid JSON, hostile semantics
      const h = structuredClone(header) as Record<string, Record<string, unknown>>;
      const names = Object.keys(h).filter((k) => k !== '__metadata__');
      const t = h[pick(r, names)]!;
      const field = pick(r, ['dtype', 'shape', 'data_offsets', 'extra']);
      const value = pick(r, [
        undefined,
        null,
        'F32',
        'f32',
        'F4',
        'Q4_K',
        7,
        [],
        [1],
        [0, 0],
        [-1, 4],
        [4, 0],
        [1, 2, 3],
        [2 ** 53, 2 ** 53 + 8],
        [1e15],
        [1e15, 1e15],
        ['2'],
        [0.5, 1],
        { a: 1 },
        'x'.repeat(200),
        [2 ** 31, 2 ** 31],
        [1, NaN],
      ]);
      if (value === undefined) delete t[field];
      else t[field] = value;
      if (r() < 0.2) h.__metadata__ = pick(r, [null, 3, { format: 1 }, [], { a: 'b' }]) as never;
      if (r() < 0.1) return JSON.stringify(pick(r, [[h], 'str', 42, null]));
      return JSON.stringify(h);
    }
  }
}

function checkInvariants(h: SafetensorsHeader, fileSize: number): void {
  const ts = [...h.tensors.values()].sort((a, b) => a.begin - b.begin);
  let cursor = h.dataStart;
  for (const t of ts) {
    expect(t.begin).toBe(cursor);
    expect(t.end - t.begin).toBe(t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype]);
    cursor = t.end;
  }
  expect(cursor).toBe(fileSize);
}

/** Run fn; return 'ok' or the MoeError code; rethrow anything else with the input attached. */
function classify(fn: () => void, input: string): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    if (isMoeError(e)) {
      expect(e.message).not.toMatch(/\n/);
      return e.code;
    }
    throw new Error(`non-MoeError ${String(e)} for input ${JSON.stringify(input.slice(0, 300))}`);
  }
}

describe('fuzz: safetensors headers', () => {
  it('6000 mutated headers through parseHeader: ok (consistent) or MoeError, each fast', () => {
    const r = rng(20240601);
    const codes = new Map<string, number>();
    let worst = 0;
    for (let i = 0; i < 6000; i++) {
      const { header, dataBytes } = validHeader(r);
      let text = JSON.stringify(header);
      for (let k = 1 + int(r, 3); k > 0; k--) text = mutateText(r, text, header);
      let bytes: Uint8Array = Buffer.from(text, 'utf8');
      if (r() < 0.15) {
        // raw bit flips, which also break UTF-8
        bytes = Uint8Array.from(bytes);
        for (let k = 1 + int(r, 4); k > 0; k--) if (bytes.length) bytes[int(r, bytes.length)]! ^= 1 << int(r, 8);
      }
      const fileSize = 8 + bytes.byteLength + (r() < 0.7 ? dataBytes : int(r, dataBytes * 2 + 16));
      const t0 = performance.now();
      const code = classify(() => checkInvariants(parseHeader(bytes, fileSize), fileSize), text);
      worst = Math.max(worst, performance.now() - t0);
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    // generous bounds: "no hang" is the property, and the CI machine may be busy
    expect(worst).toBeLessThan(1000);
    // the mutations reach many distinct checks (a fuzzer that only hits JSON errors tests little)
    for (const c of [
      'ok',
      'InvalidHeader',
      'InvalidHeaderDeserialization',
      'UnknownDtype',
      'InvalidShape',
      'InvalidOffset',
      'TensorInvalidInfo',
      'MetadataIncompleteBuffer',
    ]) {
      expect(codes.get(c) ?? 0, `${c} in ${JSON.stringify([...codes])}`).toBeGreaterThan(10);
    }
  });

  it('300 mutated files (length prefix included) through SafetensorsFile: ok and readable, or MoeError', async () => {
    const r = rng(7);
    const dir = join(tmp.dir, 'files');
    mkdirSync(dir);
    const codes = new Map<string, number>();
    for (let i = 0; i < 300; i++) {
      const { header, dataBytes } = validHeader(r);
      let text = JSON.stringify(header);
      if (r() < 0.8) text = mutateText(r, text, header);
      const lengthOverride =
        r() < 0.25
          ? pick(r, [0n, 1n, 7n, BigInt(Buffer.byteLength(text) + 1), BigInt(Buffer.byteLength(text) - 1), 2n ** 32n, 100_000_001n, 2n ** 63n, 2n ** 64n - 1n])
          : undefined;
      const dataLen = r() < 0.8 ? dataBytes : int(r, dataBytes + 8);
      let file = rawSafetensors(text, dataLen, lengthOverride);
      if (r() < 0.1) file = file.subarray(0, int(r, file.length));
      const path = join(dir, `f${i}.safetensors`);
      writeFileSync(path, file);
      const t0 = performance.now();
      let code = 'ok';
      try {
        const f = await SafetensorsFile.open(path);
        for (const n of f.names) {
          const v = await f.readF32(n);
          expect(v.length).toBe(f.info(n).shape.reduce((a, b) => a * b, 1));
        }
        await f.close();
      } catch (e) {
        if (!isMoeError(e)) throw new Error(`non-MoeError ${String(e)} for file ${i}: ${text.slice(0, 200)}`);
        code = e.code;
      }
      expect(performance.now() - t0).toBeLessThan(3000);
      codes.set(code, (codes.get(code) ?? 0) + 1);
      rmSync(path);
    }
    expect(codes.get('ok') ?? 0).toBeGreaterThan(20);
    expect(codes.size).toBeGreaterThan(5);
  });
});

describe('fuzz: sharded index files', () => {
  it('300 mutated model.safetensors.index.json through Checkpoint.open: ok or MoeError', async () => {
    const r = rng(99);
    const base = join(tmp.dir, 'idx');
    mkdirSync(base);
    // two valid shards shared by every case
    const shardA = rawSafetensors({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, 8);
    const shardB = rawSafetensors({ b: { dtype: 'U8', shape: [3], data_offsets: [0, 3] }, c: { dtype: 'I8', shape: [1], data_offsets: [3, 4] } }, 4);
    const valid = {
      metadata: { total_size: 12 },
      weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' },
    };
    const VALUES = [
      '../model-00001-of-00002.safetensors',
      '/etc/passwd',
      '',
      'sub/../../x',
      'nope.safetensors',
      'config.json',
      '.',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
      null,
      3,
      [],
      {},
      'a\u0000b',
      '..\\..\\x',
      'sub',
    ];
    const codes = new Map<string, number>();
    for (let i = 0; i < 300; i++) {
      const dir = join(base, `c${i}`);
      mkdirSync(join(dir, 'sub'), { recursive: true });
      writeFileSync(join(dir, 'config.json'), '{"model_type":"mixtral"}');
      writeFileSync(join(dir, 'model-00001-of-00002.safetensors'), shardA);
      writeFileSync(join(dir, 'model-00002-of-00002.safetensors'), shardB);
      const idx = structuredClone(valid) as { metadata: unknown; weight_map: Record<string, unknown> };
      let text: string;
      const kind = int(r, 4);
      if (kind === 0) {
        idx.weight_map[pick(r, ['a', 'b', 'c', 'zz', '__proto__'])] = pick(r, VALUES);
        text = JSON.stringify(idx);
      } else if (kind === 1) {
        text = JSON.stringify(pick(r, [{ ...idx, weight_map: pick(r, [null, [], 'x', 1, {}]) }, { metadata: {} }, [idx], null, 'x']));
      } else {
        text = JSON.stringify(idx);
        for (let k = 1 + int(r, 3); k > 0; k--) text = mutateText(r, text, { x: {} });
      }
      writeFileSync(join(dir, 'model.safetensors.index.json'), text);
      const t0 = performance.now();
      let code = 'ok';
      try {
        const ck = await Checkpoint.open(dir);
        for (const n of ck.tensorNames) await ck.readF32(n);
        await ck.close();
      } catch (e) {
        if (!isMoeError(e)) throw new Error(`non-MoeError ${String(e)} for index ${text.slice(0, 200)}`);
        expect(e.message).not.toMatch(/\n/);
        code = e.code;
      }
      expect(performance.now() - t0).toBeLessThan(3000);
      codes.set(code, (codes.get(code) ?? 0) + 1);
      rmSync(dir, { recursive: true });
    }
    for (const c of ['ok', 'UnsafePath', 'InvalidIndex', 'MissingFile']) expect(codes.get(c) ?? 0, `${c} in ${JSON.stringify([...codes])}`).toBeGreaterThan(3);
  });
});
