import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GgufValueType, ggmlTensorBytes, kv } from '../../src/gguf/format.js';
import { readGguf, readGgufTensor } from '../../src/gguf/reader.js';
import { layoutGguf, writeGguf } from '../../src/gguf/writer.js';

const dir = await mkdtemp(join(tmpdir(), 'moe-gguf-format-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('GGUF writer and reader', () => {
  it('round-trips every value type, tensor shapes, aligned offsets and bytes', async () => {
    const meta = {
      'general.architecture': kv.str('llama'),
      'a.u8': { type: GgufValueType.UINT8, value: 200 },
      'a.i8': { type: GgufValueType.INT8, value: -5 },
      'a.u16': { type: GgufValueType.UINT16, value: 60000 },
      'a.i16': { type: GgufValueType.INT16, value: -3000 },
      'a.u32': kv.u32(4000000000),
      'a.i32': kv.i32(-7),
      'a.f32': kv.f32(0.5),
      'a.bool': kv.bool(true),
      'a.u64': { type: GgufValueType.UINT64, value: 2n ** 40n },
      'a.i64': { type: GgufValueType.INT64, value: -(2n ** 40n) },
      'a.f64': { type: GgufValueType.FLOAT64, value: Math.PI },
      'a.strs': kv.arr(GgufValueType.STRING, ['x', 'ünï', '']),
      'a.ints': kv.arr(GgufValueType.INT32, [1, -2, 3]),
    } as const;
    const a = Uint8Array.from({ length: 5 * 3 * 4 }, (_, i) => i);
    const b = Uint8Array.from({ length: 34 * 2 }, (_, i) => 255 - i);
    const path = join(dir, 'rt.gguf');
    const layout = await writeGguf(path, meta, [
      { name: 'a', type: 'F32', ne: [5, 3], produce: () => a },
      { name: 'b', type: 'Q8_0', ne: [32, 2], produce: () => b },
    ]);
    const f = await readGguf(path);
    expect(f.version).toBe(3);
    expect(f.alignment).toBe(32);
    for (const [k, v] of Object.entries(meta)) expect(f.metadata.get(k)).toEqual(v);
    expect(f.tensors.map((t) => [t.name, t.type, t.ne, t.offset, t.bytes])).toEqual([
      ['a', 'F32', [5, 3], 0, 60],
      ['b', 'Q8_0', [32, 2], 64, 68],
    ]);
    expect(f.dataStart % 32).toBe(0);
    expect(f.dataStart).toBe(layout.dataStart);
    // every tensor padded, the last one too
    expect(f.fileBytes).toBe(f.dataStart + 64 + 96);
    expect(await readGgufTensor(f, 'a')).toEqual(a);
    expect(await readGgufTensor(f, 'b')).toEqual(b);
  });

  it('computes exact bytes per ggml type and refuses rows that are not whole blocks', () => {
    expect(ggmlTensorBytes('Q4_K', [256, 4, 2])).toBe(144 * 8);
    expect(ggmlTensorBytes('Q6_K', [512, 3])).toBe(210 * 6);
    expect(ggmlTensorBytes('BF16', [7, 3])).toBe(42);
    expect(() => ggmlTensorBytes('Q4_K', [128, 2])).toThrow(/multiple of 256/);
    expect(() => layoutGguf({}, [{ name: 'x', type: 'Q2_K', ne: [128] }])).toThrow(/multiple of 256/);
    expect(() => layoutGguf({}, [{ name: 'x', type: 'F32', ne: [0] }])).toThrow(/positive/);
    expect(() => layoutGguf({ k: kv.u32(-1) }, [])).toThrow(/not a valid value/);
  });

  it('refuses malformed files with one clear error each', async () => {
    const good = new Uint8Array(await readFile(join(dir, 'rt.gguf')));
    const bad = async (bytes: Uint8Array, re: RegExp) => {
      const p = join(dir, 'bad.gguf');
      await writeFile(p, bytes);
      await expect(readGguf(p)).rejects.toThrow(re);
    };
    const magic = good.slice();
    magic[0] = 0;
    await bad(magic, /not a GGUF file/);
    const version = good.slice();
    version[4] = 9;
    await bad(version, /version 9/);
    await bad(good.subarray(0, 20), /too small/);
    await bad(good.subarray(0, 200), /header ends inside/);
    // the data section cut short
    await bad(good.subarray(0, good.length - 100), /data ends at byte/);
    // an absurd tensor count
    const count = good.slice();
    new DataView(count.buffer).setBigUint64(8, 2n ** 50n, true);
    await bad(count, /tensor count .* above the limit/);
    // the second tensor's offset moved off its padded place
    const f = await readGguf(join(dir, 'rt.gguf'));
    const hdr = good.subarray(0, f.dataStart);
    const at = Buffer.from(hdr).lastIndexOf(Buffer.from([64, 0, 0, 0, 0, 0, 0, 0]));
    const off = good.slice();
    off[at] = 96;
    await bad(off, /offset 96, expected 64/);
  });
});
