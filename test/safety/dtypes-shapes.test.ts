/**
 * Dtypes and shapes: an integer tensor where float weights belong (an I16 norm, a U8 embedding) or an embedding,
 * lm_head or norm of the wrong shape is refused by every command when the model is opened (exit 3, one line naming
 * the tensor), before any work and with nothing written.
 */
import { cpSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from '../helpers/cli.js';
import { oneLine, tinyModel } from './helpers.js';

let root: string;
let model: string;
let calib: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-dtype-'));
  ({ model, calib } = await tinyModel(join(root, 'model')));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A copy of the model whose header says `dtype`/`shape` for `name` (same byte length, so the header stays valid). */
function edited(label: string, name: string, edit: { dtype?: string; shape?: (s: number[]) => number[] }): string {
  const dir = join(root, label);
  cpSync(model, dir, { recursive: true });
  const file = join(dir, 'model.safetensors');
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString()) as Record<string, { dtype: string; shape: number[] }>;
  const t = header[name]!;
  if (edit.dtype) t.dtype = edit.dtype;
  if (edit.shape) t.shape = edit.shape(t.shape);
  let text = JSON.stringify(header);
  // keep the header length (and so every data offset): pad with spaces, as the format allows
  if (text.length > n) throw new Error('edited header grew');
  text = text.padEnd(n, ' ');
  writeFileSync(file, Buffer.concat([buf.subarray(0, 8), Buffer.from(text), buf.subarray(8 + n)]));
  return dir;
}

const COMMANDS: [string, (m: string, out: string) => string[]][] = [
  ['prune', (m, out) => ['prune', '--model', m, '--keep', '2', '--method', 'random', '--out', out]],
  ['quantize', (m, out) => ['quantize', '--model', m, '--bits', '7', '--candidates', '4', '--method', 'rtn', '--out', out]],
  ['merge', (m, out) => ['merge', '--model', m, '--groups', '2', '--calib', calib, '--seq-len', '8', '--out', out]],
  ['decompose', (m, out) => ['decompose', '--model', m, '--ratio', '0.5', '--mode', 'svd', '--out', out]],
  ['calibrate', (m, out) => ['calibrate', '--model', m, '--data', calib, '--seq-len', '8', '--out', out]],
  ['eval', (m) => ['eval', '--model', m, '--data', calib, '--seq-len', '8']],
];

describe('dtypes and shapes are checked when the model is opened', () => {
  const CASES: [string, string, { dtype?: string; shape?: (s: number[]) => number[] }, RegExp][] = [
    ['i32-norm', 'model.layers.1.post_attention_layernorm.weight', { dtype: 'I32' }, /is I32; a float dtype/],
    ['u8-embed', 'model.embed_tokens.weight', { dtype: 'U8', shape: ([v, h]) => [v!, h! * 4] }, /embedding .* is U8; a float dtype/],
    ['wide-embed', 'model.embed_tokens.weight', { shape: ([v, h]) => [v! / 2, h! * 2] }, /embedding .* has shape .* is expected/],
    ['transposed-head', 'lm_head.weight', { shape: ([v, h]) => [h!, v!] }, /lm_head .* has shape .* is expected/],
    ['square-norm', 'model.norm.weight', { shape: ([h]) => [h! / 4, 4] }, /final norm weight .* has shape/],
  ];
  it.each(CASES)('%s is refused by every command (exit 3)', async (label, tensor, edit, message) => {
    const m = edited(label, tensor, edit);
    for (const [name, args] of COMMANDS) {
      const out = join(root, `${label}-${name}-out`);
      const r = await runMoe([...args(m, out), '--quiet']);
      expect(r.code, `${name}: ${r.stderr}`).toBe(3);
      oneLine(r.stderr, message);
      expect(r.stderr).toContain(tensor);
      expect(existsSync(out)).toBe(false);
    }
    expect(readdirSync(root).filter((f) => f.startsWith('.moe-'))).toEqual([]);
  });
});
