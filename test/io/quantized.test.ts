import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Checkpoint } from '../../src/io/checkpoint.js';
import { e4m3ToF32, fromF32 } from '../../src/io/dtype.js';
import { decodeMxfp4, dequantizeFp8Blocks, e8m0ToF32, encodeAsStored, quantizeFp8Blocks, specsAsStored } from '../../src/io/quantized.js';
import { statSync } from 'node:fs';
import { CheckpointWriter } from '../../src/io/writer.js';
import { rng, tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

function gaussian(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => scale * Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r()));
}

describe('FP8 block quantization', () => {
  it('uses scale_inv = amax/448 per 128x128 block, with partial edge blocks', () => {
    const rows = 200;
    const cols = 300;
    const v = gaussian(rows * cols, 1, 0.02);
    v[5 * cols + 7] = 3; // block (0,0) gets a large outlier
    const { bytes, scaleInv, scaleShape } = quantizeFp8Blocks(v, rows, cols);
    expect(scaleShape).toEqual([2, 3]);
    expect(scaleInv[0]).toBe(Math.fround(3 / 448));
    // edge block (1,2) covers rows 128..199, cols 256..299
    let amax = 0;
    for (let r = 128; r < 200; r++) for (let c = 256; c < 300; c++) amax = Math.max(amax, Math.abs(v[r * cols + c]!));
    expect(scaleInv[5]).toBe(Math.fround(amax / 448));
    // the outlier is stored as the max code
    expect(bytes[5 * cols + 7]).toBe(0x7e);
    const back = dequantizeFp8Blocks(bytes, scaleInv, rows, cols);
    // E4M3 keeps 3 mantissa bits: relative error <= 2^-4 for normals, absolute <= half a subnormal step below
    const over: number[] = [];
    for (let i = 0; i < v.length; i++) {
      const s = scaleInv[Math.floor(Math.floor(i / cols) / 128) * 3 + Math.floor((i % cols) / 128)]!;
      const err = Math.abs(back[i]! - v[i]!);
      if (err > Math.max(Math.abs(v[i]!) * 2 ** -4, s * 2 ** -10) * 1.0001) over.push(i);
    }
    expect(over).toEqual([]);
    // re-quantizing dequantized weights reproduces the codes
    const again = quantizeFp8Blocks(back, rows, cols);
    let same = 0;
    for (let i = 0; i < bytes.length; i++) same += again.bytes[i] === bytes[i] ? 1 : 0;
    expect(same / bytes.length).toBeGreaterThan(0.999);
  });
  it('handles all-zero blocks', () => {
    const { bytes, scaleInv } = quantizeFp8Blocks(new Float32Array(4 * 4), 4, 4);
    expect([...scaleInv]).toEqual([1]);
    expect(bytes.every((b) => b === 0)).toBe(true);
  });
});

