/**
 * Generate a Mixtral-shaped sharded checkpoint of any size, streaming: memory stays at one pool of random
 * encoded weights plus one write chunk, whatever the model size, so checkpoints larger than RAM can be made.
 *
 *   npx tsx bench/make-synthetic.ts --out /tmp/synth-30g --target-gb 30          # Mixtral-8x7B dims, layers picked
 *   npx tsx bench/make-synthetic.ts --out /tmp/s --hidden 1024 --intermediate 3584 --experts 8 --layers 4 --dtype BF16
 *   --dtype F8_E4M3 writes linear weights as FP8 with DeepSeek-style 128x128 weight_scale_inv (norms, router,
 *   embeddings stay BF16) and adds quantization_config to config.json.
 *
 * Weights are N(0, 0.02) values in the chosen dtype, taken from a 16 MB pool at per-tensor offsets (generating
 * fresh randoms for 30 GB would make this a CPU benchmark instead of a disk one). Norm weights are 1.
 */
import { pathToFileURL } from 'node:url';
import { DTYPE_BYTES, fromF32, isDtype, type Dtype } from '../src/io/dtype.js';
import { OutputDir } from '../src/io/output.js';
import { FP8_BLOCK } from '../src/io/quantized.js';
import { byteLengthOf, parseByteSize, type TensorSpec } from '../src/io/writer.js';
import { seededRandom as rng } from '../kernels/random.js';

export interface SyntheticOptions {
  out: string;
  hidden: number;
  intermediate: number;
  experts: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  dtype: Dtype;
  maxShardBytes: number;
  force: boolean;
  quiet: boolean;
  seed: number;
  /** bytes of distinct random values tiled into the weights (smaller is faster to make, less varied) */
  poolBytes: number;
}

export const DEFAULTS: Omit<SyntheticOptions, 'out'> = {
  hidden: 4096,
  intermediate: 14336,
  experts: 8,
  layers: 32,
  heads: 32,
  kvHeads: 8,
  vocab: 32000,
  dtype: 'BF16',
  maxShardBytes: 5_000_000_000,
  force: false,
  quiet: false,
  seed: 1,
  poolBytes: 16 << 20,
};

const CHUNK_BYTES = 64 << 20;

interface PlannedTensor extends TensorSpec {
  fill: 'random' | 'ones' | 'scale';
}

function linear(name: string, rows: number, cols: number, dtype: Dtype): PlannedTensor[] {
  if (dtype !== 'F8_E4M3') return [{ name, dtype, shape: [rows, cols], fill: 'random' }];
  return [
    { name, dtype, shape: [rows, cols], fill: 'random' },
    { name: `${name}_scale_inv`, dtype: 'F32', shape: [Math.ceil(rows / FP8_BLOCK), Math.ceil(cols / FP8_BLOCK)], fill: 'scale' },
  ];
}

/** Tensor plan in Mixtral's on-disk names and layouts. */
export function planMixtral(o: Omit<SyntheticOptions, 'out'>): PlannedTensor[] {
  const hd = o.hidden / o.heads;
  const wide: Dtype = o.dtype === 'F8_E4M3' ? 'BF16' : o.dtype;
  const t: PlannedTensor[] = [{ name: 'model.embed_tokens.weight', dtype: wide, shape: [o.vocab, o.hidden], fill: 'random' }];
  for (let l = 0; l < o.layers; l++) {
    const p = `model.layers.${l}`;
    t.push({ name: `${p}.input_layernorm.weight`, dtype: wide, shape: [o.hidden], fill: 'ones' });
    t.push(...linear(`${p}.self_attn.q_proj.weight`, o.heads * hd, o.hidden, o.dtype));
    t.push(...linear(`${p}.self_attn.k_proj.weight`, o.kvHeads * hd, o.hidden, o.dtype));
    t.push(...linear(`${p}.self_attn.v_proj.weight`, o.kvHeads * hd, o.hidden, o.dtype));
    t.push(...linear(`${p}.self_attn.o_proj.weight`, o.hidden, o.heads * hd, o.dtype));
    t.push({ name: `${p}.post_attention_layernorm.weight`, dtype: wide, shape: [o.hidden], fill: 'ones' });
    t.push({ name: `${p}.block_sparse_moe.gate.weight`, dtype: wide, shape: [o.experts, o.hidden], fill: 'random' });
    for (let e = 0; e < o.experts; e++) {
      const q = `${p}.block_sparse_moe.experts.${e}`;
      t.push(...linear(`${q}.w1.weight`, o.intermediate, o.hidden, o.dtype));
      t.push(...linear(`${q}.w2.weight`, o.hidden, o.intermediate, o.dtype));
      t.push(...linear(`${q}.w3.weight`, o.intermediate, o.hidden, o.dtype));
    }
  }
  t.push({ name: 'model.norm.weight', dtype: wide, shape: [o.hidden], fill: 'ones' });
  t.push({ name: 'lm_head.weight', dtype: wide, shape: [o.vocab, o.hidden], fill: 'random' });
  return t;
}

