import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Checkpoint } from '../../src/io/checkpoint.js';
import { DTYPE_BYTES, DTYPES, fromF32, toF32, type Dtype } from '../../src/io/dtype.js';
import { parseHeader } from '../../src/io/safetensors.js';
import { CheckpointWriter, planShards, type TensorSpec } from '../../src/io/writer.js';
import { MIXTRAL_CONFIG, rng, tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

/** Random bit patterns: NaN payloads, subnormals, negative zero all included, since bytes must survive untouched. */
function randomBytes(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
}

function specsForAllDtypes(): TensorSpec[] {
  const specs: TensorSpec[] = [];
  DTYPES.forEach((dtype, i) => {
    specs.push({ name: `model.layers.${i}.w_${dtype}`, dtype, shape: [3 + i, 5] });
    specs.push({ name: `model.layers.${i}.scalar_${dtype}`, dtype, shape: [] });
  });
  specs.push({ name: 'empty', dtype: 'F32', shape: [0, 4] });
  return specs;
}

async function writeAll(dir: string, specs: TensorSpec[], maxShardBytes?: number): Promise<Map<string, Uint8Array>> {
  const { mkdirSync, writeFileSync } = await import('node:fs');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(MIXTRAL_CONFIG));
  const w = await CheckpointWriter.create(dir, specs, { maxShardBytes });
  const data = new Map<string, Uint8Array>();
  // out of plan order, to show offsets are fixed up front
  for (const [i, s] of [...specs.entries()].reverse()) {
    const n = s.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[s.dtype];
    const bytes = randomBytes(n, i + 1);
    data.set(s.name, bytes);
    await w.write(s.name, bytes);
  }
  await w.finalize();
  return data;
}

describe('write then read', () => {
  it('is bit-exact for every dtype in a single file', async () => {
    const dir = join(tmp.dir, 'single');
    const specs = specsForAllDtypes();
    const data = await writeAll(dir, specs);
    expect(readdirSync(dir).sort()).toEqual(['config.json', 'model.safetensors']);
    const ck = await Checkpoint.open(dir);
    expect(ck.tensorNames.sort()).toEqual(specs.map((s) => s.name).sort());
    for (const s of specs) {
      expect(ck.dtype(s.name)).toBe(s.dtype);
      expect(ck.shape(s.name)).toEqual(s.shape);
      expect(Buffer.from(await ck.readBytes(s.name)).equals(Buffer.from(data.get(s.name)!))).toBe(true);
      const f = await ck.readF32(s.name);
      expect(
        Buffer.from(new Uint8Array(f.buffer, f.byteOffset, f.byteLength)).equals(Buffer.from(new Uint8Array(toF32(data.get(s.name)!, s.dtype).buffer))),
      ).toBe(true);
    }
    // header: 8-byte aligned data area and __metadata__ {"format":"pt"}
    const file = readFileSync(join(dir, 'model.safetensors'));
    const len = Number(file.readBigUInt64LE(0));
    expect(len % 8).toBe(0);
    const h = parseHeader(file.subarray(8, 8 + len), file.byteLength);
    expect(h.metadata).toEqual({ format: 'pt' });
    await ck.close();
  });

  it('is bit-exact for every dtype across shards, with an index', async () => {
    const dir = join(tmp.dir, 'sharded');
    const specs = specsForAllDtypes();
    const data = await writeAll(dir, specs, 200);
    const files = readdirSync(dir)
      .filter((f) => f.endsWith('.safetensors'))
      .sort();
    const planned = planShards(specs, 200);
    expect(files.length).toBe(planned.length);
    expect(files.length).toBeGreaterThan(3);
    expect(files[0]).toBe(`model-00001-of-${String(files.length).padStart(5, '0')}.safetensors`);
    for (const f of files) {
      // a shard exceeds the limit only when a single tensor is larger than the limit
      const st = readFileSync(join(dir, f));
      const hl = Number(st.readBigUInt64LE(0));
      const h = parseHeader(st.subarray(8, 8 + hl), st.byteLength);
      const dataBytes = st.byteLength - 8 - hl;
      if (h.tensors.size > 1) expect(dataBytes).toBeLessThanOrEqual(200);
    }
    const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
    expect(Object.keys(index.weight_map).sort()).toEqual(specs.map((s) => s.name).sort());
    const total = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1) * DTYPE_BYTES[s.dtype], 0);
    expect(index.metadata.total_size).toBe(total);
    const ck = await Checkpoint.open(dir);
    expect(ck.shardPaths.length).toBe(files.length);
    expect(ck.totalBytes).toBe(total);
    for (const s of specs) {
      expect(Buffer.from(await ck.readBytes(s.name)).equals(Buffer.from(data.get(s.name)!))).toBe(true);
      expect(ck.shardOf(s.name)).toBe(join(dir, index.weight_map[s.name]));
    }
    await ck.close();
  });

  it('reads element ranges without reading the rest', async () => {
    const dir = join(tmp.dir, 'ranges');
    const vals = Float32Array.from({ length: 60 }, (_, i) => i * 0.5 - 7);
    const { mkdirSync, writeFileSync } = await import('node:fs');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), '{}');
    const w = await CheckpointWriter.create(dir, [{ name: 'x', dtype: 'BF16', shape: [6, 10] }]);
    await w.write('x', fromF32(vals, 'BF16'));
    await w.finalize();
    const ck = await Checkpoint.open(dir);
    expect([...(await ck.readF32('x', 13, 27))]).toEqual([...vals.subarray(13, 27)]);
    expect((await ck.readF32('x', 5, 5)).length).toBe(0);
    await expect(ck.readF32('x', 50, 61)).rejects.toMatchObject({ code: 'InvalidOffset' });
    await expect(ck.readF32('x', 1.5, 3)).rejects.toMatchObject({ code: 'InvalidOffset' });
    await ck.close();
  });

  it('decodes tensors larger than one decode chunk (4 MB) exactly, whole and across chunk boundaries', async () => {
    const dir = join(tmp.dir, 'big');
    const { mkdirSync, writeFileSync } = await import('node:fs');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), '{}');
    const n = 3 * 1_000_001;
    const bytes = randomBytes(n * 2, 11);
    const w = await CheckpointWriter.create(dir, [{ name: 'big', dtype: 'F16', shape: [3, 1_000_001] }]);
    await w.write('big', bytes);
    await w.finalize();
    const ck = await Checkpoint.open(dir);
    const want = toF32(bytes, 'F16');
    const got = await ck.readF32('big');
    expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    const part = await ck.readF32('big', 2_097_000, 2_097_300); // straddles the 2^21-element chunk edge
    expect(Buffer.from(part.buffer).equals(Buffer.from(want.slice(2_097_000, 2_097_300).buffer))).toBe(true);
    await ck.close();
  });

  it('streams a tensor in parts and refuses an incomplete plan', async () => {
    const dir = join(tmp.dir, 'parts');
    const { mkdirSync, writeFileSync } = await import('node:fs');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), '{}');
    const w = await CheckpointWriter.create(dir, [
      { name: 'e', dtype: 'U8', shape: [3, 4] },
      { name: 'f', dtype: 'I32', shape: [2] },
    ]);
    await w.writePart('e', 8, Uint8Array.of(9, 10, 11, 12));
    await w.writePart('e', 0, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
    await expect(w.finalize()).rejects.toMatchObject({ code: 'OutputError', message: expect.stringContaining('"f"') });
    await expect(w.write('f', new Uint8Array(7))).rejects.toMatchObject({ code: 'OutputError' });
    await expect(w.writePart('e', 10, new Uint8Array(4))).rejects.toMatchObject({ code: 'OutputError' });
    await expect(w.write('nope', new Uint8Array(1))).rejects.toMatchObject({ code: 'OutputError' });
    await w.write('f', new Uint8Array(Int32Array.of(-5, 7).buffer));
    await w.finalize();
    const ck = await Checkpoint.open(dir);
    expect([...(await ck.readF32('e'))]).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect([...(await ck.readF32('f'))]).toEqual([-5, 7]);
    await ck.close();
  });

  it('rejects invalid plans', async () => {
    await expect(
      CheckpointWriter.create(tmp.dir, [
        { name: 'a', dtype: 'F32', shape: [1] },
        { name: 'a', dtype: 'F32', shape: [1] },
      ]),
    ).rejects.toMatchObject({ code: 'OutputError' });
    await expect(CheckpointWriter.create(tmp.dir, [{ name: 'a', dtype: 'F32', shape: [-1] }])).rejects.toMatchObject({ code: 'OutputError' });
    await expect(CheckpointWriter.create(tmp.dir, [{ name: '__metadata__', dtype: 'F32', shape: [1] }])).rejects.toMatchObject({ code: 'OutputError' });
  });

  it('keeps a tensor named __proto__', async () => {
    const dir = join(tmp.dir, 'proto');
    const { mkdirSync, writeFileSync } = await import('node:fs');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), '{}');
    const w = await CheckpointWriter.create(dir, [{ name: '__proto__', dtype: 'U8', shape: [2] }]);
    await w.write('__proto__', Uint8Array.of(4, 2));
    await w.finalize();
    const ck = await Checkpoint.open(dir);
    expect([...(await ck.readBytes('__proto__'))]).toEqual([4, 2]);
    expect(statSync(join(dir, 'model.safetensors')).size % 8).toBe(2);
    await ck.close();
  });
});