describe('Checkpoint dequantizes FP8 weights with weight_scale_inv on read', () => {
  it('readF32 (whole and any element range) = code * block scale; storage() reports the format', async () => {
    const dir = join(tmp.dir, 'fp8');
    mkdirSync(dir);
    writeFileSync(
      join(dir, 'config.json'),
      JSON.stringify({ model_type: 'deepseek_v3', quantization_config: { quant_method: 'fp8', weight_block_size: [128, 128] } }),
    );
    const rows = 260;
    const cols = 130;
    const v = gaussian(rows * cols, 3, 0.05);
    const q = quantizeFp8Blocks(v, rows, cols);
    const w = await CheckpointWriter.create(
      dir,
      [
        { name: 'l.weight', dtype: 'F8_E4M3', shape: [rows, cols] },
        { name: 'l.weight_scale_inv', dtype: 'F32', shape: q.scaleShape },
        { name: 'norm.weight', dtype: 'BF16', shape: [4] },
      ],
      { maxShardBytes: 20_000 },
    );
    await w.write('l.weight', q.bytes);
    await w.write('l.weight_scale_inv', new Uint8Array(q.scaleInv.buffer));
    await w.write('norm.weight', fromF32(Float32Array.of(1, 2, 3, 4), 'BF16'));
    await w.finalize();
    const ck = await Checkpoint.open(dir);
    const st = ck.storage('l.weight');
    expect(st.dtype).toBe('F8_E4M3');
    expect(st.blockScale).toEqual({ scaleName: 'l.weight_scale_inv', scaleSuffix: '_scale_inv', block: [128, 128], scaleShape: [3, 2] });
    expect(ck.storage('norm.weight').blockScale).toBeUndefined();
    expect(ck.isScaleTensor('l.weight_scale_inv')).toBe(true);
    expect(ck.isScaleTensor('norm.weight')).toBe(false);
    const full = await ck.readF32('l.weight');
    const expected = dequantizeFp8Blocks(q.bytes, q.scaleInv, rows, cols);
    expect([...full]).toEqual([...expected]);
    // spot value computed by hand: code * scale of its block
    const i = 200 * cols + 129; // row 200 (block row 1), col 129 (block col 1)
    expect(full[i]).toBe(Math.fround(e4m3ToF32(q.bytes[i]!) * q.scaleInv[3]!));
    for (const [a, b] of [
      [0, 10],
      [127 * cols + 120, 129 * cols + 5],
      [255 * cols, rows * cols],
      [130 * cols, 131 * cols],
    ]) {
      expect([...(await ck.readF32('l.weight', a, b))]).toEqual([...expected.subarray(a, b)]);
    }
    // raw bytes are the stored codes
    expect(Buffer.from(await ck.readBytes('l.weight')).equals(Buffer.from(q.bytes))).toBe(true);
    await ck.close();
  });

  it('rejects a scale tensor of the wrong shape', async () => {
    const dir = join(tmp.dir, 'fp8bad');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), '{}');
    const w = await CheckpointWriter.create(dir, [
      { name: 'w', dtype: 'F8_E4M3', shape: [256, 128] },
      { name: 'w_scale_inv', dtype: 'F32', shape: [1, 1] },
    ]);
    await w.write('w', new Uint8Array(256 * 128));
    await w.write('w_scale_inv', new Uint8Array(4));
    await w.finalize();
    const ck = await Checkpoint.open(dir);
    await expect(ck.readF32('w')).rejects.toMatchObject({ code: 'InvalidData', message: expect.stringContaining('expected [2,1]') });
    await ck.close();
  });
});