export function mixtralConfig(o: Omit<SyntheticOptions, 'out'>): Record<string, unknown> {
  const c: Record<string, unknown> = {
    architectures: ['MixtralForCausalLM'],
    model_type: 'mixtral',
    hidden_size: o.hidden,
    intermediate_size: o.intermediate,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.kvHeads,
    head_dim: o.hidden / o.heads,
    num_local_experts: o.experts,
    num_experts_per_tok: 2,
    vocab_size: o.vocab,
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-5,
    rope_theta: 1e6,
    hidden_act: 'silu',
    tie_word_embeddings: false,
    sliding_window: null,
    router_aux_loss_coef: 0.02,
    router_jitter_noise: 0,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: o.dtype === 'F32' ? 'float32' : o.dtype === 'F16' ? 'float16' : 'bfloat16',
  };
  if (o.dtype === 'F8_E4M3')
    c.quantization_config = { quant_method: 'fp8', fmt: 'e4m3', activation_scheme: 'dynamic', weight_block_size: [FP8_BLOCK, FP8_BLOCK] };
  return c;
}

/** Layers that bring the checkpoint closest to targetBytes (at least 1). */
export function layersForTarget(o: Omit<SyntheticOptions, 'out'>, targetBytes: number): number {
  const bytes = (layers: number) => planMixtral({ ...o, layers }).reduce((a, t) => a + byteLengthOf(t), 0);
  const fixed = bytes(0);
  const perLayer = bytes(1) - fixed;
  return Math.max(1, Math.round((targetBytes - fixed) / perLayer));
}

/** poolBytes of encoded N(0, std) values (doubled so any window of pool size is contiguous). */
function randomPool(dtype: Dtype, std: number, seed: number, poolBytes: number): Uint8Array {
  const r = rng(seed);
  const n = poolBytes / DTYPE_BYTES[dtype];
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = std * Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const enc = fromF32(v, dtype);
  const pool = new Uint8Array(2 * poolBytes);
  pool.set(enc, 0);
  pool.set(enc, poolBytes);
  return pool;
}