describe('conversion round trips through files', () => {
  it('float dtypes re-encode bit-exactly from their float32 decoding (non-NaN codes)', async () => {
    for (const d of ['F16', 'BF16', 'F8_E4M3', 'F8_E5M2', 'F64'] as Dtype[]) {
      const w = DTYPE_BYTES[d];
      const bytes = randomBytes(4096 * w, 7);
      const dec = toF32(bytes, d);
      // NaN payloads are not preserved by design (NaN decodes to a canonical NaN); drop them from this check
      const keep = [...dec.keys()].filter((i) => !Number.isNaN(dec[i]!));
      const enc = fromF32(dec, d);
      for (const i of keep) {
        if (d === 'F64') continue; // F64 -> F32 narrows; checked elsewhere
        expect(Buffer.from(enc.subarray(i * w, (i + 1) * w)).equals(Buffer.from(bytes.subarray(i * w, (i + 1) * w)))).toBe(true);
      }
      expect(keep.length).toBeGreaterThan(3000);
    }
  });
});

describe('--max-shard-size values', () => {
  it('parses decimal and binary units and rejects nonsense', async () => {
    const { parseByteSize } = await import('../../src/io/writer.js');
    expect(parseByteSize('5GB')).toBe(5e9);
    expect(parseByteSize('500MB')).toBe(5e8);
    expect(parseByteSize('2GiB')).toBe(2 * 1024 ** 3);
    expect(parseByteSize('1.5kb')).toBe(1500);
    expect(parseByteSize('1e9')).toBe(1e9);
    expect(parseByteSize('4096')).toBe(4096);
    for (const bad of ['', '0', '-5GB', '5 parsecs', 'GB', '1e400']) {
      expect(() => parseByteSize(bad)).toThrowError(expect.objectContaining({ code: 'Usage' }));
    }
  });
});
