/**
 * A Mixtral checkpoint widened to hidden size W by zero padding, computing exactly the same function, for the
 * GGUF frontier (bench/gguf-frontier.ts): llama.cpp's K and IQ types need rows that are whole 256-blocks, and the
 * trained fixture's gate/up rows are 128 wide. Training a 256-wide model did not fit this machine's CPU share.
 *
 *   npx tsx bench/gguf-pad-model.ts [--model test/fixtures/tiny-mixtral] [--hidden 256] --out /tmp/tiny-mixtral-256z
 *
 * The residual stream becomes [h, 0]: every input-side weight (q/k/v, router, gate/up, lm_head) gets zero columns,
 * every output-side weight (embedding, o_proj, down) zero rows, so the extra coordinates stay 0 through the model.
 * RMSNorm then averages over W values: rms' = rms * sqrt(H/W), compensated by norm weights g * sqrt(H/W) and
 * rms_norm_eps * H/W (stored F32, the only tensors whose values change). Every block of a 256-wide gate/up row
 * is 128 trained values and 128 zeros, and down_exps has zero rows: the quantizers see the trained values in
 * real 256-blocks, and both ours and llama.cpp's pay the same bytes for the zeros. So the curve compares
 * quantizers on trained weights in the formats' own blocks; its bits per weight count the padding, it is not
 * the frontier of a model trained at that width.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Checkpoint } from '../src/io/checkpoint.js';
import { fromF32 } from '../src/io/dtype.js';
import { CheckpointWriter } from '../src/io/writer.js';

const arg = (k: string, d?: string) => {
  const i = process.argv.indexOf(k);
  return i > 0 ? process.argv[i + 1]! : d;
};
const src = resolve(arg('--model', 'test/fixtures/tiny-mixtral')!);
const W = Number(arg('--hidden', '256'));
const out = resolve(arg('--out', '/tmp/tiny-mixtral-256z')!);

const ck = await Checkpoint.open(src);
const cfg = ck.config as Record<string, unknown>;
if (cfg['model_type'] !== 'mixtral') throw new Error(`expected a mixtral checkpoint, got ${String(cfg['model_type'])}`);
const H = cfg['hidden_size'] as number;
if (!(W > H)) throw new Error(`--hidden ${W} must exceed the model's ${H}`);
const ratio = H / W;

/** how each tensor is widened: columns (input side), rows (output side), a norm, or unchanged */
function kind(name: string): 'cols' | 'rows' | 'norm' | 'keep' {
  if (/layernorm\.weight$|^model\.norm\.weight$/.test(name)) return 'norm';
  if (/embed_tokens\.weight$|o_proj\.weight$|\.w2\.weight$/.test(name)) return name.includes('embed_tokens') ? 'cols' : 'rows';
  if (/[qkv]_proj\.weight$|block_sparse_moe\.gate\.weight$|\.w[13]\.weight$|^lm_head\.weight$/.test(name)) return 'cols';
  return 'keep';
}

const names = ck.tensorNames;
const specs = names.map((name) => {
  const shape = ck.shape(name);
  const k = kind(name);
  if (k === 'norm') return { name, dtype: 'F32' as const, shape: [W] };
  if (k === 'keep') return { name, dtype: ck.dtype(name), shape };
  // the embedding [V, H] holds h per row: its columns are the hidden coordinates, like an input-side weight's
  return { name, dtype: ck.dtype(name), shape: k === 'cols' ? [shape[0]!, W] : [W, shape[1]!] };
});
await mkdir(out, { recursive: true });
const writer = await CheckpointWriter.create(out, specs);
for (const s of specs) {
  const k = kind(s.name);
  if (k === 'keep') {
    await writer.write(s.name, await ck.readBytes(s.name));
    continue;
  }
  const v = await ck.readF32(s.name);
  const shape = ck.shape(s.name);
  let o: Float32Array;
  if (k === 'norm') {
    o = new Float32Array(W);
    for (let i = 0; i < H; i++) o[i] = v[i]! * Math.sqrt(ratio);
  } else if (k === 'cols') {
    const [r, c] = shape as [number, number];
    o = new Float32Array(r * W);
    for (let i = 0; i < r; i++) o.set(v.subarray(i * c, (i + 1) * c), i * W);
  } else {
    o = new Float32Array(W * shape[1]!);
    o.set(v);
  }
  await writer.write(s.name, s.dtype === 'F32' ? new Uint8Array(o.buffer) : fromF32(o, s.dtype as 'BF16'));
}
await writer.finalize();
await ck.close();
const config = { ...cfg, hidden_size: W, rms_norm_eps: (cfg['rms_norm_eps'] as number) * ratio };
await writeFile(join(out, 'config.json'), JSON.stringify(config, null, 2) + '\n');
for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json']) await copyFile(join(src, f), join(out, f));
console.log(`${out}: hidden ${H} -> ${W}, ${specs.length} tensors`);