describe('writing an edited FP8 checkpoint back in its own format', () => {
  it('keeps FP8 with recomputed block scales (non-square blocks from config), so the output is no larger', async () => {
    const src = join(tmp.dir, 'fp8src');
    mkdirSync(src);
    writeFileSync(join(src, 'config.json'), JSON.stringify({ quantization_config: { weight_block_size: [64, 128] } }));
    const rows = 192;
    const cols = 256;
    const v = gaussian(rows * cols, 5, 0.03);
    const q = quantizeFp8Blocks(v, rows, cols, [64, 128]);
    expect(q.scaleShape).toEqual([3, 2]);
    const w = await CheckpointWriter.create(src, [
      { name: 'e.weight', dtype: 'F8_E4M3', shape: [rows, cols] },
      { name: 'e.weight_scale_inv', dtype: 'F32', shape: q.scaleShape },
      { name: 'b.bias', dtype: 'BF16', shape: [rows] },
    ]);
    await w.write('e.weight', q.bytes);
    await w.write('e.weight_scale_inv', new Uint8Array(q.scaleInv.buffer));
    await w.write('b.bias', fromF32(gaussian(rows, 6), 'BF16'));
    await w.finalize();

    const ck = await Checkpoint.open(src);
    const st = ck.storage('e.weight');
    expect(st.blockScale?.block).toEqual([64, 128]);
    // the edit: keep the first 128 rows (as pruning half an expert's rows would), doubled
    const kept = (await ck.readF32('e.weight', 0, 128 * cols)).map((x) => 2 * x);
    const dst = join(tmp.dir, 'fp8dst');
    mkdirSync(dst);
    writeFileSync(join(dst, 'config.json'), JSON.stringify(ck.config));
    const specs = [...specsAsStored('e.weight', st, [128, cols]), ...specsAsStored('b.bias', ck.storage('b.bias'), [128])];
    expect(specs.map((s) => [s.name, s.dtype, s.shape])).toEqual([
      ['e.weight', 'F8_E4M3', [128, cols]],
      ['e.weight_scale_inv', 'F32', [2, 2]],
      ['b.bias', 'BF16', [128]],
    ]);
    const out = await CheckpointWriter.create(dst, specs);
    for (const t of encodeAsStored('e.weight', st, kept, [128, cols])) await out.write(t.name, t.bytes);
    for (const t of encodeAsStored('b.bias', ck.storage('b.bias'), (await ck.readF32('b.bias')).slice(0, 128), [128])) await out.write(t.name, t.bytes);
    await out.finalize();
    expect(statSync(join(dst, 'model.safetensors')).size).toBeLessThan(statSync(join(src, 'model.safetensors')).size);
    const back = await Checkpoint.open(dst);
    expect(back.dtype('e.weight')).toBe('F8_E4M3');
    const got = await back.readF32('e.weight');
    // doubling an FP8 value is exact, so re-quantization reproduces it exactly (scale doubles, codes stay)
    expect([...got]).toEqual([...kept]);
    expect(Buffer.from(await back.readBytes('e.weight')).equals(Buffer.from(q.bytes.subarray(0, 128 * cols)))).toBe(true);
    await back.close();
    await ck.close();
  });
});

describe('compressed-tensors FP8 (weight_scale per tensor / per channel)', () => {
  it('dequantizes on read and writes edits back with the same scale layout', async () => {
    const dir = join(tmp.dir, 'ct');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), '{}');
    const rows = 6;
    const cols = 40;
    const v = gaussian(rows * cols, 12, 0.1);
    const perRow = quantizeFp8Blocks(v, rows, cols, [1, cols]);
    const perTensor = quantizeFp8Blocks(v, rows, cols, [rows, cols]);
    const w = await CheckpointWriter.create(dir, [
      { name: 'c.weight', dtype: 'F8_E4M3', shape: [rows, cols] },
      { name: 'c.weight_scale', dtype: 'F32', shape: [rows, 1] },
      { name: 't.weight', dtype: 'F8_E4M3', shape: [rows, cols] },
      { name: 't.weight_scale', dtype: 'F32', shape: [] },
      { name: 'raw.weight', dtype: 'F8_E4M3', shape: [2, 2] },
    ]);
    await w.write('c.weight', perRow.bytes);
    await w.write('c.weight_scale', new Uint8Array(perRow.scaleInv.buffer));
    await w.write('t.weight', perTensor.bytes);
    await w.write('t.weight_scale', new Uint8Array(perTensor.scaleInv.buffer));
    await w.write('raw.weight', Uint8Array.of(0x38, 0x40, 0xb8, 0));
    await w.finalize();
    const ck = await Checkpoint.open(dir);
    expect(ck.storage('c.weight').blockScale).toMatchObject({ scaleSuffix: '_scale', block: [1, cols], scaleShape: [rows, 1] });
    expect(ck.storage('t.weight').blockScale).toMatchObject({ scaleSuffix: '_scale', block: [rows, cols], scaleShape: [] });
    expect(ck.isScaleTensor('c.weight_scale')).toBe(true);
    expect(ck.isScaleTensor('t.weight_scale')).toBe(true);
    // an FP8 weight without scales decodes plainly
    expect([...(await ck.readF32('raw.weight'))]).toEqual([1, 2, -1, 0]);
    expect([...(await ck.readF32('c.weight'))]).toEqual([...dequantizeFp8Blocks(perRow.bytes, perRow.scaleInv, rows, cols, [1, cols])]);
    const row3 = await ck.readF32('c.weight', 3 * cols, 4 * cols);
    expect(row3[5]).toBe(Math.fround(e4m3ToF32(perRow.bytes[3 * cols + 5]!) * perRow.scaleInv[3]!));
    expect([...(await ck.readF32('t.weight'))]).toEqual([...dequantizeFp8Blocks(perTensor.bytes, perTensor.scaleInv, rows, cols, [rows, cols])]);
    // an edit that drops rows keeps per-channel [r, 1] and per-tensor [] scales
    expect(specsAsStored('c2.weight', ck.storage('c.weight'), [4, cols]).map((t) => [t.name, t.shape])).toEqual([
      ['c2.weight', [4, cols]],
      ['c2.weight_scale', [4, 1]],
    ]);
    expect(specsAsStored('t2.weight', ck.storage('t.weight'), [4, cols]).map((t) => [t.name, t.shape])).toEqual([
      ['t2.weight', [4, cols]],
      ['t2.weight_scale', []],
    ]);
    const enc = encodeAsStored('t2.weight', ck.storage('t.weight'), v.slice(0, 4 * cols), [4, cols]);
    expect(enc.map((t) => [t.name, t.bytes.length])).toEqual([
      ['t2.weight', 4 * cols],
      ['t2.weight_scale', 4],
    ]);
    await ck.close();
  });
});

