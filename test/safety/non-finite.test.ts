/**
 * Non-finite values: every tensor read for compute, produced, or copied into an output is checked as it streams
 * (no extra pass over the file). NaN or Inf anywhere exits 5 with one line naming the tensor, and nothing is
 * published: not through a copy (lm_head, embeddings, norms), not through compute (router, experts), not as the
 * overflow of a produced tensor.
 */
import { cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fromF32 } from '../../src/io/dtype.js';
import { firstNonFiniteBytes } from '../../src/io/finite.js';
import { stagingDirFor } from '../../src/io/output.js';
import { CheckpointWriter } from '../../src/io/writer.js';
import { runMoe } from '../helpers/cli.js';
import { oneLine, snapshot, tinyModel } from './helpers.js';

let root: string;
let model: string;
let calib: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-nan-'));
  ({ model, calib } = await tinyModel(join(root, 'model')));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A copy of the model with `value` at element `at` of F32 tensor `name`. */
function poisoned(name: string, value: number, at = 1): string {
  const dir = join(root, `poison-${name.replace(/\W+/g, '_')}-${String(value)}`);
  cpSync(model, dir, { recursive: true });
  const file = join(dir, 'model.safetensors');
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString()) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const t = header[name];
  if (t?.dtype !== 'F32') throw new Error(`fixture has no F32 tensor ${name}`);
  buf.writeFloatLE(value, 8 + n + t.data_offsets[0] + 4 * at);
  writeFileSync(file, buf);
  return dir;
}

async function refused(args: string[], tensor: string, out?: string): Promise<void> {
  const before = snapshot(root);
  const r = await runMoe([...args, '--quiet']);
  expect(r.code, r.stderr).toBe(5);
  oneLine(r.stderr, new RegExp(`'${tensor.replace(/\./g, '\\.')}'.*(NaN|Inf|non-finite)`));
  if (out) {
    expect(existsSync(out)).toBe(false);
    expect(existsSync(stagingDirFor(out))).toBe(false);
  }
  // the inputs are untouched
  for (const k of Object.keys(before)) if (!k.includes('-out')) expect(snapshot(root)[k]).toBe(before[k]);
}

describe('NaN and Inf are refused with exit 5, naming the tensor', () => {
  it.each([
    ['lm_head.weight', Number.NaN],
    ['model.embed_tokens.weight', Number.POSITIVE_INFINITY],
    ['model.norm.weight', Number.NaN],
    ['model.layers.0.input_layernorm.weight', Number.NEGATIVE_INFINITY],
  ])('prune copies no %s holding %s into an output', async (tensor, value) => {
    const m = poisoned(tensor, value);
    const out = join(root, `prune-${tensor}-out`);
    await refused(['prune', '--model', m, '--keep', '2', '--method', 'random', '--out', out], tensor, out);
  });

  it('quantize (round-to-nearest) refuses a NaN expert weight instead of zeroing its row', async () => {
    const tensor = 'model.layers.1.block_sparse_moe.experts.2.w1.weight';
    const m = poisoned(tensor, Number.NaN, 5);
    const out = join(root, 'rtn-out');
    await refused(['quantize', '--model', m, '--bits', '7', '--candidates', '4', '--method', 'rtn', '--out', out], tensor, out);
  });

  it('merge --calib refuses NaN in the router and in attention', async () => {
    for (const tensor of ['model.layers.0.block_sparse_moe.gate.weight', 'model.layers.1.self_attn.q_proj.weight']) {
      const m = poisoned(tensor, Number.NaN);
      const out = join(root, `merge-${tensor}-out`);
      await refused(['merge', '--model', m, '--groups', '2', '--calib', calib, '--seq-len', '8', '--out', out], tensor, out);
    }
  });

  it('decompose refuses an Inf weight; eval refuses NaN', async () => {
    const tensor = 'model.layers.0.block_sparse_moe.experts.0.w2.weight';
    const m = poisoned(tensor, Number.POSITIVE_INFINITY);
    const out = join(root, 'decompose-out');
    await refused(['decompose', '--model', m, '--ratio', '0.5', '--mode', 'svd', '--out', out], tensor, out);
    await refused(['eval', '--model', poisoned('model.norm.weight', Number.NaN, 2), '--data', calib, '--seq-len', '8'], 'model.norm.weight');
  });

  it('a produced tensor that overflows its dtype is never written (F16 beyond 65504)', async () => {
    const dir = join(root, 'overflow');
    const w = await CheckpointWriter.create(
      await import('node:fs/promises').then(async (fs) => {
        await fs.mkdir(dir, { recursive: true });
        return dir;
      }),
      [{ name: 'factor_u', dtype: 'F16', shape: [4] }],
      { finiteOnly: true },
    );
    const bytes = fromF32(new Float32Array([1, 2, 1e6, 3]), 'F16');
    expect(firstNonFiniteBytes(bytes, 'F16')).toBe(2);
    await expect(w.write('factor_u', bytes)).rejects.toMatchObject({ code: 'NonFinite', message: expect.stringMatching(/factor_u.*element 2/) });
    await expect(w.writePart('factor_u', 2, bytes.subarray(2, 6))).rejects.toMatchObject({ code: 'NonFinite', message: expect.stringMatching(/element 2/) });
    await w.abort();
  });

  it('the byte scanners find NaN/Inf in every float dtype and nothing in finite data', () => {
    expect(firstNonFiniteBytes(fromF32(new Float32Array([0, -0, 65504, -1e-8]), 'F16'), 'F16')).toBe(-1);
    expect(firstNonFiniteBytes(fromF32(new Float32Array([1, Number.NaN]), 'BF16'), 'BF16')).toBe(1);
    expect(firstNonFiniteBytes(fromF32(new Float32Array([3e38, 1]), 'BF16'), 'BF16')).toBe(-1);
    expect(firstNonFiniteBytes(new Uint8Array(new Float64Array([1, 2, Number.NEGATIVE_INFINITY]).buffer), 'F64')).toBe(2);
    expect(firstNonFiniteBytes(new Uint8Array([0x00, 0x7e, 0xff]), 'F8_E4M3')).toBe(2);
    expect(firstNonFiniteBytes(new Uint8Array([0x00, 0x7b, 0x7c]), 'F8_E5M2')).toBe(2);
    expect(firstNonFiniteBytes(new Uint8Array([0xff, 0xff]), 'I16')).toBe(-1);
    // unaligned F32 views are scanned too
    const u = new Uint8Array(9);
    new DataView(u.buffer).setFloat32(5, Number.NaN, true);
    expect(firstNonFiniteBytes(u.subarray(1), 'F32')).toBe(1);
  });
});