export async function makeSynthetic(
  opts: Partial<SyntheticOptions> & { out: string; targetBytes?: number },
): Promise<{ bytes: number; seconds: number; tensors: number; layers: number }> {
  const o: SyntheticOptions = { ...DEFAULTS, ...opts };
  if (opts.targetBytes) o.layers = layersForTarget(o, opts.targetBytes);
  if (o.hidden % o.heads !== 0) throw new Error(`--hidden ${o.hidden} is not a multiple of --heads ${o.heads}`);
  const plan = planMixtral(o);
  const total = plan.reduce((a, t) => a + byteLengthOf(t), 0);
  const out = await OutputDir.create(o.out, { force: o.force });
  const t0 = performance.now();
  try {
    await out.writeConfig(mixtralConfig(o));
    await out.writeJson('generation_config.json', { bos_token_id: 1, eos_token_id: 2 });
    const pools = new Map<Dtype, Uint8Array>();
    // FP8 codes from N(0, 100): a realistic spread of the e4m3 range once scaled
    const poolFor = (d: Dtype) => pools.get(d) ?? pools.set(d, randomPool(d, d === 'F8_E4M3' ? 100 : 0.02, o.seed, o.poolBytes)).get(d)!;
    const ones = new Map<Dtype, Uint8Array>();
    const writer = await out.openWriter(
      plan.map(({ name, dtype, shape }) => ({ name, dtype, shape })),
      { maxShardBytes: o.maxShardBytes },
    );
    const chunk = new Uint8Array(CHUNK_BYTES);
    let done = 0;
    let lastReport = performance.now();
    for (const [i, t] of plan.entries()) {
      const n = byteLengthOf(t);
      if (t.fill === 'ones') {
        const one = ones.get(t.dtype) ?? ones.set(t.dtype, fromF32(new Float32Array(1).fill(1), t.dtype)).get(t.dtype)!;
        const buf = new Uint8Array(n);
        for (let k = 0; k < n; k += one.length) buf.set(one, k);
        await writer.write(t.name, buf);
      } else if (t.fill === 'scale') {
        // 0.02 / 100 maps the N(0,100) codes back to weights of std 0.02
        await writer.write(t.name, new Uint8Array(new Float32Array(n / 4).fill(0.0002).buffer));
      } else {
        const pool = poolFor(t.dtype);
        const w = DTYPE_BYTES[t.dtype];
        for (let off = 0; off < n; off += CHUNK_BYTES) {
          const len = Math.min(CHUNK_BYTES, n - off);
          // one chunk buffer for the whole run: writePart has finished with it when it resolves
          const part = chunk.subarray(0, len);
          // tile the chunk with pool windows starting at a tensor-dependent, element-aligned offset
          let start = (i * 7919 * w + off) % o.poolBytes;
          start -= start % w;
          for (let k = 0; k < len; k += o.poolBytes) {
            const m = Math.min(o.poolBytes, len - k);
            part.set(pool.subarray(start, start + m), k);
            start = (start + 4099 * w) % o.poolBytes;
          }
          await writer.writePart(t.name, off, part);
        }
      }
      done += n;
      if (!o.quiet && performance.now() - lastReport > 2000) {
        lastReport = performance.now();
        process.stderr.write(`  ${(done / 1e9).toFixed(2)} / ${(total / 1e9).toFixed(2)} GB\n`);
      }
    }
    await writer.finalize();
    await out.publish();
  } catch (e) {
    await out.discard();
    throw e;
  }
  return { bytes: total, seconds: (performance.now() - t0) / 1000, tensors: plan.length, layers: o.layers };
}

function parseArgs(argv: string[]): Partial<SyntheticOptions> & { out: string; targetBytes?: number } {
  const o: Partial<SyntheticOptions> & { out?: string; targetBytes?: number } = {};
  const num = (s: string | undefined, flag: string) => {
    const v = Number(s);
    if (!Number.isFinite(v) || v <= 0) throw new Error(`${flag} needs a positive number`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = argv[i + 1];
    switch (a) {
      case '--out':
        o.out = v;
        i++;
        break;
      case '--hidden':
        o.hidden = num(v, a);
        i++;
        break;
      case '--intermediate':
        o.intermediate = num(v, a);
        i++;
        break;
      case '--experts':
        o.experts = num(v, a);
        i++;
        break;
      case '--layers':
        o.layers = num(v, a);
        i++;
        break;
      case '--heads':
        o.heads = num(v, a);
        i++;
        break;
      case '--kv-heads':
        o.kvHeads = num(v, a);
        i++;
        break;
      case '--vocab':
        o.vocab = num(v, a);
        i++;
        break;
      case '--target-gb':
        o.targetBytes = num(v, a) * 1e9;
        i++;
        break;
      case '--max-shard-size':
        o.maxShardBytes = parseByteSize(v ?? '');
        i++;
        break;
      case '--seed':
        o.seed = num(v, a);
        i++;
        break;
      case '--dtype':
        if (!isDtype(v) || !['F32', 'F16', 'BF16', 'F8_E4M3'].includes(v)) throw new Error('--dtype must be F32, F16, BF16 or F8_E4M3');
        o.dtype = v;
        i++;
        break;
      case '--force':
        o.force = true;
        break;
      case '--quiet':
        o.quiet = true;
        break;
      default:
        throw new Error(`unknown flag ${a}`);
    }
  }
  if (!o.out) throw new Error('--out DIR is required');
  return o as Partial<SyntheticOptions> & { out: string };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    const opts = parseArgs(process.argv.slice(2));
    const r = await makeSynthetic(opts);
    const rss = process.resourceUsage().maxRSS * 1024;
    console.log(
      `wrote ${opts.out}: ${r.layers} layers, ${r.tensors} tensors, ${(r.bytes / 1e9).toFixed(2)} GB in ${r.seconds.toFixed(1)} s (${(r.bytes / 1e6 / r.seconds).toFixed(0)} MB/s), peak RSS ${(rss / 1e6).toFixed(0)} MB`,
    );
  } catch (e) {
    console.error(`make-synthetic: ${(e as Error).message}`);
    process.exitCode = 1;
  }
}