describe('MXFP4', () => {
  it('decodes low nibble first with E8M0 scales', () => {
    const blocks = new Uint8Array(32);
    blocks[0] = 0x21; // element 0 = code 1 (0.5), element 1 = code 2 (1.0)
    blocks[1] = 0xf7; // element 2 = code 7 (6.0), element 3 = code 15 (-6.0)
    blocks[16] = 0x9a; // group 1: element 0 = code 10 (-1.0), element 1 = code 9 (-0.5)
    const scales = Uint8Array.of(127, 130); // 2^0, 2^3
    const out = decodeMxfp4(blocks, scales);
    expect(out.length).toBe(64);
    expect([...out.subarray(0, 5)]).toEqual([0.5, 1, 6, -6, 0]);
    expect([...out.subarray(32, 34)]).toEqual([-8, -4]);
    expect(e8m0ToF32(0)).toBe(2 ** -127);
    expect(e8m0ToF32(255)).toBeNaN();
    expect(() => decodeMxfp4(new Uint8Array(15), Uint8Array.of(127))).toThrowError(/16 per scale/);
  });

  it('Checkpoint.readMxfp4 reads one expert by rows', async () => {
    const dir = join(tmp.dir, 'mx');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), '{}');
    const E = 3;
    const R = 4;
    const G = 2;
    const r = rng(9);
    const blocks = Uint8Array.from({ length: E * R * G * 16 }, () => Math.floor(r() * 256));
    const scales = Uint8Array.from({ length: E * R * G }, () => 120 + Math.floor(r() * 10));
    const w = await CheckpointWriter.create(dir, [
      { name: 'm.gate_up_proj_blocks', dtype: 'U8', shape: [E, R, G, 16] },
      { name: 'm.gate_up_proj_scales', dtype: 'U8', shape: [E, R, G] },
    ]);
    await w.write('m.gate_up_proj_blocks', blocks);
    await w.write('m.gate_up_proj_scales', scales);
    await w.finalize();
    const ck = await Checkpoint.open(dir);
    const all = await ck.readMxfp4('m.gate_up_proj');
    expect(all.length).toBe(E * R * G * 32);
    const e1 = await ck.readMxfp4('m.gate_up_proj', R, 2 * R);
    expect([...e1]).toEqual([...all.subarray(R * G * 32, 2 * R * G * 32)]);
    await expect(ck.readMxfp4('m.gate_up_proj', 0, E * R + 1)).rejects.toMatchObject({ code: 'InvalidOffset' });
    await expect(ck.readMxfp4('m.nothing')).rejects.toMatchObject({ code: 'TensorNotFound' });
    await ck.close();
  });
});
